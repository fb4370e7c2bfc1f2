"""Unit conversions: the one place where mlsim's internal units meet other programs' units.

Inside mlsim every quantity is in ASE units: Angstrom, eV, eV/Angstrom, eV/Angstrom^3, fs, K.
OpenMM works in nm, kJ/mol, kJ/mol/nm and ps. Data files (MD17, quantum chemistry output) come in
kcal/mol, Hartree, Bohr and friends. Everything that converts between these calls this module, so a
constant is never typed twice.

The constants are CODATA 2018 exact or recommended values, the set OpenMM 8 uses.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ANGSTROM_PER_BOHR",
    "ANGSTROM_PER_NM",
    "AVOGADRO",
    "ELEMENTARY_CHARGE",
    "EV_PER_HARTREE",
    "EV_PER_KCAL_PER_MOL",
    "EV_PER_KJ_PER_MOL",
    "FS_PER_PS",
    "KB_EV_PER_K",
    "KCAL_PER_MOL_PER_EV",
    "KJ_PER_MOL_PER_EV",
    "NM_PER_ANGSTROM",
    "energy_factor",
    "energy_from_openmm",
    "energy_to_openmm",
    "force_factor",
    "forces_from_openmm",
    "forces_to_openmm",
    "length_factor",
    "positions_from_openmm",
    "positions_to_openmm",
    "time_from_openmm",
    "time_to_openmm",
]

# --- fundamental constants (CODATA 2018) -------------------------------------------------------
AVOGADRO = 6.02214076e23  # 1/mol, exact
ELEMENTARY_CHARGE = 1.602176634e-19  # C, exact
BOLTZMANN_J_PER_K = 1.380649e-23  # J/K, exact
HARTREE_J = 4.3597447222071e-18  # J
BOHR_M = 5.29177210903e-11  # m

# --- derived conversion factors -----------------------------------------------------------------
KJ_PER_MOL_PER_EV = ELEMENTARY_CHARGE * AVOGADRO / 1000.0  # 96.485332...
EV_PER_KJ_PER_MOL = 1.0 / KJ_PER_MOL_PER_EV
KCAL_PER_MOL_PER_EV = KJ_PER_MOL_PER_EV / 4.184  # thermochemical calorie
EV_PER_KCAL_PER_MOL = 1.0 / KCAL_PER_MOL_PER_EV
EV_PER_HARTREE = HARTREE_J / ELEMENTARY_CHARGE  # 27.211386...
KB_EV_PER_K = BOLTZMANN_J_PER_K / ELEMENTARY_CHARGE  # 8.617333e-5
NM_PER_ANGSTROM = 0.1
ANGSTROM_PER_NM = 10.0
ANGSTROM_PER_BOHR = BOHR_M * 1e10  # 0.529177...
FS_PER_PS = 1000.0

# Energies and lengths by name, each expressed in the internal unit (eV, Angstrom).
_ENERGY_IN_EV = {
    "ev": 1.0,
    "mev": 1e-3,
    "hartree": EV_PER_HARTREE,
    "ha": EV_PER_HARTREE,
    "kcal/mol": EV_PER_KCAL_PER_MOL,
    "kj/mol": EV_PER_KJ_PER_MOL,
}
_LENGTH_IN_ANGSTROM = {
    "angstrom": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "nm": ANGSTROM_PER_NM,
    "bohr": ANGSTROM_PER_BOHR,
}


def _lookup(table: dict[str, float], unit: str, kind: str) -> float:
    """Return the factor for `unit` from `table`, with an error that lists the known names."""
    key = unit.strip().lower().replace(" ", "")
    if key not in table:
        raise ValueError(f"unknown {kind} unit {unit!r}; known: {sorted(table)}")
    return table[key]


def energy_factor(from_unit: str, to_unit: str = "eV") -> float:
    """Return the factor that converts an energy from `from_unit` to `to_unit` (e.g. kcal/mol -> eV)."""
    return _lookup(_ENERGY_IN_EV, from_unit, "energy") / _lookup(_ENERGY_IN_EV, to_unit, "energy")


def length_factor(from_unit: str, to_unit: str = "Angstrom") -> float:
    """Return the factor that converts a length from `from_unit` to `to_unit` (e.g. Bohr -> Angstrom)."""
    return _lookup(_LENGTH_IN_ANGSTROM, from_unit, "length") / _lookup(
        _LENGTH_IN_ANGSTROM, to_unit, "length"
    )


def force_factor(energy_unit: str, length_unit: str) -> float:
    """Return the factor converting forces in energy_unit/length_unit to eV/Angstrom."""
    return energy_factor(energy_unit) / length_factor(length_unit)


# --- the OpenMM boundary ------------------------------------------------------------------------
def positions_to_openmm(x_angstrom: ArrayLike) -> np.ndarray:
    """Convert positions (or box vectors) from Angstrom to nm."""
    return np.asarray(x_angstrom, dtype=float) * NM_PER_ANGSTROM


def positions_from_openmm(x_nm: ArrayLike) -> np.ndarray:
    """Convert positions (or box vectors) from nm to Angstrom."""
    return np.asarray(x_nm, dtype=float) * ANGSTROM_PER_NM


def energy_to_openmm(e_ev: ArrayLike) -> np.ndarray | float:
    """Convert energies from eV to kJ/mol."""
    return np.asarray(e_ev, dtype=float) * KJ_PER_MOL_PER_EV


def energy_from_openmm(e_kj_mol: ArrayLike) -> np.ndarray | float:
    """Convert energies from kJ/mol to eV."""
    return np.asarray(e_kj_mol, dtype=float) * EV_PER_KJ_PER_MOL


def forces_to_openmm(f_ev_per_a: ArrayLike) -> np.ndarray:
    """Convert forces from eV/Angstrom to kJ/mol/nm."""
    return np.asarray(f_ev_per_a, dtype=float) * (KJ_PER_MOL_PER_EV * ANGSTROM_PER_NM)


def forces_from_openmm(f_kj_mol_nm: ArrayLike) -> np.ndarray:
    """Convert forces from kJ/mol/nm to eV/Angstrom."""
    return np.asarray(f_kj_mol_nm, dtype=float) / (KJ_PER_MOL_PER_EV * ANGSTROM_PER_NM)


def time_to_openmm(t_fs: ArrayLike) -> np.ndarray | float:
    """Convert times from fs to ps."""
    return np.asarray(t_fs, dtype=float) / FS_PER_PS


def time_from_openmm(t_ps: ArrayLike) -> np.ndarray | float:
    """Convert times from ps to fs."""
    return np.asarray(t_ps, dtype=float) * FS_PER_PS
