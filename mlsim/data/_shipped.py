"""Where the example data shipped with mlsim's source lives (examples/ in a source checkout).

The data (about 1 MB of ethanol files, more for the other examples) is not installed with the
package. It is found, in this order: an explicit `root`, the MLSIM_EXAMPLES environment variable,
then the examples/ folder of a source checkout around the working directory or around this package
(an editable install), recognised by a marker file, not by the package's position on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EXAMPLES_ENV", "ethanol_path", "examples_dir", "find_in_checkout"]

EXAMPLES_ENV = "MLSIM_EXAMPLES"
# A file only mlsim's examples folder has: the script that makes the shipped ethanol data.
_EXAMPLES_MARKER = Path("ethanol") / "make_dataset.py"
_PARTS = ("train", "val", "test")
_METHODS = ("dft", "xtb", "geometries")


def _search_roots() -> Iterator[Path]:
    """The working directory and its parents, then the folders above this package."""
    seen: set[Path] = set()
    starts = [Path(__file__).resolve().parent]
    try:
        starts.insert(0, Path.cwd().resolve())
    except OSError:  # the working directory was deleted: only the package's side remains
        pass
    for start in starts:
        for folder in (start, *start.parents):
            if folder not in seen:
                seen.add(folder)
                yield folder


def find_in_checkout(relative: str | os.PathLike[str]) -> Path | None:
    """Return the first existing `<folder>/<relative>` over the working directory and its parents,
    then the folders above the mlsim package; None outside a source checkout."""
    for folder in _search_roots():
        path = folder / relative
        if path.exists():
            return path
    return None


def examples_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding mlsim's shipped examples (ethanol/, alanine/, ...).

    `root` or $MLSIM_EXAMPLES names it explicitly; otherwise the examples/ folder of the source
    checkout around the working directory or around this package is used.
    """
    explicit = root if root is not None else os.environ.get(EXAMPLES_ENV) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            how = "root" if root is not None else f"${EXAMPLES_ENV}"
            raise FileNotFoundError(f"examples folder {path} (from {how}) does not exist")
        return path
    marker = find_in_checkout(Path("examples") / _EXAMPLES_MARKER)
    if marker is None:
        raise FileNotFoundError(
            "mlsim's example data is not installed with the package; it lives in the examples/ "
            "folder of mlsim's source repository. Run from a source checkout, or point "
            f"${EXAMPLES_ENV} (or the `root` argument) at a copy of that examples/ folder"
        )
    return marker.parent.parent


def ethanol_path(
    part: str = "train", method: str = "dft", root: str | os.PathLike[str] | None = None
) -> Path:
    """Return the shipped ethanol file for part 'train'|'val'|'test' and method 'dft'|'xtb'|'geometries'.

    'dft' is B3LYP/6-31G* (pyscf, density fitting), 'xtb' GFN2-xTB on the same geometries. `root`
    is the examples folder (default: see examples_dir).
    """
    if part not in _PARTS:
        raise ValueError(f"part must be one of {_PARTS}, got {part!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    path = examples_dir(root) / "ethanol" / f"ethanol_{part}_{method}.extxyz.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; it is made by examples/ethanol/make_dataset.py (see its README)"
        )
    return path
