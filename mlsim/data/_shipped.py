"""Where the shipped ethanol data set lives (examples/ethanol in the source tree)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ETHANOL_DIR", "ethanol_path"]

ETHANOL_DIR = Path(__file__).resolve().parents[2] / "examples" / "ethanol"
_PARTS = ("train", "val", "test")
_METHODS = ("dft", "xtb", "geometries")


def ethanol_path(part: str = "train", method: str = "dft") -> Path:
    """Return the shipped ethanol file for part 'train'|'val'|'test' and method 'dft'|'xtb'|'geometries'.

    'dft' is B3LYP/6-31G* (pyscf, density fitting), 'xtb' GFN2-xTB on the same geometries; the
    DFT files may be partial while examples/ethanol/make_dataset.py is still running.
    """
    if part not in _PARTS:
        raise ValueError(f"part must be one of {_PARTS}, got {part!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    path = ETHANOL_DIR / f"ethanol_{part}_{method}.extxyz.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; it is made by examples/ethanol/make_dataset.py (see its README)"
        )
    return path
