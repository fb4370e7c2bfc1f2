"""Learned propagator: exact proposal densities, exact MH, HMC, save/load and resumable training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlsim.propagators import Propagator, train_propagator
from mlsim.propagators._flow import ConditionalRealNVP
from mlsim.propagators._model import PropagatorConfig
from mlsim.propagators._sampler import metropolis_hastings

openmm = pytest.importorskip("openmm")

from mlsim.testsystems import alanine_dipeptide  # noqa: E402
from mlsim.testsystems._alanine import alanine_zmatrix  # noqa: E402


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Give zero-initialised layers random weights, so the flow is far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@pytest.fixture(scope="module")
def mol():
    """Flexible-bond alanine dipeptide in vacuum."""
    return alanine_dipeptide("vacuum", constraints=None)


def _model(mol, mode: str, rows=(0, 1), seed: int = 1, std: float = 0.2) -> Propagator:
    z = alanine_zmatrix(mol.topology)
    cfg = PropagatorConfig(
        22, z.roots, z.rows, tau_ps=1.0, hidden=16, n_layers=4, d_context=8,
        mode=mode, dihedral_rows=list(rows) if mode == "dihedrals" else [],
    )  # fmt: skip
    m = Propagator(cfg).double()
    _randomise(m, seed, std)
    return m.eval()


def test_flow_density_normalised_2d() -> None:
    """Conditional RealNVP on R^2: density integrates to 1 (grid quadrature, tol 2e-3)."""
    torch.manual_seed(0)
    flow = ConditionalRealNVP(2, d_context=3, hidden=16, n_layers=4, dims_per_atom=1).double()
    _randomise(flow, 3, 0.3)
    c = torch.randn(1, 3, dtype=torch.float64)
    g = torch.linspace(-25, 25, 701, dtype=torch.float64)
    yy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = flow.log_prob(yy, c.expand(len(yy), -1)).exp()
        y, lq = flow.sample(c.expand(64, -1), torch.Generator().manual_seed(1))
        lq2 = flow.log_prob(y, c.expand(64, -1))
    h = float(g[1] - g[0])
    assert float(p.sum()) * h * h == pytest.approx(1.0, abs=2e-3)
    assert torch.allclose(lq, lq2, atol=1e-10)


def test_dihedral_proposal_normalised_on_torus(mol) -> None:
    """q(phi', psi' | x) of a random dihedral-mode propagator integrates to 1 over the torus.

    s_std = 0.5 keeps the density smooth at the wrap point (a very broad s piles mass into a thin
    spike at |delta| -> pi that a grid cannot resolve), so midpoint quadrature is accurate to 1e-4.
    """
    m = Propagator(_model(mol, "dihedrals").config).double().eval()
    m.s_std.fill_(0.5)
    m.s_mean.copy_(torch.tensor([0.3, -0.2]))
    _randomise(m, 1, 0.05)
    x = torch.as_tensor(mol.positions)[None]
    n = 100
    g = (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * math.pi / n) - math.pi
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        xb = x.expand(len(grid), -1, -1)
        xs = m.zmatrix.rotate_dihedrals(xb, [0, 1], grid - m.zmatrix.dihedrals(xb, [0, 1]))
        p = m.log_prob(xs, x.expand(len(grid), -1, -1)).exp()
    assert float(p.sum()) * (2 * math.pi / n) ** 2 == pytest.approx(1.0, abs=1e-4)


def test_full_proposal_exact_and_invariant(mol) -> None:
    """Full mode: sample's log q equals log_prob; Jacobian matches autograd; rigid invariance."""
    # Mild random weights: proposals stay molecule-like (wild ones lose digits in atanh/log).
    m = _model(mol, "full", std=0.05)
    x = torch.as_tensor(mol.positions)[None].expand(4, -1, -1)
    with torch.no_grad():
        m.s_mean.copy_(m.flow_variable(x[:1], x[:1])[0])  # centred on "no move", 0.05 spread
        m.s_std.fill_(0.05)
        xn, lq = m.sample(x, torch.Generator().manual_seed(0))
        assert float((xn - x).abs().max()) < 5.0  # Angstrom: a sane proposal
        assert torch.allclose(m.log_prob(xn, x), lq, atol=1e-6)  # |log q| ~ 100
        g = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=g))
        q = q * torch.sign(torch.det(q))  # a proper rotation
        shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        assert torch.allclose(m.log_prob(xn @ q.T + shift, x @ q.T + shift), lq, atol=1e-6)
    # log|det ds/dx| of the internal-coordinate map equals the autograd Jacobian's.
    z = m.zmatrix
    x0 = x[:1]
    J = torch.autograd.functional.jacobian(
        lambda v: z.to_s(v.view(1, 22, 3), x0)[0].flatten(), xn[:1].flatten()
    )
    assert float(torch.linalg.slogdet(J)[1]) == pytest.approx(
        float(z.to_s(xn[:1], x0)[1]), abs=1e-8
    )
    # dihedral rotation shortcut == rebuilding from internal coordinates
    d = torch.tensor([[2.0, -1.0, 0.7, 3.0, -2.5]], dtype=torch.float64)
    rows = [0, 1, 8, 11, 16]
    a = z.rotate_dihedrals(x0, rows, d)
    b = z.with_dihedrals(x0, rows, z.dihedrals(x0, rows) + d)
    assert torch.allclose(a, b, atol=1e-10)


def test_mh_exact_on_double_well() -> None:
    """MH with an asymmetric exact Gaussian proposal samples exp(-U) on a 2-D double well.

    U = 2 (x^2 - 1)^2 + y^2 / 2 (units of kT). Proposal mean 0.5 x + 0.5 pushes to x > 0, so an
    uncorrected chain is biased; the MH chain must give P(x > 0) = 1/2 and the exact <x^2>
    (tolerance 0.03, about 4 standard errors at this chain's effective sample size).
    """
    rng = np.random.default_rng(42)
    sig = 0.9

    def log_target(x: np.ndarray) -> np.ndarray:
        return -(2.0 * (x[:, 0] ** 2 - 1.0) ** 2 + 0.5 * x[:, 1] ** 2)

    def mean(x: np.ndarray) -> np.ndarray:
        return np.array([0.5 * x[..., 0] + 0.5, 0.5 * x[..., 1]]).T

    def log_q(xn: np.ndarray, xo: np.ndarray) -> np.ndarray:
        return -0.5 * (((xn - mean(xo)) / sig) ** 2).sum(-1)

    def propose(x: np.ndarray, b: int):
        xn = mean(x[None]) + sig * rng.standard_normal((b, 2))
        return xn, log_q(xn, x[None])

    def reverse(xn: np.ndarray, x: np.ndarray) -> np.ndarray:
        return log_q(np.broadcast_to(x, xn.shape), xn)

    res = metropolis_hastings(np.zeros(2), 40000, propose, reverse, log_target, rng, batch=8)
    xs = res.states[1000:, 0]
    grid = np.linspace(-3, 3, 20001)
    w = np.exp(-2.0 * (grid**2 - 1.0) ** 2)
    x2_exact = float((grid**2 * w).sum() / w.sum())
    assert 0.1 < res.acceptance_rate < 0.9
    assert abs((xs > 0).mean() - 0.5) < 0.03
    assert abs((xs**2).mean() - x2_exact) < 0.03
    # The same proposal without the correction is clearly biased: the test has power.
    unadj = metropolis_hastings(
        np.zeros(2), 5000, propose, reverse, log_target, rng, exploration=True
    )
    assert (unadj.states[500:, 0] > 0).mean() > 0.6


def test_save_load_roundtrip(mol, tmp_path) -> None:
    """Saved and loaded propagators give identical densities and samples; bad files are refused."""
    m = _model(mol, "dihedrals", rows=(0, 1, 8))
    path = m.save(tmp_path / "prop.pt", extra={"note": "x"})
    m2 = Propagator.load(path).double()
    assert m2.config == m.config and m2.extra == {"note": "x"}
    x = torch.as_tensor(mol.positions)[None].expand(3, -1, -1)
    with torch.no_grad():
        a, la = m.sample(x, torch.Generator().manual_seed(5))
        b, lb = m2.sample(x, torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert torch.equal(m.log_prob(a, x), m2.log_prob(a, x))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises((ValueError, Exception)):
        Propagator.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        Propagator.load(tmp_path / "missing.pt")


def test_training_resumes_exactly(mol, tmp_path) -> None:
    """Interrupted-and-resumed training ends in the same weights as one uninterrupted run."""
    rng = np.random.default_rng(0)
    x0 = mol.positions[None] + 0.05 * rng.standard_normal((64, 22, 3))
    x1 = x0 + 0.05 * rng.standard_normal((64, 22, 3))

    def fresh() -> Propagator:
        torch.manual_seed(7)  # same initial weights for both runs
        z = alanine_zmatrix(mol.topology)
        cfg = PropagatorConfig(22, z.roots, z.rows, 1.0, hidden=16, n_layers=2, d_context=8)
        return Propagator(cfg)

    a = fresh()
    train_propagator(a, x0, x1, n_steps=12, batch_size=16, progress=False)
    b = fresh()
    ck = tmp_path / "ck.pt"
    train_propagator(b, x0, x1, 12, batch_size=16, checkpoint=ck, progress=False, stop_at=6)
    c = fresh()  # a new process would start from scratch and find the checkpoint
    res = train_propagator(c, x0, x1, n_steps=12, batch_size=16, checkpoint=ck, progress=False)
    assert res.steps == 12 and np.isfinite(res.val_nll)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, c.state_dict()[k], atol=1e-6), k


def test_hmc_and_cli_propagate(mol, tmp_path, capsys) -> None:
    """HMC accepts most moves and refuses constrained systems; `mlsim propagate` writes DCD+JSON."""
    import json

    from mlsim.cli import main
    from mlsim.propagators._hmc import HMCKernel

    hmc = HMCKernel(mol.system, 300.0, dt_fs=1.0, n_steps=10, seed=0)
    x = mol.positions
    for _ in range(10):
        x, _, e = hmc.step(x)
    assert hmc.acceptance_rate >= 0.7 and np.isfinite(e)
    with pytest.raises(ValueError, match="unconstrained"):
        HMCKernel(alanine_dipeptide("vacuum", "HBonds").system)

    path = _model(mol, "dihedrals", rows=(0, 1, 8), std=0.05).save(tmp_path / "m.pt")
    out = tmp_path / "run"
    argv = ["propagate", "alanine", "--model", str(path), "--steps", "5", "--out", str(out)]
    assert main(argv + ["--solvent", "vacuum", "--hmc-steps", "5"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["steps"] == 5 and 0.0 <= summary["acceptance_rate"] <= 1.0
    assert out.with_suffix(".dcd").stat().st_size > 0
    assert main(argv + ["--hmc-steps", "0"]) == 1  # dihedral-only proposal needs HMC
    assert "not ergodic" in capsys.readouterr().err


ETHANOL_MODEL = Path(__file__).resolve().parents[1] / "examples" / "ethanol" / "model.pt"


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    """Ethanol: an XYZ file (bonds perceived), a 40-frame npz trajectory (Angstrom), positions."""
    from ase import Atoms
    from ase.io import write

    from mlsim.data import ethanol_path, read

    s = read(ethanol_path("test", "geometries"))[0]
    d = tmp_path_factory.mktemp("ethanol")
    write(d / "ethanol.xyz", Atoms(numbers=s.numbers, positions=s.positions))
    rng = np.random.default_rng(0)
    x = s.positions[None] + 0.03 * rng.standard_normal((40, 9, 3))
    np.savez(d / "traj.npz", positions=x, numbers=s.numbers, frame_interval_ps=0.1)
    return d, s.numbers, s.positions


def test_model_target_energies_and_forces(ethanol) -> None:
    """ModelTarget (an mlsim model.pt): batched energies equal MLCalculator's one by one, forces
    too; overlapping atoms and NaN positions have zero density (infinite energy)."""
    if not ETHANOL_MODEL.exists():
        pytest.skip("examples/ethanol/model.pt not shipped")
    from ase import Atoms

    from mlsim.ase import MLCalculator
    from mlsim.propagators import ModelTarget
    from mlsim.propagators._target import Target

    _, numbers, x = ethanol
    t = ModelTarget(ETHANOL_MODEL, numbers, 300.0)
    assert isinstance(t, Target) and t.n_atoms == 9
    rng = np.random.default_rng(1)
    xb = x[None] + 0.05 * rng.standard_normal((3, 9, 3))
    bad = xb[0].copy()
    bad[1] = bad[0] + 0.1  # closer than the hard core
    e = t.energy(np.concatenate([xb, bad[None], np.full((1, 9, 3), np.nan)]))
    calc = MLCalculator(str(ETHANOL_MODEL))
    for k in range(3):
        atoms = Atoms(numbers=numbers, positions=xb[k])
        atoms.calc = calc
        assert e[k] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    assert np.isinf(e[3]) and np.isinf(e[4])
    e0, f0 = t.energy_forces(xb[0])
    atoms = Atoms(numbers=numbers, positions=xb[0])
    atoms.calc = calc
    assert e0 == pytest.approx(e[0], abs=1e-4)
    assert np.allclose(f0, atoms.get_forces(), atol=1e-3)
    with pytest.raises(ValueError, match="not trained on elements"):
        ModelTarget(ETHANOL_MODEL, [6, 6, 17], 300.0)


def test_cli_train_and_sample_any_molecule(ethanol, mol, tmp_path, capsys) -> None:
    """`mlsim propagate train` on an XYZ file (bonds perceived, Z-matrix built automatically) and
    `sample` against an mlsim model (generic HMC) and a serialized OpenMM System (OpenMM HMC);
    a structure that is not the model's molecule, and Amber14 on a non-peptide, fail with
    messages that say what to do."""
    import json

    from mlsim.cli import main

    if not ETHANOL_MODEL.exists():
        pytest.skip("examples/ethanol/model.pt not shipped")
    d, numbers, x = ethanol
    xyz, prop = str(d / "ethanol.xyz"), tmp_path / "prop.pt"
    argv = ["propagate", "train", xyz, "--data", str(d / "traj.npz"), "--tau-ps", "0.2"]
    argv += ["--out", str(prop), "--steps", "4", "--batch-size", "8", "--hidden", "8"]
    assert main(argv + ["--target", str(ETHANOL_MODEL)]) == 0
    trained = Propagator.load(prop)
    assert trained.config.mode == "dihedrals" and len(trained.config.dihedral_rows) == 2
    assert trained.config.numbers == list(numbers) and len(trained.config.bonds) == 8
    assert trained.extra["target"] == str(ETHANOL_MODEL)
    capsys.readouterr()

    out = tmp_path / "chain"
    argv = ["propagate", "sample", xyz, "--model", str(prop), "--steps", "3", "--out", str(out)]
    assert main(argv + ["--hmc-steps", "3", "--hmc-dt-fs", "0.5"]) == 0  # target: as trained
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["target"] == str(ETHANOL_MODEL) and len(summary["torsions"]) == 2
    assert 0.0 <= summary["acceptance_rate"] <= 1.0 and summary["hmc_acceptance"] is not None
    assert out.with_suffix(".dcd").stat().st_size > 0 and out.with_suffix(".pdb").exists()

    # An OpenMM System from XML (harmonic bonds on the perceived graph) as the target.
    from openmm import HarmonicBondForce, System, XmlSerializer

    from mlsim.propagators._graph import perceive_bonds

    system, bonds = System(), HarmonicBondForce()
    for z in numbers:
        system.addParticle(12.0 if z > 1 else 1.0)
    for a, b in perceive_bonds(numbers, x).bonds:
        bonds.addBond(a, b, float(np.linalg.norm(x[a] - x[b])) / 10.0, 2e5)
    system.addForce(bonds)
    (tmp_path / "sys.xml").write_text(XmlSerializer.serialize(system))
    argv2 = argv + ["--target", str(tmp_path / "sys.xml"), "--hmc-steps", "2"]
    assert main(argv2) == 0
    assert json.loads(out.with_suffix(".json").read_text())["target"].endswith("sys.xml")
    capsys.readouterr()

    # The older form with another molecule's model: refused by name, not an OpenMM error.
    ala = _model(mol, "dihedrals", rows=(0, 1, 8)).save(tmp_path / "ala.pt")
    assert main(["propagate", xyz, "--model", str(ala), "--steps", "2"]) == 1
    assert "molecule of 22 atoms" in capsys.readouterr().err
    # Amber14 on a molecule it has no templates for says which targets work instead.
    pdb = str(out.with_suffix(".pdb"))
    assert main(["propagate", "sample", pdb, "--model", str(prop), "--target", "amber14"]) == 1
    err = capsys.readouterr().err
    assert "Amber14 cannot parameterise" in err and "--target MODEL.pt" in err


def test_hmc_kernel_samples_the_boltzmann_distribution_of_a_bond() -> None:
    """One harmonic bond: <U> = kT/2 and <r - r0> = 0 under HMC (exact H, kT in eV)."""
    import openmm

    from mlsim.propagators._hmc import HMCKernel
    from mlsim.units import KB_EV_PER_K, KJ_PER_MOL_PER_EV

    k_ev, r0, temp = 20.0, 1.2, 400.0
    system = openmm.System()
    for m in (12.0, 16.0):
        system.addParticle(m)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, r0 / 10.0, k_ev * KJ_PER_MOL_PER_EV * 100.0)
    system.addForce(bond)
    hmc = HMCKernel(system, temp, dt_fs=1.0, n_steps=7, seed=3)
    x = np.array([[0.0, 0.0, 0.0], [r0, 0.0, 0.0]])
    energies = []
    for _ in range(3000):
        x, _, e = hmc.step(x)
        energies.append(e)
    kt = KB_EV_PER_K * temp
    u = np.array(energies[200:])
    # ~2800 nearly independent draws: the mean is kT/2 to a few percent
    assert abs(u.mean() / (0.5 * kt) - 1.0) < 0.1
    assert 0.5 < hmc.acceptance_rate <= 1.0
