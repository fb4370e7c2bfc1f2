"""Capped alanine dipeptide (ACE-ALA-NME) with the Amber14 force field, built by mlsim itself.

The structure is generated from a SMILES string with RDKit (ETKDG embedding, L-alanine), given the
PDB v3 atom names that OpenMM's residue templates expect, and energy-minimised with Amber14. The
result is shipped as ``alanine_dipeptide.pdb`` next to this module so that loading needs neither
RDKit nor randomness; :func:`build_alanine_dipeptide_pdb` regenerates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_write

__all__ = [
    "ALANINE_PDB",
    "MolecularSystem",
    "alanine_dipeptide",
    "amber14_system",
    "build_alanine_dipeptide_pdb",
]

ALANINE_PDB = Path(__file__).with_name("alanine_dipeptide.pdb")

# L-alanine: N[C@@H](C)C(=O)... ; heavy atoms 0..9 in SMILES order.
_SMILES = "CC(=O)N[C@@H](C)C(=O)NC"
# (residue, name) of each heavy atom in SMILES order, and the names of the hydrogens it carries.
_HEAVY = [
    ("ACE", "CH3", ["H1", "H2", "H3"]),
    ("ACE", "C", []),
    ("ACE", "O", []),
    ("ALA", "N", ["H"]),
    ("ALA", "CA", ["HA"]),
    ("ALA", "CB", ["HB1", "HB2", "HB3"]),
    ("ALA", "C", []),
    ("ALA", "O", []),
    ("NME", "N", ["H"]),
    ("NME", "C", ["H1", "H2", "H3"]),
]
_RES_ORDER = ["ACE", "ALA", "NME"]
_SOLVENTS = ("vacuum", "obc2")
_CONSTRAINTS = ("none", "hbonds")


@dataclass
class MolecularSystem:
    """An OpenMM topology + system + positions (nm); unpacks as ``top, system, pos = ...``."""

    topology: object  # openmm.app.Topology
    system: object  # openmm.System
    positions_nm: np.ndarray  # (n_atoms, 3) float64, nm
    solvent: str
    constraints: str

    def __iter__(self):
        """Allow ``topology, system, positions = alanine_dipeptide()``."""
        return iter((self.topology, self.system, self.positions_nm))

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.positions_nm.shape[0])


def _forcefield(solvent: str):
    """Return the Amber14 ForceField, with OBC2 implicit solvent if asked."""
    from openmm import app

    if solvent not in _SOLVENTS:
        raise ValueError(f"unknown solvent {solvent!r}; choose one of {_SOLVENTS}")
    files = ["amber14-all.xml"] + (["implicit/obc2.xml"] if solvent == "obc2" else [])
    return app.ForceField(*files)


def amber14_system(topology, solvent: str = "vacuum", constraints: str | None = "HBonds"):
    """Create an Amber14 OpenMM System without cutoffs for a small molecule in vacuum or OBC2."""
    from openmm import app

    key = "none" if constraints is None else str(constraints).lower()
    if key not in _CONSTRAINTS:
        raise ValueError(f"unknown constraints {constraints!r}; choose 'HBonds' or None")
    ff = _forcefield(solvent)
    return ff.createSystem(
        topology,
        nonbondedMethod=app.NoCutoff,
        constraints=app.HBonds if key == "hbonds" else None,
        rigidWater=False,
    )


def build_alanine_dipeptide_pdb(path: str | os.PathLike = ALANINE_PDB, seed: int = 7) -> Path:
    """Build ACE-ALA-NME with RDKit, name atoms for OpenMM, minimise with Amber14, write a PDB."""
    import openmm
    from openmm import app, unit
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(_SMILES))
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise RuntimeError("RDKit failed to embed alanine dipeptide")
    AllChem.MMFFOptimizeMolecule(mol)
    xyz = mol.GetConformer().GetPositions() * 0.1  # Angstrom -> nm (RDKit works in Angstrom)

    # Order atoms residue by residue: each heavy atom followed by its hydrogens.
    top = app.Topology()
    chain = top.addChain()
    residues = {name: top.addResidue(name, chain) for name in _RES_ORDER}
    order: list[int] = []
    omm_atoms: dict[int, object] = {}
    for res_name in _RES_ORDER:
        for idx, (rn, name, hnames) in enumerate(_HEAVY):
            if rn != res_name:
                continue
            atom = mol.GetAtomWithIdx(idx)
            el = app.Element.getBySymbol(atom.GetSymbol())
            omm_atoms[idx] = top.addAtom(name, el, residues[rn])
            order.append(idx)
            hs = [n.GetIdx() for n in atom.GetNeighbors() if n.GetSymbol() == "H"]
            if len(hs) != len(hnames):
                raise RuntimeError(f"unexpected hydrogen count on {rn}:{name}")
            for h, hname in zip(hs, hnames):
                omm_atoms[h] = top.addAtom(hname, app.Element.getBySymbol("H"), residues[rn])
                order.append(h)
    for b in mol.GetBonds():
        top.addBond(omm_atoms[b.GetBeginAtomIdx()], omm_atoms[b.GetEndAtomIdx()])
    pos = xyz[order]

    system = amber14_system(top, "vacuum", "none")
    integ = openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 0)
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)

    path = Path(path)
    with atomic_write(path) as fh:
        app.PDBFile.writeFile(top, pos * unit.nanometer, fh, keepIds=True)
    return path


def alanine_dipeptide(
    solvent: str = "vacuum", constraints: str | None = "HBonds"
) -> MolecularSystem:
    """Return capped alanine dipeptide (22 atoms) with Amber14 in vacuum or OBC2 implicit solvent.

    ``constraints`` is "HBonds" (2 fs MD) or None (all bonds flexible: the density the learned
    propagator's Metropolis-Hastings test targets, see mlsim.propagators).
    """
    from openmm import app, unit

    if not ALANINE_PDB.exists():
        raise FileNotFoundError(f"{ALANINE_PDB} missing; run build_alanine_dipeptide_pdb()")
    pdb = app.PDBFile(str(ALANINE_PDB))
    system = amber14_system(pdb.topology, solvent, constraints)
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    key = "none" if constraints is None else str(constraints).lower()
    return MolecularSystem(pdb.topology, system, pos, solvent, key)
