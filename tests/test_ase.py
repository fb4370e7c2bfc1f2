"""The ASE calculator: derivatives against finite differences, NVE, optimisers, I/O, ensembles."""

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from mlsim.data import Structure

models = pytest.importorskip("mlsim.models")
pytest.importorskip("openmm")

from test_openmm import (  # noqa: E402 - shared test-only stand-in and helpers
    NVE_DRIFT_BOUND,
    NVE_FLUCT_BOUND,
    MorseStandIn,
    _nve_drift,
    ethanol,
    painn,
    relaxed_ethanol_standin,
    water_box,
)

from mlsim.ase import MLCalculator  # noqa: E402

torch.set_num_threads(1)


def test_forces_match_finite_differences():
    atoms = ethanol().to_atoms()
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    atoms.calc = MLCalculator(painn())
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), numeric, atol=1e-6)
    assert np.abs(numeric).max() > 1e-2  # a non-trivial check


def test_stress_matches_finite_differences_and_needs_pbc():
    atoms = water_box().to_atoms()
    atoms.set_cell(
        atoms.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.03], [0.0, 0.0, 1.0]]),
        scale_atoms=True,
    )
    atoms.calc = MLCalculator(painn())
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    stress = atoms.get_stress()
    np.testing.assert_allclose(stress, numeric, atol=1e-6)
    assert np.abs(stress).max() > 1e-4
    mol = ethanol().to_atoms()
    mol.calc = MLCalculator(painn())
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        mol.get_stress()


def test_ase_nve_velocity_verlet_conserves_energy():
    from ase import units as ase_units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = relaxed_ethanol_standin().to_atoms()
    atoms.calc = MLCalculator(MorseStandIn())
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(3))
    dyn = VelocityVerlet(atoms, timestep=0.5 * ase_units.fs)
    times, etot = [], []

    def record() -> None:
        times.append(dyn.get_time() / (1000 * ase_units.fs))
        etot.append(atoms.get_total_energy())

    dyn.attach(record, interval=20)
    dyn.run(2000)
    assert times[-1] == pytest.approx(1.0)
    # Same bounds and reasoning as the OpenMM NVE test (see NVE_DRIFT_BOUND in test_openmm.py).
    drift, fluct = _nve_drift(np.array(times), np.array(etot), len(atoms))
    assert drift < NVE_DRIFT_BOUND, f"drift {drift:.2e} eV/atom/ps"
    assert fluct < NVE_FLUCT_BOUND
    assert atoms.get_temperature() > 30


def test_langevin_optimisers_and_trajectory_io(tmp_path):
    from ase import units as ase_units
    from ase.io import Trajectory, read
    from ase.md.langevin import Langevin
    from ase.optimize import BFGS, FIRE

    model = painn()
    atoms = ethanol().to_atoms()
    atoms.calc = MLCalculator(model)
    traj = Trajectory(str(tmp_path / "md.traj"), "w", atoms)
    dyn = Langevin(
        atoms,
        0.5 * ase_units.fs,
        temperature_K=300,
        friction=0.02,
        fixcm=False,
        rng=np.random.default_rng(0),
    )
    dyn.attach(traj.write, interval=5)
    dyn.run(20)
    traj.close()
    frames = read(str(tmp_path / "md.traj"), ":")
    assert len(frames) == 5
    for f in frames:  # stored energies are the calculator's at those positions
        ref = f.get_potential_energy()
        f.calc = MLCalculator(model)
        assert f.get_potential_energy() == pytest.approx(ref, rel=1e-12)
    for opt in (BFGS, FIRE):
        a = relaxed_ethanol_standin().to_atoms()
        a.positions += np.random.default_rng(1).normal(scale=0.05, size=a.positions.shape)
        a.calc = MLCalculator(MorseStandIn())
        e0 = a.get_potential_energy()
        assert opt(a, logfile=None).run(fmax=0.02, steps=300)
        assert a.get_potential_energy() < e0 and np.abs(a.get_forces()).max() < 0.02


def test_ensemble_uncertainty_is_member_spread():
    torch.manual_seed(0)
    members = [
        models.PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double()
        for _ in range(3)
    ]
    ens = torch.jit.script(models.Ensemble(members))
    atoms = ethanol().to_atoms()
    atoms.calc = MLCalculator(ens)
    single = []
    for m in members:
        b = atoms.copy()
        b.calc = MLCalculator(m)
        single.append(b.get_potential_energy())
    assert atoms.get_potential_energy() == pytest.approx(np.mean(single), rel=1e-10)
    assert atoms.calc.get_property("uncertainty", atoms) == pytest.approx(np.std(single), rel=1e-8)
    assert atoms.get_forces().shape == (9, 3)
    plain = ethanol().to_atoms()
    plain.calc = MLCalculator(painn())
    with pytest.raises(PropertyNotImplementedError, match="ensemble"):
        plain.calc.get_property("uncertainty", plain)


def test_bad_inputs_fail_clearly(tmp_path):
    from ase.build import molecule

    calc = MLCalculator(painn())
    chloro = molecule("CH3Cl")
    chloro.calc = calc
    with pytest.raises(ValueError, match=r"Cl \(Z=17\)"):
        chloro.get_potential_energy()
    broken = ethanol().to_atoms()
    broken.positions[0, 0] = np.nan
    broken.calc = calc
    with pytest.raises(ValueError, match="NaN"):
        broken.get_potential_energy()
    with pytest.raises(FileNotFoundError):
        MLCalculator(tmp_path / "missing.pt")
    # The calculator loads model.pt files written by mlsim.models.save_model.
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    models.save_model(
        models.PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double(),
        path,
        spec={"architecture": "painn", "elements": [1, 6, 8]},
    )
    atoms = Structure.from_atoms(molecule("CH3CH2OH")).to_atoms()
    atoms.calc = MLCalculator(path)
    assert np.isfinite(atoms.get_potential_energy())
