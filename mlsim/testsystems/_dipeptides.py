"""Capped dipeptides ACE-X-NME for a few amino acids X, with Amber14: a family of small molecules
on which transferable propagators are trained and tested.

Each structure is generated without network access: RDKit embeds ACE-X-NME from a SMILES string
(L-amino acid), the heavy atoms get the PDB names of OpenMM's residue templates, OpenMM's Modeller
adds hydrogens with template names, and Amber14 minimises the result. The PDBs are shipped in
``dipeptides/`` next to this module so that loading needs neither RDKit nor randomness;
:func:`build_capped_dipeptide_pdb` regenerates one. ACE-ALA-NME is the shipped alanine dipeptide.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_write
from mlsim.testsystems._alanine import ALANINE_PDB, MolecularSystem, amber14_system, pdb_system
from mlsim.units import positions_to_openmm

__all__ = [
    "DIPEPTIDE_DIR",
    "DIPEPTIDE_RESIDUES",
    "build_capped_dipeptide_pdb",
    "capped_dipeptide",
    "dipeptide_torsions",
    "set_torsions",
]

DIPEPTIDE_DIR = Path(__file__).with_name("dipeptides")

# Side chain of X as SMILES starting at CB (L configuration comes from the [C@@H] of CA in the
# template; ILE and THR also fix CB), and the PDB names of its heavy atoms in SMILES order.
_SIDE_CHAINS: dict[str, tuple[str, list[str]]] = {
    "GLY": ("", []),
    "ALA": ("C", ["CB"]),
    "VAL": ("C(C)C", ["CB", "CG1", "CG2"]),
    "ILE": ("[C@@H](C)CC", ["CB", "CG2", "CG1", "CD1"]),  # (2S,3S)
    "THR": ("[C@@H](C)O", ["CB", "CG2", "OG1"]),  # (2S,3R)
    "LEU": ("CC(C)C", ["CB", "CG", "CD1", "CD2"]),
    "SER": ("CO", ["CB", "OG"]),
    "CYS": ("CS", ["CB", "SG"]),
    "MET": ("CCSC", ["CB", "CG", "SD", "CE"]),
    "ASN": ("CC(N)=O", ["CB", "CG", "ND2", "OD1"]),
    "GLN": ("CCC(N)=O", ["CB", "CG", "CD", "NE2", "OE1"]),
    "PHE": ("Cc1ccccc1", ["CB", "CG", "CD1", "CE1", "CZ", "CE2", "CD2"]),
    "TYR": ("Cc1ccc(O)cc1", ["CB", "CG", "CD1", "CE1", "CZ", "OH", "CE2", "CD2"]),
}
DIPEPTIDE_RESIDUES = tuple(sorted(_SIDE_CHAINS))

# Side-chain dihedrals chi1, chi2 (heavy atoms; the usual IUPAC definitions) of each residue.
_CHI = {
    "VAL": [("N", "CA", "CB", "CG1")],
    "ILE": [("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")],
    "THR": [("N", "CA", "CB", "OG1"), ("CA", "CB", "OG1", "HG1")],
    "LEU": [("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")],
    "SER": [("N", "CA", "CB", "OG"), ("CA", "CB", "OG", "HG")],
    "CYS": [("N", "CA", "CB", "SG"), ("CA", "CB", "SG", "HG")],
    "MET": [("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "SD"), ("CB", "CG", "SD", "CE")],
    "ASN": [("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")],
    "GLN": [("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")],
    "PHE": [("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")],
    "TYR": [("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1"), ("CE1", "CZ", "OH", "HH")],
}


def _residue(name: str) -> str:
    """Upper-case three-letter code, checked against the supported residues."""
    key = name.strip().upper()
    if key not in _SIDE_CHAINS:
        raise ValueError(f"no capped dipeptide for {name!r}; supported: {list(DIPEPTIDE_RESIDUES)}")
    return key


def _pdb_path(residue: str) -> Path:
    """Shipped PDB of ACE-<residue>-NME."""
    if residue == "ALA":
        return ALANINE_PDB
    return DIPEPTIDE_DIR / f"ace_{residue.lower()}_nme.pdb"


def build_capped_dipeptide_pdb(
    residue: str, path: str | os.PathLike | None = None, seed: int = 7
) -> Path:
    """Build ACE-X-NME with RDKit + OpenMM (names from Amber14 templates), minimise, write a PDB."""
    from openmm import app, unit
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from mlsim.openmm._engine import make_context, minimize, positions_of

    res = _residue(residue)
    side, side_names = _SIDE_CHAINS[res]
    smiles = f"CC(=O)N[C@@H]({side})C(=O)NC" if side else "CC(=O)NCC(=O)NC"
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise RuntimeError(f"RDKit failed to embed ACE-{res}-NME")
    AllChem.MMFFOptimizeMolecule(mol)
    xyz = mol.GetConformer().GetPositions()  # Angstrom
    # Heavy atoms in SMILES order: ACE CH3 C O, X N CA <side chain> C O, NME N C.
    names = [("ACE", "CH3"), ("ACE", "C"), ("ACE", "O"), (res, "N"), (res, "CA")]
    names += [(res, n) for n in side_names] + [(res, "C"), (res, "O"), ("NME", "N"), ("NME", "C")]
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    if len(heavy) != len(names):
        raise RuntimeError(f"ACE-{res}-NME: {len(heavy)} heavy atoms, {len(names)} names")
    top = app.Topology()
    chain = top.addChain()
    residues = {r: top.addResidue(r, chain) for r in ("ACE", res, "NME")}
    atoms = {}
    for idx, (rn, an) in zip(heavy, names):
        el = app.Element.getByAtomicNumber(mol.GetAtomWithIdx(idx).GetAtomicNum())
        atoms[idx] = top.addAtom(an, el, residues[rn])
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        if i in atoms and j in atoms:
            top.addBond(atoms[i], atoms[j])
    ff = app.ForceField("amber14-all.xml")
    modeller = app.Modeller(top, positions_to_openmm(xyz[heavy]) * unit.nanometer)
    modeller.addHydrogens(ff)
    system = amber14_system(modeller.topology, "vacuum", None)
    ctx = make_context(system, None, "Reference")
    ctx.setPositions(modeller.positions)
    minimize(ctx, 1e-6, 0)
    # PDBFile.writeFile reads plain numbers as Angstrom.
    pos_a = positions_of(ctx.getState(getPositions=True))
    out = Path(path) if path is not None else _pdb_path(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as fh:
        app.PDBFile.writeFile(modeller.topology, pos_a, fh, keepIds=True)
    return out


def capped_dipeptide(
    residue: str, solvent: str = "vacuum", constraints: str | None = "HBonds"
) -> MolecularSystem:
    """ACE-X-NME with Amber14 in vacuum or OBC2 (constraints "HBonds" or None: flexible bonds)."""
    res = _residue(residue)
    return pdb_system(_pdb_path(res), solvent, constraints, f"build_capped_dipeptide_pdb({res!r})")


def dipeptide_torsions(topology) -> dict[str, tuple[int, int, int, int]]:
    """Atom indices of phi, psi and the side-chain chi1, chi2, ... of a capped dipeptide."""
    res = list(topology.residues())
    if len(res) != 3 or res[0].name != "ACE" or res[2].name != "NME":
        raise ValueError("dipeptide_torsions needs an ACE-X-NME topology")
    ace, mid, nme = ({a.name: a.index for a in r.atoms()} for r in res)
    out = {
        "phi": (ace["C"], mid["N"], mid["CA"], mid["C"]),
        "psi": (mid["N"], mid["CA"], mid["C"], nme["N"]),
    }
    for k, quad in enumerate(_CHI.get(res[1].name, []), start=1):
        if all(a in mid for a in quad):
            out[f"chi{k}"] = tuple(mid[a] for a in quad)
    return out


def set_torsions(
    topology, positions: np.ndarray, values_deg: dict[str, float], system=None
) -> np.ndarray:
    """Positions (Angstrom) of a capped dipeptide with its named torsions (phi, psi, chi1, ...,
    see dipeptide_torsions) set to `values_deg`: the part of the molecule beyond each torsion's
    bond is turned rigidly about it. With `system` (an OpenMM System), clashes are then relaxed
    by 200 steps of energy minimisation (which keeps the basin)."""
    from mlsim.testsystems._dihedrals import dihedral

    tors = dipeptide_torsions(topology)
    x = np.array(positions, dtype=np.float64)
    nb: dict[int, list[int]] = {a.index: [] for a in topology.atoms()}
    for b in topology.bonds():
        nb[b.atom1.index].append(b.atom2.index)
        nb[b.atom2.index].append(b.atom1.index)
    for name, target in values_deg.items():
        if name not in tors:
            raise ValueError(f"no torsion {name!r} in this dipeptide; it has {sorted(tors)}")
        a, b, c, d = tors[name]
        side, stack = {c}, [c]  # atoms on c's side of the b-c bond
        while stack:
            for n in nb[stack.pop()]:
                if n != b and n not in side:
                    side.add(n)
                    stack.append(n)
        if b in side:
            raise ValueError(f"torsion {name} is about a ring bond")
        delta = np.radians(target) - dihedral(x, (a, b, c, d))
        axis = (x[c] - x[b]) / np.linalg.norm(x[c] - x[b])
        idx = sorted(side - {c})
        v = x[idx] - x[c]
        cos, sin = np.cos(delta), np.sin(delta)
        x[idx] = x[c] + v * cos + np.cross(axis, v) * sin + np.outer(v @ axis, axis) * (1 - cos)
    if system is not None:
        from mlsim.openmm._engine import make_context, minimize, positions_of, set_positions

        ctx = make_context(system, None, "Reference")
        set_positions(ctx, x)
        minimize(ctx, 1e-3, 200)
        x = positions_of(ctx.getState(getPositions=True))
    return x
