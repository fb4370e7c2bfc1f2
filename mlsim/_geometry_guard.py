"""Engine-independent sanity checks of MD states: bonds broken or formed, atoms too close, too hot.

An ML potential outside its training domain rarely produces NaN: atoms that fly beyond the cutoff
feel zero force and keep going, so a run can "succeed" with a dissociated molecule at 10^5 K.
These checks catch that from the geometry alone, for OpenMM (mlsim.openmm.run_md) and ASE
(mlsim.ase.MDGuard) alike, and both raise the one SimulationBlowUp defined here.

Bonds are defined once, from the starting structure, by covalent radii (ase.data.covalent_radii):
atoms i, j are bonded if d < bond_factor * (r_i + r_j) (1.2). With hysteresis, so that vibrations
never trigger a check: a starting bond counts as broken only beyond break_factor * (r_i + r_j)
(1.75, which a real C-H bond at 900 K never reaches), and a new bond counts as formed only below
form_factor * (r_i + r_j) (1.1, below the 1.2 that defined the starting bonds) and only for pairs
that started beyond near_factor * (r_i + r_j) (1.5; real 1-3 neighbours sit at 1.65-2.9 times
r_i + r_j, so this spares only the ambiguous contacts of strained structures). Only pairs of
covalently bonding elements (non-metals and metalloids) are tracked: metal-ligand and ionic
contacts (Na+ and its water shell, atoms of a liquid metal) exchange partners in normal dynamics.
Any two atoms closer than min_distance (0.5 A, well below the 0.74 A of H2) are a failure too.
Lengths are in Angstrom. Periodic cells use the minimum image; pairs come from mlsim's O(N)
cell-list neighbor list, so a check costs O(N).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "COVALENT_ELEMENTS",
    "DEFAULT_BOND_FACTOR",
    "DEFAULT_BREAK_FACTOR",
    "DEFAULT_FORM_FACTOR",
    "DEFAULT_MIN_DISTANCE",
    "DEFAULT_NEAR_FACTOR",
    "GeometryGuard",
    "SimulationBlowUp",
    "atom_label",
    "default_max_temperature",
]

DEFAULT_BOND_FACTOR = 1.2
DEFAULT_BREAK_FACTOR = 1.75
DEFAULT_FORM_FACTOR = 1.1
DEFAULT_NEAR_FACTOR = 1.5
DEFAULT_MIN_DISTANCE = 0.5  # Angstrom

# Elements whose bonds are covalent and stay put in normal MD: H, B, C, N, O, F, Si, P, S, Cl,
# Ge, As, Se, Br, Sb, Te, I. Noble gases and metals are left out (see the module docstring).
COVALENT_ELEMENTS = frozenset({1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 32, 33, 34, 35, 51, 52, 53})


class SimulationBlowUp(RuntimeError):
    """The simulation left physical territory (NaN, huge forces, broken bonds, runaway heat)."""


def atom_label(index: int, number: int) -> str:
    """'3 (H)': an atom's index with its element symbol, for error messages."""
    from ase.data import chemical_symbols

    z = int(number)
    symbol = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"
    return f"{int(index)} ({symbol})"


def default_max_temperature(target_k: float, dof: int) -> float:
    """Temperature (K) above which a thermostatted run at target_k counts as blown up.

    5x the target, more for small systems: the instantaneous temperature of dof degrees of freedom
    fluctuates by target * sqrt(2 / dof), and the bound stays 10 such fluctuations above it.
    """
    dof = max(int(dof), 1)
    return float(target_k) * max(5.0, 1.0 + 10.0 * math.sqrt(2.0 / dof))


def _as_cell(
    cell: np.ndarray | None, pbc: bool | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(cell (3, 3), pbc (3,) bool) with zeros/False for a non-periodic system."""
    cell_arr = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    pbc_arr = np.zeros(3, bool) if pbc is None else np.broadcast_to(np.asarray(pbc, bool), (3,))
    if pbc_arr.any() and abs(np.linalg.det(cell_arr)) < 1e-12:
        raise ValueError("pbc is set but the cell is degenerate (zero volume)")
    return cell_arr, pbc_arr.copy()


def _pairs(
    positions: np.ndarray, cutoff: float, cell: np.ndarray, pbc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique pairs i < j closer than cutoff (minimum image), with their distances."""
    from mlsim.neighbors import neighbor_list

    i, j, shifts = neighbor_list(positions, cutoff, cell if pbc.any() else None, pbc, full=False)
    d = np.linalg.norm(positions[j] - positions[i] + shifts @ cell, axis=1)
    # Order each pair as (min, max) and keep the shortest image of pairs listed more than once.
    a, b = np.minimum(i, j), np.maximum(i, j)
    keep = a != b  # an atom and its own periodic image are not a pair of atoms
    a, b, d = a[keep], b[keep], d[keep]
    order = np.lexsort((d, b, a))
    a, b, d = a[order], b[order], d[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], d[first]


def _min_image_distance(
    positions: np.ndarray, i: np.ndarray, j: np.ndarray, cell: np.ndarray, pbc: np.ndarray
) -> np.ndarray:
    """Minimum-image distances of given pairs (fractional rounding, then the 27 nearest images)."""
    d = positions[j] - positions[i]
    if not pbc.any():
        return np.linalg.norm(d, axis=1)
    frac = d @ np.linalg.inv(cell)
    frac[:, pbc] -= np.round(frac[:, pbc])
    ranges = [(-1, 0, 1) if p else (0,) for p in pbc]
    images = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    vec = (frac[:, None, :] + images[None, :, :]) @ cell
    return np.linalg.norm(vec, axis=2).min(axis=1)


@dataclass
class GeometryGuard:
    """The starting structure's covalent bond graph and the thresholds to check later states by.

    Build it with `GeometryGuard.from_structure`; `check(positions, cell, pbc)` returns a message
    naming the atoms (index and element) and the distance, or None when the geometry is sane.
    """

    numbers: np.ndarray
    bonds: np.ndarray  # (n_bonds, 2) int64, i < j
    bond_lengths: np.ndarray  # (n_bonds,) starting lengths, Angstrom
    radii: np.ndarray  # (n_atoms,) covalent radii, Angstrom
    tracked: np.ndarray  # (n_atoms,) bool: element in bond_elements
    near_keys: np.ndarray  # sorted i * n + j of pairs (bonds included) never reported as formed
    break_factor: float = DEFAULT_BREAK_FACTOR
    form_factor: float = DEFAULT_FORM_FACTOR
    min_distance: float = DEFAULT_MIN_DISTANCE
    _bond_keys: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Validate the thresholds and index the bonds for fast lookup."""
        if not self.break_factor > self.form_factor > 0:
            raise ValueError(
                "need break_factor > form_factor > 0, got "
                f"{self.break_factor} and {self.form_factor}"
            )
        if self.min_distance < 0:
            raise ValueError(f"min_distance must be >= 0 Angstrom, got {self.min_distance}")
        n = len(self.numbers)
        self._bond_keys = np.sort(self.bonds[:, 0] * n + self.bonds[:, 1])

    @classmethod
    def from_structure(
        cls,
        numbers: np.ndarray,
        positions: np.ndarray,
        cell: np.ndarray | None = None,
        pbc: bool | np.ndarray | None = None,
        bond_factor: float = DEFAULT_BOND_FACTOR,
        break_factor: float = DEFAULT_BREAK_FACTOR,
        form_factor: float = DEFAULT_FORM_FACTOR,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        near_factor: float = DEFAULT_NEAR_FACTOR,
        bond_elements: Collection[int] = COVALENT_ELEMENTS,
    ) -> GeometryGuard:
        """Bond graph of a starting structure (positions in A): d < bond_factor (r_i + r_j)."""
        from ase.data import covalent_radii

        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(numbers), 3):
            raise ValueError(f"positions shape {positions.shape} != ({len(numbers)}, 3)")
        if not np.isfinite(positions).all():
            raise ValueError("the starting positions contain NaN or infinite values")
        if not (form_factor < bond_factor < break_factor and bond_factor <= near_factor):
            raise ValueError(
                "need form_factor < bond_factor < break_factor and near_factor >= bond_factor "
                "(the hysteresis that keeps vibrations from triggering), got "
                f"{form_factor}, {bond_factor}, {break_factor}, {near_factor}"
            )
        cell_arr, pbc_arr = _as_cell(cell, pbc)
        radii = np.asarray(covalent_radii)[numbers]
        tracked = np.isin(numbers, np.fromiter(bond_elements, dtype=np.int64))
        bonds = np.zeros((0, 2), np.int64)
        lengths = np.zeros(0)
        near_keys = np.zeros(0, np.int64)
        if len(numbers) > 1 and tracked.any():
            cutoff = near_factor * 2.0 * float(radii[tracked].max())
            i, j, d = _pairs(positions, cutoff, cell_arr, pbc_arr)
            both = tracked[i] & tracked[j]
            sel = both & (d < bond_factor * (radii[i] + radii[j]))
            bonds = np.stack([i[sel], j[sel]], axis=1).astype(np.int64)
            lengths = d[sel]
            near = both & (d < near_factor * (radii[i] + radii[j]))
            near_keys = np.sort(i[near] * len(numbers) + j[near])
        return cls(
            numbers=numbers,
            bonds=bonds,
            bond_lengths=lengths,
            radii=radii,
            tracked=tracked,
            near_keys=near_keys,
            break_factor=float(break_factor),
            form_factor=float(form_factor),
            min_distance=float(min_distance),
        )

    def _label(self, i: int) -> str:
        """Atom i as '3 (H)'."""
        return atom_label(i, self.numbers[i])

    def check(
        self,
        positions: np.ndarray,
        cell: np.ndarray | None = None,
        pbc: bool | np.ndarray | None = None,
    ) -> str | None:
        """What is wrong with these positions (Angstrom), or None if the geometry is sane."""
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(self.numbers), 3):
            raise ValueError(f"positions shape {positions.shape} != ({len(self.numbers)}, 3)")
        bad = ~np.isfinite(positions).all(axis=1)
        if bad.any():
            return f"position of atom {self._label(int(np.flatnonzero(bad)[0]))} is not finite"
        if len(self.numbers) < 2:
            return None
        cell_arr, pbc_arr = _as_cell(cell, pbc)
        r_max = float(self.radii[self.tracked].max()) if self.tracked.any() else 0.0
        cutoff = max(self.break_factor * 2.0 * r_max, self.min_distance, 1e-3)
        i, j, d = _pairs(positions, cutoff, cell_arr, pbc_arr)
        problems: list[str] = []

        close = np.flatnonzero(d < self.min_distance)
        if len(close):
            k = close[np.argmin(d[close])]
            more = f" (and {len(close) - 1} more pairs)" if len(close) > 1 else ""
            problems.append(
                f"atoms {self._label(i[k])} and {self._label(j[k])} are {d[k]:.3f} A apart, "
                f"closer than the {self.min_distance:g} A minimum{more}"
            )

        n = len(self.numbers)
        if len(self.bonds):
            # Starting bonds: the shortest image of each must stay below break_factor (r_i + r_j).
            keys = i * n + j
            pos_in_pairs = np.searchsorted(keys, self._bond_keys)  # keys are sorted by (i, j)
            bond_order = np.argsort(self.bonds[:, 0] * n + self.bonds[:, 1])
            b = self.bonds[bond_order]
            found = np.zeros(len(b), bool)
            if len(keys):
                found = (pos_in_pairs < len(keys)) & (
                    keys[np.minimum(pos_in_pairs, len(keys) - 1)] == self._bond_keys
                )
            dist = np.full(len(b), np.inf)
            dist[found] = d[pos_in_pairs[found]]
            limit = self.break_factor * (self.radii[b[:, 0]] + self.radii[b[:, 1]])
            broken = np.flatnonzero(dist > limit)
            if len(broken):
                far = broken[~np.isfinite(dist[broken])]
                if len(far):  # beyond the neighbor-list cutoff: measure them directly
                    dist[far] = _min_image_distance(
                        positions, b[far, 0], b[far, 1], cell_arr, pbc_arr
                    )
                k = broken[np.argmax(dist[broken] / limit[broken])]
                start = self.bond_lengths[bond_order][k]
                more = f" (and {len(broken) - 1} more bonds)" if len(broken) > 1 else ""
                problems.append(
                    f"bond {self._label(b[k, 0])}-{self._label(b[k, 1])} broke: {dist[k]:.3f} A "
                    f"(was {start:.3f} A at the start; broken above {limit[k]:.3f} A){more}"
                )

        # New bonds: tracked pairs that were not bonded at the start, now well inside bonding range.
        cand = self.tracked[i] & self.tracked[j]
        cand &= d < self.form_factor * (self.radii[i] + self.radii[j])
        if cand.any() and len(self.near_keys):
            cand &= ~np.isin(i * n + j, self.near_keys)
        formed = np.flatnonzero(cand & (d >= self.min_distance))
        if len(formed):
            k = formed[np.argmin(d[formed])]
            limit = self.form_factor * (self.radii[i[k]] + self.radii[j[k]])
            more = f" (and {len(formed) - 1} more)" if len(formed) > 1 else ""
            problems.append(
                f"atoms {self._label(i[k])} and {self._label(j[k])} formed a bond that the "
                f"starting structure does not have: {d[k]:.3f} A (below {limit:.3f} A){more}"
            )
        return "; ".join(problems) if problems else None
