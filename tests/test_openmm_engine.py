"""The MD engine layer (mlsim.openmm._engine): units at the OpenMM boundary, integrators, platforms.

The reference values are worked out by hand from physical constants typed here, not taken from
mlsim.units, so a wrong conversion in either place shows up.
"""

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")

from mlsim.openmm import _engine as eng  # noqa: E402

KJ_PER_MOL_PER_EV = 1.602176634e-19 * 6.02214076e23 / 1000.0  # CODATA 2018, exact
EV_PER_AMU_A2_PER_FS2 = 1.66053906660e-27 * 1e-20 / 1e-30 / 1.602176634e-19  # 103.64 eV
KB_EV = 1.380649e-23 / 1.602176634e-19


def bond_system(k_ev_a2: float, r0_a: float, masses=(12.0, 16.0), cell=None):
    """Two particles joined by a harmonic bond given in eV/A^2 and A, put into OpenMM units here."""
    system = openmm.System()
    for m in masses:
        system.addParticle(m)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, r0_a / 10.0, k_ev_a2 * KJ_PER_MOL_PER_EV * 100.0)  # nm, kJ/mol/nm^2
    if cell is not None:
        bond.setUsesPeriodicBoundaryConditions(True)
        system.setDefaultPeriodicBoxVectors(*(np.asarray(cell) / 10.0))
    system.addForce(bond)
    return system


def test_energy_and_forces_come_out_in_ev_and_ev_per_angstrom():
    """E = k/2 (r - r0)^2 and F = -k (r - r0) r_hat, in eV and eV/A, at positions given in A."""
    k, r0 = 3.0, 1.1
    ctx = eng.make_context(bond_system(k, r0), None, "Reference")
    x = np.array([[0.2, -0.1, 0.0], [1.5, 0.3, -0.4]])
    energy, forces = eng.evaluate(ctx, x)
    d = x[1] - x[0]
    r = np.linalg.norm(d)
    assert energy == pytest.approx(0.5 * k * (r - r0) ** 2, rel=1e-10)
    f1 = -k * (r - r0) * d / r
    np.testing.assert_allclose(forces, [-f1, f1], rtol=1e-10, atol=1e-12)
    state = ctx.getState(getPositions=True, getEnergy=True, getForces=True)
    np.testing.assert_allclose(eng.positions_of(state), x, rtol=1e-12)
    assert eng.potential_energy_of(state) == energy
    np.testing.assert_array_equal(eng.forces_of(state), forces)


def test_the_box_is_set_in_angstrom_and_used_for_the_minimum_image():
    """Atoms 0.3 A and 9.5 A along x in a 10 A box are 0.8 A apart through the boundary."""
    k, r0 = 2.0, 1.0
    cell = np.diag([10.0, 11.0, 12.0])
    ctx = eng.make_context(bond_system(k, r0, cell=np.eye(3) * 30.0), None, "Reference")
    x = np.array([[0.3, 1.0, 1.0], [9.5, 1.0, 1.0]])
    energy, forces = eng.evaluate(ctx, x, cell)
    assert energy == pytest.approx(0.5 * k * (0.8 - r0) ** 2, rel=1e-10)
    # The bond is compressed, so atom 0 is pushed towards +x (away from its image neighbour).
    assert forces[0, 0] == pytest.approx(k * (r0 - 0.8), rel=1e-10)
    state = ctx.getState(getPositions=True)
    np.testing.assert_allclose(eng.box_of(state), cell, rtol=1e-12)


def test_verlet_follows_the_analytic_oscillator_in_fs():
    """A stretched bond oscillates with omega = sqrt(k / mu): time step, masses and velocities."""
    k, r0, amp, dt = 2.0, 1.2, 0.1, 0.25
    masses = (12.0, 16.0)
    mu = masses[0] * masses[1] / sum(masses)
    omega = np.sqrt(k / mu / EV_PER_AMU_A2_PER_FS2)  # 1/fs
    integ = eng.verlet_integrator(dt)
    ctx = eng.make_context(bond_system(k, r0, masses), integ, "Reference")
    eng.set_positions(ctx, [[0.0, 0.0, 0.0], [r0 + amp, 0.0, 0.0]])
    e0 = eng.evaluate(ctx)[0]
    done = 0
    for n in (int(round(0.5 * np.pi / omega / dt)), int(round(np.pi / omega / dt))):
        integ.step(n - done)
        done = n
        state = ctx.getState(getPositions=True, getVelocities=True, getEnergy=True)
        t = n * dt
        x, v = eng.positions_of(state), eng.velocities_of(state)
        assert x[1, 0] - x[0, 0] == pytest.approx(r0 + amp * np.cos(omega * t), abs=2e-3)
        rel_v = -amp * omega * np.sin(omega * t)  # A/fs
        assert v[1, 0] - v[0, 0] == pytest.approx(rel_v, abs=1e-3 * amp * omega)
        total = eng.potential_energy_of(state) + eng.kinetic_energy_of(state)
        assert total == pytest.approx(e0, rel=2e-3)


def test_velocities_kinetic_energy_temperature_and_degrees_of_freedom():
    """KE from velocities (A/fs) and masses equals OpenMM's; T = 2 KE / (dof kB)."""
    system = openmm.System()
    for m in (1.008, 12.011, 15.999, 0.0, 14.007):  # one massless (virtual-site-like) particle
        system.addParticle(m)
    system.addConstraint(0, 1, 0.109)
    system.addForce(openmm.CMMotionRemover())
    assert eng.degrees_of_freedom(system) == 3 * 4 - 1 - 3
    ctx = eng.make_context(system, None, "Reference")
    eng.set_positions(ctx, [[0, 0, 0], [1.09, 0, 0], [0, 2, 0], [0, 0, 2], [2, 2, 2]])
    eng.set_velocities(ctx, 300.0, seed=11)
    state = ctx.getState(getVelocities=True, getEnergy=True)
    v = eng.velocities_of(state)
    masses = np.array([system.getParticleMass(i)._value for i in range(5)])
    ke = 0.5 * (masses[:, None] * v**2).sum() * EV_PER_AMU_A2_PER_FS2
    assert eng.kinetic_energy_of(state) == pytest.approx(ke, rel=1e-6)
    dof = eng.degrees_of_freedom(system)
    assert eng.temperature_of(state, dof) == pytest.approx(2 * ke / (dof * KB_EV), rel=1e-6)
    # The same seed draws the same velocities; another seed does not.
    eng.set_velocities(ctx, 300.0, seed=11)
    np.testing.assert_array_equal(eng.velocities_of(ctx.getState(getVelocities=True)), v)
    eng.set_velocities(ctx, 300.0, seed=12)
    assert not np.allclose(eng.velocities_of(ctx.getState(getVelocities=True)), v)


def test_velocity_array_is_set_in_angstrom_per_fs():
    """set_velocity_array takes A/fs: 0.01 A/fs is 1 nm/ps in OpenMM; bad shapes are refused."""
    system = bond_system(10.0, 1.2)
    ctx = eng.make_context(system, None, "Reference")
    eng.set_positions(ctx, [[0, 0, 0], [1.2, 0, 0]])
    v = np.array([[0.01, -0.02, 0.0], [0.003, 0.0, 0.005]])
    eng.set_velocity_array(ctx, v)
    raw = ctx.getState(getVelocities=True).getVelocities(asNumpy=True)._value  # nm/ps
    np.testing.assert_allclose(raw, v * 100.0, rtol=1e-12)
    np.testing.assert_allclose(eng.velocities_of(ctx.getState(getVelocities=True)), v, rtol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        eng.set_velocity_array(ctx, v[:1])
    with pytest.raises(ValueError, match="finite"):
        eng.set_velocity_array(ctx, np.full((2, 3), np.nan))


def test_integrators_take_fs_kelvin_and_friction_per_ps():
    """OpenMM receives ps, K and 1/ps; a seeded Langevin run is reproducible, another seed is not."""
    integ = eng.langevin_integrator(0.5, 310.0, 2.0, seed=7)
    assert isinstance(integ, openmm.LangevinMiddleIntegrator)
    assert integ.getStepSize().value_in_unit(openmm.unit.femtosecond) == pytest.approx(0.5)
    assert integ.getFriction().value_in_unit(openmm.unit.picosecond**-1) == pytest.approx(2.0)
    assert integ.getTemperature().value_in_unit(openmm.unit.kelvin) == 310.0
    assert integ.getRandomNumberSeed() == 7
    assert eng.verlet_integrator(2.0).getStepSize().value_in_unit(openmm.unit.picosecond) == 0.002

    def run(seed):
        ctx = eng.make_context(bond_system(2.0, 1.2), eng.langevin_integrator(1.0, 300, 5, seed))
        eng.set_positions(ctx, [[0.0, 0.0, 0.0], [1.3, 0.0, 0.0]])
        eng.set_velocities(ctx, 300.0, seed=1)
        ctx.getIntegrator().step(50)
        return eng.positions_of(ctx.getState(getPositions=True))

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.allclose(run(3), run(4))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timestep"):
            eng.verlet_integrator(bad)
    with pytest.raises(ValueError, match="temperature"):
        eng.langevin_integrator(1.0, -5.0)
    with pytest.raises(ValueError, match="friction"):
        eng.langevin_integrator(1.0, 300.0, float("inf"))


def test_barostat_is_added_once_reset_and_switched_off():
    """set_barostat adds a MonteCarloBarostat in bar and K, then updates it instead of adding more."""
    system = bond_system(1.0, 1.0, cell=np.eye(3) * 20.0)
    eng.set_barostat(system, 1.0, 300.0, 0)
    assert system.getNumForces() == 1  # interval 0 and no barostat: nothing added
    eng.set_barostat(system, 1.0, 300.0, 25)
    eng.set_barostat(system, 5.0, 350.0, 10)
    baros = [f for f in system.getForces() if isinstance(f, openmm.MonteCarloBarostat)]
    assert len(baros) == 1
    assert baros[0].getDefaultPressure().value_in_unit(openmm.unit.bar) == 5.0
    assert baros[0].getDefaultTemperature().value_in_unit(openmm.unit.kelvin) == 350.0
    assert baros[0].getFrequency() == 10
    eng.set_barostat(system, 5.0, 350.0, 0)
    assert baros[0].getFrequency() == 0


def test_platform_threads_and_simulation():
    """threads reaches the CPU platform; a Simulation runs on the platform asked for."""
    system = bond_system(1.0, 1.0)
    ctx = eng.make_context(system, None, "CPU", threads=2)
    assert ctx.getPlatform().getName() == "CPU"
    assert ctx.getPlatform().getPropertyValue(ctx, "Threads") == "2"
    ref = eng.make_context(system, None, "Reference", threads=2)  # ignored off the CPU platform
    assert ref.getPlatform().getName() == "Reference"
    plat, props = eng.get_platform("CPU")
    assert plat.getName() == "CPU" and props == {}  # no threads: OpenMM's default
    from openmm import app

    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("X", chain)
    for _ in range(2):
        top.addAtom("C", app.Element.getBySymbol("C"), res)
    sim = eng.make_simulation(top, system, eng.verlet_integrator(1.0), "Reference")
    assert sim.context.getPlatform().getName() == "Reference"


def test_platform_errors_name_the_problem():
    """Unknown names list what exists; GPU platforms say what they need; bad settings are refused."""
    known = eng.available_platforms()
    assert "CPU" in known and "Reference" in known
    with pytest.raises(eng.PlatformError, match="'Nope' is not available.*CPU") as err:
        eng.get_platform("Nope")
    assert isinstance(err.value, ValueError)  # run_md and the CLI report ValueErrors
    with pytest.raises(eng.PlatformError, match="did you mean 'CUDA'"):
        eng.get_platform("cuda")
    if "CUDA" not in known:
        with pytest.raises(eng.PlatformError, match="CUDA.*needs a GPU.*'CPU'"):
            eng.make_context(bond_system(1.0, 1.0), None, "CUDA")
    with pytest.raises(eng.PlatformError, match="device.*GPU platform.*'CPU'"):
        eng.get_platform("CPU", device=0)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(eng.PlatformError, match="threads"):
            eng.get_platform("CPU", threads=bad)


def test_a_gpu_platform_that_cannot_start_gives_a_platform_error(monkeypatch):
    """Fault injection: Context creation fails on an installed GPU platform (no device there)."""
    reference = openmm.Platform.getPlatformByName("Reference")
    # The Reference platform has no DeviceIndex property, so OpenMM refuses the Context, as a
    # CUDA platform does on a machine whose GPU or driver is missing.
    monkeypatch.setattr(eng, "get_platform", lambda *a: (reference, {"DeviceIndex": "0"}))
    with pytest.raises(eng.PlatformError, match=r"'CUDA' \(DeviceIndex=0\) could not start.*GPU"):
        eng.make_context(bond_system(1.0, 1.0), None, "CUDA", device=0)
    # The same failure on a CPU-side platform is not dressed up as a GPU problem.
    with pytest.raises(openmm.OpenMMException, match="DeviceIndex"):
        eng.make_context(bond_system(1.0, 1.0), None, "Reference")


def test_maxwell_boltzmann_and_kinetic_energy_in_ase_units():
    """<KE> = 3/2 N kT for velocities drawn in A/fs; kinetic_energy agrees with OpenMM's own."""
    rng = np.random.default_rng(0)
    masses = np.array([1.008, 12.011, 15.999] * 2000)
    v = eng.maxwell_boltzmann(masses, 300.0, rng)
    assert v.shape == (len(masses), 3)
    ke = 0.5 * (masses[:, None] * v**2).sum() * EV_PER_AMU_A2_PER_FS2
    assert abs(ke / (1.5 * len(masses) * KB_EV * 300.0) - 1.0) < 0.03
    # 1e-9: the amu typed here and 1 g/mol / N_A (OpenMM's dalton) differ at 3e-10
    assert eng.kinetic_energy(masses, v) == pytest.approx(ke, rel=1e-9)
    # Free particles: a leapfrog Verlet integrator reports the kinetic energy of velocities
    # shifted by half a step of the forces, so only without forces is it that of the set ones.
    system = openmm.System()
    for m in (12.0, 16.0):
        system.addParticle(m)
    ctx = eng.make_context(system, None, "Reference")
    eng.set_positions(ctx, np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]]))
    vv = eng.maxwell_boltzmann([12.0, 16.0], 500.0, rng)
    eng.set_velocity_array(ctx, vv)
    state = ctx.getState(getEnergy=True)
    assert eng.kinetic_energy([12.0, 16.0], vv) == pytest.approx(
        eng.kinetic_energy_of(state), rel=1e-10
    )
    with pytest.raises(ValueError, match="masses"):
        eng.maxwell_boltzmann([1.0, 0.0], 300.0, rng)


def test_minimize_stops_at_a_tolerance_in_ev_per_angstrom():
    """A stretched bond relaxes until its force is below the tolerance given in eV/A."""
    k, r0 = 3.0, 1.1
    ctx = eng.make_context(bond_system(k, r0), None, "Reference")
    eng.set_positions(ctx, np.array([[0.0, 0.0, 0.0], [1.6, 0.0, 0.0]]))
    eng.minimize(ctx, 1e-4, 0)
    _, forces = eng.evaluate(ctx)
    assert np.abs(forces).max() < 1e-4
    x = eng.positions_of(ctx.getState(getPositions=True))
    assert np.linalg.norm(x[1] - x[0]) == pytest.approx(r0, abs=1e-4 / k * 2)
