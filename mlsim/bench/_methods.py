"""Energy+force evaluators for every method the benchmark compares, behind one small interface.

Each factory returns a `Method` whose `evaluate(structure)` gives (energy eV, forces eV/A) for one
molecule. Heavy back-ends (RDKit, tblite, pyscf, the mlsim model) are imported inside the factory,
so a missing one costs only that method, reported as skipped with the ImportError's text.
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


def openmm_system_method(system: Any, numbers: np.ndarray, key: str, label: str) -> Method:
    """Wrap an existing OpenMM System (e.g. Amber14 alanine dipeptide) as a Method."""
    import openmm

    platform = openmm.Platform.getPlatformByName("Reference")  # double precision forces
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), platform)
    numbers = np.asarray(numbers).copy()

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Energy and forces from OpenMM, converted from kJ/mol and kJ/mol/nm."""
        if not np.array_equal(s.numbers, numbers):
            raise ValueError("structure's atoms differ from the force-field template's")
        _require_molecule(s)
        context.setPositions(units.positions_to_openmm(s.positions))
        state = context.getState(getEnergy=True, getForces=True)
        e = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
        f = state.getForces(asNumpy=True).value_in_unit(
            openmm.unit.kilojoule_per_mole / openmm.unit.nanometer
        )
        return float(units.energy_from_openmm(e)), units.forces_from_openmm(f)

    return Method(key, label, evaluate)


# --- GFN2-xTB ------------------------------------------------------------------------------------
def xtb_method(method: str = "GFN2-xTB") -> Method:
    """Return GFN2-xTB through tblite's ASE calculator (eV, eV/A already)."""
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise Skipped(f"tblite not importable: {exc}") from exc

    calc = TBLite(method=method, verbosity=0)

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Run one tblite single point at s's geometry."""
        _require_molecule(s)
        atoms = s.to_atoms()
        calc.reset()  # ASE would return cached results for an unchanged geometry (and time nothing)
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        return float(energy), np.asarray(atoms.get_forces(), dtype=float)

    return Method("xtb", f"{method} (tblite)", evaluate)


# --- DFT (pyscf) ---------------------------------------------------------------------------------
def dft_method(xc: str = "B3LYP", basis: str = "6-31G*", charge: int = 0) -> Method:
    """Return pyscf RKS/UKS with density fitting: energy Hartree and gradient Hartree/Bohr converted."""
    import os

    try:
        from pyscf import dft, gto, lib
    except ImportError as exc:
        raise Skipped(f"pyscf not importable: {exc}") from exc
    lib.num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # same thread count as the rest
    from ase.data import chemical_symbols

    e_fac = units.energy_factor("hartree")
    f_fac = units.force_factor("hartree", "bohr")

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Run an SCF from the default guess plus analytic gradients (the cost of one label)."""
        _require_molecule(s)
        atom = [(chemical_symbols[int(z)], tuple(p)) for z, p in zip(s.numbers, s.positions)]
        n_elec = int(s.numbers.sum()) - charge
        mol = gto.M(
            atom=atom, basis=basis, unit="Angstrom", charge=charge, spin=n_elec % 2, verbose=0
        )
        mf = (dft.RKS(mol) if n_elec % 2 == 0 else dft.UKS(mol)).density_fit()
        mf.xc = xc
        energy = mf.kernel()
        if not mf.converged:
            raise RuntimeError("DFT SCF did not converge")
        grad = mf.nuc_grad_method().kernel()
        return float(energy) * e_fac, -np.asarray(grad, dtype=float) * f_fac

    return Method("dft", f"{xc}/{basis} DF (pyscf)", evaluate)


# --- the mlsim model -----------------------------------------------------------------------------
def mlsim_method(path: str | Path) -> Method:
    """Return a trained mlsim model (mlsim.models.load_model + compute_properties) as a Method."""
    path = Path(path)
    if not path.exists():
        raise Skipped(f"model file {path} not found (train one with `mlsim train`)")
    try:
        import torch

        from mlsim.models import compute_properties, load_model
    except ImportError as exc:
        raise Skipped(f"mlsim.models API not available yet: {exc}") from exc

    model = load_model(path)
    model.eval()

    def evaluate(s: Structure) -> tuple[float, np.ndarray]:
        """Evaluate the model on one structure (a batch of one, as in an MD step)."""
        _require_molecule(s)
        n = len(s)
        out = compute_properties(
            model,
            torch.as_tensor(s.numbers, dtype=torch.long),
            torch.as_tensor(s.positions, dtype=torch.float64),
            torch.zeros((1, 3, 3), dtype=torch.float64),  # isolated molecule: no cell
            torch.zeros((1, 3), dtype=torch.bool),
            torch.zeros(n, dtype=torch.long),
            forces=True,
        )
        energy = out["energy"]
        forces = out["forces"]
        energy = (
            float(energy.detach().reshape(-1)[0]) if hasattr(energy, "detach") else float(energy)
        )
        forces = forces.detach().cpu().numpy() if hasattr(forces, "detach") else np.asarray(forces)
        return energy, np.asarray(forces, dtype=float).reshape(n, 3)

    return Method("mlsim", f"mlsim model ({path.name})", evaluate, meta={"path": str(path)})
