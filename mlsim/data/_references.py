"""The registry of reference methods: how labels are computed, by name, with their options.

Built in: "dft" (pyscf Kohn-Sham) and "xtb" (tblite GFN2-xTB). Any ASE calculator works without
registration as "package.module:Class". An outside package adds a named method without editing
mlsim, either by calling `register_reference` or through the entry-point group
`mlsim.references` (the entry point names a zero-argument function that registers it)::

    [project.entry-points."mlsim.references"]
    mymethod = "mypkg.refs:register"

Labelling (`mlsim label`, `mlsim.data.label`), the benchmarks and `mlsim learn` all look methods
up here, so each is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Reference", "check_reference", "get_reference", "reference_names", "register_reference"]

_GROUP = "mlsim.references"
_XTB_MAX_Z = 86  # GFN2-xTB is parametrised for H-Rn


@dataclass(frozen=True)
class Reference:
    """A named reference method: `build(**options) -> Labeller`, the options it takes, and an
    optional check that raises ValueError for elements it cannot treat."""

    name: str
    build: Callable[..., Any]
    options: tuple[str, ...]
    check_elements: Callable[[list[int], dict[str, Any]], None] | None = None
    doc: str = ""


_REGISTRY: dict[str, Reference] = {}
_entry_points_loaded = False


def register_reference(
    name: str,
    build: Callable[..., Any],
    options: Iterable[str] = (),
    check_elements: Callable[[list[int], dict[str, Any]], None] | None = None,
    doc: str = "",
) -> Reference:
    """Register a reference method under `name` (lower case; ':' is reserved for ASE classes)."""
    key = name.lower()
    if not key or ":" in key:
        raise ValueError(f"reference names must be non-empty and contain no ':', got {name!r}")
    ref = Reference(key, build, tuple(options), check_elements, doc)
    _REGISTRY[key] = ref
    return ref


def _load_entry_points() -> None:
    """Import the plug-ins of the mlsim.references group once; a broken one is named."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # a plug-in's own error, whatever its type
            raise ValueError(
                f"reference plug-in {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def reference_names() -> list[str]:
    """Registered method names (plug-ins included)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_reference(name: str) -> Reference:
    """The registered method `name`; ValueError listing the known ones otherwise."""
    ref = _REGISTRY.get(name.lower())
    if ref is None:
        _load_entry_points()
        ref = _REGISTRY.get(name.lower())
    if ref is None:
        raise ValueError(
            f"unknown method {name!r}: the reference methods are {', '.join(reference_names())}, "
            "or any ASE calculator as package.module:Class"
        )
    return ref


def check_reference(method: str, options: dict[str, Any], numbers: Iterable[int]) -> None:
    """Raise ValueError before any work if `method` is unknown, an option does not apply to it,
    or it cannot treat one of the elements `numbers`."""
    elements = sorted({int(z) for z in numbers})
    if ":" in method:
        import importlib

        mod, _, cls = method.partition(":")
        try:
            getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reference {method!r} cannot be loaded: {exc}") from exc
        allowed: tuple[str, ...] = ("threads",)
    else:
        ref = get_reference(method)
        allowed = ref.options
        if ref.check_elements is not None:
            ref.check_elements(elements, options)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"reference: options {unknown} do not apply to method {method!r}")


def _symbols(elements: Iterable[int]) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in elements]


def _check_xtb(elements: list[int], options: dict[str, Any]) -> None:
    bad = [z for z in elements if not 1 <= z <= _XTB_MAX_Z]
    if bad:
        raise ValueError(f"reference xtb (GFN2-xTB) cannot treat {_symbols(bad)}")


def _check_dft(elements: list[int], options: dict[str, Any]) -> None:
    import warnings

    from ase.data import chemical_symbols
    from pyscf import gto

    basis = str(options.get("basis", "6-31g*"))
    for z in elements:
        try:
            with warnings.catch_warnings():  # pyscf's hint to install basis-set-exchange
                warnings.simplefilter("ignore", UserWarning)
                gto.basis.load(basis, chemical_symbols[z])
        except Exception as exc:  # pyscf raises several types for a missing basis
            raise ValueError(
                f"reference dft: basis {basis!r} has no functions for "
                f"{chemical_symbols[z]} (Z={z}): {exc}"
            ) from None


def _build_dft(**options: Any) -> Any:
    from mlsim.data._backends import PySCFLabeller

    o = dict(options)
    return PySCFLabeller(o.pop("functional", "b3lyp"), o.pop("basis", "6-31g*"), **o)


def _build_xtb(charge: int = 0, spin: int = 0, threads: int | None = None) -> Any:
    from mlsim.data._backends import AseLabeller, make_calculator

    calc, name = make_calculator("xtb", charge=charge, spin=spin)
    return AseLabeller(calc, name, {"charge": int(charge), "spin": int(spin)})


register_reference(
    "dft",
    _build_dft,
    ("functional", "basis", "density_fit", "charge", "spin", "threads"),
    _check_dft,
    "Kohn-Sham DFT with pyscf (RKS/UKS, density fitting, Newton SCF rescue)",
)
register_reference(
    "xtb", _build_xtb, ("charge", "spin", "threads"), _check_xtb, "GFN2-xTB with tblite"
)
