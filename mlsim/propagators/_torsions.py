"""A molecule's rotatable torsions, defined so that a proposal learned on one molecule applies to
another: canonical atoms, chemistry features, neighbouring torsions and proposal blocks.

Canonical definition. A rotatable bond b-c (from build_zmatrix) gets the dihedral a-b-c-d where
a is the highest-priority neighbour of b other than c, and d that of c other than b. Priority is
CIP-like and uses the graph only: atomic number, then the atomic numbers of the atom's own
neighbours (sorted, descending), then Weisfeiler-Lehman ranks of deeper shells; only
equivalent atoms (the hydrogens of a methyl group, say) fall back to the lower index. So phi of any capped amino acid is always
C(=O)-N-CA-C and chi1 is N-CA-CB-(heaviest gamma atom), whatever Z-matrix or atom order the file
has. The quadruple is oriented so that the higher-priority bond end comes first: the features do
not depend on which end the Z-matrix grew from.

Why the canonical angle can be proposed directly: rotating the Z-matrix dihedral of a rotatable
bond by delta turns the whole branch on one side rigidly about the bond; that changes this
bond's canonical dihedral by +-delta (the sign is found once per torsion) and leaves every other
bond's canonical dihedral unchanged (their four atoms move rigidly, or two of them sit on the
axis). The map between canonical angles and Z-matrix dihedrals is a shift by stiff coordinates,
so densities over canonical angles need no Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlsim.propagators._graph import MolecularGraph
from mlsim.propagators._layout import ZMatrixLayout, atom_features, build_zmatrix

__all__ = ["FEATURE_VERSION", "TorsionSet", "torsion_set"]

# Bumped whenever the features change: a saved transfer model records the version it was trained
# with, and refuses molecules described by another.
FEATURE_VERSION = 1
# Neighbour relations of two torsions: their bonds share an atom, or are one bond apart.
SHARE_ATOM, ONE_BOND_APART = 1.0, 0.0


@dataclass(frozen=True)
class TorsionSet:
    """The rotatable torsions of one molecule, everything a transferable proposal needs.

    rows: Z-matrix rows that move each torsion; quads (T, 4): canonical atoms a-b-c-d;
    signs (T,): +-1, d(canonical angle) = sign * d(Z-matrix dihedral); features (T, F);
    neighbors (T, K) torsion indices padded with -1, relation (T, K) SHARE_ATOM / ONE_BOND_APART;
    terminal (T,): rotors of a terminal group (methyl, hydroxyl, amine: every atom beyond one
    end is a hydrogen); blocks: the torsion sets one proposal moves together.
    """

    layout: ZMatrixLayout
    rows: tuple[int, ...]
    quads: np.ndarray
    signs: np.ndarray
    features: np.ndarray
    neighbors: np.ndarray
    relation: np.ndarray
    terminal: np.ndarray
    blocks: tuple[tuple[int, ...], ...]

    @property
    def n_torsions(self) -> int:
        """Number of rotatable torsions."""
        return len(self.rows)

    @property
    def graph(self) -> MolecularGraph:
        """The molecule's bond graph."""
        return self.layout.graph

    def angles(self, x: np.ndarray) -> np.ndarray:
        """Canonical dihedrals (..., T) in radians of positions (..., n, 3) Angstrom."""
        return _dihedrals(np.asarray(x, dtype=np.float64), self.quads)

    def block_weights(self, terminal_weight: float) -> np.ndarray:
        """Selection probabilities of the blocks: terminal rotors count `terminal_weight`."""
        w = np.array(
            [terminal_weight if all(self.terminal[t] for t in b) else 1.0 for b in self.blocks]
        )
        return w / w.sum()


def _dihedrals(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """IUPAC dihedrals of atom quadruples quads (T, 4) for x (..., n, 3): (..., T)."""
    p0, p1, p2, p3 = (x[..., quads[:, i], :] for i in range(4))
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = _cross(b0, b1), _cross(b1, b2)
    y = np.sqrt((b1 * b1).sum(-1)) * (b0 * n2).sum(-1)
    return np.arctan2(y, (n1 * n2).sum(-1))


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cross product over the last axis (np.cross has a large per-call overhead)."""
    u0, u1, u2 = u[..., 0], u[..., 1], u[..., 2]
    v0, v1, v2 = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0], -1)


def _refined_ranks(graph: MolecularGraph, nb: list[list[int]], rounds: int = 4) -> list[int]:
    """Weisfeiler-Lehman colour ranks of the atoms (independent of atom order): atoms with equal
    ranks are equivalent as far as `rounds` shells of neighbours tell."""
    colour = [(z,) for z in graph.numbers]
    for _ in range(rounds):
        colour = [(colour[a], tuple(sorted(colour[n] for n in nb[a]))) for a in range(len(nb))]
        ranks = {c: i for i, c in enumerate(sorted(set(colour)))}
        colour = [(ranks[c],) for c in colour]
    return [c[0] for c in colour]


def _priority(graph: MolecularGraph, nb: list[list[int]], ranks: list[int], a: int) -> tuple:
    """CIP-like priority key of atom a (larger wins): atomic number, the atomic numbers of its
    neighbours, then the refined rank; the lower index breaks ties between equivalent atoms."""
    return (
        graph.numbers[a],
        tuple(sorted((graph.numbers[n] for n in nb[a]), reverse=True)),
        ranks[a],
        -a,
    )


def _side(graph: MolecularGraph, nb: list[list[int]], start: int, block: int) -> set[int]:
    """Atoms reachable from `start` without crossing atom `block` (one side of a bond)."""
    seen, stack = {start}, [start]
    while stack:
        a = stack.pop()
        for b in nb[a]:
            if b != block and b not in seen:
                seen.add(b)
                stack.append(b)
    return seen


def _features(graph, nb, af: np.ndarray, quad: tuple[int, int, int, int], small: int) -> np.ndarray:
    """Descriptor of torsion a-b-c-d: atom features of a, b, c, d, the summed features of b's and
    c's other neighbours and of the atoms two bonds from the b-c bond, log(1 + smaller side)."""
    a, b, c, d = quad
    others_b = [n for n in nb[b] if n not in (a, c)]
    others_c = [n for n in nb[c] if n not in (b, d)]
    first = set(nb[b]) | set(nb[c])
    second = {m for n in first - {b, c} for m in nb[n]} - first - {b, c}
    dim = af.shape[1]
    pooled = [
        af[others_b].sum(0) if others_b else np.zeros(dim),
        af[others_c].sum(0) if others_c else np.zeros(dim),
        af[sorted(second)].sum(0) if second else np.zeros(dim),
    ]
    return np.concatenate([af[a], af[b], af[c], af[d], *pooled, [np.log1p(small)]])


def torsion_set(
    graph_or_layout: MolecularGraph | ZMatrixLayout, positions: np.ndarray | None = None
) -> TorsionSet:
    """The canonical rotatable torsions of a molecule (see the module docstring).

    Raises ValueError when the molecule has no rotatable torsion (nothing for a torsion proposal
    to move: rigid molecules and rings only).
    """
    layout = (
        graph_or_layout
        if isinstance(graph_or_layout, ZMatrixLayout)
        else build_zmatrix(graph_or_layout, positions)
    )
    graph = layout.graph
    rows = tuple(layout.rotatable_rows)
    if not rows:
        raise ValueError(
            f"the molecule ({graph.formula}) has no rotatable torsion (rings and multiple bonds "
            "only): a torsion propagator has nothing to propose; sample it with MD or HMC"
        )
    nb = graph.neighbors()
    af = atom_features(graph)
    ranks = _refined_ranks(graph, nb)
    prio = lambda a: _priority(graph, nb, ranks, a)  # noqa: E731
    quads, feats, terminal = [], [], []
    for r in rows:
        _, j, k, _ = layout.rows[r]
        a = max((n for n in nb[j] if n != k), key=prio)
        d = max((n for n in nb[k] if n != j), key=prio)
        quad = (a, j, k, d)
        # Orientation: the higher-priority end first (without the index tie-break, so that
        # equivalent ends keep the Z-matrix's order whatever the atom numbering).
        if (prio(k)[:-1], prio(d)[:-1]) > (prio(j)[:-1], prio(a)[:-1]):
            quad = (d, k, j, a)
        side_j, side_k = _side(graph, nb, j, k), _side(graph, nb, k, j)
        is_h = lambda s, root: all(graph.numbers[n] == 1 for n in s - {root})  # noqa: E731
        terminal.append(is_h(side_j, j) or is_h(side_k, k))
        quads.append(quad)
        feats.append(_features(graph, nb, af, quad, min(len(side_j), len(side_k)) - 1))
    quads_a = np.array(quads, dtype=np.int64)
    # Which way a Z-matrix rotation turns each canonical angle: measured on a test structure.
    x = positions if positions is not None else _any_structure(layout)
    signs = _rotation_signs(layout, rows, quads_a, np.asarray(x, dtype=np.float64))
    # Neighbouring torsions: bonds sharing an atom, or joined by one bond.
    bonds = [set(layout.rows[r][1:3]) for r in rows]
    nbs, rel = [], []
    for t, bt in enumerate(bonds):
        row_n, row_r = [], []
        for u, bu in enumerate(bonds):
            if u == t:
                continue
            if bt & bu:
                row_n.append(u), row_r.append(SHARE_ATOM)
            elif any(graph.has_bond(p, q) for p in bt for q in bu):
                row_n.append(u), row_r.append(ONE_BOND_APART)
        nbs.append(row_n), rel.append(row_r)
    width = max(1, max(len(n) for n in nbs))
    neighbors = np.full((len(rows), width), -1, dtype=np.int64)
    relation = np.zeros((len(rows), width))
    for t, (n, r) in enumerate(zip(nbs, rel)):
        neighbors[t, : len(n)] = n
        relation[t, : len(r)] = r
    # Blocks: every torsion alone, and each pair of non-terminal torsions whose bonds share an
    # atom (phi with psi, chi1 with phi and psi): correlated moves across coupled barriers.
    blocks: list[tuple[int, ...]] = [(t,) for t in range(len(rows))]
    for t in range(len(rows)):
        for u, r in zip(nbs[t], rel[t]):
            if u > t and r == SHARE_ATOM and not terminal[t] and not terminal[u]:
                blocks.append((t, u))
    return TorsionSet(
        layout, rows, quads_a, signs, np.array(feats), neighbors, relation,
        np.array(terminal, dtype=bool), tuple(blocks),
    )  # fmt: skip


def _any_structure(layout: ZMatrixLayout) -> np.ndarray:
    """A non-degenerate structure for the layout: standard bond lengths and tetrahedral angles."""
    import torch

    z = layout.zmatrix
    n = z.n_atoms
    rng = np.random.default_rng(0)
    r = torch.full((1, n - 1), 1.3, dtype=torch.float64)
    t = torch.full((1, n - 1), 1.91, dtype=torch.float64)
    p = torch.as_tensor(rng.uniform(-np.pi, np.pi, (1, n - 1)))
    eye = torch.eye(3, dtype=torch.float64)[None]
    zero = torch.zeros(1, 3, dtype=torch.float64)
    return z._cartesian(zero, r, t, p, zero, eye)[0].numpy()


def _rotation_signs(layout, rows, quads: np.ndarray, x: np.ndarray) -> np.ndarray:
    """+-1 per torsion: how the canonical angle moves when its Z-matrix dihedral grows."""
    import torch

    z = layout.zmatrix
    xt = torch.as_tensor(x, dtype=torch.float64)[None]
    signs = np.empty(len(rows))
    for t in range(len(rows)):
        delta = torch.zeros(1, len(rows), dtype=torch.float64)
        delta[0, t] = 0.3
        moved = z.rotate_dihedrals(xt, list(rows), delta)[0].numpy()
        change = np.angle(np.exp(1j * (_dihedrals(moved, quads) - _dihedrals(x, quads))))
        others = np.delete(change, t)
        if abs(abs(change[t]) - 0.3) > 1e-6 or np.any(np.abs(others) > 1e-6):
            raise RuntimeError(f"torsion {quads[t].tolist()} does not rotate rigidly (a bug)")
        signs[t] = np.sign(change[t])
    return signs
