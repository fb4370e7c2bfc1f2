"""The blow-up guard: bond graph checks (mlsim._geometry_guard) and the ASE observer (MDGuard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from mlsim._geometry_guard import GeometryGuard, SimulationBlowUp, default_max_temperature
from mlsim.ase import MDGuard
from mlsim.ase import SimulationBlowUp as AseBlowUp
from mlsim.openmm import SimulationBlowUp as OpenMMBlowUp

MODEL = Path(__file__).resolve().parents[1] / "examples" / "ethanol" / "model.pt"


class BondMorse(Calculator):
    """Morse bonds on a fixed bond list plus a soft r^-6 repulsion between all other pairs (eV, A).

    A cheap molecule whose bonds can be made weak at will, so dissociation is quick and certain.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, bonds, r0, depth, alpha=2.0, rep=0.3, sigma=1.5) -> None:
        """bonds (n, 2), equilibrium lengths r0 (n,), well depths (n,) in eV."""
        super().__init__()
        self.bonds, self.r0 = np.asarray(bonds), np.asarray(r0, float)
        self.depth, self.alpha, self.rep, self.sigma = np.asarray(depth, float), alpha, rep, sigma

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Energy and forces of the bonds and the repulsion."""
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions
        n = len(x)
        f = np.zeros_like(x)
        i, j = self.bonds.T
        d = x[j] - x[i]
        r = np.linalg.norm(d, axis=1)
        ex = np.exp(-self.alpha * (r - self.r0))
        energy = float(np.sum(self.depth * (1 - ex) ** 2))
        g = (2 * self.depth * self.alpha * ex * (1 - ex) / r)[:, None] * d  # dE/dx_j
        np.add.at(f, j, -g)
        np.add.at(f, i, g)
        bonded = {(int(a), int(b)) for a, b in self.bonds} | {
            (int(b), int(a)) for a, b in self.bonds
        }
        pi, pj = np.triu_indices(n, 1)
        keep = np.array([(a, b) not in bonded for a, b in zip(pi, pj)])
        pi, pj = pi[keep], pj[keep]
        d = x[pj] - x[pi]
        r = np.linalg.norm(d, axis=1)
        e = self.rep * (self.sigma / r) ** 6
        energy += float(e.sum())
        g = (-6 * e / r**2)[:, None] * d
        np.add.at(f, pj, -g)
        np.add.at(f, pi, g)
        self.results = {"energy": energy, "forces": f}


def bond_morse_ethanol(weak_bond=None, weak_depth=0.2):
    """Ethanol on BondMorse (4 eV bonds at their starting lengths); one bond optionally weak."""
    atoms = molecule("CH3CH2OH")
    guard = GeometryGuard.from_structure(atoms.numbers, atoms.positions)
    depth = np.full(len(guard.bonds), 4.0)
    if weak_bond is not None:
        k = [tuple(b) for b in guard.bonds.tolist()].index(weak_bond)
        depth[k] = weak_depth
    atoms.calc = BondMorse(guard.bonds, guard.bond_lengths, depth)
    return atoms


def langevin(atoms, temperature_k, seed):
    """Langevin at temperature_k, 0.5 fs, with reproducible random numbers."""
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))
    return Langevin(
        atoms,
        0.5 * units.fs,
        temperature_K=temperature_k,
        friction=0.01 / units.fs,
        rng=np.random.default_rng(seed),
        fixcm=False,
    )


def test_one_exception_class_for_both_engines():
    assert AseBlowUp is SimulationBlowUp is OpenMMBlowUp
    assert issubclass(SimulationBlowUp, RuntimeError)


def test_ethanol_bond_graph_and_messages():
    atoms = molecule("CH3CH2OH")
    g = GeometryGuard.from_structure(atoms.numbers, atoms.positions)
    # C-C, C-O, O-H, 5 C-H: 8 bonds, nothing else.
    assert len(g.bonds) == 8
    assert g.check(atoms.positions) is None
    x = atoms.positions.copy()
    x[3] = x[2] + 2.0 * (x[3] - x[2])  # O-H from 0.97 to 1.94 A
    assert g.check(x) == (
        "bond 2 (O)-3 (H) broke: 1.943 A (was 0.971 A at the start; broken above 1.698 A)"
    )
    x = atoms.positions.copy()
    x[4] = x[0] + 0.3 * (x[4] - x[0]) / np.linalg.norm(x[4] - x[0])
    assert g.check(x).startswith("atoms 0 (C) and 4 (H) are 0.300 A apart, closer than the 0.5 A")
    x = atoms.positions.copy()
    axis = (x[0] - x[1]) / np.linalg.norm(x[0] - x[1])
    x[3] = x[0] + 1.05 * axis  # hydroxyl H onto the methyl carbon, opposite the C-C bond
    msg = g.check(x)
    assert "atoms 0 (C) and 3 (H) formed a bond" in msg and "bond 2 (O)-3 (H) broke" in msg
    x = atoms.positions.copy()
    x[5] = np.nan
    assert g.check(x) == "position of atom 5 (H) is not finite"


def test_hysteresis_vibrations_never_trigger():
    # H2 + a far He-free H atom: bonded at 1.19 (r+r), a vibration to 1.7 (r+r) is not a break;
    # an H that started at 1.3 (r+r) (not bonded, near) and swings in to 1.0 is not a new bond.
    r = 0.31 * 2
    atoms = Atoms("H3", positions=[[0, 0, 0], [1.19 * r, 0, 0], [0, 1.3 * r, 0]])
    g = GeometryGuard.from_structure(atoms.numbers, atoms.positions)
    assert g.bonds.tolist() == [[0, 1]]
    x = atoms.positions.copy()
    x[1, 0] = 1.7 * r
    x[2, 1] = 1.0 * r
    assert g.check(x) is None
    x[1, 0] = 1.8 * r
    assert "bond 0 (H)-1 (H) broke" in g.check(x)
    # A pair that started far (not near) and comes within 1.1 (r+r) is a new bond.
    atoms = Atoms("H3", positions=[[0, 0, 0], [0.74, 0, 0], [0, 3.0, 0]])
    g = GeometryGuard.from_structure(atoms.numbers, atoms.positions)
    x = atoms.positions.copy()
    x[2] = [0, 0.65, 0]
    assert "atoms 0 (H) and 2 (H) formed a bond" in g.check(x)


def test_periodic_minimum_image_and_metal_contacts():
    # A water molecule split across the cell boundary is whole by minimum image.
    w = molecule("H2O")
    cell = np.diag([6.0, 6.0, 6.0])
    x = w.positions - w.positions[0] + [5.9, 3.0, 3.0]
    g = GeometryGuard.from_structure(w.numbers, x % 6.0, cell, True)
    assert len(g.bonds) == 2 and g.check(x % 6.0, cell, True) is None
    assert g.check(x + cell[0] * 3, cell, True) is None  # unwrapped by whole cells
    assert g.check(x, cell, [False, False, False]) is None  # still whole when not wrapped
    y = x.copy()
    y[1] += 2.0 * (x[1] - x[0])
    assert "bond 0 (O)-1 (H) broke: 2.906 A" in g.check(y % 6.0, cell, True)
    # Na+ and its water trade places: contacts with metals are not bonds.
    atoms = Atoms("NaO", positions=[[0, 0, 0], [2.4, 0, 0]])
    g = GeometryGuard.from_structure(atoms.numbers, atoms.positions)
    assert len(g.bonds) == 0 and g.check(atoms.positions + [[0, 0, 0], [5, 0, 0]]) is None


def test_large_periodic_system_is_checked_via_the_neighbor_list():
    rng = np.random.default_rng(0)
    w = molecule("H2O")
    n_side = 22  # 10,648 waters, 31,944 atoms
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = (grid[:, None, :] * 3.1 + w.positions[None]).reshape(-1, 3)
    numbers = np.tile(w.numbers, len(grid))
    cell = np.eye(3) * 3.1 * n_side
    g = GeometryGuard.from_structure(numbers, pos, cell, True)
    assert len(g.bonds) == 2 * len(grid)
    moved = pos + rng.normal(0, 0.02, pos.shape)
    assert g.check(moved, cell, True) is None
    o, h = 3 * 777, 3 * 777 + 2
    moved[h] += (moved[h] - moved[o]) / np.linalg.norm(moved[h] - moved[o])  # O-H + 1 A
    assert g.check(moved, cell, True).startswith(f"bond {3 * 777} (O)-{3 * 777 + 2} (H) broke")


def test_default_temperature_bound_scales_with_size():
    assert default_max_temperature(300, 1000) == pytest.approx(1500)
    assert default_max_temperature(300, 6) > 6 * 300  # 2 atoms fluctuate far more


def test_guard_stops_langevin_dissociation_and_keeps_last_good(tmp_path):
    atoms = bond_morse_ethanol(weak_bond=(2, 3))
    dyn = langevin(atoms, 3000.0, seed=0)
    path = tmp_path / "last_good.extxyz"
    guard = MDGuard(atoms, dynamics=dyn, max_temperature=0, last_good_path=path)
    dyn.attach(guard, interval=5)
    with pytest.raises(SimulationBlowUp) as info:
        dyn.run(2000)
    msg = str(info.value)
    assert "bond 2 (O)-3 (H) broke" in msg, msg
    good, bad = guard.last_good_step, dyn.nsteps
    assert bad - good == 5 and f"between step {good} (" in msg and f"and step {bad} (" in msg
    assert str(path) in msg
    # The last good state: bonds intact, momenta kept, on disk and in memory alike.
    import ase.io

    ref = molecule("CH3CH2OH")
    check = GeometryGuard.from_structure(ref.numbers, ref.positions)
    assert check.check(guard.last_good.positions) is None
    assert check.check(atoms.positions) is not None
    back = ase.io.read(path)
    np.testing.assert_allclose(back.positions, guard.last_good.positions, atol=1e-6)
    np.testing.assert_allclose(back.get_momenta(), guard.last_good.get_momenta(), atol=1e-6)
    assert back.info["mlsim_step"] == good


def test_guard_is_quiet_for_a_sane_run():
    atoms = bond_morse_ethanol()
    dyn = langevin(atoms, 600.0, seed=1)
    guard = MDGuard(atoms, dynamics=dyn, temperature_k=600.0)
    dyn.attach(guard, interval=5)
    dyn.run(1000)
    assert guard.calls == 201 and guard.last_good_step == 1000


def test_guard_temperature_contacts_and_nan():
    atoms = bond_morse_ethanol()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    guard = MDGuard(atoms, temperature_k=300.0)
    guard()
    assert guard.last_good is not None
    atoms.set_momenta(atoms.get_momenta() * 10)  # 100x the kinetic energy
    with pytest.raises(SimulationBlowUp, match=r"temperature \d+ K is above the \d+ K bound"):
        guard()
    atoms.set_momenta(atoms.get_momenta() / 10)
    atoms.positions[4] = atoms.positions[0] + [0.2, 0, 0]
    with pytest.raises(SimulationBlowUp, match=r"atoms 0 \(C\) and 4 \(H\) are 0.200 A apart"):
        guard()
    atoms.positions[4] = np.inf
    with pytest.raises(SimulationBlowUp, match=r"atom 4 \(H\) is not finite"):
        guard()
    with pytest.raises(SimulationBlowUp, match="starting structure is already unphysical"):
        MDGuard(atoms)


def test_guard_energy_drift_bound():
    atoms = bond_morse_ethanol()
    guard = MDGuard(atoms, max_energy_drift=0.01)
    guard()
    atoms.positions[3] += 0.3 * (atoms.positions[3] - atoms.positions[2])  # +0.3 eV or so
    with pytest.raises(SimulationBlowUp, match="total energy drifted by"):
        guard()


@pytest.mark.skipif(not MODEL.is_file(), reason="shipped model missing")
def test_guard_catches_shipped_model_dissociating_at_high_temperature():
    """The issue's failure: the shipped model lets a C-H bond go at high temperature."""
    from mlsim.ase import MLCalculator

    atoms = molecule("CH3CH2OH")
    atoms.calc = MLCalculator(str(MODEL))
    dyn = langevin(atoms, 3000.0, seed=1)  # breaks a bond within ~60 steps (at 900 K: ~600)
    guard = MDGuard(atoms, dynamics=dyn, temperature_k=3000.0)
    dyn.attach(guard, interval=5)
    with pytest.raises(
        SimulationBlowUp, match=r"bond \d+ \([CO]\)-\d+ \([CHO]\) broke|formed a bond"
    ):
        dyn.run(300)
    assert guard.last_good_step is not None and guard.last_good_step < dyn.nsteps
