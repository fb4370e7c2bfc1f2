"""Z-matrices for any molecule, built from its bond graph: a spanning tree with torsions.

Rules (every atom gets exactly one (bond, angle, dihedral) row, or is a root):
  - roots (a0, a1, a2): a0 is the middle atom of a longest shortest path through the graph (keeps
    the tree shallow, so errors do not build up along long lever arms); a1 and a2 are its
    neighbours on that path (two bonds that share a0);
  - the other atoms are placed breadth-first from a0. Atom i hangs on its tree parent j (bond
    i-j), the angle is towards k = parent of j, and the dihedral is measured about j-k:
      * the first child of j uses an atom m bonded to k: a proper torsion i-j-k-m, whose dihedral
        rotates the whole branch behind the j-k bond (a torsion row);
      * further children of j use the first child as m: their dihedrals are the stiff offsets
        between branches on one atom (e.g. 120 degrees between methyl hydrogens);
      * children of a0 hang on the a0-a1 axis, referenced to a2 (stiff as well).
  - ring-closure bonds are simply not rows: the tree covers every atom once, and the target
    energy holds the ring together.
A torsion row is rotatable when its bond is not in a ring, has no multiple-bond order (known, or
guessed from valences when the source gives none), and is not an amide C(=O)-N bond.

Positions, when given, are used only to avoid degenerate references (collinear atoms).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from mlsim.propagators._graph import MolecularGraph
from mlsim.propagators._internal import ZMatrix

__all__ = ["ZMatrixLayout", "atom_features", "build_zmatrix", "torsion_features"]

# An angle within this many degrees of 0 or 180 makes a dihedral reference degenerate.
_LINEAR_DEG = 8.0


@dataclass(frozen=True)
class ZMatrixLayout:
    """A molecule's Z-matrix with its chemistry: which rows are torsions and which can rotate."""

    graph: MolecularGraph
    roots: tuple[int, int, int]
    rows: tuple[tuple[int, int, int, int], ...]
    torsion_rows: tuple[int, ...]  # rows whose dihedral is a proper torsion about bond j-k
    rotatable_rows: tuple[int, ...]  # torsion rows about rotatable bonds: the soft coordinates
    ring_closures: tuple[tuple[int, int], ...]  # bonds that are not tree edges

    @property
    def zmatrix(self) -> ZMatrix:
        """The numerical Z-matrix (coordinate maps with exact Jacobians)."""
        return ZMatrix(self.roots, list(self.rows))

    def torsion_bond(self, row: int) -> tuple[int, int]:
        """The bond (j, k) that row `row`'s dihedral rotates about."""
        _, j, k, _ = self.rows[row]
        return j, k


def _angle_deg(x: np.ndarray, a: int, b: int, c: int) -> float:
    """Angle a-b-c in degrees."""
    u, v = x[a] - x[b], x[c] - x[b]
    cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-300))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _linear(x: np.ndarray | None, a: int, b: int, c: int) -> bool:
    """Whether a-b-c is (nearly) collinear; never, without positions."""
    if x is None:
        return False
    ang = _angle_deg(x, a, b, c)
    return ang < _LINEAR_DEG or ang > 180.0 - _LINEAR_DEG


def _bfs(nb: list[list[int]], start: int) -> tuple[list[int], list[int]]:
    """Breadth-first distances and predecessors from `start`."""
    dist, pred = [-1] * len(nb), [-1] * len(nb)
    dist[start] = 0
    queue = deque([start])
    while queue:
        a = queue.popleft()
        for b in nb[a]:
            if dist[b] < 0:
                dist[b], pred[b] = dist[a] + 1, a
                queue.append(b)
    return dist, pred


def _root_candidates(graph: MolecularGraph, nb: list[list[int]]) -> list[tuple[int, int, int]]:
    """Root triples (a0, a1, a2), best first: the middle of a longest path, then the rest."""
    # Double sweep: the farthest atom from any start, then the farthest from that one, gives
    # (nearly) a longest shortest path in O(N); its middle atom is a graph centre.
    heavy = [a for a, z in enumerate(graph.numbers) if z > 1] or [0]
    dist, _ = _bfs(nb, heavy[0])
    u = max(range(len(nb)), key=lambda a: (dist[a], -a))
    dist, pred = _bfs(nb, u)
    v = max(range(len(nb)), key=lambda a: (dist[a], -a))
    path = [v]
    while path[-1] != u:
        path.append(pred[path[-1]])
    mid = len(path) // 2
    # (A 3-ring has no path of two bonds between its farthest atoms: fallbacks only.)
    triples = [(path[mid], path[mid - 1], path[mid + 1])] if len(path) >= 3 else []
    # Fallbacks for degenerate geometry: every atom with two neighbours, heavy atoms first,
    # nearest to the centre first.
    dist, _ = _bfs(nb, path[mid])
    order = sorted(range(len(nb)), key=lambda a: (dist[a], graph.numbers[a] == 1, a))
    for a0 in order:
        ns = sorted(nb[a0], key=lambda a: (graph.numbers[a] == 1, a))
        for p in range(len(ns)):
            for q in range(p + 1, len(ns)):
                triples.append((a0, ns[p], ns[q]))
    return triples


def _is_amide(graph: MolecularGraph, nb: list[list[int]], c: int, n: int) -> bool:
    """Whether c-n is an amide C(=O)-N bond (the C carries a terminal oxygen or sulfur)."""
    if graph.numbers[c] != 6 or graph.numbers[n] != 7 or len(nb[c]) != 3:
        return False
    return any(graph.numbers[o] in (8, 16) and len(nb[o]) == 1 for o in nb[c])


def _rotatable(
    graph: MolecularGraph,
    nb: list[list[int]],
    ring: set[tuple[int, int]],
    unsat: np.ndarray,
    j: int,
    k: int,
) -> bool:
    """Whether the bond j-k is a rotatable single bond (see the module docstring)."""
    if (min(j, k), max(j, k)) in ring or len(nb[j]) < 2 or len(nb[k]) < 2:
        return False
    if _is_amide(graph, nb, j, k) or _is_amide(graph, nb, k, j):
        return False
    order = graph.order(j, k)
    if order is not None:
        return order == 1.0
    # No orders: a bond between two unsaturated atoms is taken as double when one of them has
    # no other unsaturated neighbour (an isolated C=C); between two conjugated atoms (biphenyl,
    # butadiene's middle bond) it is taken as single.
    if unsat[j] and unsat[k]:
        others_j = any(unsat[a] for a in nb[j] if a != k)
        others_k = any(unsat[a] for a in nb[k] if a != j)
        return others_j and others_k
    return True


def build_zmatrix(graph: MolecularGraph, positions: np.ndarray | None = None) -> ZMatrixLayout:
    """Build the Z-matrix of a connected molecule from its bond graph (see the module rules).

    positions (n, 3) Angstrom, optional: a structure used to avoid collinear references. Raises
    ValueError for fewer than 3 atoms, a disconnected graph, or linear groups (for example
    alkynes or nitriles) whose angles leave a dihedral undefined.
    """
    n = graph.n_atoms
    if n < 3:
        raise ValueError(f"internal coordinates need at least 3 atoms, got {n}")
    comps = graph.components()
    if len(comps) > 1:
        sizes = ", ".join(str(len(c)) for c in comps[:6])
        raise ValueError(
            f"the molecule is not connected: {len(comps)} fragments of {sizes} atoms "
            f"(bonds from {graph.source}); a propagator needs one molecule (solvated or "
            "multi-molecule systems are not supported yet). Check the bonds (PDB CONECT "
            "records) or the geometry (bonds are perceived from covalent radii)."
        )
    x = None if positions is None else np.asarray(positions, dtype=np.float64)
    if x is not None and x.shape != (n, 3):
        raise ValueError(f"positions must have shape ({n}, 3), got {x.shape}")
    nb = graph.neighbors()
    roots = next((t for t in _root_candidates(graph, nb) if not _linear(x, t[1], t[0], t[2])), None)
    if roots is None:
        raise ValueError("every bonded triple of atoms is collinear: a linear molecule")
    a0, a1, a2 = roots
    order_key = lambda a: (graph.numbers[a] == 1, a)  # noqa: E731  (heavy atoms first)
    parent = {a0: -1, a1: a0, a2: a0}
    first_child: dict[int, int] = {}
    rows: list[tuple[int, int, int, int]] = []
    torsion_rows: list[int] = []
    placed = {a0, a1, a2}
    queue = deque([a0, a1, a2])
    while queue:
        j = queue.popleft()
        for i in sorted(nb[j], key=order_key):
            if i in placed:
                continue
            row, is_torsion = _row(graph, nb, x, parent, first_child, placed, roots, i, j)
            if is_torsion:
                torsion_rows.append(len(rows))
            rows.append(row)
            first_child.setdefault(j, i)
            parent[i] = j
            placed.add(i)
            queue.append(i)
    tree = {(min(i, j), max(i, j)) for i, j in parent.items() if j >= 0}
    closures = tuple(b for b in graph.bonds if b not in tree)
    ring = graph.ring_bonds()
    unsat = graph.unsaturated()
    rotatable = tuple(
        r for r in torsion_rows if _rotatable(graph, nb, ring, unsat, rows[r][1], rows[r][2])
    )
    return ZMatrixLayout(graph, roots, tuple(rows), tuple(torsion_rows), rotatable, closures)


def _row(graph, nb, x, parent, first_child, placed, roots, i: int, j: int):
    """The (i, j, k, m) row of atom i on parent j, and whether its dihedral is a proper torsion."""
    a0, a1, a2 = roots
    if j == a0:
        # Branches on the first root: angle towards a1, dihedral from a2 (or any other placed
        # neighbour of a0 when a2 is degenerate).
        ks = [a1] + [a for a in sorted(nb[a0]) if a in placed and a not in (a1, i)]
        for k in ks:
            if _linear(x, i, j, k):
                continue
            for m in [a2, a1] + sorted(placed):
                if m not in (i, j, k) and not _linear(x, j, k, m):
                    return (i, j, k, m), False
        raise _linear_error(x, i, j)
    # k: the tree parent of j, else another placed neighbour of j when i-j-parent is linear.
    ks = [parent[j]] + [a for a in sorted(nb[j]) if a in placed and a != parent[j]]
    for k in ks:
        if _linear(x, i, j, k):
            continue
        if j in first_child and k == parent[j]:
            m = first_child[j]  # a sibling branch: stiff offset dihedral
            if not _linear(x, j, k, m):
                return (i, j, k, m), False
        # Proper torsion i-j-k-m with m bonded to k: prefer k's own parent, or for k = a0 the
        # other root; it is a torsion row when it is j's first child and j-k is a tree bond.
        pk = parent.get(k, -1)
        cands = ([pk] if pk >= 0 else [a1, a2]) + [a for a in sorted(nb[k]) if a in placed]
        for m in cands:
            if m not in (i, j, k) and not _linear(x, j, k, m):
                return (i, j, k, m), j not in first_child and k == parent[j]
        for m in sorted(placed):  # last resort: any placed atom (not a torsion)
            if m not in (i, j, k) and not _linear(x, j, k, m):
                return (i, j, k, m), False
    raise _linear_error(x, i, j)


def _linear_error(x: np.ndarray | None, i: int, j: int) -> ValueError:
    """The error for an atom whose every reference is collinear."""
    return ValueError(
        f"atom {i} sits on a linear group at atom {j} (angles within {_LINEAR_DEG:g} degrees of "
        "180): molecules with linear groups (alkynes, nitriles, CO2) are not supported yet"
    )


# --- features for proposals conditioned on chemistry ---------------------------------------------
# A transferable proposal (one model for many molecules) needs to know what each coordinate is.
# These per-atom and per-row descriptors are that interface: the transfer proposal builds its
# torsion descriptors from atom_features (mlsim.propagators._torsions); the per-molecule flow
# does not need them.
_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)


def atom_features(graph: MolecularGraph) -> np.ndarray:
    """Per-atom descriptors (n, 19): element one-hot (10 + other), degree 0..4+, ring, unsat, nH."""
    nb = graph.neighbors()
    ring_atoms = {a for b in graph.ring_bonds() for a in b}
    unsat = graph.unsaturated()
    out = np.zeros((graph.n_atoms, len(_ELEMENTS) + 1 + 5 + 3))
    for a, z in enumerate(graph.numbers):
        out[a, _ELEMENTS.index(z) if z in _ELEMENTS else len(_ELEMENTS)] = 1.0
        out[a, len(_ELEMENTS) + 1 + min(len(nb[a]), 4)] = 1.0
        out[a, -3] = float(a in ring_atoms)
        out[a, -2] = float(unsat[a])
        out[a, -1] = sum(graph.numbers[b] == 1 for b in nb[a]) / 3.0
    return out


def torsion_features(layout: ZMatrixLayout) -> np.ndarray:
    """Per-row descriptors (n_rows, 2 x 19 + 4): atoms j and k, then torsion/rotatable/ring flags
    and log(1 + number of atoms the dihedral moves)."""
    af = atom_features(layout.graph)
    z = layout.zmatrix
    ring = layout.graph.ring_bonds()
    tors, rot = set(layout.torsion_rows), set(layout.rotatable_rows)
    out = np.zeros((len(layout.rows), 2 * af.shape[1] + 4))
    for r, (_, j, k, _) in enumerate(layout.rows):
        out[r, : af.shape[1]] = af[j]
        out[r, af.shape[1] : 2 * af.shape[1]] = af[k]
        out[r, -4] = float(r in tors)
        out[r, -3] = float(r in rot)
        out[r, -2] = float((min(j, k), max(j, k)) in ring)
        out[r, -1] = np.log1p(len(z.moving[r]))
    return out
