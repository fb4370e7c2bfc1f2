"""The openmm-ml MLPotentialImpl for mlsim models (imported lazily by the factory)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from openmmml.mlpotential import MLPotentialImpl

from mlsim.openmm._forces import create_force
from mlsim.openmm._module import resolve_model

__all__ = ["MLSimPotentialImpl", "keep_molecules_whole"]


def keep_molecules_whole(topology: Any, system: Any, atoms: list[int]) -> Any | None:
    """Add zero-strength bonds between bonded ML atoms; returns the force (None: no bonds).

    The ML/MM embeddings remove the ML atoms' bonds from the System, and OpenMM finds molecules
    from bonds: without these, a Monte Carlo barostat moves each ML atom on its own (more
    rejected moves) and periodic wrapping of states and trajectories splits the ML molecule.
    """
    import openmm

    ml = set(atoms)
    pairs = [
        (b.atom1.index, b.atom2.index)
        for b in topology.bonds()
        if b.atom1.index in ml and b.atom2.index in ml
    ]
    if not pairs:
        return None
    force = openmm.HarmonicBondForce()
    force.setName("ML atoms' connectivity (k = 0): keeps ML molecules whole")
    for i, j in pairs:
        force.addBond(i, j, 0.1, 0.0)
    force.setUsesPeriodicBoundaryConditions(system.usesPeriodicBoundaryConditions())
    system.addForce(force)
    return force


class MLSimPotentialImpl(MLPotentialImpl):
    """Adds an mlsim force (PythonForce or TorchForce) for the whole system or the ML atoms."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module | str | os.PathLike,
        backend: str | None = None,
        device: str | None = None,
    ) -> None:
        """Load the model once; every createSystem call reuses it."""
        self.name = name
        self.device = device or "cpu"
        self.model = resolve_model(model, self.device)
        # PythonForce by default here: openmm-ml copies forces through XmlSerializer (interpolating
        # ML/MM systems), and openmm-torch 1.5 cannot deserialize a TorchForce (it crashes).
        self.backend = backend or "python"

    def addForces(  # noqa: N802 - openmm-ml's method name
        self,
        topology: Any,
        system: Any,
        atoms: Iterable[int] | None,
        forceGroup: int,  # noqa: N803
        backend: str | None = None,
        precision: str | None = None,
        outputs_forces: bool = True,
        **embedding_args: Any,
    ) -> None:
        """Add the model's force for `atoms` (None: every atom) in force group `forceGroup`.

        precision "single"/"double" casts the model (default: its own dtype). The ML/MM embeddings
        pass their own options (e.g. linkAtomDistances) through here too; those are not ours.
        """
        dtypes = {None: None, "single": torch.float32, "double": torch.float64}
        if precision not in dtypes:
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        all_atoms = list(topology.atoms())
        selected = all_atoms if atoms is None else [all_atoms[i] for i in atoms]
        if any(a.element is None for a in selected):
            raise ValueError("every ML atom needs an element (virtual sites cannot be ML atoms)")
        numbers = [a.element.atomic_number for a in selected]
        periodic = (
            topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        )
        force = create_force(
            self.model,
            numbers,
            periodic=periodic,
            atoms=None if atoms is None else list(atoms),
            backend=backend or self.backend,
            device=self.device,
            outputs_forces=outputs_forces,
            dtype=dtypes[precision],
        )
        force.setForceGroup(forceGroup)
        system.addForce(force)
        if atoms is not None and system.getNumParticles() > 0:
            keep_molecules_whole(topology, system, list(atoms))

    def getMLLongRange(self) -> bool:  # noqa: N802 - openmm-ml's method name
        """mlsim models are local (finite cutoff), which the ML/MM embeddings need to know."""
        return False
