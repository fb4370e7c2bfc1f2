"""File formats: extended XYZ (plain or gzip), ASE database, MD17-style npz; anything else ASE reads.

Every reader returns a `Dataset`; every writer replaces its target atomically (temporary file in the
same folder, then `os.replace`), so a crash never leaves a half-written data set behind. The
append-only helpers at the bottom are what the resumable labeller builds on.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlsim._fileio import atomic_path
from mlsim.data._dataset import Dataset
from mlsim.data._extxyz import cut_torn_tail, read_extxyz, read_own_frames
from mlsim.data._structure import MAX_Z, Structure
from mlsim.units import energy_factor, length_factor

__all__ = [
    "append_frames",
    "format_of",
    "read",
    "read_frames_repairing",
    "write",
]

_EXTXYZ = {".extxyz", ".xyz"}


def format_of(path: str | Path) -> str:
    """Return 'extxyz', 'npz', 'db' or 'ase' from the file name (a trailing .gz is allowed for extxyz)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in _EXTXYZ:
        return "extxyz"
    if suffix == ".npz":
        return "npz"
    if suffix == ".db":
        return "db"
    return "ase"


def _is_gzip(path: str | Path) -> bool:
    return str(path).lower().endswith(".gz")


# --- reading ------------------------------------------------------------------------------------
def read(
    path: str | Path,
    *,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    validate: bool = True,
    require_energy: bool = False,
    require_forces: bool = False,
) -> Dataset:
    """Read a data file (format from its extension) into a Dataset, validating every structure.

    extxyz/ASE files are in ASE units. MD17-style npz files carry no units, so `energy_unit` and
    `length_unit` must be given (e.g. "kcal/mol", "angstrom") unless the file was written by mlsim,
    which records them. R and F of uncompressed npz files are memory-mapped, not loaded.
    A truncated, corrupt or empty file is an error naming the file and the frame (for extxyz also
    the byte where the frame starts), never a silently shorter data set.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    fmt = format_of(path)
    ase_units = (energy_unit is None or energy_factor(energy_unit) == 1.0) and (
        length_unit is None or length_factor(length_unit) == 1.0
    )
    if fmt != "npz" and not ase_units:
        raise ValueError(
            f"{path}: {fmt} files are read in ASE units (eV, Angstrom); unit options apply to npz only"
        )
    try:
        if fmt == "npz":
            ds = Dataset._from_source(_NpzSource(path, energy_unit, length_unit))
        elif fmt == "db":
            ds = Dataset._from_source(_DbSource(path))
        elif fmt == "extxyz":
            # Strict: a truncated, corrupt or empty file is an error naming the frame, never a
            # silently shorter data set (only the labeller reads its own output leniently).
            ds = Dataset(read_extxyz(path))
        else:
            from ase.io import read as ase_read

            frames = ase_read(path, index=":")
            ds = Dataset([_structure_of(a, path, k) for k, a in enumerate(frames)])
            if len(ds) == 0:
                raise ValueError(f"{path}: empty file: no frames")
    except Exception as exc:  # ASE, sqlite and zipfile raise many types; say which file and why
        if isinstance(exc, ValueError) and str(path) in str(exc):
            raise
        raise ValueError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if validate:
        try:
            ds.validate(require_energy=require_energy, require_forces=require_forces)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return ds


def _structure_of(atoms: Any, path: Path, index: int) -> Structure:
    """Structure.from_atoms, with the file and structure index in any error."""
    try:
        return Structure.from_atoms(atoms)
    except ValueError as exc:
        raise ValueError(f"{path}: structure {index}: {exc}") from None


class _DbSource:
    """Rows of an ASE database, fetched on access (a database can be larger than memory)."""

    def __init__(self, path: Path) -> None:
        from ase.db import connect

        self.path = path
        self._db = connect(str(path), type="db")
        self._ids = [row.id for row in self._db.select(columns=["id"])]

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, i: int) -> Structure:
        row = self._db.get(id=self._ids[i])
        s = _structure_of(row.toatoms(), self.path, i)
        info = dict(row.key_value_pairs)
        info.update(row.data.get("mlsim_info", {}) if row.get("data") else {})
        s.info = info
        return s


def _memmap_npz_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """Memory-map one array of an uncompressed npz in place; None when it is compressed."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        # Local file header: name and extra-field lengths sit at bytes 26-29 (they may differ from
        # the central directory's, so read them here rather than trusting ZipInfo).
        n_name = int.from_bytes(local[26:28], "little")
        n_extra = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + n_name + n_extra
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    if dtype.hasobject:
        return None
    return np.memmap(
        path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset
    )


def _check_atomic_numbers(path: Path, z: np.ndarray) -> None:
    """Refuse atomic numbers outside 1..118, naming the structure (2-D z) and atom."""
    bad = (z < 1) | (z > MAX_Z)
    if not bad.any():
        return
    pos = np.unravel_index(int(np.argmax(bad)), z.shape)
    where = (
        f"atom {pos[0]} (of every structure)"
        if z.ndim == 1
        else f"structure {pos[0]}, atom {pos[1]}"
    )
    raise ValueError(f"{path}: {where}: atomic number {int(z[pos])} is outside 1..{MAX_Z}")


_RMD17_KEYS = {"z": "nuclear_charges", "R": "coords", "E": "energies", "F": "forces"}


class _NpzSource:
    """MD17-style npz (z, R, E, F, optional cell/pbc/info); R and F memory-mapped when stored uncompressed."""

    def __init__(self, path: Path, energy_unit: str | None, length_unit: str | None) -> None:
        self.path = path
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            # MD17 names (z, R, E, F), or the revised-MD17 ones, mapped onto them.
            alias = _RMD17_KEYS if "z" not in keys and "nuclear_charges" in keys else {}
            k = {name: alias.get(name, name) for name in ("z", "R", "E", "F")}
            self._keys = k
            missing = {k["z"], k["R"]} - keys
            if missing:
                raise ValueError(
                    f"{path}: npz lacks key(s) {sorted(missing)} (need z, R; optional E, F; "
                    "or rMD17's nuclear_charges, coords, energies, forces)"
                )
            stored_e = str(f["energy_unit"]) if "energy_unit" in keys else None
            stored_l = str(f["length_unit"]) if "length_unit" in keys else None
            self.z = np.asarray(f[k["z"]]).astype(np.int64)
            _check_atomic_numbers(path, self.z)
            self.E = np.asarray(f[k["E"]], dtype=np.float64).reshape(-1) if k["E"] in keys else None
            self.cell = np.asarray(f["cell"], dtype=np.float64) if "cell" in keys else None
            self.pbc = np.asarray(f["pbc"], dtype=bool) if "pbc" in keys else None
            self.info = [json.loads(str(x)) for x in f["info"]] if "info" in keys else None
        for given, stored, kind in (
            (energy_unit, stored_e, "energy"),
            (length_unit, stored_l, "length"),
        ):
            if given is None and stored is None:
                raise ValueError(
                    f"{path}: npz files carry no units and this one records no {kind} unit; pass it "
                    f"(command line: --{kind}-unit; Python: {kind}_unit=), e.g. --energy-unit "
                    "kcal/mol --length-unit angstrom for MD17. `mlsim data convert IN.npz OUT.npz "
                    "--energy-unit ... --length-unit ...` writes a copy that records them."
                )
            if given is not None and stored is not None:
                conv = energy_factor if kind == "energy" else length_factor
                if abs(conv(given, stored) - 1.0) > 1e-12:
                    raise ValueError(
                        f"{path}: file records {kind} unit {stored!r} but {given!r} was passed"
                    )
        e_unit = energy_unit or stored_e
        l_unit = length_unit or stored_l
        self.e_fac = energy_factor(e_unit, "eV")
        self.l_fac = length_factor(l_unit, "angstrom")
        self.f_fac = self.e_fac / self.l_fac
        r_name, f_name = f"{k['R']}.npy", f"{k['F']}.npy"
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            self.R = _memmap_npz_member(path, zf, r_name)
            self.F = _memmap_npz_member(path, zf, f_name) if f_name in names else None
        if self.R is None or (f_name in names and self.F is None):
            with np.load(path, allow_pickle=False) as f:  # compressed: must decompress fully
                self.R = np.asarray(f[k["R"]]) if self.R is None else self.R
                if k["F"] in f.files and self.F is None:
                    self.F = np.asarray(f[k["F"]])
        if self.R.ndim != 3 or self.R.shape[2] != 3:
            raise ValueError(f"{path}: R must have shape (frames, atoms, 3), got {self.R.shape}")
        n_frames, n_atoms = self.R.shape[:2]
        if self.z.ndim == 1 and self.z.shape[0] != n_atoms:
            raise ValueError(
                f"{path}: z has {self.z.shape[0]} atoms but R has {n_atoms} (inconsistent atom counts)"
            )
        if self.z.ndim == 2 and self.z.shape != (n_frames, n_atoms):
            raise ValueError(
                f"{path}: z has shape {self.z.shape}, R {self.R.shape} (inconsistent atom counts)"
            )
        if self.E is not None and len(self.E) != n_frames:
            raise ValueError(f"{path}: E has {len(self.E)} entries for {n_frames} frames")
        if self.F is not None and self.F.shape != self.R.shape:
            raise ValueError(f"{path}: F has shape {self.F.shape} but R has {self.R.shape}")

    def __len__(self) -> int:
        return int(self.R.shape[0])

    def first_suspect(self, require_energy: bool, require_forces: bool, min_distance: float) -> int:
        """Index of the first frame a vectorised screen flags (-1 if none); the caller names the fault.

        The per-structure check costs ~0.1 ms a frame; MD17-sized files have 1e5-1e6 frames.
        """
        n_frames, n_atoms = self.R.shape[:2]
        if (require_energy and self.E is None) or (require_forces and self.F is None):
            return 0
        if self.cell is not None or self.z.ndim != 1:
            return 0  # periodic or mixed-composition npz: the generic loop checks every frame
        if ((self.z < 1) | (self.z > 118)).any():
            return 0
        bad = np.zeros(n_frames, dtype=bool)
        if self.E is not None:
            bad |= ~np.isfinite(self.E)
        chunk = max(1, 1_000_000 // max(1, n_atoms * n_atoms))
        iu = np.triu_indices(n_atoms, 1)
        for a in range(0, n_frames, chunk):
            r = np.asarray(self.R[a : a + chunk], dtype=np.float64) * self.l_fac
            b = ~np.isfinite(r).all(axis=(1, 2))
            if self.F is not None:
                b |= ~np.isfinite(np.asarray(self.F[a : a + chunk])).all(axis=(1, 2))
            if min_distance > 0 and n_atoms > 1:
                with np.errstate(invalid="ignore"):  # inf - inf in frames already flagged
                    d = r[:, iu[0]] - r[:, iu[1]]
                    b |= ((d * d).sum(axis=2) < min_distance**2).any(axis=1)
            bad[a : a + chunk] |= b
        hits = np.flatnonzero(bad)
        return int(hits[0]) if len(hits) else -1

    def get(self, i: int) -> Structure:
        z = self.z if self.z.ndim == 1 else self.z[i]
        cell = None
        pbc = np.zeros(3, dtype=bool)
        if self.cell is not None:
            c = self.cell if self.cell.ndim == 2 else self.cell[i]
            cell = c * self.l_fac
            if self.pbc is None:
                pbc = np.ones(3, dtype=bool)
            else:
                pbc = self.pbc if self.pbc.ndim == 1 else self.pbc[i]
        return Structure(
            numbers=z,
            positions=np.asarray(self.R[i], dtype=np.float64) * self.l_fac,
            cell=cell,
            pbc=pbc,
            energy=None if self.E is None else float(self.E[i]) * self.e_fac,
            forces=None if self.F is None else np.asarray(self.F[i], dtype=np.float64) * self.f_fac,
            info=dict(self.info[i]) if self.info is not None else {},
        )


# --- writing ------------------------------------------------------------------------------------
def _json_safe(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        out[k] = (
            v.tolist()
            if isinstance(v, np.ndarray)
            else (v.item() if isinstance(v, np.generic) else v)
        )
    return out


def write(
    path: str | Path,
    structures: Iterable[Structure],
    *,
    energy_unit: str = "eV",
    length_unit: str = "angstrom",
) -> None:
    """Write structures to `path` (format from extension), replacing it atomically.

    npz output is MD17-style (z, R, E, F) in the given units, which are recorded in the file; it needs
    every structure to have the same atom count. extxyz and db are always in ASE units.
    """
    path = Path(path)
    structures = list(structures)
    fmt = format_of(path)
    if fmt != "npz" and (energy_factor(energy_unit) != 1.0 or length_factor(length_unit) != 1.0):
        raise ValueError(
            f"{path}: {fmt} files are written in ASE units; unit options apply to npz only"
        )
    suffix = "".join(path.suffixes[-2:]) if _is_gzip(path) else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        if fmt == "extxyz":
            data = "".join(_frame_text(s) for s in structures).encode()
            if _is_gzip(path):
                data = gzip.compress(data, mtime=0)
            tmp.write_bytes(data)
        elif fmt == "npz":
            _write_npz(tmp, structures, energy_unit, length_unit)
        elif fmt == "db":
            from ase.db import connect

            tmp.unlink()  # ase.db wants to create the file itself
            with connect(str(tmp), type="db", append=False) as db:
                for s in structures:
                    db.write(s.to_atoms(), data={"mlsim_info": _json_safe(s.info)})
        else:
            from ase.io import write as ase_write

            ase_write(str(tmp), [s.to_atoms() for s in structures], format=None)


def _write_npz(
    tmp: Path, structures: Sequence[Structure], energy_unit: str, length_unit: str
) -> None:
    if not structures:
        raise ValueError("cannot write an empty data set to npz")
    n = len(structures[0])
    if any(len(s) != n for s in structures):
        raise ValueError(
            "npz (MD17-style) needs every structure to have the same atom count; use extxyz"
        )
    e_fac = energy_factor("eV", energy_unit)
    l_fac = length_factor("angstrom", length_unit)
    z_all = np.stack([s.numbers for s in structures])
    arrays: dict[str, np.ndarray] = {
        "z": z_all[0] if (z_all == z_all[0]).all() else z_all,
        "R": np.stack([s.positions for s in structures]) * l_fac,
        "energy_unit": np.array(energy_unit),
        "length_unit": np.array(length_unit),
        "info": np.array([json.dumps(_json_safe(s.info)) for s in structures]),
    }
    has_e = [s.energy is not None for s in structures]
    if all(has_e):
        arrays["E"] = np.array([s.energy for s in structures]) * e_fac
    elif any(has_e):
        raise ValueError("npz needs energies on all structures or none")
    has_f = [s.forces is not None for s in structures]
    if all(has_f):
        arrays["F"] = np.stack([s.forces for s in structures]) * (e_fac / l_fac)
    elif any(has_f):
        raise ValueError("npz needs forces on all structures or none")
    if any(s.cell is not None for s in structures):
        if not all(s.cell is not None for s in structures):
            raise ValueError("npz needs a cell on all structures or none")
        arrays["cell"] = np.stack([s.cell for s in structures]) * l_fac
        arrays["pbc"] = np.stack([s.pbc for s in structures])
    # Uncompressed on purpose: stored members can be memory-mapped by the reader.
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


# --- append-only files for the labeller ----------------------------------------------------------
def _frame_text(s: Structure) -> str:
    """Return one extxyz frame for `s` (labels included)."""
    from ase.io import write as ase_write

    buf = io.StringIO()
    ase_write(buf, s.to_atoms(), format="extxyz")
    return buf.getvalue()


def append_frames(path: str | Path, structures: Sequence[Structure]) -> None:
    """Append frames to an extxyz(.gz) file with one write + fsync, so a kill leaves at most a torn tail.

    Gzip files get one gzip member per call: concatenated members are a valid gzip stream.
    """
    path = Path(path)
    if format_of(path) != "extxyz":
        raise ValueError(f"{path}: appending needs an .extxyz or .extxyz.gz file")
    data = "".join(_frame_text(s) for s in structures).encode()
    if _is_gzip(path):
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_frames_repairing(path: str | Path, *, repair: bool = False) -> list[Structure]:
    """Read an append-only labeller file (`mlsim label` output), accepting only a torn last frame.

    Anything else that is not clean extxyz is an error and the file is left alone. With `repair`
    (only for the writer holding the file's lock) the torn frame is cut off, so later appends start
    on a frame boundary; that needs every complete frame to carry label_index (written by mlsim
    label). A reader must not repair: the tail may be a write in flight.
    """
    own = read_own_frames(path)
    if repair and own.cut is not None:
        for k, s in enumerate(own.structures):
            if "label_index" not in s.info:
                raise ValueError(
                    f"{path}: frame {k} has no label_index, so the file was not written by mlsim "
                    "label; its incomplete last frame is left as it is"
                )
        cut_torn_tail(path, own)
    return own.structures
