"""Molecules and trajectories for propagators: structure files in, Angstrom arrays + bonds out.

Structures: a PDB (bonds from CONECT records and OpenMM's residue templates), an SDF/MOL file
(RDKit, with bond orders), or anything ASE reads (XYZ, extxyz, ...; bonds perceived from
covalent radii). Trajectories for training: npz (Angstrom `positions`, or nm `positions_nm` from
older mlsim scripts), DCD/XTC (mdtraj) and extxyz/XYZ, each with its frame spacing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsim.propagators._graph import (
    MolecularGraph,
    graph_from_rdkit,
    graph_from_topology,
    perceive_bonds,
)
from mlsim.units import FS_PER_PS, length_factor, positions_from_openmm

__all__ = ["Molecule", "load_molecule", "read_trajectory", "topology_from_graph"]


@dataclass
class Molecule:
    """A structure with its bond graph: positions (n, 3) Angstrom, OpenMM topology if known."""

    positions: np.ndarray
    graph: MolecularGraph
    topology: object | None = None  # openmm.app.Topology; PDB input and test systems
    name: str = "molecule"

    @property
    def numbers(self) -> np.ndarray:
        """Atomic numbers (n,)."""
        return np.asarray(self.graph.numbers, dtype=np.int64)

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return self.graph.n_atoms

    @classmethod
    def from_topology(cls, topology, positions: np.ndarray, name: str = "molecule") -> Molecule:
        """A Molecule from an OpenMM Topology (bonds from it) and positions (n, 3) in Angstrom."""
        x = np.asarray(positions, dtype=np.float64)
        graph = graph_from_topology(topology)
        if x.shape != (graph.n_atoms, 3) or not np.all(np.isfinite(x)):
            raise ValueError(f"positions must be finite with shape ({graph.n_atoms}, 3)")
        return cls(x, graph, topology, name)

    def openmm_topology(self):
        """The OpenMM Topology (built from the graph when the input had none)."""
        if self.topology is None:
            self.topology = topology_from_graph(self.graph)
        return self.topology


def topology_from_graph(graph: MolecularGraph, residue: str = "MOL"):
    """A one-residue OpenMM Topology with the graph's atoms (named by element) and bonds."""
    from openmm import app

    top = app.Topology()
    res = top.addResidue(residue, top.addChain())
    counts: dict[str, int] = {}
    atoms = []
    for z in graph.numbers:
        el = app.Element.getByAtomicNumber(z)
        counts[el.symbol] = counts.get(el.symbol, 0) + 1
        atoms.append(top.addAtom(f"{el.symbol}{counts[el.symbol]}", el, res))
    for a, b in graph.bonds:
        top.addBond(atoms[a], atoms[b])
    return top


def _connected_or_perceived(graph: MolecularGraph, positions: np.ndarray, what: str):
    """The graph if it is one molecule, else bonds perceived from the geometry when those are."""
    if len(graph.components()) == 1:
        return graph
    perceived = perceive_bonds(graph.numbers, positions)
    if len(perceived.components()) == 1:
        note = f"covalent radii ({what} gave {len(graph.components())} fragments)"
        return MolecularGraph(perceived.numbers, perceived.bonds, perceived.orders, note)
    return graph  # build_zmatrix names the fragments


def load_molecule(path: str | os.PathLike) -> Molecule:
    """Read a structure file and its bonds (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} not found")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".pdb", ".ent"):
        from openmm import app, unit

        try:
            pdb = app.PDBFile(str(path))
        except Exception as exc:  # OpenMM's PDB reader raises many types for bad files
            raise ValueError(f"cannot read {path} as PDB: {type(exc).__name__}: {exc}") from exc
        x = positions_from_openmm(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        graph = graph_from_topology(pdb.topology)
        what = "CONECT records and residue templates"
        checked = _connected_or_perceived(graph, x, what)
        top = pdb.topology if checked is graph else None
        return Molecule(x, checked, top, path.stem)
    if suffix in (".sdf", ".mol"):
        try:
            from rdkit import Chem
        except ImportError:
            pass  # read as plain coordinates below (bonds perceived)
        else:
            mol = Chem.MolFromMolFile(str(path), removeHs=False, sanitize=True)
            if mol is None:
                raise ValueError(f"RDKit cannot read {path}")
            if mol.GetNumConformers() == 0:
                raise ValueError(f"{path} has no coordinates")
            x = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
            return Molecule(x, graph_from_rdkit(mol), None, path.stem)
    from ase.io import read

    try:
        atoms = read(str(path), index=0)
    except Exception as exc:  # ASE raises many types for unknown or damaged files
        raise ValueError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    x = np.asarray(atoms.positions, dtype=np.float64)
    return Molecule(x, perceive_bonds(atoms.numbers, x), None, path.stem)


def _npz_trajectory(path: Path) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """(positions Angstrom, frame spacing ps or None, atomic numbers or None) of an npz file."""
    with np.load(path, allow_pickle=False) as d:
        if "positions" in d:
            x = np.asarray(d["positions"], dtype=np.float64)
        elif "positions_nm" in d:
            x = np.asarray(d["positions_nm"], dtype=np.float64) * length_factor("nm")
        else:
            raise ValueError(f"{path} has neither 'positions' (Angstrom) nor 'positions_nm'")
        dt = None
        for key in ("frame_interval_ps", "interval_ps"):
            if key in d:
                dt = float(d[key])
        if dt is None and "settings" in d:
            dt = json.loads(str(d["settings"])).get("interval_ps")
        numbers = np.asarray(d["numbers"]) if "numbers" in d else None
    return x, (None if dt is None else float(dt)), numbers


def read_trajectory(
    path: str | os.PathLike, molecule: Molecule, frame_interval_ps: float | None = None
) -> tuple[np.ndarray, float]:
    """Frames (T, n, 3) in Angstrom of `molecule` from a trajectory file, and their spacing in ps.

    frame_interval_ps overrides what the file says; a file that says nothing needs it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory {path} not found")
    suffix = path.suffix.lower()
    numbers = None
    if suffix == ".npz":
        x, dt, numbers = _npz_trajectory(path)
    elif suffix in (".dcd", ".xtc", ".trr", ".h5", ".nc"):
        import mdtraj

        from mlsim.analysis._timestep import file_frame_interval_ps

        top = mdtraj.Topology.from_openmm(molecule.openmm_topology())
        t = mdtraj.load(str(path), top=top)
        x = np.asarray(t.xyz, dtype=np.float64) * length_factor("nm")  # mdtraj works in nm
        dt, _ = file_frame_interval_ps(path)
        if dt is None and len(t) > 1 and suffix != ".dcd":
            spacing = np.diff(np.asarray(t.time, dtype=np.float64))
            if np.all(spacing > 0) and np.allclose(spacing, spacing[0], rtol=1e-3):
                dt = float(spacing[0])
    else:
        from mlsim.data import read

        ds = read(path)
        frames = list(ds)
        x = np.stack([np.asarray(s.positions, dtype=np.float64) for s in frames])
        numbers = np.asarray(frames[0].numbers)
        times = [s.info.get("time_fs") for s in frames]
        dt = None
        if len(frames) > 1 and all(t is not None for t in times):
            d = np.diff(np.asarray(times, dtype=np.float64)) / FS_PER_PS
            if np.all(d > 0) and np.allclose(d, d[0], rtol=1e-3):
                dt = float(d[0])
    if x.ndim != 3 or x.shape[1:] != (molecule.n_atoms, 3):
        raise ValueError(
            f"{path}: frames have shape {x.shape[1:]}, the structure has {molecule.n_atoms} atoms"
        )
    if numbers is not None and list(np.asarray(numbers).ravel()) != list(molecule.numbers):
        raise ValueError(f"{path}: the elements differ from the structure's (atom order?)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: frames contain NaN or inf")
    if frame_interval_ps is not None:
        dt = float(frame_interval_ps)
    if dt is None:
        raise ValueError(
            f"cannot tell the time between frames of {path}; pass --frame-interval-ps "
            "(frame_interval_ps)"
        )
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"{path}: frame spacing must be positive, got {dt} ps")
    return x, dt
