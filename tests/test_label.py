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
from mlsim.data._label import default_failed_path

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
    torn = out.read_bytes()
    # Readers refuse a torn file (no silently shorter data set), naming the frame and its start,
    # and leave it alone.
    where = f"gzip member at byte {good}" if name.endswith("gz") else f"byte {good}"
    with pytest.raises(ValueError, match=rf"{name}: frame 3 \({where}\): the file ends inside"):
        read(out)
    assert out.read_bytes() == torn
    assert [int(r.info["label_index"]) for r in read_frames_repairing(out)] == [0, 1, 2]
    assert out.read_bytes() == torn  # reading leniently without repair does not touch it either
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


def _labelled_file(path: Path, n: int = 6) -> None:
    """Write `n` labelled records as `mlsim label` does (one append, one gzip member, per frame)."""
    structures = _clusters(n)
    for i, s in enumerate(structures):
        s.energy, s.forces = float(i), np.zeros((5, 3))
        s.info.update({"label_index": i, "method": "EMT"})
        append_frames(path, [s])


def _corrupt_middle_frame(path: Path) -> int:
    """Replace a coordinate of frame 2 with garbage; return the byte where frame 2 starts."""
    text = path.read_bytes()
    starts = [k for k in range(len(text)) if text.startswith(b"5\nProperties", k)]
    line = text.index(b"\nCu ", starts[2]) + 1
    path.write_bytes(text[: line + 10] + b"x.xxxx" + text[line + 16 :])
    return starts[2]


@pytest.mark.parametrize("case", ["text_named_gz", "gzip_named_extxyz", "corrupt_middle"])
def test_foreign_or_damaged_output_is_refused_untouched(tmp_path, case):
    """Issue #17: 50 labelled structures in a file named .gz but not gzip were cut to 0 bytes."""
    inp = Dataset(_clusters(50))
    if case == "text_named_gz":
        out = tmp_path / "o.extxyz.gz"
        label(inp, tmp_path / "plain.extxyz", "ase.calculators.emt:EMT", progress=False)
        os.replace(tmp_path / "plain.extxyz", out)
        match = r"o\.extxyz\.gz: frame 0 \(gzip member at byte 0\): not gzip data"
    elif case == "gzip_named_extxyz":
        out = tmp_path / "o.extxyz"
        label(inp, tmp_path / "z.extxyz.gz", "ase.calculators.emt:EMT", progress=False)
        os.replace(tmp_path / "z.extxyz.gz", out)
        match = r"o\.extxyz: frame 0 \(byte 0\): this is gzip-compressed data"
    else:
        out = tmp_path / "o.extxyz"
        label(inp, out, "ase.calculators.emt:EMT", progress=False)
        start = _corrupt_middle_frame(out)
        match = rf"o\.extxyz: frame 2 \(byte {start}\): cannot parse it"
    before = out.read_bytes()
    with pytest.raises(ValueError, match=match) as err:
        label(inp, out, "ase.calculators.emt:EMT", progress=False)
    assert "left as it is" in str(err.value)
    assert out.read_bytes() == before  # not one byte changed
    assert not default_failed_path(out).exists()
    with pytest.raises(ValueError, match=match):
        read(out)
    # the command line says the same in one line, exit status 1
    from mlsim.cli import main

    write(tmp_path / "in.extxyz", inp)
    args = ["label", str(tmp_path / "in.extxyz"), "--method", "ase.calculators.emt:EMT"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 1
    assert out.read_bytes() == before


@pytest.mark.parametrize("name", ["o.extxyz", "o.extxyz.gz"])
@pytest.mark.parametrize("keep", [3, -30])
def test_torn_tail_of_a_foreign_file_is_not_repaired(tmp_path, name, keep):
    """A torn tail is cut only when every complete frame before it carries label_index."""
    inp = Dataset(_clusters(4))
    out = tmp_path / name
    geo = _clusters(4)  # unlabelled frames: a geometry file, not mlsim label output
    write(out, geo[:3])
    frame = _frame_text(geo[3]).encode()[:keep]
    with open(out, "ab") as fh:
        fh.write(gzip.compress(frame)[:-9] if name.endswith("gz") else frame)
    before = out.read_bytes()
    # A torn comment line without label_index is refused as it is read; a tail too short to
    # show it, by the check that the complete frames carry label_index. Either way: untouched.
    match = "record 0 has no label_index" if keep == 3 else r"frame 3 \(.*\): the file ends inside"
    with pytest.raises(ValueError, match=rf"{name}: {match}"):
        label(inp, out, "ase.calculators.emt:EMT", progress=False)
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match=rf"{name}: {match.replace('record', 'frame')}"):
        read_frames_repairing(out, repair=True)
    assert out.read_bytes() == before
    # a torn frame alone (no complete frame before it) must show label_index to be mlsim's
    lone = tmp_path / "lone.extxyz"
    lone.write_bytes(b"5\nProperties=species:S:1:pos:R:3 pb")
    with pytest.raises(ValueError, match=r"lone\.extxyz: frame 0 \(byte 0\): the file ends inside"):
        label(inp, lone, "ase.calculators.emt:EMT", progress=False)
    assert lone.read_bytes() == b"5\nProperties=species:S:1:pos:R:3 pb"


@pytest.mark.parametrize("gz", [False, True])
def test_damaged_failed_file_is_refused_and_no_output_left(tmp_path, gz):
    inp = Dataset(_clusters(6))
    out = tmp_path / ("o.extxyz.gz" if gz else "o.extxyz")
    failed = default_failed_path(out)
    _labelled_file(failed)
    if gz:  # a flipped byte in the third gzip member's CRC32 (its last 8 bytes: CRC32, size)
        data = bytearray(failed.read_bytes())
        starts = [k for k in range(len(data) - 2) if data[k : k + 3] == b"\x1f\x8b\x08"]
        data[starts[3] - 6] ^= 0xFF
        failed.write_bytes(bytes(data))
        match = rf"frame 2 \(gzip member at byte {starts[2]}\): corrupt gzip member"
    else:
        match = rf"frame 2 \(byte {_corrupt_middle_frame(failed)}\): cannot parse it"
    before = failed.read_bytes()
    with pytest.raises(ValueError, match=rf"{failed.name}: {match}"):
        label(inp, out, "ase.calculators.emt:EMT", progress=False)
    assert failed.read_bytes() == before
    assert not out.exists()  # the lock created OUT; a refused run leaves none behind


def test_resume_refuses_other_charge_spin_or_dft_options(tmp_path):
    from ase.build import molecule

    water = [Structure.from_atoms(molecule("H2O"))]
    out = tmp_path / "x.extxyz"
    label(water, out, "xtb", progress=False, charge=0, spin=0)
    (rec,) = read(out)
    assert (rec.info["method"], rec.info["charge"], rec.info["spin"]) == ("GFN2-xTB", 0, 0)
    before = out.read_bytes()
    with pytest.raises(
        ValueError, match=r"x\.extxyz: charge differs: .*labelled with 0, this run uses 1"
    ):
        label(water, out, "xtb", progress=False, charge=1)
    with pytest.raises(ValueError, match=r"spin differs: .*labelled with 0, this run uses 2"):
        label(water, out, "xtb", progress=False, spin=2)
    assert out.read_bytes() == before
    assert label(water, out, "xtb", progress=False).n_already == 1  # same settings resume

    h2 = [Structure([1, 1], [[0, 0, 0], [0, 0, 0.74]])]
    dft = tmp_path / "h2.extxyz"
    opts = {"functional": "lda", "basis": "sto-3g", "threads": 1}
    label(h2, dft, "dft", progress=False, **opts)
    (rec,) = read(dft)
    assert {k: rec.info[k] for k in ("method", "functional", "basis", "density_fit")} == {
        "method": "LDA/STO-3G",
        "functional": "lda",
        "basis": "sto-3g",
        "density_fit": True,
    }
    assert (rec.info["charge"], rec.info["spin"]) == (0, 0)
    before = dft.read_bytes()
    bad = [
        ({"density_fit": False}, "density_fit differs: .*labelled with True, this run uses False"),
        (
            {"basis": "sto-6g"},
            "method differs: .*labelled with 'LDA/STO-3G', this run uses 'LDA/STO-6G'",
        ),
        ({"spin": 2}, "spin differs: .*labelled with 0, this run uses 2"),
        ({"charge": -2}, "charge differs: .*labelled with 0, this run uses -2"),
    ]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            label(h2, dft, "dft", progress=False, **(opts | change))
    assert dft.read_bytes() == before
    # pyscf reads names case-insensitively, so the same settings in capitals resume
    same = opts | {"functional": "LDA", "basis": "STO-3G"}
    assert label(h2, dft, "dft", progress=False, **same).n_already == 1


def test_old_labels_without_settings_keys_still_resume(tmp_path):
    """The shipped B3LYP files record method, program and density_fit only (older mlsim)."""
    from mlsim.data import ethanol_path

    geo, shipped = ethanol_path("val", "geometries"), ethanol_path("val", "dft")
    out = tmp_path / "val_dft.extxyz.gz"
    out.write_bytes(shipped.read_bytes())
    assert "charge" not in read(out)[0].info
    opts = {"functional": "b3lyp", "basis": "6-31g*", "threads": 1}
    summ = label(geo, out, "dft", progress=False, shuffle=0, **opts)
    assert (summ.n_already, summ.n_labelled) == (50, 0)
    assert out.read_bytes() == shipped.read_bytes()
    with pytest.raises(ValueError, match="density_fit differs: .*True, this run uses False"):
        label(geo, out, "dft", progress=False, density_fit=False, **opts)
    with pytest.raises(
        ValueError, match="method differs: .*'B3LYP/6-31G\\*', this run uses 'PBE/6-31G\\*'"
    ):
        label(geo, out, "dft", progress=False, **(opts | {"functional": "pbe"}))
    assert out.read_bytes() == shipped.read_bytes()


def test_stale_label_keys_of_the_input_are_dropped(tmp_path):
    inp = _clusters(2)
    for s in inp:
        s.info.update({"method": "B3LYP/6-31G*", "program": "pyscf", "density_fit": True})
        s.info.update({"label_index": 7, "scf_newton": False})
    out = tmp_path / "o.extxyz"
    label(inp, out, "ase.calculators.emt:EMT", progress=False)
    recs = read(out)
    assert [r.info["label_index"] for r in recs] == [0, 1]
    for r in recs:
        assert r.info["method"] == "EMT" and r.info["i"] in (0, 1)
        assert not {"program", "density_fit", "scf_newton"} & set(r.info)
