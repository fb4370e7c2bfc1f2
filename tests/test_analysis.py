"""mlsim.analysis on synthetic data with known answers: features, MSM, TICA, classifier, IG, LSTM."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

md = pytest.importorskip("mdtraj")
pytest.importorskip("deeptime")

from mlsim import analysis as an  # noqa: E402
from mlsim.analysis import (  # noqa: E402
    _attribution,
    _classifier,
    _features,
    _forecast,
    _kinetics,
    _pipeline,
    _plots,
    _states,
    _synthetic,
    _timestep,
    _vampnet,
)
from mlsim.systems import ALANINE_PDB  # noqa: E402

# A reversible 3-state chain (detailed balance with pi = (0.5, 0.3, 0.2)), metastable states.
_PI3 = np.array([0.5, 0.3, 0.2])
_K3 = np.array([[0.0, 0.010, 0.004], [0.0, 0.0, 0.006], [0.0, 0.0, 0.0]])


def _reversible_p() -> np.ndarray:
    """Transition matrix from symmetric fluxes pi_i P_ij = F_ij."""
    f = _K3 + _K3.T
    p = f / _PI3[:, None]
    p[np.diag_indices(3)] = 1.0 - p.sum(1)
    return p


@pytest.fixture(scope="module")
def pdb():
    """The alanine dipeptide structure shipped with mlsim.systems."""
    return md.load(str(ALANINE_PDB))


# Four alanine basins (C7eq, C5/PII, alphaR, alphaL), metastable, all mutually reachable.
_P4 = np.array(
    [
        [0.96, 0.02, 0.015, 0.005],
        [0.03, 0.96, 0.01, 0.0],
        [0.03, 0.01, 0.96, 0.0],
        [0.05, 0.0, 0.0, 0.95],
    ]
)


@pytest.fixture(scope="module")
def alanine_set(pdb):
    """Four synthetic alanine trajectories with states known by construction."""
    out = [
        _synthetic.synthetic_alanine_trajectory(pdb, _P4, 600, seed=s, start=s) for s in range(4)
    ]
    return [t for t, _ in out], [s for _, s in out]


# --- features -----------------------------------------------------------------------------


def _random_rigid(traj, seed: int):
    """Apply an independent random rotation + translation to every frame."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    xyz = traj.xyz.astype(np.float64)
    rot = Rotation.random(traj.n_frames, random_state=seed).as_matrix()
    moved = np.einsum("tij,tnj->tni", rot, xyz) + rng.normal(0, 3.0, (traj.n_frames, 1, 3))
    return md.Trajectory(moved.astype(np.float32), traj.topology)


def test_features_invariant_under_rotation_and_translation(alanine_set):
    traj = alanine_set[0][0][:50]
    moved = _random_rigid(traj, 3)
    assert np.abs(moved.xyz - traj.xyz).max() > 0.1  # the motion is not trivial
    for kinds in (("dihedrals",), ("distances",), ("contacts",)):
        a, names = an.featurize(traj, kinds)
        b, _ = an.featurize(moved, kinds)
        assert a.shape == (50, len(names))
        np.testing.assert_allclose(a, b, atol=2e-4)


def test_dihedral_features_match_set_angles(pdb):
    phi = np.radians([-80.0, 60.0, 179.0, -179.0])
    psi = np.radians([70.0, -40.0, 178.0, -178.0])
    traj = _synthetic.set_phi_psi(pdb, phi, psi)
    f, names = _features.dihedral_features(traj)
    assert names == ["sin_phi0", "cos_phi0", "sin_psi0", "cos_psi0"]
    np.testing.assert_allclose(f[:, 0], np.sin(phi), atol=1e-5)
    np.testing.assert_allclose(f[:, 3], np.cos(psi), atol=1e-5)
    # sin/cos is continuous across the +-180 cut, unlike the raw angle.
    assert np.linalg.norm(f[2] - f[3]) < 0.1


def test_distances_in_angstrom_and_heavy_only(pdb):
    d, names = _features.heavy_atom_distances(pdb)
    assert d.shape == (1, 45)  # 10 heavy atoms
    assert all("H" not in n.split("-")[-1].split(":")[0] for n in names)
    xyz = pdb.xyz[0] * 10.0
    i, j = pdb.topology.select("resname ALA and name N")[0], pdb.topology.select("name CA")[0]
    k = names.index("ALA2-N:ALA2-CA")
    assert d[0, k] == pytest.approx(np.linalg.norm(xyz[i] - xyz[j]), abs=1e-4)
    assert 1.4 < d[0, k] < 1.5  # an N-CA bond


def test_bad_inputs_raise(pdb):
    bad = md.Trajectory(np.full((3, pdb.n_atoms, 3), np.nan, np.float32), pdb.topology)
    with pytest.raises(ValueError, match="NaN"):
        an.featurize(bad)
    with pytest.raises(ValueError, match="unknown feature"):
        an.featurize(pdb, ("cartesian",))
    with pytest.raises(FileNotFoundError):
        an.load_trajectories(["/nonexistent.dcd"], str(ALANINE_PDB))
    with pytest.raises(ValueError, match="phi shape"):
        _states.alanine_state_labels(np.zeros(3), np.zeros(4))


# --- state definitions ---------------------------------------------------------------------


def test_alanine_state_regions():
    phi = np.array([-83, -150, -75, 60, 70, 170, -60, -120, 100])
    psi = np.array([73, 155, -40, 45, -70, 170, 140, -170, 0])
    want = ["C7eq", "C5/PII", "alphaR", "alphaL", "alphaL", "C5/PII", "C5/PII", "C5/PII", "alphaL"]
    got = _states.alanine_state_labels(phi, psi, degrees=True)
    assert [_states.ALANINE_STATES[k] for k in got] == want
    # Periodicity: adding 360 deg changes nothing.
    np.testing.assert_array_equal(_states.alanine_state_labels(phi + 360, psi - 360, True), got)


# --- MSM and TICA: known answers ------------------------------------------------------------


def test_msm_recovers_three_state_timescales_and_populations():
    p = _reversible_p()
    ev = np.sort(np.linalg.eigvals(p).real)[::-1]
    true_its = -1.0 / np.log(ev[1:])
    dtrajs = [_synthetic.markov_chain(p, 25_000, start=s % 3, seed=s) for s in range(4)]
    res = an.estimate_msm(dtrajs, lagtime=1)
    # 1e5 steps cover ~1000 slowest relaxation times: 10% is > 5 standard errors for this chain.
    np.testing.assert_allclose(res.timescales(2), true_its, rtol=0.10)
    np.testing.assert_allclose(res.stationary_full, _PI3, atol=0.03)
    # A Markov chain's ITS are lag-independent (at lag k the MSM is P^k).
    lags, its = an.implied_timescales(dtrajs, [1, 3, 6], n_its=2)
    np.testing.assert_allclose(its[:, 0], true_its[0], rtol=0.12)
    # CK test of an exactly Markovian chain: predictions match estimates.
    ck = an.chapman_kolmogorov(dtrajs, 1, 2, multiples=(2, 4, 8))
    assert ck.max_deviation < 0.03
    pcca = res.msm.pcca(2)
    assert pcca.n_metastable == 2


def test_bootstrap_population_uncertainty_covers_truth():
    p = _reversible_p()
    dtrajs = [_synthetic.markov_chain(p, 5_000, start=s % 3, seed=10 + s) for s in range(6)]
    mean, std = _kinetics.bootstrap_observable_populations(
        dtrajs, 1, np.eye(3), n_samples=20, seed=1
    )
    assert np.all(std > 0)
    assert np.all(np.abs(mean - _PI3) < 4 * std + 0.01)
    _, its = _kinetics.bootstrap_msm(dtrajs, 1, np.eye(3), n_samples=20, seed=1, n_its=1)
    true_slowest = -1.0 / np.log(np.sort(np.linalg.eigvals(p).real)[-2])
    assert its.shape == (20, 1) and its.std() > 0
    assert abs(its.mean() - true_slowest) < 4 * its.std() + 0.05 * true_slowest
    # Recounting memberships per sample (labels = microstates here) keeps populations unbiased.
    pops, _ = _kinetics.bootstrap_msm(dtrajs, 1, np.eye(3), n_samples=10, seed=1, labels=dtrajs)
    np.testing.assert_allclose(pops.mean(0), mean, atol=0.02)


def test_msm_rejects_bad_input():
    with pytest.raises(ValueError, match="integer"):
        an.estimate_msm([np.array([0.5, 1.0])], 1)
    with pytest.raises(ValueError, match="shorter"):
        an.estimate_msm([np.array([0, 1, 0])], 5)
    with pytest.raises(ValueError, match="connected"):
        an.estimate_msm([np.zeros(100, dtype=int)], 1)


def test_tica_recovers_slow_coordinate():
    # Linear system: a slow AR(1) s (tau ~ 100 steps) and fast noise, mixed by a random matrix.
    rng = np.random.default_rng(0)
    n = 20_000
    a_slow, a_fast = np.exp(-1 / 100), np.exp(-1 / 2)
    z = np.zeros((n, 3))
    for t in range(1, n):
        z[t] = [a_slow, a_fast, a_fast] * z[t - 1] + rng.normal(size=3) * np.sqrt(
            1 - np.array([a_slow, a_fast, a_fast]) ** 2
        )
    mix = rng.normal(size=(3, 3))
    x = z @ mix.T
    model, (proj,) = an.tica_projection([x], lagtime=5, dim=1)
    r = np.corrcoef(proj[:, 0], z[:, 0])[0, 1]
    assert abs(r) > 0.99
    its = model.timescales(5)[0]
    assert 70 < its < 140  # true 100 steps


def test_kmeans_is_deterministic_and_splits_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, (200, 2)) for c in ([0, 0], [3, 0], [0, 3])])
    _, (d1,) = an.kmeans_microstates([x], 3, seed=4)
    _, (d2,) = an.kmeans_microstates([x], 3, seed=4)
    np.testing.assert_array_equal(d1, d2)
    # Each true cluster maps to one k-means state.
    assert all(len(np.unique(d1[k * 200 : (k + 1) * 200])) == 1 for k in range(3))
    assert len(np.unique(d1)) == 3


# --- classifier + integrated gradients ---------------------------------------------------------


def test_classifier_learns_states_from_distances_on_heldout_trajectories(alanine_set):
    trajs, _ = alanine_set
    feats = [_features.heavy_atom_distances(t) for t in trajs]
    labels = [
        _states.alanine_state_labels(*(a[:, 0] for a in _features.phi_psi_angles(t))) for t in trajs
    ]
    tr, te = _classifier.split_by_trajectory(len(trajs), 0.25, seed=0)
    assert set(tr).isdisjoint(te) and sorted(tr + te) == [0, 1, 2, 3]
    clf = an.train_state_classifier(
        [feats[i][0] for i in tr], [labels[i] for i in tr], feats[0][1], _states.ALANINE_STATES,
        n_epochs=25,
    )  # fmt: skip
    x_te = np.concatenate([feats[i][0] for i in te])
    y_te = np.concatenate([labels[i] for i in te])
    assert clf.accuracy(x_te, y_te) > 0.97
    assert clf.history[-1] < clf.history[0]

    # Integrated gradients: completeness sum(IG) = f(x) - f(baseline), error shrinking with steps.
    x = x_te[:20]
    gaps = []
    for steps in (8, 256):
        attr, gap = _attribution.integrated_gradients(
            clf.module, x, clf.train_mean, y_te[:20], steps
        )
        assert attr.shape == x.shape
        gaps.append(np.abs(gap).max())
    rows = np.arange(20)
    df = clf.logits(x)[rows, y_te[:20]] - clf.logits(clf.train_mean[None])[0, y_te[:20]]
    assert np.abs(df).min() > 1.0  # the check is not vacuous
    # Trapezoid error falls as 1/steps^2; 2% of the logit change at 256 steps.
    assert gaps[1] < 0.02 * np.abs(df).max()
    assert gaps[1] < 0.2 * gaps[0]


def test_integrated_gradients_exact_for_linear_model():
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    x = np.random.default_rng(0).normal(size=(4, 5))
    base = np.zeros(5)
    attr, gap = _attribution.integrated_gradients(lin, x, base, 1, n_steps=3)
    w = lin.weight.detach().numpy()[1]
    np.testing.assert_allclose(attr, x * w, rtol=1e-5, atol=1e-6)  # IG of a linear map is w*x
    np.testing.assert_allclose(gap, 0.0, atol=1e-5)


# --- forecaster ------------------------------------------------------------------------------


def test_lstm_beats_persistence_on_predictable_sequence():
    # Deterministic cycle 0,1,2 with dwell 4 frames, observed with noise: persistence is wrong at
    # every switch (25% of frames), while a window reveals how long the state has lasted.
    rng = np.random.default_rng(0)
    states = np.repeat(np.tile([0, 1, 2], 120), 4)
    series = []
    for off in range(4):
        s = np.roll(states, off)
        obs = np.eye(3)[s] + rng.normal(0, 0.1, (len(s), 3))
        series.append((obs, s))
    x_tr, y_tr, _, _ = _forecast.make_windows(
        [o for o, _ in series[:3]], [s for _, s in series[:3]], 6, 1
    )
    x_te, y_te, ids, ts = _forecast.make_windows([series[3][0]], [series[3][1]], 6, 1)
    model = _forecast.train_lstm_forecaster(x_tr, y_tr, 3, 6, 1, hidden=16, n_epochs=25)
    lstm = _forecast.score_probabilities(model.predict_proba(x_te), y_te)
    persist = np.mean(series[3][1][ts] == y_te)
    assert persist == pytest.approx(0.75, abs=0.02)
    assert lstm.accuracy > 0.95


def test_make_windows_alignment():
    s = np.arange(10.0)
    lab = np.arange(10)
    x, y, ids, t = _forecast.make_windows([s], [lab], window=3, horizon=2)
    assert x.shape == (6, 3, 1)
    np.testing.assert_array_equal(x[0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(y, t + 2)
    np.testing.assert_array_equal(x[:, -1, 0], t)


# --- end to end ------------------------------------------------------------------------------


def test_cli_analyze_writes_plots_and_summary(alanine_set, tmp_path, capsys):
    from mlsim.cli import main

    trajs, _ = alanine_set
    paths = []
    for i, t in enumerate(trajs):
        p = tmp_path / f"t{i}.dcd"
        t.save_dcd(str(p))
        paths.append(str(p))
    out = tmp_path / "out"
    # In-process (same argparse wiring as the console script) to skip a second torch import.
    argv = ["analyze", *paths, "--top", str(ALANINE_PDB), "-o", str(out), "--dt-ps", "1"]
    argv += ["--clusters", "12", "--lags", "1,2,4", "--bootstrap", "5", "--epochs", "8"]
    argv += ["--lstm-epochs", "2", "--no-vampnet"]
    assert main(argv) == 0
    assert "summary.json" in capsys.readouterr().out
    for name in ("ramachandran.png", "tica.png", "implied_timescales.png", "summary.json"):
        assert (out / name).stat().st_size > 1000 or name == "summary.json"
    s = json.loads((out / "summary.json").read_text())
    assert s["msm"]["slowest_implied_timescale_ps"] > 0
    pops = s["states"]["populations_msm"]
    assert sum(pops.values()) == pytest.approx(1.0, abs=1e-6)
    assert set(pops) == set(_states.ALANINE_STATES)
    assert set(s["states"]["populations_bootstrap_std"]) == set(_states.ALANINE_STATES)
    # The four basins are separable from heavy-atom distances: the held-out trajectory is
    # classified almost perfectly (0.995 with this seed), every state it visits too.
    assert s["classifier"]["heldout_accuracy"] >= 0.9
    per_state = s["classifier"]["heldout_accuracy_per_state"]
    assert all(a >= 0.8 for a in per_state.values() if a is not None)
    assert {"lstm", "msm", "persistence"} <= set(s["forecast"])


def test_cli_analyze_reports_missing_file(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mlsim", "analyze", str(tmp_path / "x.dcd"), "--top", "nope.pdb"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert "error" in res.stderr and "Traceback" not in res.stderr


def test_vampnet_finds_nonlinear_slow_mode_that_tica_misses():
    # Hidden 2-state chain (eigenvalue lam) shown as the radius of a point at random angle: the
    # coordinates' means do not depend on the state, so linear TICA sees nothing; VAMP-2 of the
    # exact state indicator is 1 + lam^2.
    p = np.array([[0.98, 0.02], [0.02, 0.98]])
    lam = 0.96
    rng = np.random.default_rng(0)
    trajs = []
    for s in range(3):
        st = _synthetic.markov_chain(p, 1500, start=s % 2, seed=s)
        ang = rng.uniform(0, 2 * np.pi, len(st))
        r = 1.0 + st + rng.normal(0, 0.05, len(st))
        trajs.append(np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1))
    res = an.train_vampnet(
        trajs[:2], trajs[2:], lagtime=1, n_states=2, n_epochs=10, batch_size=128,
        learning_rate=1e-2, seed=0,
    )  # fmt: skip
    model, _ = an.tica_projection(trajs[:2], 1, dim=1)
    te = model.transform(trajs[2])
    tica_score = _vampnet.vamp2_score(te[:-1], te[1:])
    assert tica_score < 1.05
    assert res.validation_score > 1 + 0.9 * lam**2
    memb = res.transform(trajs[2])
    assert memb.shape == (1500, 2) and np.allclose(memb.sum(1), 1.0, atol=1e-5)


def test_choose_lag_picks_first_converged_lag():
    lags = np.array([1, 2, 5, 10, 20])
    assert _pipeline.choose_lag(lags, np.array([5.0, 8.0, 8.3, 8.4, 8.5]), 0.1) == 2
    # Never converged: the largest lag whose timescale is still resolved (ITS > lag).
    assert _pipeline.choose_lag(lags, np.array([3.0, 6.0, 12.0, 30.0, 19.0]), 0.1) == 10


def test_free_energy_is_minus_log_relative_probability():
    x = np.array([0.1] * 40 + [1.1] * 10)
    f, _, _ = _plots.free_energy_2d(x, np.zeros_like(x), bins=[2, 1], range_=[[0, 2], [-1, 1]])
    np.testing.assert_allclose(f[:, 0], [0.0, np.log(4.0)], atol=1e-12)


def test_split_by_trajectory_needs_two():
    with pytest.raises(ValueError, match="two trajectories"):
        _classifier.split_by_trajectory(1)
    tr, te = _classifier.split_by_trajectory(8, 0.25, seed=3)
    assert len(te) == 2 and len(tr) == 6 and not set(tr) & set(te)


# --- frame spacing and warnings (issue: DCDs from `mlsim md` were read as 1 ps per frame) -----


def _write_mlsim_dcds(trajs, folder, dt_ps):
    """Write mdtraj trajectories the way mlsim does (mlsim.systems.write_dcd), dt_ps apart."""
    from openmm import app

    from mlsim.systems import write_dcd

    top = app.PDBFile(str(ALANINE_PDB)).topology
    paths = []
    for i, t in enumerate(trajs):
        p = folder / f"m{i}.dcd"
        write_dcd(p, top, t.xyz.astype(np.float64), dt_ps)
        paths.append(str(p))
    return paths


def test_frame_spacing_comes_from_the_files(alanine_set, tmp_path):
    from mlsim.analysis._timestep import dcd_header_frame_interval_ps

    trajs, _ = alanine_set
    (a,) = _write_mlsim_dcds(trajs[:1], tmp_path, 0.05)
    assert _timestep.file_frame_interval_ps(a) == (0.05, "m0.dcd.json")
    loaded = an.load_trajectories([a], str(ALANINE_PDB), stride=2)
    assert _timestep.resolve_frame_interval([a], loaded, None, stride=2)[0] == pytest.approx(0.1)
    # Without the JSON the OpenMM header still says; a DCD from mdtraj does not.
    (tmp_path / "m0.dcd.json").unlink()
    assert dcd_header_frame_interval_ps(a) == pytest.approx(0.05)
    assert _timestep.file_frame_interval_ps(a)[0] == pytest.approx(0.05)
    trajs[0].save_dcd(str(tmp_path / "md.dcd"))
    value, why = _timestep.file_frame_interval_ps(tmp_path / "md.dcd")
    assert value is None and "not written by OpenMM" in why
    with pytest.raises(ValueError, match=r"md.dcd .*Pass --dt-ps"):
        _timestep.resolve_frame_interval([tmp_path / "md.dcd"], trajs[:1], None)
    # --dt-ps wins, with a warning when a file disagrees; XTC frames carry their times.
    dt, _, warns = _timestep.resolve_frame_interval([a], trajs[:1], 0.2, stride=3)
    assert dt == pytest.approx(0.6) and "overrides the frame spacing 0.05 ps" in warns[0]
    x = md.Trajectory(trajs[0].xyz, trajs[0].topology, time=np.arange(trajs[0].n_frames) * 0.02)
    x.save_xtc(str(tmp_path / "t.xtc"))
    t = an.load_trajectories([tmp_path / "t.xtc"], str(ALANINE_PDB), stride=2)
    assert _timestep.resolve_frame_interval([tmp_path / "t.xtc"], t, None, 2)[0] == pytest.approx(
        0.04
    )
    with pytest.raises(ValueError, match="different frame spacings"):
        _timestep.resolve_frame_interval([a, tmp_path / "t.xtc"], trajs[:1] + t, None)


def test_cli_analyze_requires_dt_when_the_files_do_not_say(alanine_set, tmp_path, capsys):
    from mlsim.cli import main

    trajs, _ = alanine_set
    trajs[0].save_dcd(str(tmp_path / "a.dcd"))
    assert main(["analyze", str(tmp_path / "a.dcd"), "--top", str(ALANINE_PDB)]) == 1
    err = capsys.readouterr().err
    assert "cannot tell the time between frames" in err and "--dt-ps" in err


def test_cli_analyze_uses_file_spacing_and_warns(alanine_set, tmp_path, capsys):
    from mlsim.cli import main

    trajs, _ = alanine_set
    paths = _write_mlsim_dcds(trajs, tmp_path, 0.05)
    out = tmp_path / "out"
    argv = ["analyze", *paths, "--top", str(ALANINE_PDB), "-o", str(out), "--stride", "2"]
    argv += ["--clusters", "12", "--lags", "1,2,4,400", "--msm-lag", "20", "--bootstrap", "3"]
    argv += ["--epochs", "4", "--lstm-epochs", "1", "--no-vampnet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert s["dt_ps"] == pytest.approx(0.1) and s["dt_source"] == "<trajectory>.json"
    np.testing.assert_allclose(s["msm"]["its_lagtimes_ps"], [0.1, 0.2, 0.4])
    assert s["msm"]["lag_ps"] == pytest.approx(2.0)
    assert s["total_time_ns"] == pytest.approx(4 * 300 * 0.1e-3)
    warns = s["warnings"]
    assert any("too few frames for lags [400]" in w for w in warns), warns
    assert any("too few frames for lag 20" in w for w in warns), warns
    for w in warns:
        assert f"warning: {w}" in captured.err
    assert f"{len(warns)} warnings" in captured.out


def test_timescale_warnings_negative_and_unresolved():
    from mlsim.analysis._pipeline import _timescale_warnings

    # A 2-state chain that flips almost every step: eigenvalue -0.8, an oscillation.
    flip = np.array([[0.1, 0.9], [0.9, 0.1]])
    m = an.estimate_msm([_synthetic.markov_chain(flip, 20_000, seed=0)], 1)
    w = _timescale_warnings(m, m.timescales(1), 1, [20_000], 1.0)
    assert len(w) == 1 and "negative eigenvalue" in w[0]
    # Fast relaxation (eigenvalue 0.1): a timescale of 0.43 frames is below the lag.
    fast = np.array([[0.55, 0.45], [0.45, 0.55]])
    m = an.estimate_msm([_synthetic.markov_chain(fast, 20_000, seed=0)], 1)
    w = _timescale_warnings(m, m.timescales(1), 1, [20_000], 1.0)
    assert len(w) == 1 and "shorter than the lag time" in w[0]
    # A slow, metastable chain at a short lag: nothing to warn about.
    slow = np.array([[0.99, 0.01], [0.01, 0.99]])
    m = an.estimate_msm([_synthetic.markov_chain(slow, 20_000, seed=0)], 1)
    assert _timescale_warnings(m, m.timescales(1), 1, [20_000], 1.0) == []
    assert "too few frames" in _timescale_warnings(m, m.timescales(1), 1, [50], 1.0)[-1]


def test_effective_sample_size_matches_ar1_theory() -> None:
    """AR(1) with coefficient a has tau_int = (1 + a) / (1 - a): the ESS must recover n / tau."""
    from mlsim.analysis import effective_sample_size

    rng = np.random.default_rng(7)
    n, a = 200_000, 0.9
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0]
    for t in range(1, n):
        x[t] = a * x[t - 1] + noise[t]
    expected = n / ((1 + a) / (1 - a))
    assert abs(effective_sample_size(x) / expected - 1.0) < 0.1
    # independent draws: ESS ~ n; a constant series is worth nothing; NaN is an error
    white = rng.normal(size=20_000)
    assert effective_sample_size(white) > 0.8 * len(white)
    assert effective_sample_size(np.ones(100)) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        effective_sample_size(np.array([1.0, np.nan] * 10))


def test_effective_sample_size_periodic_ignores_the_seam() -> None:
    """An angle hopping across +-pi is not slow: its periodic ESS sees through the seam."""
    from mlsim.analysis import effective_sample_size

    rng = np.random.default_rng(3)
    theta = np.pi + rng.normal(scale=0.2, size=5000)  # independent draws around the seam
    theta = (theta + np.pi) % (2 * np.pi) - np.pi
    assert effective_sample_size(theta, periodic=True) > 0.5 * len(theta)
