"""Build OpenMM Systems driven entirely by an mlsim model, from a Structure or a Topology."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from mlsim import units
from mlsim.data import Structure
from mlsim.openmm._forces import DEFAULT_BACKEND, create_force

__all__ = ["create_system", "topology_from_structure"]


def topology_from_structure(structure: Structure) -> Any:
    """An OpenMM Topology with one residue per atom (elements and periodic box only, no bonds)."""
    from openmm import app, unit

    top = app.Topology()
    chain = top.addChain()
    for k, z in enumerate(structure.numbers):
        element = app.Element.getByAtomicNumber(int(z))
        residue = top.addResidue("MOL", chain)
        top.addAtom(f"{element.symbol}{k + 1}", element, residue)
    if structure.periodic:
        if not structure.pbc.all():
            raise ValueError(
                "OpenMM supports only fully periodic cells (pbc in all three directions)"
            )
        top.setPeriodicBoxVectors(_reduced_box(structure.cell) * unit.nanometer)
    return top


def _reduced_box(cell_angstrom: np.ndarray) -> list:
    """OpenMM box vectors (nm) for a cell, refusing cells that are not in OpenMM's reduced form."""
    from openmm import Vec3

    box = units.positions_to_openmm(cell_angstrom)
    upper = np.array([box[0, 1], box[0, 2], box[1, 2]])
    if np.abs(upper).max() > 1e-9 * np.abs(box).max():
        raise ValueError(
            "OpenMM needs a cell in reduced form (a along x, b in the xy plane); "
            "rotate the structure first (e.g. ase.Atoms.set_cell with a standard-form cell)"
        )
    if box[0, 0] <= 0 or box[1, 1] <= 0 or box[2, 2] <= 0:
        raise ValueError("the cell must be right-handed with positive diagonal in OpenMM")
    return [Vec3(*row) for row in box]


def create_system(
    model: torch.nn.Module | str | os.PathLike,
    system_or_structure: Structure | Any,
    backend: str = DEFAULT_BACKEND,
    remove_cm_motion: bool = False,
    device: str = "cpu",
    **force_args: Any,
) -> Any:
    """An openmm.System whose only force is the mlsim model (masses from the elements).

    `system_or_structure` is an mlsim Structure or an OpenMM Topology. Extra keywords go to
    create_force (outputs_forces, path for the TorchScript file, dtype, skin).
    """
    import openmm
    from openmm import app, unit

    if isinstance(system_or_structure, Structure):
        topology = topology_from_structure(system_or_structure)
    elif isinstance(system_or_structure, app.Topology):
        topology = system_or_structure
    else:
        raise ValueError(
            f"create_system needs an mlsim Structure or an openmm.app.Topology, "
            f"got {type(system_or_structure).__name__}"
        )
    atoms = list(topology.atoms())
    if any(a.element is None for a in atoms):
        raise ValueError(
            "every atom needs an element for an mlsim model (virtual sites are not supported)"
        )
    numbers = [a.element.atomic_number for a in atoms]
    system = openmm.System()
    box = topology.getPeriodicBoxVectors()
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    for a in atoms:
        system.addParticle(a.element.mass.value_in_unit(unit.dalton))
    system.addForce(
        create_force(
            model, numbers, periodic=box is not None, backend=backend, device=device, **force_args
        )
    )
    if remove_cm_motion:
        system.addForce(openmm.CMMotionRemover())
    return system
