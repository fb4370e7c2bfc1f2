"""Resumable labelling: kill mid-run and restart, failures kept apart, torn tails repaired, DFT forces."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import CalculationFailed
from ase.calculators.emt import EMT

from mlsim.data import Dataset, Structure, label, read, write
from mlsim.data._backends import AseLabeller
from mlsim.data._io import _frame_text, append_frames, read_frames_repairing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class DyingEMT(EMT):
    """EMT that SIGKILLs its own process on call number $MLSIM_TEST_DIE_AT (a deterministic kill)."""

    calls = 0

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        DyingEMT.calls += 1
        if DyingEMT.calls == int(os.environ.get("MLSIM_TEST_DIE_AT", "0")):
            time.sleep(0.05)  # be inside the calculation, as a real kill would most likely be
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(*args, **kwargs)


class FlakyEMT(EMT):
    """EMT that fails (like an unconverged SCF) on structures whose first atom has x < -1 A."""

    fail = True

    def calculate(self, atoms=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.fail and atoms is not None and atoms.positions[0, 0] < -1.0:
            raise CalculationFailed("SCF did not converge (test)")
        super().calculate(atoms, *args, **kwargs)


def _clusters(n: int, seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    base = np.array(
        [[0, 0, 0], [2.55, 0, 0], [0, 2.55, 0], [0, 0, 2.55], [2.55, 2.55, 0]], dtype=float
    )
    return [
        Structure([29, 29, 79, 29, 28], base + rng.normal(0, 0.1, base.shape), info={"i": i})
        for i in range(n)
    ]


def _labels(path: Path) -> dict[int, Structure]:
    recs = read_frames_repairing(path)
    idx = [int(r.info["label_index"]) for r in recs]
    assert len(idx) == len(set(idx)), "a structure was labelled twice"
    return dict(zip(idx, recs, strict=True))


def test_resume_after_kill(tmp_path):
    n = 30
    inp = tmp_path / "in.extxyz"
    write(inp, _clusters(n))
    out = tmp_path / "out.extxyz.gz"
    cmd = [
        sys.executable,
        "-m",
        "mlsim",
        "label",
        str(inp),
        "--method",
        "test_label:DyingEMT",
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    killed = subprocess.run(
        cmd, env=env | {"MLSIM_TEST_DIE_AT": "8"}, cwd=ROOT, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = _labels(out)
    assert sorted(partial) == list(range(7))  # killed while computing the 8th
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{n - len(partial)} labelled now" in res.stderr
    resumed = _labels(out)
    assert sorted(resumed) == list(range(n))
    # the same as one uninterrupted run
    ref = tmp_path / "ref.extxyz"
    label(inp, ref, "ase.calculators.emt:EMT", progress=False)
    reference = _labels(ref)
    for i in range(n):
        assert resumed[i].energy == pytest.approx(reference[i].energy, abs=1e-8)
        np.testing.assert_allclose(resumed[i].forces, reference[i].forces, atol=1e-7)
        np.testing.assert_allclose(resumed[i].positions, reference[i].positions, atol=1e-7)
        assert resumed[i].info["i"] == i
    # a third run has nothing left to do
    again = label(inp, out, dying_emt_labeller(), progress=False)
    assert (again.n_labelled, again.n_already) == (0, n)


def dying_emt_labeller() -> AseLabeller:
    """The in-process twin of `--method test_label:DyingEMT` (same method name in the records)."""
    return AseLabeller(DyingEMT(), "DyingEMT")


@pytest.mark.parametrize("name", ["o.extxyz", "o.extxyz.gz"])
def test_torn_tail_is_repaired(tmp_path, name):
    out = tmp_path / name
    structures = _clusters(4)
    for i, s in enumerate(structures):
        s.energy, s.forces = float(i), np.zeros((5, 3))
        s.info["label_index"] = i
    append_frames(out, structures[:3])
    good = out.stat().st_size
    frame = _frame_text(structures[3]).encode()
    with open(out, "ab") as fh:  # a write cut short by a kill: a partial frame / gzip member
        fh.write(gzip.compress(frame)[:-9] if name.endswith("gz") else frame[: len(frame) // 2])
    assert out.stat().st_size > good
    with pytest.warns(UserWarning, match="incomplete last frame"):
        assert len(read(out)) == 3  # readers skip the torn frame but leave the file alone
    assert out.stat().st_size > good
    recs = read_frames_repairing(out, repair=True)
    assert [int(r.info["label_index"]) for r in recs] == [0, 1, 2]
    assert out.stat().st_size == good  # the torn tail was cut off, so appends continue cleanly
    append_frames(out, structures[3:])
    assert [r.energy for r in read(out)] == [0.0, 1.0, 2.0, 3.0]


def test_failures_go_to_separate_file(tmp_path):
    structures = _clusters(8, seed=3)
    for k in (2, 5):
        structures[k].positions -= [3.0, 0, 0]
    flaky = FlakyEMT()
    out = tmp_path / "o.extxyz"
    summ = label(Dataset(structures), out, AseLabeller(flaky, "EMT"), progress=False)
    assert (summ.n_labelled, summ.n_failed) == (6, 2)
    failed = read_frames_repairing(summ.failed)
    assert summ.failed.name == "o.failed.extxyz"
    assert [int(r.info["label_index"]) for r in failed] == [2, 5]
    assert "did not converge" in failed[0].info["label_error"]
    # a plain rerun does not retry them ...
    assert (
        label(Dataset(structures), out, AseLabeller(flaky, "EMT"), progress=False).n_labelled == 0
    )
    # ... --retry-failed does, and they leave the failed file when they succeed
    flaky.fail = False
    summ = label(
        Dataset(structures), out, AseLabeller(flaky, "EMT"), retry_failed=True, progress=False
    )
    assert summ.n_labelled == 2
    assert sorted(_labels(out)) == list(range(8))
    assert read_frames_repairing(summ.failed) == []


def test_resume_checks_input_and_method(tmp_path):
    inp = Dataset(_clusters(4))
    out = tmp_path / "o.extxyz"
    label(inp, out, "ase.calculators.emt:EMT", progress=False, limit=2)
    with pytest.raises(ValueError, match="labelled with 'EMT'"):
        label(inp, out, dying_emt_labeller(), progress=False)
    with pytest.raises(ValueError, match="does not match input structure"):
        label(Dataset(_clusters(4, seed=9)), out, "ase.calculators.emt:EMT", progress=False)
    with pytest.raises(ValueError, match="extxyz"):
        label(inp, tmp_path / "o.npz", "ase.calculators.emt:EMT", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        label(inp, out, "nonsense", progress=False)


def test_xtb_labels_match_tblite(tmp_path):
    from ase.build import molecule
    from tblite.ase import TBLite

    water = Structure.from_atoms(molecule("H2O"))
    summ = label([water], tmp_path / "x.extxyz", "xtb", progress=False)
    got = read(summ.out)[0]
    atoms = water.to_atoms()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert got.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(got.forces, atoms.get_forces(), atol=1e-5)
    assert got.info["method"] == "GFN2-xTB"


def test_dft_forces_match_finite_differences():
    from mlsim.data._backends import PySCFLabeller

    lab = PySCFLabeller("b3lyp", "sto-3g", threads=1)
    water = Structure([8, 1, 1], [[0.0, 0.0, 0.1], [0.0, 0.78, -0.5], [0.0, -0.74, -0.45]])
    e0, f0, info = lab(water)
    assert info["method"] == "B3LYP/STO-3G" and info["density_fit"]
    # B3LYP/STO-3G water is about -75.3 Hartree
    assert e0 == pytest.approx(-75.31 * 27.211386, rel=2e-3)
    h = 2e-3  # Angstrom
    for atom, axis in ((1, 1), (2, 2)):
        e = []
        for sign in (1, -1):
            p = water.positions.copy()
            p[atom, axis] += sign * h
            e.append(lab(Structure(water.numbers, p))[0])
        fd = -(e[0] - e[1]) / (2 * h)
        # analytic gradient without grid response: measured within 6e-4 eV/A on the default grid
        assert f0[atom, axis] == pytest.approx(fd, abs=2e-3), (atom, axis)
    assert np.abs(f0.sum(axis=0)).max() < 1e-3  # no net force on an isolated molecule


def test_finished_gzip_output_is_compacted(tmp_path):
    inp = Dataset(_clusters(6))
    out = tmp_path / "c.extxyz.gz"
    label(inp, out, "ase.calculators.emt:EMT", progress=False, limit=3)
    label(inp, out, "ase.calculators.emt:EMT", progress=False, limit=5)
    partial = out.read_bytes()
    assert partial.count(b"\x1f\x8b\x08") >= 5  # one gzip member per frame while running
    label(inp, out, "ase.calculators.emt:EMT", progress=False)
    assert out.read_bytes().count(b"\x1f\x8b\x08") == 1  # one stream once complete
    assert sorted(_labels(out)) == list(range(6))


def test_dft_scf_rescue_and_failure():
    from mlsim.data._backends import LabelFailure, PySCFLabeller

    h2 = Structure([1, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.9]])
    e_ref, f_ref, _ = PySCFLabeller("lda", "sto-3g", threads=1)(h2)
    # DIIS stopped after 1 cycle: the Newton fallback finishes the job and gives the same answer
    e, f, info = PySCFLabeller("lda", "sto-3g", threads=1, max_cycle=1)(h2)
    assert info["scf_newton"] and e == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(f, f_ref, atol=1e-4)
    with pytest.raises(LabelFailure, match="did not converge"):
        PySCFLabeller("lda", "sto-3g", threads=1, max_cycle=1, newton_cycles=0)(h2)


def test_shuffled_order_with_limit(tmp_path):
    inp = Dataset(_clusters(10))
    out = tmp_path / "s.extxyz"
    label(inp, out, "ase.calculators.emt:EMT", progress=False, limit=4, shuffle=3)
    expected = np.random.default_rng(3).permutation(10)[:4]
    assert sorted(_labels(out)) == sorted(expected.tolist())
    summ = label(inp, out, "ase.calculators.emt:EMT", progress=False, limit=6, shuffle=3)
    assert (summ.n_already, summ.n_labelled) == (4, 2)
    label(inp, out, "ase.calculators.emt:EMT", progress=False, shuffle=3)
    assert sorted(_labels(out)) == list(range(10))


def test_cli_dft_options_reach_pyscf(tmp_path, capsys):
    from mlsim.cli import main

    write(tmp_path / "h2.extxyz", [Structure([1, 1], [[0, 0, 0], [0, 0, 0.74]])])
    out = tmp_path / "h2_dft.extxyz"
    args = ["label", str(tmp_path / "h2.extxyz"), "--method", "dft", "--functional", "pbe"]
    args += ["--basis", "sto-3g", "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    (s,) = read(out, require_forces=True)
    assert s.info["method"] == "PBE/STO-3G" and s.info["density_fit"]
    # PBE/STO-3G H2 near equilibrium: about -1.15 Hartree, forces along the bond, summing to zero
    assert s.energy == pytest.approx(-1.15 * 27.2114, rel=0.02)
    np.testing.assert_allclose(s.forces[:, :2], 0.0, atol=1e-6)
    assert s.forces[0, 2] == pytest.approx(-s.forces[1, 2], abs=1e-6)
    assert main([*args[:-2], "--no-density-fit", "--out", str(tmp_path / "nodf.extxyz")]) == 0
    (t,) = read(tmp_path / "nodf.extxyz")
    assert not t.info["density_fit"] and t.energy == pytest.approx(s.energy, abs=2e-3)
    assert "1 labelled now" in capsys.readouterr().err
