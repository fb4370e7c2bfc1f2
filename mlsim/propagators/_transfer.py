"""A transferable torsion proposal: one model for many molecules, conditioned on chemistry.

For a molecule's canonical rotatable torsions (mlsim.propagators._torsions) the model gives each
torsion t a density over its new angle,

    q_t(theta' | chemistry of t, angles of the neighbouring torsions[, theta_t now]),

a histogram of n_bins bins on the circle (uniform within a bin) mixed with a uniform floor, so
that every angle keeps a nonzero density on molecules the model never saw. Nothing in the
network depends on atom indices or molecule size: torsion features go through one encoder,
neighbouring torsions send messages that are summed, and one head gives the bin logits.

A proposal picks a block (one torsion, or two coupled torsions) with fixed probabilities, draws
the block's new angles one after another (the second conditioned on the first's new value; the
first does not see the second's old value, which is about to change), and rotates the branches.
q(x' | x) for that block is the product of the histogram densities (canonical angles need no
Jacobian, see _torsions), so Metropolis-Hastings with the same block in the reverse density is
exact; the block is passed from proposal to reverse test.

Two kinds, by config.tau_ps:
  - tau_ps = 0 (default): q_t is the equilibrium distribution of theta_t given its neighbours,
    learned from MD frames; the current theta_t is not an input. A proposal is then close to a
    Gibbs update of the block: the largest possible step, accepted as often as the stiff
    coordinates and the rest of the molecule allow.
  - tau_ps > 0: q_t is the distribution of theta_t(t + tau) given x(t) (Timewarp-like), learned
    from pairs of MD frames tau apart; moves stay more local, acceptance is higher, jumps rarer.
Training: maximum likelihood on MD of several molecules, with random neighbours treated as
block partners (hidden, or shown at their new value), so that every conditional a block needs
is learned.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlsim.propagators._model import load_payload, save_module
from mlsim.propagators._torsions import FEATURE_VERSION, SHARE_ATOM, TorsionSet, torsion_set

__all__ = ["TorsionProposal", "TransferConfig", "TransferPropagator", "train_transfer"]

_FORMAT = "mlsim-transfer-propagator-v1"
_TWO_PI = 2.0 * math.pi


@dataclass
class TransferConfig:
    """Architecture and proposal settings of a :class:`TransferPropagator` (saved with it)."""

    tau_ps: float = 0.0  # 0: equilibrium conditionals (no self-conditioning); > 0: lag pairs
    hidden: int = 64
    n_bins: int = 72
    floor: float = 0.05  # weight of the uniform part of every torsion's density
    terminal_weight: float = 0.25  # selection weight of methyl/hydroxyl rotor blocks
    n_features: int = 0  # set from the first molecule the model sees
    feature_version: int = FEATURE_VERSION
    seed: int = 0
    elements: list[int] = field(default_factory=list)  # atomic numbers seen in training
    molecules: list[str] = field(default_factory=list)  # formulas of the training molecules

    def __post_init__(self) -> None:
        """Validate the settings."""
        if not self.tau_ps >= 0 or self.hidden < 1 or self.n_bins < 2:
            raise ValueError("need tau_ps >= 0, hidden >= 1 and n_bins >= 2")
        if not 0.0 < self.floor < 1.0:
            raise ValueError(f"floor must be in (0, 1), got {self.floor}")
        if self.terminal_weight < 0:
            raise ValueError("terminal_weight must be >= 0")


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Two SiLU layers and a linear output."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, d_out),
    )  # fmt: skip


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles wrapped into [-pi, pi)."""
    return torch.remainder(a + math.pi, _TWO_PI) - math.pi


class TransferPropagator(nn.Module):
    """Torsion proposal for any molecule (see the module docstring); `bind` a molecule to use it."""

    def __init__(self, config: TransferConfig | None = None, **kwargs) -> None:
        """Build the networks (the feature size is fixed when the first molecule is bound)."""
        super().__init__()
        self.config = config if config is not None else TransferConfig(**kwargs)
        if self.config.n_features:
            self._build(self.config.n_features)

    def _build(self, n_features: int) -> None:
        """Create the encoder, message and head networks for n_features torsion features."""
        h = self.config.hidden
        self.config.n_features = int(n_features)
        with torch.random.fork_rng():  # reproducible weights, the global RNG untouched
            torch.manual_seed(self.config.seed)
            self.encoder = _mlp(n_features, h, h)
            self.message = _mlp(2 * h + 4, h, h)
            self.head = _mlp(2 * h + 2, h, self.config.n_bins)
        with torch.no_grad():  # start from the uniform density
            self.head[-1].weight.zero_()
            self.head[-1].bias.zero_()

    def bind(self, molecule, positions: np.ndarray | None = None) -> TorsionProposal:
        """The proposal for one molecule: a Molecule, MolecularGraph, ZMatrixLayout or
        TorsionSet (positions, Angstrom, help to avoid collinear Z-matrix references)."""
        tset = _as_torsion_set(molecule, positions)
        if not self.config.n_features:
            self._build(tset.features.shape[1])
        if tset.features.shape[1] != self.config.n_features:
            raise ValueError(
                f"torsion features have {tset.features.shape[1]} entries, the model "
                f"{self.config.n_features} (feature version {self.config.feature_version})"
            )
        return TorsionProposal(self, tset)

    def unseen_elements(self, molecule) -> list[int]:
        """Atomic numbers of `molecule` that no training molecule had (empty when untrained)."""
        graph = getattr(molecule, "graph", molecule)
        if not self.config.elements:
            return []
        return sorted({int(z) for z in graph.numbers} - set(self.config.elements))

    def logits(
        self,
        h_t: torch.Tensor,
        own: torch.Tensor,
        h_nb: torch.Tensor,
        nb_angle: torch.Tensor,
        nb_new: torch.Tensor,
        nb_rel: torch.Tensor,
        nb_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Bin logits (B, n_bins) of torsions with encodings h_t (B, H) at angle `own` (B,),
        given K neighbours: encodings (B, K, H), angles, new-value flags, relations, mask."""
        k = h_nb.shape[1]
        inp = torch.cat(
            [
                h_nb,
                h_t[:, None, :].expand(-1, k, -1),
                torch.cos(nb_angle)[..., None],
                torch.sin(nb_angle)[..., None],
                nb_new[..., None],
                nb_rel[..., None],
            ],
            dim=-1,
        )
        msg = (self.message(inp) * nb_mask[..., None]).sum(1)
        own_feat = torch.stack([torch.cos(own), torch.sin(own)], dim=-1) * self._self_weight
        return self.head(torch.cat([h_t, own_feat, msg], dim=-1))

    @property
    def _self_weight(self) -> float:
        """1 when the current angle of a torsion conditions its proposal (tau_ps > 0), else 0."""
        return 1.0 if self.config.tau_ps > 0 else 0.0

    def log_density(self, logits: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """log q(angle) (per radian) of each row's histogram density with the uniform floor."""
        m = self.config.n_bins
        k = torch.floor((_wrap(angle) + math.pi) * (m / _TWO_PI)).long().clamp(0, m - 1)
        return self._log_bins(logits).gather(1, k[:, None])[:, 0] + math.log(m / _TWO_PI)

    def _log_bins(self, logits: torch.Tensor) -> torch.Tensor:
        """log of each bin's probability: (1 - floor) softmax + floor / n_bins."""
        f, m = self.config.floor, self.config.n_bins
        return torch.logaddexp(
            torch.log_softmax(logits, dim=-1) + math.log1p(-f),
            torch.full_like(logits, math.log(f / m)),
        )

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write config + weights atomically (mlsim._fileio)."""
        return save_module(path, _FORMAT, self, extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TransferPropagator:
        """Load a model written by :meth:`save`."""
        path, payload = load_payload(path, _FORMAT, "transfer propagator")
        cfg = TransferConfig(**payload["config"])
        if cfg.feature_version != FEATURE_VERSION:
            raise ValueError(
                f"{path} uses torsion features version {cfg.feature_version}; this mlsim "
                f"computes version {FEATURE_VERSION}: retrain the model"
            )
        model = cls(cfg)
        dtype = next(v.dtype for v in payload["state_dict"].values() if v.is_floating_point())
        model.to(dtype).load_state_dict(payload["state_dict"])
        model.extra = payload.get("extra", {})
        return model.eval()


def is_transfer_file(payload) -> bool:
    """Whether a loaded torch payload is a transfer propagator."""
    return isinstance(payload, dict) and payload.get("format") == _FORMAT


def _as_torsion_set(molecule, positions: np.ndarray | None) -> TorsionSet:
    """TorsionSet of a Molecule / MolecularGraph / ZMatrixLayout / TorsionSet."""
    if isinstance(molecule, TorsionSet):
        return molecule
    if (
        hasattr(molecule, "graph")
        and hasattr(molecule, "positions")
        and not hasattr(molecule, "rows")
    ):
        return torsion_set(molecule.graph, molecule.positions if positions is None else positions)
    return torsion_set(molecule, positions)


def _silu(x: np.ndarray) -> np.ndarray:
    """SiLU (x * sigmoid(x)), overflow-free."""
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))


class TorsionProposal:
    """A :class:`TransferPropagator` bound to one molecule: draws proposals and their densities.

    Inference runs in NumPy (float64) on weights copied from the model at bind time (and by
    :meth:`refresh`): a proposal step is a handful of tiny matrix products, where torch's
    per-operation overhead would dominate. Positions in Angstrom; random numbers from a
    numpy Generator.
    """

    def __init__(self, model: TransferPropagator, tset: TorsionSet) -> None:
        """Precompute the molecule's torsion encodings, neighbour tables and blocks."""
        self.model = model
        self.torsions = tset
        self.n_atoms = tset.graph.n_atoms
        self.weights = tset.block_weights(model.config.terminal_weight)
        self._nb = np.maximum(tset.neighbors, 0)
        self._nb_mask = (tset.neighbors >= 0).astype(np.float64)
        self._nb_rel = np.asarray(tset.relation, dtype=np.float64)
        self._signs = np.asarray(tset.signs, dtype=np.float64)
        t = tset.n_torsions
        nmax = max(len(b) for b in tset.blocks)
        self._blocks = np.full((len(tset.blocks), nmax), -1, dtype=np.int64)
        self._block_flags = np.zeros((len(tset.blocks), t))
        for i, b in enumerate(tset.blocks):
            self._blocks[i, : len(b)] = b
            self._block_flags[i, list(b)] = 1.0
        self._cum_weights = np.cumsum(self.weights)
        # Rotations, in Z-matrix row order (as ZMatrix.rotate_dihedrals): the bond and the atoms
        # that turn with each torsion.
        z = tset.layout.zmatrix
        order = sorted(range(t), key=lambda q: tset.rows[q])
        self._rot = [
            (q, *z.rows[tset.rows[q]][1:3], np.asarray(z.moving[tset.rows[q]])) for q in order
        ]
        self.refresh()

    def refresh(self) -> None:
        """Copy the model's weights (after they changed), with the chemistry-only parts of the
        first message and head layers precomputed per torsion (the network is linear in them)."""
        with torch.no_grad():
            m = self.model.double().eval()
            h = m.encoder(torch.as_tensor(self.torsions.features)).numpy()
            w = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}
        hd = h.shape[1]
        w_msg, b_msg = w["message.0.weight"], w["message.0.bias"]
        self._msg_static = h[self._nb] @ w_msg[:, :hd].T + (h @ w_msg[:, hd : 2 * hd].T)[:, None]
        self._msg_static += b_msg  # (T, K, H)
        self._w_msg_dyn = w_msg[:, 2 * hd :].T.copy()  # rows: cos, sin, new, relation
        self._msg_2 = (w["message.2.weight"].T.copy(), w["message.2.bias"])
        self._msg_4 = (w["message.4.weight"].T.copy(), w["message.4.bias"])
        w_head, b_head = w["head.0.weight"], w["head.0.bias"]
        self._head_static = h @ w_head[:, :hd].T + b_head  # (T, H)
        self._w_head_own = w_head[:, hd : hd + 2].T * m._self_weight
        self._w_head_msg = w_head[:, hd + 2 :].T.copy()
        self._head_2 = (w["head.2.weight"].T.copy(), w["head.2.bias"])
        self._head_4 = (w["head.4.weight"].T.copy(), w["head.4.bias"])
        cfg = m.config
        self._log_floor = math.log(cfg.floor / cfg.n_bins)
        self._log_keep = math.log1p(-cfg.floor)
        self._n_bins = cfg.n_bins

    def _step_log_bins(
        self, t: np.ndarray, cur: np.ndarray, is_new: np.ndarray, hidden: np.ndarray
    ) -> np.ndarray:
        """Bin log-probabilities (B, n_bins) of torsions t (B,) given working angles (B, T),
        which of them are new values, and which are hidden (block partners not yet proposed)."""
        nbi = self._nb[t]
        rows = np.arange(len(t))[:, None]
        ang = cur[rows, nbi]
        dyn = np.stack([np.cos(ang), np.sin(ang), is_new[rows, nbi], self._nb_rel[t]], -1)
        z = _silu(self._msg_static[t] + dyn @ self._w_msg_dyn)
        z = _silu(z @ self._msg_2[0] + self._msg_2[1]) @ self._msg_4[0] + self._msg_4[1]
        mask = self._nb_mask[t] * (1.0 - hidden[rows, nbi])
        msg = np.einsum("bkh,bk->bh", z, mask)
        own = cur[rows[:, 0], t]
        own = np.stack([np.cos(own), np.sin(own)], -1)
        z = _silu(self._head_static[t] + own @ self._w_head_own + msg @ self._w_head_msg)
        logits = _silu(z @ self._head_2[0] + self._head_2[1]) @ self._head_4[0] + self._head_4[1]
        logits = logits - logits.max(-1, keepdims=True)
        log_soft = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return np.logaddexp(log_soft + self._log_keep, self._log_floor)

    def _bin(self, ang: np.ndarray) -> np.ndarray:
        """Histogram bin of angles (radians)."""
        m = self._n_bins
        k = np.floor((np.remainder(ang + math.pi, _TWO_PI)) * (m / _TWO_PI)).astype(np.int64)
        return np.clip(k, 0, m - 1)

    def _walk(
        self, bidx: np.ndarray, cur: np.ndarray, choose: Callable
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move each row's block torsion by torsion, each conditioned on the ones already moved.

        choose(rows, torsions, log_bins) gives the new angles and their bins; returns the final
        angles (B, T) (cur is updated in place) and log q of the whole move (B,).
        """
        is_new = np.zeros_like(cur)
        hidden = self._block_flags[bidx].copy()
        bl = self._blocks[bidx]
        rows = np.arange(len(bidx))
        log_q = np.zeros(len(bidx))
        log_width = math.log(_TWO_PI / self._n_bins)
        for k in range(bl.shape[1]):
            live = bl[:, k] >= 0
            if not live.any():
                break
            tl, rl = bl[live, k], rows[live]
            lb = self._step_log_bins(tl, cur[rl], is_new[rl], hidden[rl])
            ang, b = choose(rl, tl, lb)
            log_q[rl] += lb[np.arange(len(tl)), b] - log_width
            cur[rl, tl] = ang
            is_new[rl, tl] = 1.0
            hidden[rl, tl] = 0.0
        return cur, log_q

    def _log_q(self, blocks: np.ndarray, a_from: np.ndarray, a_to: np.ndarray) -> np.ndarray:
        """log q of moving each row from angles a_from (B, T) to a_to (B, T) with its block."""

        def given(rl: np.ndarray, tl: np.ndarray, lb: np.ndarray) -> tuple:
            ang = a_to[rl, tl]
            return ang, self._bin(ang)

        return self._walk(blocks, a_from.copy(), given)[1]

    def sample_blocks(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n block indices drawn with the block weights."""
        u = rng.random(n) * self._cum_weights[-1]
        return np.minimum(
            np.searchsorted(self._cum_weights, u, side="right"), len(self.weights) - 1
        )

    def _rotate(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Copies of x (n_atoms, 3) with each torsion turned by delta (B, T) about its bond
        (Rodrigues; the same result as ZMatrix.rotate_dihedrals)."""
        out = np.repeat(x[None], len(delta), axis=0)
        for q, j, k, idx in self._rot:
            ang = delta[:, q]
            if not ang.any():
                continue
            axis = out[:, k] - out[:, j]
            axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
            v = out[:, idx] - out[:, j][:, None]
            cos, sin = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
            a = axis[:, None, :]
            cross = np.cross(np.broadcast_to(a, v.shape), v)
            v = v * cos + cross * sin + a * (v * a).sum(-1, keepdims=True) * (1 - cos)
            out[:, idx] = v + out[:, j][:, None]
        return out

    def propose(
        self, x: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n proposals from x (n_atoms, 3): (x' (n, n_atoms, 3), log q(x' | x) (n,), blocks (n,))."""
        x = np.asarray(x, dtype=np.float64)
        bidx = self.sample_blocks(n, rng)
        a0 = self.torsions.angles(x)
        width = _TWO_PI / self._n_bins

        def draw(rl: np.ndarray, tl: np.ndarray, lb: np.ndarray) -> tuple:
            # a bin from the histogram, then a uniform angle inside it
            cdf = np.cumsum(np.exp(lb), -1)
            u = rng.random(len(tl)) * cdf[:, -1]
            b = np.minimum((cdf < u[:, None]).sum(-1), self._n_bins - 1)
            return -math.pi + (b + rng.random(len(tl))) * width, b

        cur, log_q = self._walk(bidx, np.repeat(a0[None], n, axis=0), draw)
        delta = np.remainder(cur - a0 + math.pi, _TWO_PI) - math.pi
        return self._rotate(x, delta * self._signs), log_q, bidx

    def log_prob(self, x_new: np.ndarray, x_old: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """log q(x_new | x_old) (B,) for moves made with `blocks` (B,); either structure may be
        one (n, 3) shared by all rows."""
        t = self.torsions.n_torsions
        a_new = self.torsions.angles(x_new).reshape(-1, t)
        a_old = self.torsions.angles(x_old).reshape(-1, t)
        a_new, a_old = np.broadcast_arrays(a_new, a_old)
        return self._log_q(np.asarray(blocks, dtype=np.int64), a_old.copy(), a_new.copy())

    def log_prob_reverse(self, x_new: np.ndarray, x_old: np.ndarray, blocks: np.ndarray):
        """log q(x_old | x_new): the reverse density of the MH ratio, for the same blocks."""
        return self.log_prob(x_old, x_new, blocks)

    def block_names(self) -> list[str]:
        """Readable names of the blocks: atom quadruples of their torsions."""
        q = self.torsions.quads
        return ["+".join("-".join(str(a) for a in q[t]) for t in b) for b in self.torsions.blocks]


# --- training ----------------------------------------------------------------------------------
@dataclass
class _Examples:
    """Flat training examples: one per (pair of frames, torsion)."""

    g: torch.Tensor  # global torsion index (into the stacked features)
    own: torch.Tensor  # angle now
    target: torch.Tensor  # angle after tau
    nb_g: torch.Tensor  # (N, K) neighbours' global indices (0 where padded)
    nb_old: torch.Tensor
    nb_new: torch.Tensor
    nb_rel: torch.Tensor
    nb_mask: torch.Tensor
    nb_share: torch.Tensor  # neighbour shares an atom and neither is a terminal rotor

    def subset(self, idx: torch.Tensor) -> _Examples:
        """Rows idx of every field."""
        return _Examples(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.g)


def _examples(
    sets: list[TorsionSet], trajs: list[list[np.ndarray]], lags: list[int], val_fraction: float
) -> tuple[_Examples, _Examples, torch.Tensor]:
    """Training and validation examples from every molecule, and the stacked features."""
    k = max(s.neighbors.shape[1] for s in sets)
    parts_tr, parts_va, feats = [], [], []
    offset = 0
    for s, tr, lag in zip(sets, trajs, lags):
        olds, news = [], []
        for x in tr:
            a = s.angles(x)
            if lag == 0:  # equilibrium conditionals: "before" and "after" are the same frame
                olds.append(a), news.append(a)
            elif len(a) > lag:
                olds.append(a[:-lag]), news.append(a[lag:])
        if not olds:
            raise ValueError(f"{s.graph.formula}: no trajectory longer than the lag ({lag} frames)")
        n_val = [max(1, int(len(o) * val_fraction)) for o in olds]
        for part, sl in ((parts_tr, lambda o, v: o[:-v]), (parts_va, lambda o, v: o[-v:])):
            old = np.concatenate([sl(o, v) for o, v in zip(olds, n_val)])
            new = np.concatenate([sl(o, v) for o, v in zip(news, n_val)])
            p, t = old.shape
            nb = np.zeros((t, k), dtype=np.int64)
            nb[:, : s.neighbors.shape[1]] = np.maximum(s.neighbors, 0)
            mask = np.zeros((t, k))
            mask[:, : s.neighbors.shape[1]] = s.neighbors >= 0
            rel = np.zeros((t, k))
            rel[:, : s.relation.shape[1]] = s.relation
            share = mask * (rel == SHARE_ATOM) * (~s.terminal)[:, None] * (~s.terminal[nb])
            tt = np.tile(np.arange(t), p)
            pp = np.repeat(np.arange(p), t)
            part.append(
                dict(
                    g=tt + offset,
                    own=old[pp, tt],
                    target=new[pp, tt],
                    nb_g=nb[tt] + offset,
                    nb_old=old[pp[:, None], nb[tt]],
                    nb_new=new[pp[:, None], nb[tt]],
                    nb_rel=rel[tt],
                    nb_mask=mask[tt],
                    nb_share=share[tt],
                )  # fmt: skip
            )
        feats.append(s.features)
        offset += s.n_torsions

    def stack(parts) -> _Examples:
        cat = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
        return _Examples(
            **{
                f: torch.as_tensor(v, dtype=torch.long if f in ("g", "nb_g") else torch.float32)
                for f, v in cat.items()
            }
        )

    return stack(parts_tr), stack(parts_va), torch.as_tensor(np.concatenate(feats)).float()


def _nll(
    model: TransferPropagator,
    ex: _Examples,
    feats: torch.Tensor,
    new: torch.Tensor,
    hidden: torch.Tensor,
) -> torch.Tensor:
    """Mean negative log density (nats per torsion); neighbours flagged `new` show their new
    angles, those flagged `hidden` are left out (block partners not yet proposed)."""
    h = model.encoder(feats)
    nb_angle = ex.nb_old + new * (ex.nb_new - ex.nb_old)
    mask = ex.nb_mask * (1.0 - hidden)
    logits = model.logits(h[ex.g], ex.own, h[ex.nb_g], nb_angle, new, ex.nb_rel, mask)
    return -model.log_density(logits, ex.target).mean()


@dataclass
class TransferTrainResult:
    """Outcome of transfer training: NLL per torsion (nats; uniform is log 2pi = 1.84)."""

    steps: int
    train_nll: float
    val_nll: float
    wall_s: float
    cpu_s: float
    n_examples: int


def train_transfer(
    model: TransferPropagator,
    data: list[tuple[object, list[np.ndarray], float]],
    n_steps: int = 2000,
    batch_size: int = 512,
    lr: float = 2e-3,
    val_fraction: float = 0.1,
    partner_probability: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> TransferTrainResult:
    """Fit the model on MD of several molecules: data = [(molecule, trajectories, frame ps)].

    molecule: a Molecule (or anything :meth:`TransferPropagator.bind` takes); trajectories:
    (T, n, 3) Angstrom arrays; pairs are taken at lag config.tau_ps (0: single frames). Each
    neighbour that shares an atom (the pairs the proposal moves together) is treated as a block
    partner with probability partner_probability: then half the time hidden (proposed after this
    torsion), half the time shown at its new value (proposed before). The last val_fraction of
    every trajectory is held out.
    """
    if not data:
        raise ValueError("train_transfer needs at least one molecule")
    tau = model.config.tau_ps
    sets, trajs, lags, elements, names = [], [], [], set(), []
    for mol, tr, dt in data:
        lag = round(tau / float(dt))
        if (tau > 0 and lag < 1) or abs(lag * dt - tau) > 1e-6 * max(1.0, tau):
            raise ValueError(f"tau {tau} ps is not a multiple of the frame spacing {dt} ps")
        tset = _as_torsion_set(mol, None)
        if not model.config.n_features:
            model._build(tset.features.shape[1])
        sets.append(tset)
        trajs.append([np.asarray(t, dtype=np.float64) for t in tr])
        lags.append(lag)
        elements |= {int(z) for z in tset.graph.numbers}
        names.append(tset.graph.formula)
    train, val, feats = _examples(sets, trajs, lags, val_fraction)
    model.float().train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc="train transfer propagator", unit="step")
    t0, c0 = time.perf_counter(), time.process_time()
    ema = float("nan")
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / n_steps))
        idx = torch.randint(0, len(train), (batch_size,), generator=gen)
        ex = train.subset(idx)
        r = torch.rand(ex.nb_share.shape, generator=gen)
        partner = (r < partner_probability).float() * ex.nb_share
        new = partner * (r < 0.5 * partner_probability).float()
        loss = _nll(model, ex, feats, new, partner - new)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema = loss.item() if math.isnan(ema) else 0.98 * ema + 0.02 * loss.item()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(nll=f"{ema:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    with torch.no_grad():
        zero = torch.zeros_like(val.nb_share)
        val_nll = _nll(model, val, feats, zero, zero).item()
    model.config.elements = sorted(elements)
    model.config.molecules = names
    return TransferTrainResult(
        n_steps, ema, val_nll, time.perf_counter() - t0, time.process_time() - c0, len(train)
    )
