"""Older name of :mod:`mlsim.testsystems`, kept so existing imports keep working (a re-export).
"""

from mlsim.testsystems import (
    ALANINE_PDB,
    ALANINE_SOFT_ROWS,
    TESTSYSTEMS,
    Frames,
    MolecularSystem,
    alanine_dipeptide,
    alanine_zmatrix,
    amber14_system,
    build_alanine_dipeptide_pdb,
    dihedral,
    get_testsystem,
    make_context,
    phi_psi,
    phi_psi_indices,
    run_langevin,
    simulate,
    write_dcd,
)

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
    "make_context",
    "phi_psi",
    "phi_psi_indices",
    "run_langevin",
    "simulate",
    "write_dcd",
]
