"""Up-front checks that a reference method exists and can treat every element of the structures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_reference", "labeller_options"]

_XTB_MAX_Z = 86  # GFN2-xTB is parametrised for H-Rn
_DFT_KEYS = ("functional", "basis", "density_fit", "charge", "spin", "threads")


def labeller_options(reference: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a reference mapping into (method, options for mlsim.data.label).

    Besides the method's own settings, the executor options of mlsim.data.label (executor,
    workers, scheduler, ...) say where the labels are computed, e.g. on a Dask cluster.
    """
    from mlsim.data._label import EXECUTOR_OPTIONS

    ref = dict(reference)
    method = str(ref.pop("method"))
    allowed = _DFT_KEYS if method == "dft" else ("charge", "spin", "threads")
    if ":" in method:
        allowed = ("threads",)
    allowed = (*allowed, *EXECUTOR_OPTIONS)
    unknown = sorted(set(ref) - set(allowed))
    if unknown:
        raise ValueError(f"reference: options {unknown} do not apply to method {method!r}")
    return method, ref


def check_reference(reference: dict[str, Any], numbers: Iterable[int]) -> None:
    """Raise ValueError if the method is unknown or cannot treat one of the elements."""
    from ase.data import chemical_symbols

    method, options = labeller_options(reference)
    elements = sorted({int(z) for z in numbers})
    if method == "xtb":
        bad = [z for z in elements if not 1 <= z <= _XTB_MAX_Z]
        if bad:
            raise ValueError(
                f"reference xtb (GFN2-xTB) cannot treat {[chemical_symbols[z] for z in bad]}"
            )
        return
    if method == "dft":
        from pyscf import gto

        basis = str(options.get("basis", "6-31g*"))
        for z in elements:
            try:
                gto.basis.load(basis, chemical_symbols[z])
            except Exception as exc:  # pyscf raises several types for a missing basis
                raise ValueError(
                    f"reference dft: basis {basis!r} has no functions for "
                    f"{chemical_symbols[z]} (Z={z}): {exc}"
                ) from None
        return
    if ":" in method:
        import importlib

        mod, _, cls = method.partition(":")
        try:
            getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reference {method!r} cannot be loaded: {exc}") from exc
        return
    raise ValueError(f"unknown reference method {method!r}: use dft, xtb or module:Class")
