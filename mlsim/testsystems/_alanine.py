"""Capped alanine dipeptide (ACE-ALA-NME) with the Amber14 force field, built by mlsim itself.

The structure is generated from a SMILES string with RDKit (ETKDG embedding, L-alanine), given the
PDB v3 atom names that OpenMM's residue templates expect, and energy-minimised with Amber14. The
result is shipped as ``alanine_dipeptide.pdb`` next to this module so that loading needs neither
RDKit nor randomness; :func:`build_alanine_dipeptide_pdb` regenerates it.

This module also keeps the hand-written Z-matrix of alanine dipeptide (:func:`alanine_zmatrix`,
:data:`ALANINE_SOFT_ROWS`) that propagators trained before the automatic builder
(:func:`mlsim.propagators.build_zmatrix`) store; the library itself holds no molecule tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_write
from mlsim.units import positions_from_openmm, positions_to_openmm

__all__ = [
    "ALANINE_PDB",
    "ALANINE_SOFT_ROWS",
    "MolecularSystem",
    "alanine_dipeptide",
    "alanine_zmatrix",
    "amber14_system",
    "build_alanine_dipeptide_pdb",
    "pdb_system",
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
    """An OpenMM topology + system + positions in Angstrom (the OpenMM objects keep their nm)."""

    topology: object  # openmm.app.Topology
    system: object  # openmm.System
    positions: np.ndarray  # (n_atoms, 3) float64, Angstrom
    solvent: str
    constraints: str

    def __iter__(self):
        """Allow ``topology, system, positions_nm = alanine_dipeptide()`` (OpenMM's units)."""
        return iter((self.topology, self.system, self.positions_nm))

    @property
    def positions_nm(self) -> np.ndarray:
        """Positions in nm, for handing to OpenMM (Context.setPositions) directly."""
        return positions_to_openmm(self.positions)

    @property
    def numbers(self) -> np.ndarray:
        """Atomic numbers (n_atoms,)."""
        return np.array([a.element.atomic_number for a in self.topology.atoms()], dtype=np.int64)

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.positions.shape[0])


def _forcefield(solvent: str):
    """Return the Amber14 ForceField, with OBC2 implicit solvent if asked."""
    from openmm import app

    if solvent not in _SOLVENTS:
        raise ValueError(f"unknown solvent {solvent!r}; choose one of {_SOLVENTS}")
    files = ["amber14-all.xml"] + (["implicit/obc2.xml"] if solvent == "obc2" else [])
    return app.ForceField(*files)


def amber14_system(topology, solvent: str = "vacuum", constraints: str | None = "HBonds"):
    """Create an Amber14 OpenMM System without cutoffs for a small molecule in vacuum or OBC2.

    Raises ValueError naming the residue when Amber14 has no template for it (Amber14 covers
    proteins and nucleic acids; other molecules need another target).
    """
    from openmm import app

    key = "none" if constraints is None else str(constraints).lower()
    if key not in _CONSTRAINTS:
        raise ValueError(f"unknown constraints {constraints!r}; choose 'HBonds' or None")
    ff = _forcefield(solvent)
    try:
        return ff.createSystem(
            topology,
            nonbondedMethod=app.NoCutoff,
            constraints=app.HBonds if key == "hbonds" else None,
            rigidWater=False,
        )
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"Amber14 cannot parameterise this structure ({first}); it covers standard protein "
            "and nucleic-acid residues only"
        ) from exc


def build_alanine_dipeptide_pdb(path: str | os.PathLike = ALANINE_PDB, seed: int = 7) -> Path:
    """Build ACE-ALA-NME with RDKit, name atoms for OpenMM, minimise with Amber14, write a PDB."""
    from openmm import app
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from mlsim.openmm._engine import make_context, minimize, positions_of, set_positions

    mol = Chem.AddHs(Chem.MolFromSmiles(_SMILES))
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise RuntimeError("RDKit failed to embed alanine dipeptide")
    AllChem.MMFFOptimizeMolecule(mol)
    xyz = mol.GetConformer().GetPositions()  # Angstrom (RDKit works in Angstrom)

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
    ctx = make_context(system, None, "Reference")
    set_positions(ctx, pos)
    minimize(ctx, 1e-6, 0)
    # PDBFile.writeFile reads plain numbers as Angstrom.
    pos_a = positions_of(ctx.getState(getPositions=True))

    path = Path(path)
    with atomic_write(path) as fh:
        app.PDBFile.writeFile(top, pos_a, fh, keepIds=True)
    return path


def alanine_dipeptide(
    solvent: str = "vacuum", constraints: str | None = "HBonds"
) -> MolecularSystem:
    """Return capped alanine dipeptide (22 atoms) with Amber14 in vacuum or OBC2 implicit solvent.

    ``constraints`` is "HBonds" (2 fs MD) or None (all bonds flexible: the density the learned
    propagator's Metropolis-Hastings test targets, see mlsim.propagators).
    """
    return pdb_system(ALANINE_PDB, solvent, constraints, "build_alanine_dipeptide_pdb()")


def pdb_system(
    path: Path, solvent: str, constraints: str | None, build_call: str
) -> MolecularSystem:
    """Amber14 MolecularSystem of a built PDB; if it is missing, say which `build_call` makes it."""
    from openmm import app, unit

    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run {build_call}")
    pdb = app.PDBFile(str(path))
    system = amber14_system(pdb.topology, solvent, constraints)
    pos = positions_from_openmm(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    key = "none" if constraints is None else str(constraints).lower()
    return MolecularSystem(pdb.topology, system, pos, solvent, key)


def alanine_zmatrix(topology):
    """Hand-written Z-matrix of capped alanine dipeptide from PDB atom names (ACE-ALA-NME).

    Roots are ALA CA, N, C; phi and psi are the dihedral coordinates of ACE C and NME N, so the
    slow backbone motion is two flow coordinates; methyl rotors are one dihedral each. New code
    builds the Z-matrix from the bond graph instead (mlsim.propagators.build_zmatrix).
    """
    from mlsim.propagators._internal import ZMatrix

    res = list(topology.residues())
    if [r.name for r in res] != ["ACE", "ALA", "NME"]:
        raise ValueError("alanine_zmatrix needs an ACE-ALA-NME topology")
    ace, ala, nme = ({a.name: a.index for a in r.atoms()} for r in res)
    # Methyl hydrogens are named H1-3 or HH31-33 depending on the PDB flavour; take them sorted.
    ace_h = [ace[k] for k in sorted(ace) if k.startswith("H")]
    nme_h = [nme[k] for k in sorted(nme) if k.startswith("H") and k != "H"]
    if len(ace_h) != 3 or len(nme_h) != 3:
        raise ValueError("expected three methyl hydrogens on ACE and on NME")
    ca, n, c = ala["CA"], ala["N"], ala["C"]
    rows = [
        (ace["C"], n, ca, c),  # phi
        (nme["N"], c, ca, n),  # psi
        (ala["CB"], ca, n, c),
        (ala["HA"], ca, n, c),
        (ala["O"], c, nme["N"], ca),
        (ala["H"], n, ca, ace["C"]),
        (ace["CH3"], ace["C"], n, ca),  # omega (ACE)
        (ace["O"], ace["C"], n, ace["CH3"]),
        (ace_h[0], ace["CH3"], ace["C"], n),  # methyl rotor
        (ace_h[1], ace["CH3"], ace["C"], ace_h[0]),
        (ace_h[2], ace["CH3"], ace["C"], ace_h[0]),
        (ala["HB1"], ala["CB"], ca, n),  # methyl rotor
        (ala["HB2"], ala["CB"], ca, ala["HB1"]),
        (ala["HB3"], ala["CB"], ca, ala["HB1"]),
        (nme["C"], nme["N"], c, ca),  # omega (NME)
        (nme["H"], nme["N"], c, nme["C"]),
        (nme_h[0], nme["C"], nme["N"], c),  # methyl rotor
        (nme_h[1], nme["C"], nme["N"], nme_h[0]),
        (nme_h[2], nme["C"], nme["N"], nme_h[0]),
    ]
    return ZMatrix((ca, n, c), rows)


# Rows of alanine_zmatrix whose dihedrals are the slow/soft coordinates: phi, psi, three methyls.
ALANINE_SOFT_ROWS = [0, 1, 8, 11, 16]
