"""Molecular graphs (atoms + bonds) for internal coordinates, from any source of bonds.

Three sources: an OpenMM Topology (PDB CONECT records / residue templates), an RDKit molecule
(with explicit hydrogens), or bonds perceived from a structure by covalent radii. Bond orders are
kept when the source knows them; they only refine which torsions count as rotatable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MolecularGraph",
    "graph_from_rdkit",
    "graph_from_topology",
    "perceive_bonds",
]

# Usual valence of neutral main-group atoms: an atom with fewer bonds than this is unsaturated
# (part of a double/triple/aromatic bond) when the source gives no bond orders.
_VALENCE = {1: 1, 5: 3, 6: 4, 7: 3, 8: 2, 9: 1, 14: 4, 15: 3, 16: 2, 17: 1, 35: 1, 53: 1}


@dataclass(frozen=True)
class MolecularGraph:
    """Atoms (atomic numbers) and bonds (i < j, sorted); `orders[b]` is None when unknown.

    Orders: 1, 2, 3, or 1.5 for aromatic. `source` says where the bonds came from.
    """

    numbers: tuple[int, ...]
    bonds: tuple[tuple[int, int], ...]
    orders: tuple[float | None, ...] = ()
    source: str = "given"
    _index: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        """Validate atoms and bonds; normalise to sorted unique pairs."""
        numbers = tuple(int(z) for z in self.numbers)
        n = len(numbers)
        if any(z < 1 or z > 118 for z in numbers):
            raise ValueError("atomic numbers must be in 1..118")
        orders = tuple(self.orders) if self.orders else (None,) * len(self.bonds)
        if len(orders) != len(self.bonds):
            raise ValueError("orders must give one entry per bond")
        seen: dict[tuple[int, int], float | None] = {}
        for (a, b), o in zip(self.bonds, orders):
            a, b = int(a), int(b)
            if a == b or not (0 <= a < n and 0 <= b < n):
                raise ValueError(f"bad bond ({a}, {b}) for {n} atoms")
            seen[(min(a, b), max(a, b))] = None if o is None else float(o)
        keys = sorted(seen)
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "bonds", tuple(keys))
        object.__setattr__(self, "orders", tuple(seen[k] for k in keys))
        object.__setattr__(self, "_index", {k: i for i, k in enumerate(keys)})

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return len(self.numbers)

    @property
    def formula(self) -> str:
        """Hill formula (C, H first, then alphabetical), e.g. C6H12."""
        from ase.data import chemical_symbols

        counts: dict[str, int] = {}
        for z in self.numbers:
            counts[chemical_symbols[z]] = counts.get(chemical_symbols[z], 0) + 1
        keys = [k for k in ("C", "H") if k in counts] if "C" in counts else []
        keys += sorted(k for k in counts if k not in keys)
        return "".join(f"{k}{counts[k] if counts[k] > 1 else ''}" for k in keys)

    def neighbors(self) -> list[list[int]]:
        """Sorted neighbour lists, one per atom."""
        out: list[list[int]] = [[] for _ in self.numbers]
        for a, b in self.bonds:
            out[a].append(b)
            out[b].append(a)
        return [sorted(v) for v in out]

    def degree(self) -> np.ndarray:
        """Number of bonds of each atom."""
        d = np.zeros(self.n_atoms, dtype=np.int64)
        for a, b in self.bonds:
            d[a] += 1
            d[b] += 1
        return d

    def has_bond(self, a: int, b: int) -> bool:
        """Whether atoms a and b are bonded."""
        return (min(a, b), max(a, b)) in self._index

    def order(self, a: int, b: int) -> float | None:
        """Bond order of a-b (None when unknown); KeyError when they are not bonded."""
        return self.orders[self._index[(min(a, b), max(a, b))]]

    def components(self) -> list[list[int]]:
        """Connected components (lists of atom indices), largest first."""
        nb = self.neighbors()
        seen = [False] * self.n_atoms
        comps = []
        for s in range(self.n_atoms):
            if seen[s]:
                continue
            seen[s] = True
            comp, queue = [], deque([s])
            while queue:
                a = queue.popleft()
                comp.append(a)
                for b in nb[a]:
                    if not seen[b]:
                        seen[b] = True
                        queue.append(b)
            comps.append(sorted(comp))
        return sorted(comps, key=lambda c: (-len(c), c[0]))

    def ring_bonds(self) -> set[tuple[int, int]]:
        """Bonds that lie on a ring (every bond that is not a bridge of the graph)."""
        nb = self.neighbors()
        n = self.n_atoms
        disc, low = [-1] * n, [0] * n
        bridges: set[tuple[int, int]] = set()
        t = 0
        for root in range(n):
            if disc[root] >= 0:
                continue
            # Iterative Tarjan bridge search (recursion would overflow on long chains).
            disc[root] = low[root] = t
            t += 1
            stack = [(root, -1, iter(nb[root]))]
            while stack:
                a, parent, it = stack[-1]
                advanced = False
                for b in it:
                    if b == parent:
                        continue
                    if disc[b] < 0:
                        disc[b] = low[b] = t
                        t += 1
                        stack.append((b, a, iter(nb[b])))
                        advanced = True
                        break
                    low[a] = min(low[a], disc[b])
                if advanced:
                    continue
                stack.pop()
                if parent >= 0:
                    low[parent] = min(low[parent], low[a])
                    if low[a] > disc[parent]:
                        bridges.add((min(a, parent), max(a, parent)))
        return set(self.bonds) - bridges

    def unsaturated(self) -> np.ndarray:
        """Atoms with fewer bonds than their usual valence (sp2/sp), from the graph alone."""
        deg = self.degree()
        return np.array(
            [deg[a] < _VALENCE.get(z, 0) for a, z in enumerate(self.numbers)], dtype=bool
        )


def graph_from_topology(topology) -> MolecularGraph:
    """Graph of an OpenMM Topology (bonds from PDB CONECT records and residue templates)."""
    numbers = []
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name}) has no element")
        numbers.append(atom.element.atomic_number)
    bonds, orders = [], []
    for bond in topology.bonds():
        bonds.append((bond.atom1.index, bond.atom2.index))
        orders.append(_openmm_order(bond))
    return MolecularGraph(tuple(numbers), tuple(bonds), tuple(orders), "OpenMM topology")


def _openmm_order(bond) -> float | None:
    """Bond order of an OpenMM Bond from its `order` or `type` (None when neither is set)."""
    if getattr(bond, "order", None):
        return float(bond.order)
    name = type(getattr(bond, "type", None)).__name__
    return {"Single": 1.0, "Double": 2.0, "Triple": 3.0, "Aromatic": 1.5, "Amide": 1.0}.get(name)


def graph_from_rdkit(mol) -> MolecularGraph:
    """Graph of an RDKit molecule, with bond orders; hydrogens must be explicit atoms."""
    numbers = tuple(a.GetAtomicNum() for a in mol.GetAtoms())
    if any(a.GetTotalNumHs() > 0 for a in mol.GetAtoms()):
        raise ValueError("the RDKit molecule has implicit hydrogens; call Chem.AddHs first")
    bonds = tuple((b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds())
    orders = tuple(float(b.GetBondTypeAsDouble()) for b in mol.GetBonds())
    return MolecularGraph(numbers, bonds, orders, "RDKit")


def perceive_bonds(
    numbers: np.ndarray, positions: np.ndarray, scale: float = 1.3, min_distance: float = 0.5
) -> MolecularGraph:
    """Bonds between atoms closer than `scale` x the sum of their covalent radii (Angstrom).

    Radii are ASE's (Cordero et al. 2008); scale 1.3 is RDKit's DetermineConnectivity default.
    Atoms closer than `min_distance` are an error (overlapping atoms, a broken structure).
    """
    from ase.data import covalent_radii
    from scipy.spatial import cKDTree

    numbers = np.asarray(numbers, dtype=np.int64)
    x = np.asarray(positions, dtype=np.float64)
    if x.shape != (len(numbers), 3) or not np.all(np.isfinite(x)):
        raise ValueError(f"positions must be finite with shape ({len(numbers)}, 3)")
    if np.any((numbers < 1) | (numbers > 118)):
        raise ValueError("atomic numbers must be in 1..118")
    radii = covalent_radii[numbers]
    pairs = cKDTree(x).query_pairs(scale * 2.0 * float(radii.max()), output_type="ndarray")
    if len(pairs) == 0:
        return MolecularGraph(tuple(numbers), (), (), "covalent radii")
    d = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1)
    close = d < min_distance
    if close.any():
        a, b = pairs[np.argmax(close)]
        raise ValueError(f"atoms {a} and {b} are {d[close].min():.3f} A apart (overlapping)")
    keep = d < scale * (radii[pairs[:, 0]] + radii[pairs[:, 1]])
    bonds = tuple((int(a), int(b)) for a, b in pairs[keep])
    return MolecularGraph(tuple(int(z) for z in numbers), bonds, (), "covalent radii")
