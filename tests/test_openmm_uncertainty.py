"""Committee uncertainty in OpenMM: mlsim md logs it and stops above a threshold; a reporter for
plain OpenMM scripts does the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")

from ase.build import molecule  # noqa: E402

from mlsim import units  # noqa: E402
from mlsim.data import Structure  # noqa: E402
from mlsim.models import Ensemble, PaiNNModel  # noqa: E402
from mlsim.models._uncertainty import committee_properties  # noqa: E402
from mlsim.openmm import SimulationBlowUp, create_system, run_md  # noqa: E402
from mlsim.openmm._uncertainty import UncertaintyExceeded, UncertaintyReporter  # noqa: E402


@pytest.fixture(scope="module")
def committee() -> torch.jit.ScriptModule:
    torch.manual_seed(4)
    members = [
        PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double() for _ in range(3)
    ]
    return torch.jit.script(Ensemble(members).eval())


def _ethanol() -> Structure:
    return Structure.from_atoms(molecule("CH3CH2OH"))


def _rows(path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", comments="#", ndmin=2)


def test_md_logs_committee_spread_at_every_report(committee, tmp_path):
    s = _ethanol()
    res = run_md(committee, s, tmp_path, steps=40, report_interval=10, seed=1,
                 geometry_check=False, progress=False)  # fmt: skip
    rows = _rows(tmp_path / "uncertainty.csv")
    assert rows[:, 0].tolist() == [10, 20, 30, 40]
    # The last row is the committee's spread at the final positions, recomputed independently.
    final = openmm.XmlSerializer.deserialize(res.final_state.read_text())
    pos = units.positions_from_openmm(np.asarray(final.getPositions(asNumpy=True)._value))
    out = committee_properties(
        committee, torch.as_tensor(s.numbers), torch.as_tensor(pos), torch.zeros(1, 3, 3),
        torch.zeros(1, 3, dtype=torch.bool), torch.zeros(len(s), dtype=torch.long),
    )  # fmt: skip
    spread = out["forces_std"].numpy()
    assert rows[-1, 2] == pytest.approx(spread.max(), rel=1e-5)
    assert rows[-1, 3] == pytest.approx(spread.mean(), rel=1e-5)
    assert int(rows[-1, 4]) == int(spread.argmax())
    assert rows[-1, 5] == pytest.approx(float(out["energy_std"][0]), rel=1e-5)


def test_md_stops_above_the_uncertainty_threshold_keeping_the_last_good_state(committee, tmp_path):
    s = _ethanol()
    with pytest.raises(SimulationBlowUp, match="force uncertainty on atom .* above the 1e-06"):
        run_md(committee, s, tmp_path, steps=40, report_interval=10, seed=1,
               geometry_check=False, progress=False, max_uncertainty=1e-6)  # fmt: skip
    assert (tmp_path / "last_good_state.xml").is_file()
    assert (tmp_path / "checkpoint.chk").is_file()
    single = PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double()
    with pytest.raises(ValueError, match="needs a committee"):
        run_md(torch.jit.script(single), s, tmp_path / "b", steps=10, max_uncertainty=0.1,
               progress=False)  # fmt: skip


def test_reporter_in_a_plain_openmm_script(committee, tmp_path):
    s = _ethanol()
    system = create_system(committee, s)
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("ETH", chain)
    for z in s.numbers:
        top.addAtom(str(z), app.Element.getByAtomicNumber(int(z)), res)

    def simulation(threshold):
        integ = openmm.LangevinMiddleIntegrator(300, 1.0, 0.0005)
        sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("Reference"))
        sim.context.setPositions(units.positions_to_openmm(s.positions))
        rep = UncertaintyReporter(
            committee, tmp_path / f"u{threshold}.csv", 5, s.numbers, threshold
        )
        sim.reporters.append(rep)
        return sim, rep

    sim, rep = simulation(None)
    sim.step(20)
    rep.close()
    rows = _rows(tmp_path / "uNone.csv")
    assert rows[:, 0].tolist() == [5, 10, 15, 20] and (rows[:, 2] > 0).all()
    assert rep.max_seen == pytest.approx(rows[:, 2].max(), rel=1e-5)  # CSV keeps 6 digits
    sim, rep = simulation(1e-6)
    with pytest.raises(UncertaintyExceeded, match="step 5"):
        sim.step(20)
    assert rep.last_good_state is None  # the very first report was already above
