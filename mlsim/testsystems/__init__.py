"""Shipped molecular test systems (as openmmtools.testsystems): alanine dipeptide with Amber14,
an OpenMM Langevin trajectory generator, and phi/psi.

Library code (mlsim.propagators, mlsim.analysis) holds no molecule-specific tables; what is
particular to a shipped molecule lives here. Positions are in Angstrom (ASE units); the OpenMM
objects keep their nm. `mlsim.systems` is the older name of this package and re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable

from mlsim.testsystems._alanine import (
    ALANINE_PDB,
    ALANINE_SOFT_ROWS,
    MolecularSystem,
    alanine_dipeptide,
    alanine_zmatrix,
    amber14_system,
    build_alanine_dipeptide_pdb,
)
from mlsim.testsystems._dihedrals import dihedral, phi_psi, phi_psi_indices
from mlsim.testsystems._simulate import Frames, run_langevin, simulate, write_dcd

__all__ = [
    "ALANINE_PDB",
    "ALANINE_SOFT_ROWS",
    "TESTSYSTEMS",
    "Frames",
    "MolecularSystem",
    "alanine_dipeptide",
    "alanine_zmatrix",
    "amber14_system",
    "build_alanine_dipeptide_pdb",
    "dihedral",
    "get_testsystem",
    "phi_psi",
    "phi_psi_indices",
    "run_langevin",
    "simulate",
    "write_dcd",
]

# Name -> builder(solvent, constraints); the names `mlsim propagate` accepts instead of a file.
TESTSYSTEMS: dict[str, Callable[..., MolecularSystem]] = {
    "alanine": alanine_dipeptide,
    "alanine-dipeptide": alanine_dipeptide,
}


def get_testsystem(
    name: str, solvent: str = "vacuum", constraints: str | None = None
) -> MolecularSystem:
    """Build the shipped test system `name` (see TESTSYSTEMS) with the given solvent/constraints."""
    key = name.strip().lower()
    if key not in TESTSYSTEMS:
        raise ValueError(f"unknown test system {name!r}; known: {sorted(TESTSYSTEMS)}")
    return TESTSYSTEMS[key](solvent, constraints)
