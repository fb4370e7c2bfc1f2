"""Option schemas: one declaration per setting (type, range or choices, default, doc), one checker.

Both the training config (`mlsim.train`) and the model architectures (`mlsim.models`, one table of
hyperparameters per registered architecture) describe their settings with `Option` and check
values with `check_value`, so a rule and its error message are written once.
"""

from __future__ import annotations

import collections.abc
import math
import numbers
import os
import re
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "check_value", "kind_of"]


@dataclass(frozen=True)
class Option:
    """The rules for one setting: type, range or choices, meaning, default, and --resume behaviour."""

    doc: str  # one line, for error messages and the reference docs
    kind: str = ""  # int, float, bool, str, path, mapping, int_list (else from the annotation)
    nullable: bool = False  # null (None) allowed; `doc` says what it means
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    # "fixed": must equal the checkpoint's value on --resume (it shapes the run so far);
    # "free": may change on --resume (stop criteria, output, evaluation-only settings), logged.
    resume: str = "fixed"
    default: Any = None

    def allowed(self) -> str:
        """What the setting accepts, in words: 'an integer >= 1, or null'."""
        noun = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "path": "a path (relative to the config file)",
            "mapping": "a mapping",
            "int_list": "a list of integers",
        }[self.kind]
        if self.choices is not None:
            noun = "one of " + ", ".join(repr(c) for c in self.choices)
        bounds = [
            f"{op} {_fmt(v)}"
            for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if v is not None
        ]
        if bounds:
            noun += (" with each " if self.kind == "int_list" else " ") + " and ".join(bounds)
        return noun + (", or null" if self.nullable else "")


def _fmt(v: float) -> str:
    """A bound as the user would write it (1 rather than 1.0)."""
    return str(int(v)) if float(v).is_integer() else repr(v)


_KINDS = {int: "int", float: "float", bool: "bool", str: "str", dict: "mapping"}
# Annotations that mean "a list of integers" (e.g. ANI's `hidden: Sequence[int]`).
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def kind_of(hint: Any) -> tuple[str, bool]:
    """(kind, nullable) of a type annotation; ValueError for a type no Option kind describes."""
    args = typing.get_args(hint)
    nullable = type(None) in args
    if nullable:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise ValueError(f"no option kind for the annotation {hint!r}")
        hint = rest[0]
    base = typing.get_origin(hint) or hint
    if base in _SEQUENCES and [a for a in typing.get_args(hint) if a is not Ellipsis] == [int]:
        return "int_list", nullable
    if base not in _KINDS:
        raise ValueError(f"no option kind for the annotation {hint!r}")
    return _KINDS[base], nullable


# A number PyYAML leaves as a string: YAML 1.1 reads `1e-3` (no dot, no sign) as text.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_value(name: str, opt: Option, value: Any) -> Any:
    """`value` checked against `opt` and normalised (3 -> 3.0 for a number); ValueError naming `name`."""

    def bad() -> ValueError:
        return ValueError(
            f"{name} = {value!r} is invalid: expected {opt.allowed()}. {name}: {opt.doc}"
        )

    if value is None:
        if opt.nullable:
            return None
        raise bad()
    kind = opt.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind == "path" and isinstance(value, os.PathLike):
        value = os.fspath(value)  # Python callers pass pathlib.Path
    if kind in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise bad()
        if opt.choices is not None and value not in opt.choices:
            raise bad()
        return value
    if kind == "mapping":
        if not isinstance(value, dict):
            raise bad()
        return value
    if kind == "int_list":
        if not isinstance(value, (list, tuple)) or not value:
            raise bad()
        items = [_number(v, "int") for v in value]
        if any(v is None or not _in_range(v, opt) for v in items):
            raise bad()
        return items
    number = _number(value, kind)
    if number is None or not _in_range(number, opt):
        raise bad()
    return number


def _number(value: Any, kind: str) -> int | float | None:
    """`value` as an int (kind 'int') or a finite float, or None when it is not one."""
    if isinstance(value, bool):  # bool is an int subclass; `epochs: true` is a mistake
        return None
    if isinstance(value, str) and kind == "float" and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, numbers.Integral):  # also NumPy integers from Python callers
        return int(value) if kind == "int" else float(value)
    if isinstance(value, numbers.Real) and math.isfinite(value):
        value = float(value)
        if kind == "float":
            return value
        return int(value) if value.is_integer() else None  # 100.0 epochs is fine, 2.5 is not
    return None


def _in_range(v: float, opt: Option) -> bool:
    """Whether `v` satisfies the bounds of `opt`."""
    return (
        (opt.gt is None or v > opt.gt)
        and (opt.ge is None or v >= opt.ge)
        and (opt.lt is None or v < opt.lt)
        and (opt.le is None or v <= opt.le)
    )
