"""mlsim demo (`make demo`): the compiled core, a TorchScript module saved by mlsim, and OpenMM.

This grows into the full demo (ethanol model in ASE and OpenMM) as the pipeline lands.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import mlsim
from mlsim import _core, units


class HarmonicWell(torch.nn.Module):
    """A harmonic well in OpenMM units, enough to exercise the TorchForce path end to end."""

    def __init__(self, center_nm: torch.Tensor, k_kj_mol_nm2: float):
        super().__init__()
        self.register_buffer("center", center_nm)
        self.k = k_kj_mol_nm2

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.k * ((positions - self.center) ** 2).sum()


def main() -> None:
    """Run the smoke demo and print what it measured."""
    import openmm
    import openmmtorch

    print(f"mlsim {mlsim.__version__}; C++ core {_core.version()}: {_core.build_info()}")
    x_angstrom = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.5, 0.0]])
    x_nm = units.positions_to_openmm(x_angstrom)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "well.pt"
        torch.jit.script(HarmonicWell(torch.zeros(3, 3, dtype=torch.float64), 100.0)).save(str(path))
        system = openmm.System()
        for _ in range(3):
            system.addParticle(1.0)
        system.addForce(openmmtorch.TorchForce(str(path)))
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(x_nm)
        e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            openmm.unit.kilojoule_per_mole)
    expected = 0.5 * 100.0 * (x_nm**2).sum()
    print(f"OpenMM TorchForce energy {e:.6f} kJ/mol (analytic {expected:.6f}) "
          f"= {units.energy_from_openmm(e):.6f} eV")
    if not np.isclose(e, expected, rtol=1e-6):
        raise SystemExit("demo failed: TorchForce energy does not match the analytic value")


if __name__ == "__main__":
    main()
