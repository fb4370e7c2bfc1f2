"""The foundation: the compiled core is importable and versioned, OpenMM runs an mlsim TorchForce."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import mlsim
from mlsim import units


def test_core_reports_package_version():
    from mlsim import _core

    assert _core.version() == mlsim.__version__
    info = _core.build_info()
    assert ("CPU-only" in info) != _core.cuda_built()


def test_cli_help_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "mlsim", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"mlsim {mlsim.__version__}"
    helptext = subprocess.run(
        [sys.executable, "-m", "mlsim", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: mlsim" in helptext


class _Harmonic(torch.nn.Module):
    """E = k/2 sum |x - x0|^2 in OpenMM units (nm, kJ/mol): analytic energy and forces."""

    def __init__(self, x0: torch.Tensor, k: float):
        super().__init__()
        self.register_buffer("x0", x0)
        self.k = k

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.k * ((positions - self.x0) ** 2).sum()


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_openmm_torchforce_harmonic(tmp_path, platform):
    openmm = pytest.importorskip("openmm")
    from mlsim.openmm import import_openmmtorch

    openmmtorch = import_openmmtorch()
    rng = np.random.default_rng(0)
    n, k = 5, 123.0
    x0 = rng.normal(size=(n, 3))
    path = tmp_path / "harmonic.pt"
    torch.jit.script(_Harmonic(torch.tensor(x0), k)).save(str(path))

    system = openmm.System()
    for _ in range(n):
        system.addParticle(12.0)
    system.addForce(openmmtorch.TorchForce(str(path)))
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform)
    )
    x = x0 + 0.1 * rng.normal(size=(n, 3))
    ctx.setPositions(x)
    state = ctx.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(
        openmm.unit.kilojoule_per_mole / openmm.unit.nanometer
    )
    np.testing.assert_allclose(energy, 0.5 * k * ((x - x0) ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(forces, -k * (x - x0), rtol=1e-5, atol=1e-6)


def test_torchforce_works_when_openmm_is_imported_before_torch(tmp_path):
    # OpenMM loads its plugins on import; openmm-torch's need libtorch, so this order used to leave
    # TorchForce without kernels ("does not support all required kernels"). mlsim repairs it.
    script = f"""
import openmm
import torch
from mlsim.openmm import import_openmmtorch

class Well(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x ** 2).sum()

torch.jit.script(Well()).save({str(tmp_path / "well.pt")!r})
force = import_openmmtorch().TorchForce({str(tmp_path / "well.pt")!r})
system = openmm.System()
system.addParticle(1.0)
system.addForce(force)
for name in ("Reference", "CPU"):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(name))
    ctx.setPositions([[0.3, 0.0, 0.4]])
    e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    assert abs(e - 0.25) < 1e-6, e
print("ok")
"""
    path = tmp_path / "order.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_units_round_trip_and_known_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3))
    np.testing.assert_allclose(units.positions_from_openmm(units.positions_to_openmm(x)), x)
    np.testing.assert_allclose(units.forces_from_openmm(units.forces_to_openmm(x)), x)
    np.testing.assert_allclose(units.energy_from_openmm(units.energy_to_openmm(x)), x)
    np.testing.assert_allclose(units.time_from_openmm(units.time_to_openmm(x)), x)
    # Reference values (CODATA 2018): 1 eV = 96.485332 kJ/mol = 23.060548 kcal/mol, 1 Ha = 27.211386 eV.
    assert units.energy_to_openmm(1.0) == pytest.approx(96.4853321233, rel=1e-10)
    assert units.energy_factor("eV", "kcal/mol") == pytest.approx(23.0605478306, rel=1e-10)
    assert units.energy_factor("Hartree") == pytest.approx(27.211386245988, rel=1e-10)
    assert units.length_factor("bohr") == pytest.approx(0.529177210903, rel=1e-10)
    # 1 eV/A = 964.853 kJ/mol/nm.
    assert float(units.forces_to_openmm(1.0)) == pytest.approx(964.853321233, rel=1e-10)
    assert units.force_factor("kcal/mol", "angstrom") == pytest.approx(1 / 23.0605478306)
    # Agreement with OpenMM's own unit system at the boundary.
    openmm_unit = pytest.importorskip("openmm.unit")
    ev = (1.602176634e-19 * openmm_unit.joule * openmm_unit.AVOGADRO_CONSTANT_NA).value_in_unit(
        openmm_unit.kilojoule_per_mole
    )
    assert units.KJ_PER_MOL_PER_EV == pytest.approx(ev, rel=1e-9)


def test_unknown_unit_is_named():
    with pytest.raises(ValueError, match="unknown energy unit 'kcal'"):
        units.energy_factor("kcal")


def test_top_level_api_is_small_lazy_and_complete():
    """`import mlsim` loads no torch; every advertised name resolves to the subpackage's object."""
    code = (
        "import sys, mlsim; assert 'torch' not in sys.modules, 'import mlsim pulled in torch'; "
        "names = [n for n in mlsim.__all__ if n != '__version__']; "
        "[getattr(mlsim, n) for n in names]; print(len(names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 8 <= int(out.stdout) <= 16
    import mlsim.data
    import mlsim.models

    assert mlsim.read is mlsim.data.read and mlsim.load_model is mlsim.models.load_model
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mlsim.nonexistent  # noqa: B018
