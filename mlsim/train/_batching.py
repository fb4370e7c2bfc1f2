"""Labelled structures packed into flat arrays, and the batches (model inputs + labels) cut from them.

`PackedStructures` keeps what is small per structure (atom counts, energies, label flags, cells,
stresses) in memory and what is large per atom (numbers, positions, forces) either in memory or in
flat binary files of which `batch()` reads only the rows it packs. The files are how every rank of
a torchrun job trains on one copy of the data without holding it: see `mlsim.train._data`.

Values are stored in float64 as read; a batch converts to the model's dtype, so a batch equals the
one built from the original Structures, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from mlsim._fileio import atomic_write

__all__ = ["Batch", "PackedStructures", "TensorData", "collate", "strainable_cells"]


@dataclass
class Batch:
    """A packed batch: model inputs plus reference labels (NaN-free; masks say what is labelled)."""

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor  # (B,) float
    energy: torch.Tensor  # (B,)
    forces: torch.Tensor  # (N, 3)
    has_energy: torch.Tensor  # (B,) bool
    has_forces: torch.Tensor  # (N,) bool
    stress: torch.Tensor  # (B, 3, 3) eV/A^3, ASE sign (zeros where unlabelled)
    has_stress: torch.Tensor  # (B,) bool

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on `device`."""
        return Batch(**{f: getattr(self, f).to(device) for f in self.__dataclass_fields__})

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The five tensors of the model's forward()."""
        return self.numbers, self.positions, self.cell, self.pbc, self.batch

    def strain_inputs(self) -> tuple[torch.Tensor, ...]:
        """inputs() with a cell that can be strained for every structure (see strainable_cells)."""
        return (
            self.numbers,
            self.positions,
            strainable_cells(self.cell, self.pbc),
            self.pbc,
            self.batch,
        )


def strainable_cells(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """`cell` (B, 3, 3) with unit vectors in the non-periodic rows of structures of zero volume.

    compute_properties(stress=True) strains every structure of a batch and needs a volume for each.
    A batch may mix molecules (zero cell) with periodic structures that carry stress labels; the
    row of a non-periodic direction is never used (no image is taken along it), so replacing it
    leaves energies and forces unchanged, and the molecules' "stress" is simply not compared.
    """
    flat = torch.linalg.det(cell).abs() < 1e-12
    if not bool(flat.any()):
        return cell
    unit = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
    fill = flat.view(-1, 1, 1) & ~pbc.view(-1, 3, 1)
    return torch.where(fill, unit, cell)


class Labels(NamedTuple):
    """What the self-energy fit and the force scale read of a structure (no positions)."""

    numbers: np.ndarray
    energy: float | None
    forces: np.ndarray | None


# Per-atom columns: name -> (dtype on disk / in memory, values per atom).
_COLUMNS = {"numbers": (np.uint8, 1), "positions": (np.float64, 3), "forces": (np.float64, 3)}
_META = "structures.npz"


class _AtomColumns:
    """The per-atom arrays, in memory or in flat binary files read with pread (nothing mapped)."""

    def __init__(self, arrays: dict[str, np.ndarray] | None = None, folder: Path | None = None):
        self._arrays = arrays
        self._fds: dict[str, int] = {}
        if folder is not None:
            # Opened once: an open file stays readable even if the folder is removed meanwhile.
            self._fds = {name: os.open(folder / f"{name}.bin", os.O_RDONLY) for name in _COLUMNS}

    def __del__(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def take(self, name: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Rows [a, b) of column `name` for each span, concatenated (always a new, writable array)."""
        dtype, width = _COLUMNS[name]
        shape = (-1, width) if width > 1 else (-1,)
        if self._arrays is not None:
            src = self._arrays[name]
            parts = [src[a:b] for a, b in spans]
        else:
            row = np.dtype(dtype).itemsize * width
            fd = self._fds[name]
            parts = []
            for a, b in spans:
                want = (b - a) * row
                raw = os.pread(fd, want, a * row)
                if len(raw) != want:
                    raise OSError(f"packed data column {name!r} is shorter than its index")
                parts.append(np.frombuffer(raw, dtype=dtype))
        if not parts:
            return np.zeros((0, width) if width > 1 else (0,), dtype=dtype)
        return np.concatenate(parts).reshape(shape)


class PackedStructures:
    """Labelled structures as flat arrays: `batch(idx, dtype)` packs any of them into a Batch.

    Per-structure arrays live in memory; per-atom ones in memory (`from_structures`) or in files
    (`write` / `open`) of which only the rows of the requested structures are read.
    `subset(idx)` is a view on the same arrays.
    """

    def __init__(
        self, meta: dict[str, np.ndarray], atoms: _AtomColumns, rows: np.ndarray | None = None
    ) -> None:
        """Wrap per-structure arrays `meta` (n_atoms, energy, has_energy, has_forces, pbc, cell?, stress?)."""
        self._meta = meta
        self._atoms = atoms
        self._ptr = np.concatenate([[0], np.cumsum(meta["n_atoms"], dtype=np.int64)])
        self._rows = rows

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_structures(cls, structures: Iterable) -> PackedStructures:
        """Pack Structures in memory (no cell: zeros, the models' convention for no pbc)."""
        items = list(structures)
        meta = _meta_of(items)
        arrays = {
            "numbers": _concat([np.asarray(s.numbers, np.int64) for s in items], np.int64, 1),
            "positions": _concat([s.positions for s in items], np.float64, 3),
            "forces": _concat([_forces(s) for s in items], np.float64, 3),
        }
        return cls(meta, _AtomColumns(arrays=arrays))

    @classmethod
    def write(cls, folder: Path, structures: Iterable) -> PackedStructures:
        """Stream `structures` into packed files in `folder` (each written atomically); open them."""
        folder.mkdir(parents=True, exist_ok=True)
        acc = _MetaAccumulator()
        with ExitStack() as stack:
            files = {
                name: stack.enter_context(atomic_write(folder / f"{name}.bin", "wb"))
                for name in _COLUMNS
            }
            for s in structures:
                acc.add(s)
                files["numbers"].write(np.asarray(s.numbers).astype(np.uint8).tobytes())
                files["positions"].write(np.ascontiguousarray(s.positions, np.float64).tobytes())
                files["forces"].write(np.ascontiguousarray(_forces(s), np.float64).tobytes())
        with atomic_write(folder / _META, "wb") as fh:
            np.savez(fh, **acc.arrays())
        return cls.open(folder)

    @classmethod
    def open(cls, folder: Path) -> PackedStructures:
        """Open what `write` wrote (per-structure arrays are read, per-atom ones stay on disk)."""
        with np.load(folder / _META, allow_pickle=False) as f:
            meta = {k: np.asarray(f[k]) for k in f.files}
        return cls(meta, _AtomColumns(folder=folder))

    def subset(self, idx: Sequence[int] | np.ndarray) -> PackedStructures:
        """A view of structures `idx` (in that order) sharing this object's arrays."""
        rows = self._base_rows(np.asarray(idx, dtype=np.int64))
        return PackedStructures(self._meta, self._atoms, rows)

    # --- per-structure information (of this view) -----------------------------------------------
    def __len__(self) -> int:
        return len(self._meta["n_atoms"]) if self._rows is None else len(self._rows)

    def _base_rows(self, idx: np.ndarray) -> np.ndarray:
        return idx if self._rows is None else self._rows[idx]

    def _column(self, name: str) -> np.ndarray:
        col = self._meta[name]
        return col if self._rows is None else col[self._rows]

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per structure (int64)."""
        return self._column("n_atoms")

    @property
    def has_energy(self) -> np.ndarray:
        """Whether each structure has an energy label."""
        return self._column("has_energy")

    @property
    def has_forces(self) -> np.ndarray:
        """Whether each structure has force labels."""
        return self._column("has_forces")

    @property
    def has_stress(self) -> np.ndarray:
        """Whether each structure has a stress label."""
        if "has_stress" not in self._meta:
            return np.zeros(len(self), dtype=bool)
        return self._column("has_stress")

    @property
    def pbc(self) -> np.ndarray:
        """Periodic directions per structure, (n, 3) bool."""
        return self._column("pbc")

    @property
    def cells(self) -> np.ndarray:
        """Cells per structure, (n, 3, 3) float64 (zeros where a structure has none)."""
        if "cell" not in self._meta:
            return np.zeros((len(self), 3, 3))
        return self._column("cell")

    @property
    def stress(self) -> np.ndarray:
        """Stress labels, (n, 3, 3) eV/A^3, ASE sign (float64; zeros where unlabelled)."""
        if "stress" not in self._meta:
            return np.zeros((len(self), 3, 3))
        return self._column("stress")

    def check_stress_cells(self, what: str) -> None:
        """ValueError naming the first stress-labelled structure that is not fully periodic.

        A stress is dE/d(strain) / V of a periodic cell; on a molecule or a slab it has no
        meaning a model could be trained on or compared with. `what` names the data (file, key).
        """
        has = self.has_stress
        if not has.any():
            return
        bad = has & ~(self.pbc.all(axis=1) & (np.abs(np.linalg.det(self.cells)) > 1e-12))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{what}: structure {k} carries a stress label but is not fully periodic with "
                f"a cell of non-zero volume (pbc {self.pbc[k].tolist()}); a stress belongs to "
                "periodic structures only"
            )

    @property
    def energy(self) -> np.ndarray:
        """Reference energies, eV (float64; 0 where unlabelled)."""
        return self._column("energy")

    @property
    def element_counts(self) -> np.ndarray:
        """Atoms per atomic number (index Z) over the whole store (views included)."""
        return self._meta["element_counts"]

    # --- reading rows ---------------------------------------------------------------------------
    def _spans(self, rows: np.ndarray) -> list[tuple[int, int]]:
        return [(int(self._ptr[k]), int(self._ptr[k + 1])) for k in rows]

    def batch(self, idx: Sequence[int] | np.ndarray, dtype: torch.dtype) -> Batch:
        """Pack structures `idx` (any order) of this view into one Batch of `dtype` floats."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = self._base_rows(idx)
        spans = self._spans(rows)
        meta = self._meta
        counts = torch.from_numpy(meta["n_atoms"][rows].astype(np.int64))
        cell = meta.get("cell")
        cells = cell[rows] if cell is not None else np.zeros((len(rows), 3, 3))
        stress = meta["stress"][rows] if "stress" in meta else np.zeros((len(rows), 3, 3))
        has_stress = (
            meta["has_stress"][rows] if "has_stress" in meta else np.zeros(len(rows), dtype=bool)
        )
        return Batch(
            numbers=torch.from_numpy(self._atoms.take("numbers", spans).astype(np.int64)),
            positions=torch.from_numpy(self._atoms.take("positions", spans)).to(dtype),
            cell=torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float64)).to(dtype),
            pbc=torch.from_numpy(np.ascontiguousarray(meta["pbc"][rows], dtype=bool)),
            batch=torch.repeat_interleave(torch.arange(len(rows)), counts),
            n_atoms=counts.to(dtype),
            energy=torch.from_numpy(meta["energy"][rows].astype(np.float64)),
            has_energy=torch.from_numpy(meta["has_energy"][rows].astype(bool)),
            forces=torch.from_numpy(self._atoms.take("forces", spans)).to(dtype),
            has_forces=torch.from_numpy(np.repeat(meta["has_forces"][rows].astype(bool), counts)),
            stress=torch.from_numpy(np.ascontiguousarray(stress, dtype=np.float64)).to(dtype),
            has_stress=torch.from_numpy(has_stress.astype(bool)),
        )

    def reference_forces(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Force labels of structures `idx` as stored (float64, zeros where unlabelled), (N, 3)."""
        rows = self._base_rows(np.asarray(idx, dtype=np.int64))
        return self._atoms.take("forces", self._spans(rows))

    def labels(self, idx: Sequence[int] | np.ndarray, chunk: int = 1024) -> Iterator[Labels]:
        """Numbers, energy and forces of structures `idx`, one at a time, read `chunk` at a time."""
        idx = np.asarray(idx, dtype=np.int64)
        meta = self._meta
        for start in range(0, len(idx), chunk):
            rows = self._base_rows(idx[start : start + chunk])
            spans = self._spans(rows)
            numbers = self._atoms.take("numbers", spans).astype(np.int64)
            forces = self._atoms.take("forces", spans)
            a = 0
            for k, (lo, hi) in zip(rows, spans):
                b = a + hi - lo
                yield Labels(
                    numbers[a:b],
                    float(meta["energy"][k]) if meta["has_energy"][k] else None,
                    forces[a:b] if meta["has_forces"][k] else None,
                )
                a = b


def _forces(s: Any) -> np.ndarray:
    """A structure's forces, or zeros when it has none."""
    return s.forces if s.forces is not None else np.zeros((len(s), 3))


def _concat(parts: list[np.ndarray], dtype: type, width: int) -> np.ndarray:
    """Concatenate per-structure arrays (an empty, well-shaped array when there are none)."""
    if not parts:
        return np.zeros((0, width) if width > 1 else (0,), dtype=dtype)
    return np.concatenate([np.asarray(p, dtype=dtype) for p in parts])


class _MetaAccumulator:
    """Per-structure arrays gathered while streaming (compact: no Python object per structure)."""

    def __init__(self) -> None:
        self.n_atoms: list[np.ndarray] = []
        self.energy: list[np.ndarray] = []
        self.has_energy: list[np.ndarray] = []
        self.has_forces: list[np.ndarray] = []
        self.pbc: list[np.ndarray] = []
        self.cells: dict[int, np.ndarray] = {}
        self.stresses: dict[int, np.ndarray] = {}
        self.element_counts = np.zeros(119, dtype=np.int64)
        self._block: list[tuple[int, float, bool, bool, np.ndarray]] = []
        self._n = 0

    def add(self, s: Any) -> None:
        """Record one structure."""
        energy = s.energy if s.energy is not None else 0.0
        pbc = np.asarray(s.pbc, dtype=bool)
        self._block.append((len(s), energy, s.energy is not None, s.forces is not None, pbc))
        if s.cell is not None:
            self.cells[self._n] = np.asarray(s.cell, dtype=np.float64)
        if getattr(s, "stress", None) is not None:
            self.stresses[self._n] = np.asarray(s.stress, dtype=np.float64).reshape(3, 3)
        self.element_counts += np.bincount(np.asarray(s.numbers), minlength=119)[:119]
        self._n += 1
        if len(self._block) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if not self._block:
            return
        n, e, he, hf, pbc = zip(*self._block)
        self.n_atoms.append(np.array(n, dtype=np.int64))
        self.energy.append(np.array(e, dtype=np.float64))
        self.has_energy.append(np.array(he, dtype=bool))
        self.has_forces.append(np.array(hf, dtype=bool))
        self.pbc.append(np.array(pbc, dtype=bool).reshape(-1, 3))
        self._block = []

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-structure arrays (`cell` / `stress` only when some structure has one)."""
        self._flush()
        out = {
            "n_atoms": _concat(self.n_atoms, np.int64, 1),
            "energy": _concat(self.energy, np.float64, 1),
            "has_energy": _concat(self.has_energy, bool, 1),
            "has_forces": _concat(self.has_forces, bool, 1),
            "pbc": _concat(self.pbc, bool, 3),
            "element_counts": self.element_counts,
        }
        if self.cells:
            cell = np.zeros((self._n, 3, 3))
            for k, c in self.cells.items():
                cell[k] = c
            out["cell"] = cell
        has_stress = np.zeros(self._n, dtype=bool)
        if self.stresses:
            stress = np.zeros((self._n, 3, 3))
            for k, v in self.stresses.items():
                stress[k] = v
                has_stress[k] = True
            out["stress"] = stress
        out["has_stress"] = has_stress
        return out


def _meta_of(structures: Sequence) -> dict[str, np.ndarray]:
    """Per-structure arrays of in-memory Structures."""
    acc = _MetaAccumulator()
    for s in structures:
        acc.add(s)
    return acc.arrays()


class TensorData(PackedStructures):
    """Structures packed in memory for one dtype: `batch(idx)` is a cheap index operation."""

    def __init__(self, structures: Sequence, dtype: torch.dtype = torch.float32) -> None:
        """Pack; structures without a cell get zeros (the models' convention for no pbc)."""
        packed = PackedStructures.from_structures(structures)
        super().__init__(packed._meta, packed._atoms)
        self.dtype = dtype

    def batch(self, idx: Sequence[int] | np.ndarray, dtype: torch.dtype | None = None) -> Batch:
        """Pack the structures `idx` (any order) into one Batch."""
        return super().batch(idx, dtype or self.dtype)


def collate(structures: Sequence, dtype: torch.dtype = torch.float32) -> Batch:
    """Pack a list of Structures into one Batch."""
    return TensorData(structures, dtype).batch(range(len(structures)))
