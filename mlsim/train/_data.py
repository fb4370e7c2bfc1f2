"""The trainer's data: files checked up front, the seeded split, and one packed copy shared by all ranks.

Rank 0 reads each data file once, as a stream (npz and ASE db through mlsim.data's lazy readers,
extxyz frame by frame), validates every structure as `mlsim.data.read` does, and writes it packed
into OUTPUT/.packed/ (flat per-atom arrays; see `PackedStructures`). Every rank then reads from those
files only the rows of the structures in its own batches, so no rank holds the data set in memory,
and the text formats are parsed once per run, not once per epoch. The folder is removed when the
run ends and rebuilt when it starts (a resumed run repacks).
"""

from __future__ import annotations

import gzip
import io
import shutil
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsim.train._batching import PackedStructures
from mlsim.train._config import TrainConfig
from mlsim.train._distributed import from_rank0
from mlsim.train._outputs import why

__all__ = [
    "PACKED_DIR",
    "TrainingData",
    "check_data_files",
    "prepare_data",
    "read_structures",
    "remove_packed",
    "split_indices",
]

PACKED_DIR = ".packed"


def read_structures(path: Path) -> list:
    """Read a labelled data file with mlsim.data (any format it supports) into a list."""
    from mlsim.data import read

    ds = read(path)
    return [ds[i] for i in range(len(ds))]


def split_indices(n: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split (depends only on n and the config).

    With `val_data` set, validation comes from that file and the returned validation indices are
    empty: the whole pool (or its seeded first `n_train`) trains.
    """
    if cfg.val_data:
        n_val = 0
    else:
        n_val = cfg.n_val if cfg.n_val is not None else max(1, int(round(cfg.val_fraction * n)))
    if n_val >= n:
        raise ValueError(f"validation set ({n_val}) leaves no training data out of {n} structures")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    val, rest = np.sort(perm[:n_val]), perm[n_val:]
    if cfg.n_train is not None:
        if cfg.n_train > len(rest):
            raise ValueError(
                f"n_train={cfg.n_train} but only {len(rest)} structures remain"
                + ("" if cfg.val_data else " after validation")
            )
        rest = rest[: cfg.n_train]
    return np.sort(rest), val


# --- checks before training -----------------------------------------------------------------------
def check_data_files(cfg: TrainConfig) -> None:
    """Check every data file of the config (see _check_data_file) before the long training."""
    for key in ("data", "val_data", "test_data"):
        if getattr(cfg, key):
            _check_data_file(key, cfg.path(getattr(cfg, key)))


def _check_data_file(key: str, path: Path) -> None:
    """Fail now, naming the config key, if a data file is missing, unreadable or not parseable.

    Cheap (the first frame or the file's index only), so a typo in test_data is found before the
    run rather than after it.
    """
    from mlsim.data._io import format_of

    if not path.exists():
        raise FileNotFoundError(f"{key}: data file {path} not found")
    if path.is_dir():
        raise ValueError(f"{key}: {path} is a folder, not a data file")
    fmt = format_of(path)
    try:
        if fmt == "extxyz":
            _check_extxyz_head(path)
        elif fmt == "npz":
            import zipfile

            if not zipfile.is_zipfile(path):  # np.load would try (and blame) pickle
                raise ValueError("not an npz (zip) archive")
            with np.load(path, allow_pickle=False) as f:
                names = set(f.files)
            if not ({"z", "R"} <= names or {"nuclear_charges", "coords"} <= names):
                raise ValueError(f"no z/R (or nuclear_charges/coords) arrays, only {sorted(names)}")
        elif fmt == "db":
            with open(path, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise ValueError("not an SQLite database (ASE .db)")
        else:
            from ase.io import read as ase_read

            ase_read(path, index=0)
    except Exception as exc:  # the parsers raise many types; name the key and the file
        raise ValueError(f"{key}: cannot read {path} as {fmt}: {why(exc)}") from None


def _check_extxyz_head(path: Path) -> None:
    """Parse the first frame of an extxyz(.gz) file; ValueError saying what is wrong."""
    from ase.io import read as ase_read

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        first = fh.readline()
        while first and not first.strip():
            first = fh.readline()
        if not first:
            raise ValueError("the file is empty")
        try:
            n = int(first.split()[0])
        except (ValueError, IndexError):
            raise ValueError(
                f"the first line should be the atom count, found {first.strip()[:60]!r}"
            ) from None
        lines = [first]
        for _ in range(n + 1):
            line = fh.readline()
            if not line:
                raise ValueError(f"the first frame ends after {len(lines)} of {n + 2} lines")
            lines.append(line)
    ase_read(io.StringIO("".join(lines)), index=0, format="extxyz")


# --- streaming a data file ------------------------------------------------------------------------
class _Irregular(Exception):
    """The fast extxyz stream met something the strict reader (mlsim.data.read) must judge."""


def _extxyz_frames(path: Path) -> Iterator:
    """The frames of a clean extxyz(.gz) file as Structures, one at a time, parsed as mlsim.data does.

    Only the common, clean layout is streamed (count line, comment, atom lines, optional VEC
    lines); anything else raises _Irregular and the caller hands the file to mlsim.data.read,
    whose strict reader accepts it or names the frame and byte that is wrong.
    """
    from ase.io.extxyz import read_xyz

    from mlsim.data import Structure

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    n_frames = 0
    try:
        with opener(path, "rb") as fh:
            line = fh.readline()
            while line:
                head = line.strip()
                if not head:  # blank line between frames
                    line = fh.readline()
                    continue
                if not (head.isdigit() and line.endswith(b"\n")):
                    raise _Irregular
                parts = [line]
                for _ in range(int(head) + 1):  # comment line, then one line per atom
                    part = fh.readline()
                    if not part.endswith(b"\n"):
                        raise _Irregular
                    parts.append(part)
                line = fh.readline()
                for _ in range(3):  # ASE's VEC1..VEC3 lines (lattice vectors after the atoms)
                    if not (line.lstrip().startswith(b"VEC") and line.endswith(b"\n")):
                        break
                    parts.append(line)
                    line = fh.readline()
                try:
                    atoms = next(read_xyz(io.StringIO(b"".join(parts).decode("utf-8")), 0))
                    structure = Structure.from_atoms(atoms)
                except Exception:  # noqa: BLE001 - any parse failure: the strict reader explains it
                    raise _Irregular from None
                n_frames += 1
                yield structure
    except (OSError, EOFError, zlib.error):  # gzip damage, a cut-off member
        raise _Irregular from None
    if n_frames == 0:
        raise _Irregular


def _validated(path: Path, structures: Iterable) -> Iterator:
    """`structures` checked one by one as mlsim.data.read checks them (errors name the structure)."""
    from mlsim.data._validate import validate_structure

    for i, s in enumerate(structures):
        try:
            validate_structure(s, i)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        yield s


def _pack_file(key: str, path: Path, folder: Path) -> PackedStructures:
    """Stream the data file `path` (config key `key`) into packed files in `folder`; errors name the key."""
    from mlsim.data import read
    from mlsim.data._io import format_of

    fmt = format_of(path)
    try:
        try:
            if fmt == "extxyz":
                packed = PackedStructures.write(folder, _validated(path, _extxyz_frames(path)))
            elif fmt == "db":
                # Lazy rows, each parsed once here (read() would parse them once more to validate).
                packed = PackedStructures.write(
                    folder, _validated(path, read(path, validate=False))
                )
            else:
                # npz: memory-mapped and validated vectorised by read(); other formats: in memory.
                packed = PackedStructures.write(folder, read(path))
        except _Irregular:
            packed = PackedStructures.write(folder, read(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{key}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if len(packed) == 0:
        raise ValueError(f"{key}: {path} holds no structures")
    return packed


# --- what every rank trains on --------------------------------------------------------------------
@dataclass
class TrainingData:
    """The split pool, validation and test sets (packed, read on demand) and training-set statistics."""

    train: PackedStructures
    val: PackedStructures
    test: PackedStructures | None
    train_idx: np.ndarray  # pool indices of the training structures (sorted)
    val_idx: np.ndarray  # pool indices of the validation structures (empty with val_data)
    elements: list[int]
    self_energies: dict[int, float]
    energy_scale: float


@dataclass
class _Prepared:
    """What rank 0 learns while packing; shared with the other ranks (small)."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    elements: list[int]
    self_energies: dict[int, float]
    energy_scale: float


def _elements(packed: PackedStructures) -> set[int]:
    return {int(z) for z in np.flatnonzero(packed.element_counts)}


def _prepare(cfg: TrainConfig, folder: Path) -> _Prepared:
    """Rank 0: check and pack every data file, check labels and elements, split, fit the shifts."""
    from mlsim.models._shifts import fit_self_energies, force_rms

    # Every data file is checked before the (long) packing and training, not when first needed.
    check_data_files(cfg)
    if folder.exists():
        shutil.rmtree(folder)  # a killed run's leftovers; rebuilt below
    pool = _pack_file("data", cfg.path(cfg.data), folder / "data")
    if cfg.forces_weight > 0 and not pool.has_forces.all():
        raise ValueError(f"data: {cfg.data}: every structure needs forces when forces_weight > 0")
    pool.check_stress_cells(f"data: {cfg.data}")
    train_idx, val_idx = split_indices(len(pool), cfg)
    if cfg.stress_weight > 0 and not pool.has_stress[train_idx].any():
        raise ValueError(
            f"stress_weight = {cfg.stress_weight} but none of the {len(train_idx)} training "
            f"structures of {cfg.data} carries a stress label; stresses come with periodic "
            "structures labelled by a method that computes them (xTB, an ASE calculator): "
            "label periodic data, or set stress_weight: 0"
        )
    elements = sorted(_elements(pool))
    if cfg.val_data:
        val = _pack_file("val_data", cfg.path(cfg.val_data), folder / "val_data")
        if not val.has_forces.all():
            raise ValueError(f"val_data: {cfg.val_data}: every structure needs forces")
        val.check_stress_cells(f"val_data: {cfg.val_data}")
        unseen = sorted(_elements(val) - set(elements))
        if unseen:
            raise ValueError(
                f"validation structures contain elements {unseen} absent from {cfg.data}"
            )
    if cfg.test_data:
        test = _pack_file("test_data", cfg.path(cfg.test_data), folder / "test_data")
        test.check_stress_cells(f"test_data: {cfg.test_data}")
        unseen = sorted(_elements(test) - set(elements))
        if unseen:
            raise ValueError(
                f"test_data: {cfg.test_data} contains elements {unseen} absent from {cfg.data}"
            )
    # Streamed in training order, so the sums are those of a list of the training structures.
    shifts = fit_self_energies(pool.labels(train_idx), elements)  # type: ignore[arg-type]
    scale = force_rms(pool.labels(train_idx))  # type: ignore[arg-type]
    return _Prepared(train_idx, val_idx, elements, shifts, scale)


def prepare_data(cfg: TrainConfig, out: Path, rank: int, world: int) -> TrainingData:
    """Rank 0 checks and packs the data into OUTPUT/.packed (only it reads data files); all ranks open it."""
    folder = out / PACKED_DIR
    p = from_rank0(lambda: _prepare(cfg, folder), rank, world)
    try:
        pool = PackedStructures.open(folder / "data")
        val = PackedStructures.open(folder / "val_data") if cfg.val_data else pool.subset(p.val_idx)
        test = PackedStructures.open(folder / "test_data") if cfg.test_data else None
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"rank {rank} cannot read the data rank 0 packed into {folder} ({exc}); under a "
            "multi-node torchrun the output folder must be on a filesystem every node shares"
        ) from None
    return TrainingData(
        train=pool.subset(p.train_idx),
        val=val,
        test=test,
        train_idx=p.train_idx,
        val_idx=p.val_idx,
        elements=p.elements,
        self_energies=p.self_energies,
        energy_scale=p.energy_scale,
    )


def remove_packed(out: Path) -> None:
    """Delete OUTPUT/.packed (open files stay readable to ranks that still use them)."""
    shutil.rmtree(out / PACKED_DIR, ignore_errors=True)
