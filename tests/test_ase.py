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
    single, single_f = [], []
    for m in members:
        b = atoms.copy()
        b.calc = MLCalculator(m)
        single.append(b.get_potential_energy())
        single_f.append(b.get_forces())
    assert atoms.get_potential_energy() == pytest.approx(np.mean(single), rel=1e-10)
    assert atoms.calc.get_property("uncertainty", atoms) == pytest.approx(np.std(single), rel=1e-8)
    # Committee forces: the mean of the members' forces; per-atom spread: RMS over members of
    # |F_k,i - mean F_i|, both against the members evaluated one by one.
    f = np.array(single_f)
    np.testing.assert_allclose(atoms.get_forces(), f.mean(0), rtol=0, atol=1e-10)
    spread = np.sqrt(((f - f.mean(0)) ** 2).sum(-1).mean(0))
    got = atoms.calc.get_property("forces_uncertainty", atoms)
    assert got.shape == (9,) and spread.min() > 0
    np.testing.assert_allclose(got, spread, rtol=1e-8, atol=1e-12)
    # Stress requested on a periodic copy (box far larger than the cutoff, so no image
    # interacts): the same spread through the stress path.
    per = atoms.copy()
    per.cell, per.pbc = np.eye(3) * 12.0, True
    per.center()
    per.calc = MLCalculator(ens)
    per.get_stress()
    np.testing.assert_allclose(per.calc.results["forces_uncertainty"], spread, rtol=1e-8)
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


def _small_models() -> dict[str, torch.nn.Module]:
    """Small float64 PaiNN, ANI and a scripted ensemble (cutoffs differ, so masking is tested)."""
    torch.manual_seed(0)
    painn_m = models.PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=2).double()
    ani_m = models.ANIModel(
        [1, 6, 8], radial_cutoff=4.5, angular_cutoff=3.5, hidden=(16,), radial_num_shifts=8
    ).double()
    ens = torch.jit.script(
        models.Ensemble(
            [
                models.PaiNNModel([1, 6, 8], cutoff=c, features=8, num_interactions=1).double()
                for c in (3.5, 4.0)
            ]
        )
    )
    return {"painn": painn_m, "ani": ani_m, "ensemble": ens}


@pytest.mark.parametrize("system", ["crystal", "ethanol"])
def test_neighbor_list_reuse_matches_rebuild_every_step(system):
    periodic = system == "crystal"
    base = (water_box() if periodic else ethanol()).to_atoms()
    rng = np.random.default_rng(7)
    for name, model in _small_models().items():
        reuse = MLCalculator(model, skin=0.5)
        fresh = MLCalculator(model, skin=0.0)
        atoms = base.copy()
        moves = [rng.normal(scale=0.02, size=atoms.positions.shape) for _ in range(5)]
        moves.append(np.full(atoms.positions.shape, 0.0))
        moves[-1][0] = [0.4, 0.0, 0.0]  # one atom now > skin/2 from where the list was built
        for step, move in enumerate(moves):
            atoms.positions += move
            a, b = atoms.copy(), atoms.copy()
            a.calc, b.calc = reuse, fresh
            np.testing.assert_allclose(
                a.get_potential_energy(), b.get_potential_energy(), rtol=0, atol=1e-10
            )
            np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-10)
            if periodic:
                np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=0, atol=1e-10)
            if name == "ensemble":
                assert a.calc.get_property("uncertainty", a) == pytest.approx(
                    b.calc.get_property("uncertainty", b), abs=1e-10
                )
            # Built once for the small moves; the last move forces a second build.
            assert reuse.neighbor_list_builds == (1 if step < len(moves) - 1 else 2), name
        assert fresh.neighbor_list_builds == 0
        if periodic:  # a changed cell invalidates the list (pairs and shifts depend on it)
            a = atoms.copy()
            a.set_cell(a.cell.array * 1.01, scale_atoms=True)
            b = a.copy()
            a.calc, b.calc = reuse, fresh
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)
            assert reuse.neighbor_list_builds == 3


def test_neighbor_list_reused_during_md_and_bad_skin():
    from ase import units as ase_units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = water_box().to_atoms()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(1))
    ref = atoms.copy()
    atoms.calc = MLCalculator(painn(), skin=0.5)
    ref.calc = MLCalculator(painn(), skin=0.0)
    for a in (atoms, ref):
        VelocityVerlet(a, timestep=0.5 * ase_units.fs).run(20)
    assert atoms.calc.neighbor_list_builds < 5  # 21 force calls, atoms move ~0.01 A per step
    np.testing.assert_allclose(atoms.positions, ref.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="skin"):
        MLCalculator(painn(), skin=-0.1)


def test_shared_calculator_is_thread_safe():
    """Four threads share one calculator, each asking for other structures: every energy and
    force equals the serial reference (no thread gets another thread's results, no errors)."""
    import sys
    import threading

    model = painn()
    rng = np.random.default_rng(11)
    structures = []
    for _ in range(4):
        a = ethanol().to_atoms()
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        structures.append(a)
    reference = []
    for a in structures:
        b = a.copy()
        b.calc = MLCalculator(model)
        reference.append((b.get_potential_energy(), b.get_forces()))
    shared = MLCalculator(model)
    failures: list[str] = []

    def hammer(t: int) -> None:
        try:
            for n in range(100):
                k = (t + n) % len(structures)
                a = structures[k].copy()
                a.calc = shared
                e, f = a.get_potential_energy(), a.get_forces()
                # Scripted models may differ in the last bits between profiling runs; other
                # structures differ by far more (rattled by 0.1 A).
                if abs(e - reference[k][0]) > 1e-9 or not np.allclose(
                    f, reference[k][1], rtol=0, atol=1e-9
                ):
                    failures.append(f"thread {t} call {n}: results of another structure")
        except Exception as exc:  # noqa: BLE001 - any error in a thread is a failure here
            failures.append(f"thread {t}: {type(exc).__name__}: {exc}")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that a race shows within 400 calls
    try:
        threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert not failures, f"{len(failures)} of 400 calls failed, e.g. {failures[:3]}"
    assert "thread" in MLCalculator.__doc__.lower()


def test_overlapping_atoms_raise_naming_the_atoms():
    """Two atoms at one position (or 0.05 A apart) give an error naming both atoms and the
    distance, instead of NaN energy and forces; also across a periodic boundary."""
    from ase import Atoms

    atoms = ethanol().to_atoms()
    atoms.positions[7] = atoms.positions[2]  # an H onto the O
    for skin in (0.5, 0.0):
        atoms.calc = MLCalculator(painn(), skin=skin)
        with pytest.raises(ValueError, match=r"atom 2 \(O\) and atom 7 \(H\) .* 0 A apart"):
            atoms.get_potential_energy()
    atoms.positions[7] = atoms.positions[2] + [0.05, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"atom 2 \(O\) and atom 7 \(H\) .*0\.05 A apart"):
        atoms.get_forces()
    box = Atoms("OH", positions=[[0.02, 1, 1], [5.97, 1, 1]], cell=[6, 6, 6], pbc=True)
    box.calc = MLCalculator(painn())
    with pytest.raises(ValueError, match=r"atom 0 \(O\) and atom 1 \(H\) .*0\.05 A apart"):
        box.get_potential_energy()
    # A short but real bond is fine.
    atoms.positions[7] = atoms.positions[2] + [0.9, 0.0, 0.0]
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(ValueError, match="min_distance"):
        MLCalculator(painn(), min_distance=-1.0)


@pytest.mark.parametrize(("z", "message"), [(119, "atomic number 119"), (-1, "atomic number -1")])
def test_atomic_numbers_outside_periodic_table_are_named(z, message):
    """Z=119 (was an IndexError) and Z=-1 (was shown as 'Og') get a clear ValueError."""
    atoms = ethanol().to_atoms()
    numbers = atoms.numbers.copy()
    numbers[4] = z
    atoms.numbers = numbers
    atoms.calc = MLCalculator(painn())
    with pytest.raises(ValueError, match=rf"{message} at atom 4, which is not an element") as err:
        atoms.get_potential_energy()
    assert "Og" not in str(err.value)
