"""Shipped molecular test systems (as openmmtools.testsystems): alanine dipeptide and other capped
dipeptides ACE-X-NME with Amber14, an OpenMM Langevin trajectory generator, and phi/psi/chi.

Library code (mlsim.propagators, mlsim.analysis) holds no molecule-specific tables; what is
particular to a shipped molecule lives here. Positions are in Angstrom (ASE units); the OpenMM
objects keep their nm. `mlsim.systems` is the older name of this package and re-exports it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from mlsim.testsystems._alanine import (
    ALANINE_PDB,
    MolecularSystem,
    alanine_dipeptide,
    amber14_system,
)
from mlsim.testsystems._dihedrals import dihedral, phi_psi
from mlsim.testsystems._dipeptides import (
    DIPEPTIDE_RESIDUES,
    build_capped_dipeptide_pdb,
    capped_dipeptide,
    dipeptide_torsions,
    set_torsions,
)
from mlsim.testsystems._simulate import Frames, run_langevin, simulate, write_dcd

__all__ = [
    "ALANINE_PDB",
    "DIPEPTIDE_RESIDUES",
    "TESTSYSTEMS",
    "Frames",
    "MolecularSystem",
    "alanine_dipeptide",
    "amber14_system",
    "build_capped_dipeptide_pdb",
    "capped_dipeptide",
    "dihedral",
    "dipeptide_torsions",
    "get_testsystem",
    "phi_psi",
    "run_langevin",
    "set_torsions",
    "simulate",
    "write_dcd",
]

# Name -> builder(solvent, constraints); the names `mlsim propagate` accepts instead of a file.
TESTSYSTEMS: dict[str, Callable[..., MolecularSystem]] = {
    "alanine": alanine_dipeptide,
    "alanine-dipeptide": alanine_dipeptide,
}
# ACE-X-NME for every shipped residue X: "ace-val-nme", ...
for _res in DIPEPTIDE_RESIDUES:
    TESTSYSTEMS[f"ace-{_res.lower()}-nme"] = functools.partial(capped_dipeptide, _res)


def get_testsystem(
    name: str, solvent: str = "vacuum", constraints: str | None = None
) -> MolecularSystem:
    """Build the shipped test system `name` (see TESTSYSTEMS) with the given solvent/constraints."""
    key = name.strip().lower()
    if key not in TESTSYSTEMS:
        raise ValueError(f"unknown test system {name!r}; known: {sorted(TESTSYSTEMS)}")
    return TESTSYSTEMS[key](solvent, constraints)
