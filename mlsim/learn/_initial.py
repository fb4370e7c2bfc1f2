"""Initial samples of a run that starts from structures only: cheap MD, labelled afterwards.

Two samplers, both through `mlsim.data.sample` (one MD code path for `mlsim data sample` and
`mlsim learn`):
- `calculator`: ASE Langevin with GFN2-xTB ("xtb") or any ASE calculator ("module:Class");
- `forcefield`: OpenMM Langevin with a classical force field, far cheaper than xTB: OpenMM force
  field files for a PDB of standard residues ("amber14-all.xml" for peptides and proteins,
  "amber14/tip3pfb.xml" for water), or "gaff2" for any other small molecule given as SDF/MOL/MOL2
  or as a SMILES string (AmberTools GAFF2 types with AM1-BCC charges, cached per molecule).
The frames are bare geometries: the reference labels them, whatever the sampler computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlsim.data import Structure

__all__ = [
    "INITIAL_KEYS",
    "check_initial_samples",
    "initial_samples",
    "read_starts",
    "smiles_of",
]

INITIAL_KEYS = (
    "calculator",
    "forcefield",
    "temperatures",
    "frames",
    "every",
    "timestep_fs",
    "equilibration_fs",
    "friction_per_fs",
)
_LIGAND_SUFFIXES = (".sdf", ".sd", ".mol", ".mol2")
SMILES_PREFIX = "smiles:"


def smiles_of(structures: str) -> str | None:
    """The SMILES of a `structures: "smiles:..."` entry, else None."""
    s = str(structures).strip()
    return s[len(SMILES_PREFIX) :].strip() if s.lower().startswith(SMILES_PREFIX) else None


def embed_smiles(smiles: str, path: Path, seed: int) -> Path:
    """Write one 3D conformer of `smiles` (hydrogens added, MMFF-relaxed) to the SDF `path`.

    Kept once written, so a resumed run starts from the same geometry.
    """
    if path.is_file():
        return path
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from mlsim._fileio import write_text

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"structures: RDKit cannot parse the SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=int(seed) + 1) != 0:
        raise ValueError(f"structures: RDKit found no 3D conformer for the SMILES {smiles!r}")
    AllChem.MMFFOptimizeMolecule(mol)
    write_text(path, Chem.MolToMolBlock(mol) + "$$$$\n")
    return path


def read_starts(path: Path) -> list[Structure]:
    """Walker starts from a structure file; SDF/MOL/MOL2 through RDKit (one molecule)."""
    if path.suffix.lower() in _LIGAND_SUFFIXES:
        from mlsim.openmm._gaff import read_ligand

        lig = read_ligand(path)
        return [Structure(lig.numbers, lig.positions)]
    from mlsim.data import read

    return list(read(path))


def _forcefield(s: dict[str, Any]) -> list[str] | None:
    """The `forcefield` entry as a list of file names (["gaff2"] for GAFF2), or None."""
    ff = s.get("forcefield")
    if ff is None:
        return None
    files = [ff] if isinstance(ff, str) else ff
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise ValueError(
            "initial_samples.forcefield must be 'gaff2' or OpenMM force field files, e.g. "
            f"amber14-all.xml or [amber14-all.xml], got {ff!r}"
        )
    if "gaff2" in [f.lower() for f in files] and len(files) > 1:
        raise ValueError("initial_samples.forcefield: 'gaff2' stands alone (no other files)")
    return ["gaff2"] if files[0].lower() == "gaff2" else list(files)


def check_initial_samples(s: Any, structures: Path | None) -> None:
    """ValueError naming the key for a bad `initial_samples` mapping (before any work).

    With an OpenMM force field it also checks that the structures suit it: a PDB whose residues
    the force field covers, or for gaff2 a molecule AmberTools can type (and that AmberTools is
    installed). `structures` is None for a SMILES start, which only gaff2 can sample.
    """
    if not isinstance(s, dict):
        raise ValueError(f"initial_samples must be a mapping, got {s!r}")
    unknown = set(s) - set(INITIAL_KEYS)
    if unknown:
        raise ValueError(
            f"initial_samples: unknown keys {sorted(unknown)}; valid keys: {list(INITIAL_KEYS)}"
        )
    for key in ("frames", "every"):
        v = s.get(key, 20)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"initial_samples.{key} must be an integer >= 1, got {v!r}")
    for key in ("timestep_fs", "equilibration_fs", "friction_per_fs"):
        v = s.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"initial_samples.{key} must be a number > 0, got {v!r}")
    temps = s.get("temperatures", [300.0])
    temps = temps if isinstance(temps, list) else [temps]
    if not temps or any(
        isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0 for t in temps
    ):
        raise ValueError(
            f"initial_samples.temperatures must be positive kelvin values, got {s['temperatures']}"
        )
    ff = _forcefield(s)
    if ff is None:
        if structures is None:
            raise ValueError(
                "a SMILES start needs initial_samples.forcefield: gaff2 (or labelled initial_data)"
            )
        return
    if "calculator" in s:
        raise ValueError(
            "initial_samples: give either calculator (ASE MD) or forcefield (OpenMM MD), not both"
        )
    if ff == ["gaff2"]:
        from mlsim.openmm._gaff import AMBERTOOLS_PACKAGE, ambertools_available, read_ligand

        if not ambertools_available():
            raise ValueError(
                f"initial_samples.forcefield gaff2 needs AmberTools (pip install "
                f"{AMBERTOOLS_PACKAGE}, or mlsim's mlmm extra)"
            )
        if structures is not None:
            if structures.suffix.lower() not in (*_LIGAND_SUFFIXES, ".pdb"):
                raise ValueError(
                    f"initial_samples.forcefield gaff2 needs the molecule as SDF, MOL2 or PDB "
                    f"(bonds and charges), not {structures.name}"
                )
            read_ligand(structures)  # hydrogens, elements, one molecule: its errors name them
        return
    if structures is None or structures.suffix.lower() != ".pdb":
        raise ValueError(
            f"initial_samples.forcefield {ff} needs structures as a PDB file (residues and "
            "bonds for the force field's templates); for other molecules use forcefield: gaff2"
        )
    from openmm import app

    try:
        forcefield = app.ForceField(*ff)
    except (ValueError, OSError) as exc:
        raise ValueError(f"initial_samples.forcefield: cannot load {ff}: {exc}") from exc
    pdb = app.PDBFile(str(structures))
    try:
        forcefield.createSystem(pdb.topology)
    except ValueError as exc:
        raise ValueError(
            f"initial_samples.forcefield {ff} does not cover {structures.name}: {exc}"
        ) from exc


def _pdb_starts(path: Path, folder: Path) -> list[Path]:
    """One PDB per model (frame) of a PDB file; the file itself when it has one model."""
    from openmm import app

    from mlsim._fileio import atomic_write

    pdb = app.PDBFile(str(path))
    if pdb.getNumFrames() == 1:
        return [path]
    out = []
    for k in range(pdb.getNumFrames()):
        p = folder / f"start_{k:03d}.pdb"
        with atomic_write(p) as fh:
            app.PDBFile.writeFile(pdb.topology, pdb.getPositions(frame=k), fh)
        out.append(p)
    return out


def _gaff_start(path: Path, folder: Path, progress: bool) -> tuple[Path, str]:
    """(PDB of the molecule with its bonds, GAFF2 ForceField XML) for an SDF/MOL2/PDB molecule."""
    from openmm import app

    from mlsim._fileio import atomic_write
    from mlsim.openmm._gaff import parameterize_ligand, read_ligand

    lig = read_ligand(path)
    template = parameterize_ligand(lig, progress=progress)
    pdb = folder / "start_gaff2.pdb"
    with atomic_write(pdb) as fh:
        # Non-standard residue: PDBFile writes its bonds as CONECT records, read back by sample.
        app.PDBFile.writeFile(lig.topology(), lig.openmm_positions(), fh)
    return pdb, str(template.ffxml)


def initial_samples(
    s: dict[str, Any],
    structures: Path,
    starts: list[Structure],
    folder: Path,
    seed: int,
    progress: bool,
) -> list[Structure]:
    """Unlabelled frames from MD per `s` (the initial_samples mapping) for every start."""
    from mlsim.data import sample

    temps = s.get("temperatures", [300.0])
    temps = [float(t) for t in (temps if isinstance(temps, list) else [temps])]
    common: dict[str, Any] = {
        "every": int(s.get("every", 20)),
        "timestep_fs": float(s.get("timestep_fs", 0.5)),
        "progress": progress,
    }
    for key in ("equilibration_fs", "friction_per_fs"):
        if key in s:
            common[key] = float(s[key])
    n = int(s.get("frames", 20))
    ff = _forcefield(s)
    frames: list[Structure] = []
    if ff is None:
        from mlsim.data._backends import make_calculator

        for k, start in enumerate(starts):
            calc, _ = make_calculator(str(s.get("calculator", "xtb")))
            frames += list(sample(start, calc, temps, n, seed=seed * 1000 + k, **common))
        return frames
    if ff == ["gaff2"]:
        pdb, ffxml = _gaff_start(structures, folder, progress)
        pdbs, ff = [pdb], [ffxml]
    else:
        pdbs = _pdb_starts(structures, folder)
    for k, pdb in enumerate(pdbs):
        frames += list(
            sample(
                pdb, None, temps, n, seed=seed * 1000 + k, engine="openmm", forcefield=ff, **common
            )
        )
    return frames
