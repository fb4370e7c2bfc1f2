"""The learn config's `reference` mapping: method, its options, and where labels are computed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_reference", "labeller_options"]


def labeller_options(reference: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a reference mapping into (method, options for mlsim.data.label).

    Besides the method's own settings (mlsim.data._references), the executor options of
    mlsim.data.label (executor, workers, scheduler, ...) say where the labels are computed.
    """
    from mlsim.data._label import EXECUTOR_OPTIONS
    from mlsim.data._references import check_reference as check_method

    ref = dict(reference)
    method = str(ref.pop("method"))
    method_options = {k: v for k, v in ref.items() if k not in EXECUTOR_OPTIONS}
    check_method(method, method_options, [])
    return method, ref


def check_reference(reference: dict[str, Any], numbers: Iterable[int]) -> None:
    """Raise ValueError if the method is unknown, an option does not apply or an element is out."""
    from mlsim.data._label import EXECUTOR_OPTIONS
    from mlsim.data._references import check_reference as check_method

    method, options = labeller_options(reference)
    check_method(method, {k: v for k, v in options.items() if k not in EXECUTOR_OPTIONS}, numbers)
