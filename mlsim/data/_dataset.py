"""`Dataset`: an indexable sequence of `Structure`s, possibly backed lazily by a file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np

from mlsim.data._structure import Structure
from mlsim.data._validate import MIN_DISTANCE, validate_structures

__all__ = ["Dataset"]


class _Source(Protocol):
    def __len__(self) -> int: ...

    def get(self, i: int) -> Structure: ...


class _ListSource:
    def __init__(self, structures: Sequence[Structure]) -> None:
        self._items = list(structures)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, i: int) -> Structure:
        return self._items[i]


class Dataset:
    """A sequence of Structures: `ds[i]` is a Structure, `ds[a:b]` or `ds[index_array]` a Dataset view."""

    def __init__(self, structures: Sequence[Structure] | Dataset = ()) -> None:
        if isinstance(structures, Dataset):
            self._source, self._index = structures._source, structures._index
            return
        items = list(structures)
        for i, s in enumerate(items):
            if not isinstance(s, Structure):
                raise TypeError(f"item {i} is {type(s).__name__}, not a Structure")
        self._source: _Source = _ListSource(items)
        self._index: np.ndarray | None = None

    @classmethod
    def _from_source(cls, source: _Source, index: np.ndarray | None = None) -> Dataset:
        ds = cls.__new__(cls)
        ds._source, ds._index = source, index
        return ds

    @classmethod
    def read(cls, path: str | Path, **kwargs: Any) -> Dataset:
        """Read a data file; see `mlsim.data.read` for formats and options."""
        from mlsim.data._io import read

        return read(path, **kwargs)

    def write(self, path: str | Path, **kwargs: Any) -> None:
        """Write to a file (format from the extension); see `mlsim.data.write`."""
        from mlsim.data._io import write

        write(path, self, **kwargs)

    # --- sequence protocol ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._source) if self._index is None else len(self._index)

    @overload
    def __getitem__(self, key: int) -> Structure: ...

    @overload
    def __getitem__(self, key: slice | Sequence[int] | np.ndarray) -> Dataset: ...

    def __getitem__(self, key: Any) -> Structure | Dataset:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < -n or i >= n:
                raise IndexError(f"index {i} out of range for a data set of {n} structures")
            i %= n
            return self._source.get(i if self._index is None else int(self._index[i]))
        if isinstance(key, slice):
            sel = np.arange(n)[key]
        else:
            sel = np.asarray(key)
            if sel.dtype == bool:
                if sel.shape != (n,):
                    raise IndexError(f"boolean mask of shape {sel.shape} for {n} structures")
                sel = np.flatnonzero(sel)
            elif sel.size == 0:
                sel = sel.astype(np.int64)
            elif not np.issubdtype(sel.dtype, np.integer):
                raise TypeError(f"cannot index a Dataset with {type(key).__name__} of {sel.dtype}")
            if sel.size and (sel.max() >= n or sel.min() < -n):
                raise IndexError(f"index out of range for a data set of {n} structures")
            sel = sel % max(n, 1)
        base = sel if self._index is None else self._index[sel]
        return Dataset._from_source(self._source, np.asarray(base, dtype=np.int64))

    def __iter__(self) -> Iterator[Structure]:
        for i in range(len(self)):
            yield self[i]

    def __add__(self, other: Dataset | Sequence[Structure]) -> Dataset:
        return Dataset([*self, *other])

    def __repr__(self) -> str:
        return f"Dataset({len(self)} structures)"

    # --- checks and statistics ------------------------------------------------------------------
    def validate(
        self,
        *,
        require_energy: bool = False,
        require_forces: bool = False,
        same_n_atoms: bool = False,
        min_distance: float = MIN_DISTANCE,
    ) -> None:
        """Raise ValueError naming the first bad structure (NaN/inf, unknown element, clash, missing labels)."""
        start = 0
        screen = getattr(self._source, "first_suspect", None)
        if screen is not None and self._index is None:
            start = screen(require_energy, require_forces, min_distance)
            if start < 0:
                return
            # Every structure is uniform in an npz, so same_n_atoms holds; check the suspect.
        validate_structures(
            (self[i] for i in range(start, len(self))),
            start=start,
            require_energy=require_energy,
            require_forces=require_forces,
            same_n_atoms=same_n_atoms,
            min_distance=min_distance,
        )

    def split(self, *sizes: float | int, seed: int = 0) -> tuple[Dataset, ...]:
        """Split at random into disjoint parts; sizes are all fractions (sum <= 1) or all counts.

        The permutation depends only on `seed` and len(self), so the same call always gives the
        same parts. `ds.split(0.8, 0.1, 0.1, seed=1)` -> (train, val, test).
        """
        if not sizes:
            raise ValueError("split needs at least one size")
        n = len(self)
        if all(isinstance(x, (int, np.integer)) for x in sizes):
            counts = [int(x) for x in sizes]
        elif all(0 <= float(x) <= 1 for x in sizes):
            if sum(float(x) for x in sizes) > 1 + 1e-9:
                raise ValueError(f"split fractions {sizes} sum to more than 1")
            # Round the cumulative edges, not each part: fractions summing to 1 use every structure.
            edges = np.rint(np.cumsum([0.0, *map(float, sizes)]) * n).astype(int)
            counts = [int(c) for c in np.diff(np.minimum(edges, n))]
        else:
            raise ValueError(
                f"split sizes must be all counts or all fractions in [0, 1], got {sizes}"
            )
        if any(c < 0 for c in counts) or sum(counts) > n:
            raise ValueError(f"split sizes {counts} do not fit a data set of {n} structures")
        perm = np.random.default_rng(seed).permutation(n)
        parts, start = [], 0
        for c in counts:
            parts.append(self[np.sort(perm[start : start + c])])
            start += c
        return tuple(parts)

    def fit_self_energies(self, prior: dict[int, float] | None = None) -> dict[int, float]:
        """Least-squares per-element energies e_Z (eV) with E_s ~ sum_Z count_sZ * e_Z.

        When compositions do not determine every e_Z separately (e.g. a single molecule), the
        solution closest to `prior` (e.g. isolated-atom energies; default all zero, i.e. minimum
        norm) is returned; it still reproduces the mean energy of each composition.
        """
        elements = sorted({int(z) for s in self for z in np.unique(s.numbers)})
        if not elements:
            raise ValueError("cannot fit self energies of an empty data set")
        col = {z: k for k, z in enumerate(elements)}
        a = np.zeros((len(self), len(elements)))
        e = np.zeros(len(self))
        for i, s in enumerate(self):
            if s.energy is None:
                raise ValueError(f"structure {i}: no energy; self energies need labelled data")
            zs, counts = np.unique(s.numbers, return_counts=True)
            a[i, [col[int(z)] for z in zs]] = counts
            e[i] = s.energy
        p = np.array([float((prior or {}).get(z, 0.0)) for z in elements])
        # Fit the deviation from the prior: the minimum-norm deviation is the answer nearest it.
        coef, *_ = np.linalg.lstsq(a, e - a @ p, rcond=None)
        return {z: float(coef[col[z]] + p[col[z]]) for z in elements}

    def stats(self) -> dict[str, Any]:
        """Summary numbers: counts per element, atoms per structure, energy and force ranges."""
        n_atoms = np.array([len(s) for s in self], dtype=np.int64)
        elem: dict[int, int] = {}
        energies, e_per_atom, fmax, fsq, fcount = [], [], [], 0.0, 0
        n_periodic = n_forces = n_stress = 0
        for s in self:
            zs, counts = np.unique(s.numbers, return_counts=True)
            for z, c in zip(zs, counts, strict=True):
                elem[int(z)] = elem.get(int(z), 0) + int(c)
            if s.energy is not None:
                energies.append(s.energy)
                e_per_atom.append(s.energy / len(s))
            if s.forces is not None:
                n_forces += 1
                fmax.append(float(np.linalg.norm(s.forces, axis=1).max()))
                fsq += float((s.forces**2).sum())
                fcount += s.forces.size
            n_periodic += int(s.periodic)
            n_stress += int(s.stress is not None)
        out: dict[str, Any] = {
            "n_structures": len(self),
            "n_atoms_total": int(n_atoms.sum()),
            "n_atoms_min": int(n_atoms.min()) if len(n_atoms) else 0,
            "n_atoms_max": int(n_atoms.max()) if len(n_atoms) else 0,
            "elements": dict(sorted(elem.items())),
            "n_with_energy": len(energies),
            "n_with_forces": n_forces,
            "n_with_stress": n_stress,
            "n_periodic": n_periodic,
        }
        if energies:
            e = np.asarray(energies)
            out |= {
                "energy_min": float(e.min()),
                "energy_max": float(e.max()),
                "energy_mean": float(e.mean()),
                "energy_std": float(e.std()),
                "energy_per_atom_mean": float(np.mean(e_per_atom)),
            }
        if n_forces:
            out |= {
                "force_rms": float(np.sqrt(fsq / fcount)),
                "force_max_norm": float(max(fmax)),
            }
        return out
