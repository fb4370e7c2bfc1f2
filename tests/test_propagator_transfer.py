"""Transferable torsion proposals: canonical torsions, exact densities, transfer to a held-out
molecule with exact Metropolis-Hastings, save/load, and the CLI for several molecules."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from mlsim.analysis import effective_sample_size
from mlsim.propagators import TransferPropagator, run_propagator_chain, train_transfer
from mlsim.propagators._graph import MolecularGraph, graph_from_rdkit
from mlsim.propagators._sampler import metropolis_hastings
from mlsim.propagators._torsions import torsion_set

Chem = pytest.importorskip("rdkit.Chem")
from rdkit.Chem import AllChem  # noqa: E402


@functools.cache
def _embedded(smiles: str) -> tuple[MolecularGraph, np.ndarray]:
    """RDKit graph with explicit hydrogens and one ETKDG conformer (Angstrom), fixed seed."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = 7
    assert AllChem.EmbedMolecule(mol, params) == 0
    return graph_from_rdkit(mol), mol.GetConformer().GetPositions()


# --- a toy energy that depends on the canonical torsions only ------------------------------------
def _toy_params(tset) -> np.ndarray:
    """(k3, k1) per torsion from its chemistry: V = k3 (1 + cos 3 theta) + k1 cos theta, in kT.

    Torsions about C-C bonds between heavy branches: k3 = 1.5, k1 = 0.8 (two unequal wells);
    methyl rotors k3 = 1; bonds to oxygen (C-O, O-H rotors) k3 = 0.6, k1 = -0.5.
    """
    out = []
    for q, term in zip(tset.quads, tset.terminal):
        z = {tset.graph.numbers[q[1]], tset.graph.numbers[q[2]]}
        if 8 in z:
            out.append((0.6, -0.5))
        elif term:
            out.append((1.0, 0.0))
        else:
            out.append((1.5, 0.8))
    return np.array(out)


def _v(theta: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Toy torsion energies (kT) of angles (..., T) with parameters p (T, 2)."""
    return p[:, 0] * (1 + np.cos(3 * theta)) + p[:, 1] * np.cos(theta)


def _marginal_cdf(p: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid and CDFs (T, G) of exp(-beta V) for every torsion."""
    grid = np.linspace(-np.pi, np.pi, 4001)
    w = np.exp(-beta * _v(grid[:, None], p)).T
    cdf = np.concatenate([np.zeros((len(p), 1)), np.cumsum(0.5 * (w[:, 1:] + w[:, :-1]), 1)], 1)
    return grid, cdf / cdf[:, -1:]


def _toy_trajectory(smiles: str, n: int, seed: int) -> np.ndarray:
    """Frames whose canonical torsions are independent draws from the toy marginals (beta = 1)."""
    graph, x0 = _embedded(smiles)
    tset = torsion_set(graph, x0)
    p = _toy_params(tset)
    grid, cdf = _marginal_cdf(p, 1.0)
    rng = np.random.default_rng(seed)
    u = rng.random((n, tset.n_torsions))
    theta = np.stack([np.interp(u[:, t], cdf[t], grid) for t in range(tset.n_torsions)], 1)
    delta = (theta - tset.angles(x0)) * tset.signs
    z = tset.layout.zmatrix
    xt = torch.as_tensor(x0)[None].expand(n, -1, -1)
    return z.rotate_dihedrals(xt, list(tset.rows), torch.as_tensor(delta)).numpy()


def _mol(smiles: str):
    """A Molecule-like object (graph + positions) for bind/train_transfer."""
    from mlsim.propagators import Molecule

    graph, x0 = _embedded(smiles)
    return Molecule(x0, graph, None, smiles)


@pytest.fixture(scope="module")
def trained() -> tuple[TransferPropagator, object]:
    """A transfer proposal trained briefly on butane, propanol and 2-methylbutane (toy data)."""
    data = []
    for k, smi in enumerate(("CCCC", "CCCO", "CCC(C)C")):
        data.append((_mol(smi), [_toy_trajectory(smi, 400, k)], 1.0))
    model = TransferPropagator(hidden=32, n_bins=36, seed=0, terminal_weight=1.0)
    res = train_transfer(model, data, n_steps=250, batch_size=256, lr=5e-3, progress=False)
    return model, res


def test_canonical_torsions_ignore_atom_order() -> None:
    """Renumbering the atoms gives the same torsions: features, angles and blocks match as sets,
    so a proposal learned on one file applies to the same chemistry in any other file."""
    graph, x = _embedded("CC(O)CC(=O)NC(C)CC")
    a = torsion_set(graph, x)
    perm = np.random.default_rng(3).permutation(graph.n_atoms)
    inv = np.argsort(perm)
    g2 = MolecularGraph(
        tuple(graph.numbers[i] for i in perm), tuple((inv[i], inv[j]) for i, j in graph.bonds)
    )
    b = torsion_set(g2, x[perm])
    assert a.n_torsions == b.n_torsions

    def described(ts, xs: np.ndarray) -> list:
        # Terminal rotors pick one of three equivalent hydrogens: their angle depends on which.
        ang = np.where(ts.terminal, 0.0, ts.angles(xs))
        return sorted((tuple(np.round(f, 9)), round(float(t), 9)) for f, t in zip(ts.features, ang))

    assert described(a, x) == described(b, x[perm])
    assert sorted(map(len, a.blocks)) == sorted(map(len, b.blocks))


def test_rotating_a_torsion_moves_only_its_canonical_angle() -> None:
    """A Z-matrix rotation of one torsion changes its canonical angle by sign * delta and leaves
    the others alone (the basis of proposing canonical angles without a Jacobian)."""
    graph, x = _embedded("CC(O)CC(C)CC")
    ts = torsion_set(graph, x)
    z = ts.layout.zmatrix
    delta = torch.as_tensor(np.random.default_rng(0).uniform(-3, 3, (1, ts.n_torsions)))
    moved = z.rotate_dihedrals(torch.as_tensor(x)[None], list(ts.rows), delta)[0].numpy()
    change = np.angle(np.exp(1j * (ts.angles(moved) - ts.angles(x))))
    want = np.angle(np.exp(1j * ts.signs * delta[0].numpy()))
    assert np.allclose(change, want, atol=1e-9)
    # bonds and angles are untouched
    for i, j in graph.bonds:
        assert abs(np.linalg.norm(moved[i] - moved[j]) - np.linalg.norm(x[i] - x[j])) < 1e-9


@pytest.mark.parametrize("kind", ["trained", "lagged"])
def test_proposal_density_normalised_and_consistent(trained, kind: str) -> None:
    """For one- and two-torsion blocks of a held-out molecule, q integrates to 1 over the
    proposed angles (grid quadrature), and propose's log q equals log_prob of the same move;
    the bound proposal's precomputed network equals the generic one used in training. For the
    trained equilibrium-conditional model and a random model conditioned on the current angle."""
    if kind == "trained":
        model = trained[0]
    else:
        model = TransferPropagator(tau_ps=1.0, hidden=16, n_bins=24, seed=3)
        model.bind(_mol("CCCC"))  # builds the networks
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    graph, x = _embedded("CCCCO")
    prop = model.bind(_mol("CCCCO"))
    xp, lq, bl = prop.propose(x, 32, np.random.default_rng(1))
    assert np.allclose(prop.log_prob(xp, x, bl), lq, atol=1e-10)
    ts = prop.torsions
    cur = torch.as_tensor(ts.angles(xp))
    flags = torch.rand(cur.shape, generator=torch.Generator().manual_seed(2))
    new, hidden = (flags < 0.3).double(), (flags > 0.7).double()
    t = torch.arange(len(cur)) % ts.n_torsions
    nb = torch.as_tensor(ts.neighbors).clamp_min(0)[t]
    mask = (torch.as_tensor(ts.neighbors)[t] >= 0).double()
    rows = torch.arange(len(t))[:, None]
    with torch.no_grad():
        h = model.encoder(torch.as_tensor(ts.features))
        generic = model._log_bins(
            model.logits(
                h[t], cur[rows[:, 0], t], h[nb], cur[rows, nb], new[rows, nb],
                torch.as_tensor(ts.relation)[t], mask * (1 - hidden[rows, nb]),
            )
        )  # fmt: skip
        bound = prop._step_log_bins(t.numpy(), cur.numpy(), new.numpy(), hidden.numpy())
        assert np.allclose(bound, generic.numpy(), atol=1e-12)
    z = ts.layout.zmatrix
    a0 = ts.angles(x)
    n = 72  # bin edges fall on grid cell edges: midpoint rule is exact for the histogram
    g = (np.arange(n) + 0.5) * (2 * np.pi / n) - np.pi
    for b, block in enumerate(ts.blocks):
        grids = np.stack(np.meshgrid(*([g] * len(block)), indexing="ij"), -1).reshape(
            -1, len(block)
        )
        delta = np.zeros((len(grids), ts.n_torsions))
        delta[:, list(block)] = (grids - a0[list(block)]) * ts.signs[list(block)]
        xs = z.rotate_dihedrals(
            torch.as_tensor(x)[None].expand(len(grids), -1, -1),
            list(ts.rows),
            torch.as_tensor(delta),
        ).numpy()
        p = np.exp(prop.log_prob(xs, x, np.full(len(grids), b)))
        assert p.sum() * (2 * np.pi / n) ** len(block) == pytest.approx(1.0, abs=1e-6), block


def test_transfer_mh_exact_on_held_out_molecule(trained) -> None:
    """Trained on three molecules, applied without retraining to 1-butanol at a lower
    temperature than the training data (beta = 1.6): the MH chain reproduces every torsion's
    exact marginal (chi-square p > 0.001 at the chain's ESS); the same proposals accepted without
    correction do not (p < 1e-6); the proposal learned something (NLL below uniform)."""
    model, res = trained
    assert res.val_nll < math.log(2 * math.pi) - 0.15
    graph, x0 = _embedded("CCCCO")
    prop = model.bind(_mol("CCCCO"))
    ts = prop.torsions
    p = _toy_params(ts)
    beta = 1.6

    def log_target(xb: np.ndarray) -> np.ndarray:
        return -beta * _v(ts.angles(xb), p).sum(-1)

    gen = np.random.default_rng([5, 1])
    rng = np.random.default_rng(5)
    chain = metropolis_hastings(
        x0, 3000, lambda x, b: prop.propose(x, b, gen), prop.log_prob_reverse, log_target, rng,
        batch=16,
    )  # fmt: skip
    assert 0.2 < chain.acceptance_rate < 0.95
    assert chain.moves is not None and set(np.unique(chain.moves)) == set(range(len(ts.blocks)))
    theta = ts.angles(chain.states[500:])
    edges = np.linspace(-np.pi, np.pi, 13)
    grid, cdf = _marginal_cdf(p, beta)
    for t in range(ts.n_torsions):
        n_eff = min(_ess(np.sin(theta[:, t])), _ess(np.cos(theta[:, t])))
        assert n_eff > 50, t
        assert _chi2(theta[:, t], n_eff, edges, np.diff(np.interp(edges, grid, cdf[t]))) > 1e-3
    biased = metropolis_hastings(
        x0, 1000, lambda x, b: prop.propose(x, b, gen), prop.log_prob_reverse, log_target, rng,
        exploration=True,
    )  # fmt: skip
    tb = ts.angles(biased.states[200:])
    worst = min(
        _chi2(tb[:, t], min(_ess(np.sin(tb[:, t])), _ess(np.cos(tb[:, t]))), edges,
              np.diff(np.interp(edges, grid, cdf[t])))
        for t in range(ts.n_torsions)
    )  # fmt: skip
    assert worst < 1e-6


def test_chain_with_hmc_and_save_load(trained, tmp_path) -> None:
    """run_propagator_chain takes a bound proposal with an HMC kernel (records the block of every
    MH step); an unbound model, a missing HMC kernel and a wrong molecule are refused by name;
    save/load keeps densities bit for bit."""
    from mlsim.propagators._hmc import TargetHMC

    model, _ = trained
    graph, x0 = _embedded("CCCCO")
    prop = model.bind(_mol("CCCCO"))
    target = _BondedToy(graph, x0, prop.torsions)
    hmc = TargetHMC(target, np.where(np.array(graph.numbers) == 1, 1.0, 12.0), 0.5, 5, seed=1)
    res = run_propagator_chain(prop, target, x0, 30, seed=2, hmc=hmc, mh_per_cycle=4)
    assert res.moves.shape == (120,) and res.hmc_acceptance > 0.5
    assert np.all(np.isfinite(res.log_target))
    with pytest.raises(ValueError, match="bind"):
        run_propagator_chain(model, target, x0, 2, hmc=hmc)
    with pytest.raises(ValueError, match="not ergodic"):
        run_propagator_chain(prop, target, x0, 2)
    other = model.bind(_mol("CCCC"))
    with pytest.raises(ValueError, match="atoms"):
        run_propagator_chain(other, target, x0, 2, hmc=hmc)
    path = model.save(tmp_path / "t.pt", extra={"note": 1})
    loaded = TransferPropagator.load(path)
    assert loaded.config == model.config and loaded.extra == {"note": 1}
    p2 = loaded.bind(_mol("CCCCO"))
    xp, lq, bl = prop.propose(x0, 8, np.random.default_rng(0))
    assert np.array_equal(p2.log_prob(xp, x0, bl), prop.log_prob(xp, x0, bl))
    with pytest.raises(ValueError, match="no rotatable torsion"):
        model.bind(_mol("c1ccccc1"))
    assert model.unseen_elements(_mol("CCS")) == [16]


class _BondedToy:
    """Toy torsion energy plus harmonic bonds and angles (eV, Angstrom), for HMC."""

    def __init__(self, graph, x0: np.ndarray, tset) -> None:
        self.n_atoms, self.numbers, self.beta, self.temperature = (
            graph.n_atoms,
            graph.numbers,
            40.0,
            290.0,
        )
        self.bonds = np.array(graph.bonds)
        nb = graph.neighbors()
        self.angles = np.array(
            [(a, j, b) for j in range(graph.n_atoms) for a in nb[j] for b in nb[j] if a < b]
        )
        self.r0 = np.linalg.norm(x0[self.bonds[:, 0]] - x0[self.bonds[:, 1]], axis=1)
        self.t0 = self._angle(torch.as_tensor(x0)[None]).numpy()[0]
        self.quads, self.p = tset.quads, _toy_params(tset)

    def _angle(self, x: torch.Tensor) -> torch.Tensor:
        u = x[:, self.angles[:, 0]] - x[:, self.angles[:, 1]]
        v = x[:, self.angles[:, 2]] - x[:, self.angles[:, 1]]
        return torch.acos(((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).clamp(-1, 1))

    def _u(self, x: torch.Tensor) -> torch.Tensor:
        r = (x[:, self.bonds[:, 0]] - x[:, self.bonds[:, 1]]).norm(dim=-1)
        u = 10.0 * ((r - torch.as_tensor(self.r0)) ** 2).sum(-1)
        u = u + 2.0 * ((self._angle(x) - torch.as_tensor(self.t0)) ** 2).sum(-1)
        p0, p1, p2, p3 = (x[:, self.quads[:, i]] for i in range(4))
        b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
        n1, n2 = torch.cross(b0, b1, dim=-1), torch.cross(b1, b2, dim=-1)
        th = torch.atan2(b1.norm(dim=-1) * (b0 * n2).sum(-1), (n1 * n2).sum(-1))
        p = torch.as_tensor(self.p)
        return (
            u + ((p[:, 0] * (1 + torch.cos(3 * th)) + p[:, 1] * torch.cos(th)).sum(-1)) / self.beta
        )

    def energy(self, x: np.ndarray) -> np.ndarray:
        xb = torch.as_tensor(np.asarray(x, dtype=np.float64))
        with torch.no_grad():
            return self._u(xb[None] if xb.ndim == 2 else xb).numpy()

    def energy_forces(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64))[None].requires_grad_(True)
        u = self._u(xt).sum()
        (g,) = torch.autograd.grad(u, xt)
        return float(u.detach()), -g[0].numpy()


def _ess(x: np.ndarray) -> float:
    """Effective sample size (the library's estimator, tested in tests/test_analysis.py)."""
    return effective_sample_size(x)


def _chi2(theta: np.ndarray, n_eff: float, edges: np.ndarray, p: np.ndarray) -> float:
    """Chi-square p-value of the histogram of theta against bin probabilities p, at n_eff
    samples; bins expecting fewer than 5 samples are pooled into one."""
    from scipy.stats import chi2

    f = np.histogram(theta, edges)[0] / len(theta)
    rare = n_eff * p < 5
    if rare.any():
        f = np.append(f[~rare], f[rare].sum())
        p = np.append(p[~rare], p[rare].sum())
    return float(chi2.sf(n_eff * ((f - p) ** 2 / p).sum(), len(p) - 1))


def test_cli_transfer_train_several_and_sample_unseen(tmp_path, capsys) -> None:
    """`mlsim propagate train` with two dipeptides (MD run here on Amber14) writes one transfer
    model; `sample` applies it to ACE-SER-NME, which it never saw; bad input fails by name."""
    import json

    from ase import Atoms
    from ase.io import write

    from mlsim.cli import main

    pytest.importorskip("openmm")
    model = tmp_path / "transfer.pt"
    argv = ["propagate", "train", "ace-ala-nme", "ace-gly-nme", "--md-ps", "2", "--md-dt-fs", "1",
            "--md-interval-ps", "0.1", "--md-equilibrate-ps", "0", "--target", "amber14",
            "--solvent", "vacuum", "--steps", "5", "--batch-size", "16",
            "--hidden", "8", "--bins", "12", "--out", str(model)]  # fmt: skip
    assert main(argv) == 0
    trained = TransferPropagator.load(model)
    assert trained.config.elements == [1, 6, 7, 8] and len(trained.config.molecules) == 2
    assert [m["torsions"] for m in trained.extra["molecules"]] == [5, 4]
    capsys.readouterr()

    out = tmp_path / "chain"
    argv = ["propagate", "sample", "ace-ser-nme", "--model", str(model), "--steps", "3",
            "--hmc-steps", "3", "--mh-per-cycle", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["proposal"] == "transfer (torsions)" and len(summary["torsions"]) == 6
    assert summary["target"] == "amber14" and summary["hmc_acceptance"] is not None
    assert all(0.0 <= a <= 1.0 for a in summary["acceptance_per_block"].values())
    assert out.with_suffix(".dcd").stat().st_size > 0
    capsys.readouterr()

    assert main(argv[:-2] + ["--hmc-steps", "0", "--out", str(out)]) == 1
    assert "not ergodic" in capsys.readouterr().err
    graph, x = _embedded("c1ccccc1")
    write(tmp_path / "benzene.xyz", Atoms(numbers=graph.numbers, positions=x))
    assert main(["propagate", "sample", str(tmp_path / "benzene.xyz"), "--model", str(model)]) == 1
    assert "no rotatable torsion" in capsys.readouterr().err
    bad = ["propagate", "train", "ace-ala-nme", "ace-gly-nme", "--data", "a.npz", "--tau-ps",
           "1", "--out", str(tmp_path / "x.pt")]  # fmt: skip
    assert main(bad) == 1
    assert "one entry per structure" in capsys.readouterr().err
