"""Shared molecular test systems (alanine dipeptide), an MD trajectory generator and phi/psi."""

from mlsim.systems._alanine import (
    ALANINE_PDB,
    MolecularSystem,
    alanine_dipeptide,
    amber14_system,
    build_alanine_dipeptide_pdb,
)
from mlsim.systems._dihedrals import dihedral, phi_psi, phi_psi_indices
from mlsim.systems._simulate import Frames, make_context, simulate, write_dcd

__all__ = [
    "ALANINE_PDB",
    "Frames",
    "MolecularSystem",
    "alanine_dipeptide",
    "amber14_system",
    "build_alanine_dipeptide_pdb",
    "dihedral",
    "make_context",
    "phi_psi",
    "phi_psi_indices",
    "simulate",
    "write_dcd",
]
