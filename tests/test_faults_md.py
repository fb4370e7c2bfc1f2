"""Fault injection for `mlsim md`: kills and resumes, blow-ups, damaged files.

All runs use the shipped ethanol model (examples/ethanol/model.pt, ~10 ms per step on one core),
so the bond and temperature checks see a physical molecule; each test takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
mdtraj = pytest.importorskip("mdtraj")

from mlsim import units  # noqa: E402
from mlsim.cli import main  # noqa: E402
from mlsim.data import Structure  # noqa: E402
from mlsim.openmm import SimulationBlowUp, run_md  # noqa: E402
from mlsim.openmm import _md as md_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "ethanol" / "model.pt"
if not MODEL.is_file():
    pytest.skip(f"shipped model {MODEL} is missing", allow_module_level=True)


def ethanol() -> Structure:
    """Ethanol as ase.build makes it (the shipped model handles it at 300 K, 0.5 fs)."""
    from ase.build import molecule

    return Structure.from_atoms(molecule("CH3CH2OH"))


@pytest.fixture()
def xyz(tmp_path) -> Path:
    """The starting structure as a file, for the command line."""
    path = tmp_path / "ethanol.xyz"
    ethanol().to_atoms().write(path)
    return path


def csv_steps(path: Path) -> np.ndarray:
    """The Step column of a state.csv."""
    rows = np.genfromtxt(path, delimiter=",", names=True)
    return np.atleast_1d(rows["Step"]).astype(int)


def dcd_frames(path: Path) -> tuple[int, int]:
    """(frame count in the DCD header, frames that the file length holds) for a 9-atom DCD."""
    data = path.read_bytes()
    n_header = struct.unpack("<i", data[8:12])[0]
    title = struct.unpack("<i", data[92:96])[0]
    header_len, frame_bytes = 112 + title, 3 * (8 + 4 * 9)
    assert (len(data) - header_len) % frame_bytes == 0, "a partial frame is left in the file"
    return n_header, (len(data) - header_len) // frame_bytes


def assert_complete_run(out: Path, steps: int, interval: int, traj: str = "trajectory.dcd"):
    """Every frame and row exactly once: steps/interval of each, CSV steps strictly increasing."""
    expected = np.arange(interval, steps + 1, interval)
    got = csv_steps(out / "state.csv")
    assert np.all(np.diff(got) > 0), f"state.csv steps not strictly increasing: {got.tolist()}"
    np.testing.assert_array_equal(got, expected)
    t = mdtraj.load(str(out / traj), top=str(out / "topology.pdb"))
    assert t.n_frames == steps // interval and np.isfinite(t.xyz).all()
    if traj.endswith(".dcd"):
        assert dcd_frames(out / traj) == (steps // interval, steps // interval)
    else:  # XTC frames carry their steps
        from openmm.app.internal.xtc_utils import read_xtc

        np.testing.assert_array_equal(read_xtc(str(out / traj).encode())[3], expected)


def test_sigkill_mid_run_then_resume_has_each_frame_once(tmp_path, xyz):
    out = tmp_path / "md"
    args = [str(MODEL), "--structure", str(xyz), "-o", str(out), "--report-interval", "5"]
    args += ["--checkpoint-interval", "50", "--seed", "1", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlsim", "md", *args, "--steps", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Kill once a checkpoint exists and 20+ steps were reported after it (the frames that the
    # resumed run writes again), well before the next checkpoint.
    deadline = time.monotonic() + 120
    last = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoint.chk").is_file() and (out / "state.csv").is_file():
                lines = (out / "state.csv").read_text().splitlines()
                if len(lines) > 1 and lines[-1].count(",") == lines[0].count(","):
                    last = int(lines[-1].split(",")[0])
                    if last > 50 and 20 <= last % 50 <= 30:
                        break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = csv_steps(out / "state.csv")[-1]
    assert killed_at % 50 != 0  # frames past the checkpoint exist: the case that duplicated them

    steps = (killed_at // 50 + 1) * 50
    assert main(["md", *args, "--steps", str(steps), "--resume"]) == 0
    assert_complete_run(out, steps, 5)
    # The frame spacing is stored with the trajectory and in its header (for mlsim analyze).
    from mlsim.analysis._timestep import dcd_header_frame_interval_ps, file_frame_interval_ps

    meta = json.loads((out / "trajectory.dcd.json").read_text())
    assert meta["frame_interval_ps"] == pytest.approx(5 * 0.5e-3)
    assert meta["timestep_fs"] == 0.5 and "kJ/mol" in meta["units"]["state.csv"]
    assert file_frame_interval_ps(out / "trajectory.dcd")[0] == pytest.approx(2.5e-3)
    assert dcd_header_frame_interval_ps(out / "trajectory.dcd") == pytest.approx(2.5e-3)


class Crash(Exception):
    """Stands for a kill: raised from inside the MD loop."""


def crash_after(monkeypatch, n_checks: int) -> None:
    """Make run_md's n-th state check raise Crash (as if the process died right then)."""
    real = md_module._problem
    calls = {"n": 0}

    def problem(state, limits):
        calls["n"] += 1
        if calls["n"] > n_checks:
            raise Crash
        return real(state, limits)

    monkeypatch.setattr(md_module, "_problem", problem)


@pytest.mark.parametrize("traj", ["trajectory.dcd", "trajectory.xtc"])
def test_crash_after_checkpoint_then_resume_trims_outputs(tmp_path, monkeypatch, traj):
    out = tmp_path / "md"
    kw = dict(report_interval=5, checkpoint_interval=25, seed=2, progress=False, trajectory=traj)
    # Check 1 is the start; checks 2..9 are steps 5..40: checkpoint at 25, frames up to 40.
    crash_after(monkeypatch, 9)
    with pytest.raises(Crash):
        run_md(MODEL, ethanol(), out, steps=100, **kw)
    monkeypatch.undo()
    assert csv_steps(out / "state.csv")[-1] == 40
    # A kill can also cut the last CSV row and the last DCD frame short.
    with open(out / "state.csv", "a") as fh:
        fh.write("45,0.0225,-4066")
    if traj.endswith(".dcd"):
        with open(out / traj, "ab") as fh:
            fh.write(b"\0" * 50)
    res = run_md(MODEL, ethanol(), out, steps=60, resume=True, **kw)
    assert res.steps == 60
    assert_complete_run(out, 60, 5, traj)


def test_blowup_at_large_timestep_exits_nonzero_and_keeps_last_good_state(tmp_path, xyz, capsys):
    out = tmp_path / "md"
    args = [str(MODEL), "--structure", str(xyz), "-o", str(out), "--timestep", "3"]
    args += ["--report-interval", "2", "--steps", "300", "--seed", "1", "--no-progress"]
    # At 3 fs the C-H and O-H vibrations (period ~10 fs) are unstable: H atoms fly off within a
    # few steps, beyond the model's cutoff, where no force pulls them back (no NaN, small forces).
    assert main(["md", *args]) == 3
    err = capsys.readouterr().err
    m = re.search(r"between steps (\d+) and (\d+)", err)
    assert m, err
    good, bad = int(m.group(1)), int(m.group(2))
    assert bad - good == 2 and good > 0
    assert re.search(r"bond \d+ \([CO]\)-\d+ \(H\) broke: [\d.]+ A|temperature \d+ K", err), err
    assert f"last good state (step {good})" in err
    # The last good state is readable and sane, and the outputs stop there.
    from mlsim._geometry_guard import GeometryGuard

    state = openmm.XmlSerializer.deserialize((out / "last_good_state.xml").read_text())
    assert state.getStepCount() == good
    x = units.positions_from_openmm(state.getPositions(asNumpy=True)._value)
    s = ethanol()
    assert GeometryGuard.from_structure(s.numbers, s.positions).check(x) is None
    np.testing.assert_array_equal(csv_steps(out / "state.csv"), np.arange(2, good + 1, 2))
    t = mdtraj.load(str(out / "trajectory.dcd"), top=str(out / "topology.pdb"))
    assert t.n_frames == good // 2
    # The checkpoint holds the same state: a fresh simulation loads it at that step.
    from openmm import app

    from mlsim.openmm import create_system
    from mlsim.openmm._system import topology_from_structure

    sim = app.Simulation(
        topology_from_structure(s),
        create_system(str(MODEL), s),
        openmm.VerletIntegrator(0.001),
        openmm.Platform.getPlatformByName("CPU"),  # checkpoints are per platform
    )
    md_module._load_checkpoint(sim, out / "checkpoint.chk")
    assert sim.currentStep == good
    y = sim.context.getState(getPositions=True).getPositions(asNumpy=True)._value
    np.testing.assert_allclose(units.positions_from_openmm(y), x)


def test_blowup_in_api_names_steps_and_temperature(tmp_path):
    with pytest.raises(SimulationBlowUp, match=r"between steps \d+ and \d+: .*(broke|K is above)"):
        run_md(
            MODEL,
            ethanol(),
            tmp_path,
            steps=200,
            timestep_fs=5.0,
            report_interval=10,
            seed=1,
            progress=False,
        )


def test_nve_blowup_caught_by_energy_drift_alone(tmp_path):
    kw = dict(ensemble="nve", seed=1, progress=False, geometry_check=False)
    # At 0.5 fs the default drift bound (0.2 eV/atom) stays quiet...
    assert (
        run_md(MODEL, ethanol(), tmp_path / "a", steps=100, report_interval=10, **kw).steps == 100
    )
    # ...at 3 fs the integration fails, and with no bond check the energy drift still says so.
    with pytest.raises(SimulationBlowUp, match=r"total energy drifted by [\d.]+ eV/atom"):
        run_md(
            MODEL, ethanol(), tmp_path / "b", steps=300, timestep_fs=3.0, report_interval=2, **kw
        )


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage_unrecorded"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, xyz, capsys, damage):
    out = tmp_path / "md"
    args = [str(MODEL), "--structure", str(xyz), "-o", str(out), "--report-interval", "5"]
    args += ["--checkpoint-interval", "10", "--seed", "1", "--no-progress"]
    assert main(["md", *args, "--steps", "20"]) == 0
    chk = out / "checkpoint.chk"
    data = bytearray(chk.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # OpenMM itself would load this silently
    elif damage == "truncate":
        data = data[: len(data) // 2]  # and this
    else:
        data = bytearray(b"not a checkpoint" * 4)
        (out / "checkpoint.json").unlink(
            missing_ok=True
        )  # no hash record: OpenMM's own check must be reported
    chk.write_bytes(bytes(data))
    assert main(["md", *args, "--steps", "40", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(chk) in err
    assert ("is corrupt" in err) if damage != "garbage_unrecorded" else ("cannot load" in err)
    # Nothing was appended to the outputs.
    np.testing.assert_array_equal(csv_steps(out / "state.csv"), [5, 10, 15, 20])


def test_kill_between_hash_record_and_checkpoint_still_resumes(tmp_path):
    out = tmp_path / "md"
    kw = dict(report_interval=5, checkpoint_interval=10, seed=1, progress=False)
    run_md(MODEL, ethanol(), out, steps=20, **kw)
    # Simulate a kill after the record of a newer checkpoint was written but not the checkpoint.
    old = (out / "checkpoint.chk").read_bytes()
    md_module._save_checkpoint(out / "checkpoint.chk", old + b"newer", 30)
    (out / "checkpoint.chk").write_bytes(old)
    res = run_md(MODEL, ethanol(), out, steps=30, resume=True, **kw)
    assert res.steps == 30
    assert_complete_run(out, 30, 5)


def test_resume_with_another_timestep_is_refused(tmp_path):
    out = tmp_path / "md"
    kw = dict(report_interval=5, checkpoint_interval=10, seed=1, progress=False)
    run_md(MODEL, ethanol(), out, steps=10, **kw)
    with pytest.raises(ValueError, match="timestep_fs = 0.5, not 1.0"):
        run_md(MODEL, ethanol(), out, steps=20, resume=True, timestep_fs=1.0, **kw)


def test_md_help_shows_defaults():
    res = subprocess.run(
        [sys.executable, "-m", "mlsim", "md", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for default in ("(default: 10000)", "(default: 0.5)", "(default: 300.0)", "(default: nvt)"):
        assert default in text, default
    assert "--max-temperature" in text and "--no-geometry-check" in text
