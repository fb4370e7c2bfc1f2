"""The learned propagator: an exact conditional density q(x(t+tau) | x(t)) in Cartesian space.

Lengths are in Angstrom. A model is specific to one molecule (its Z-matrix and atom order are in
the config); the transferable proposal (mlsim.propagators._transfer) conditions each torsion on
its chemistry instead of on its index.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mlsim._fileio import atomic_path
from mlsim.propagators._flow import ConditionalRealNVP
from mlsim.propagators._internal import ZMatrix
from mlsim.propagators._layout import ZMatrixLayout

__all__ = ["Propagator", "PropagatorConfig"]

_FORMAT = "mlsim-propagator-v1"


@dataclass
class PropagatorConfig:
    """Architecture and physical settings of a :class:`Propagator` (saved with the weights)."""

    n_atoms: int
    zmatrix_roots: tuple[int, int, int]  # (a0, a1, a2), see mlsim.propagators._internal
    zmatrix_rows: list[tuple[int, int, int, int]]  # (i, j, k, l) for every other atom
    tau_ps: float
    hidden: int = 256
    n_layers: int = 8
    d_context: int = 128
    context_scale: float = 3.0  # Angstrom; local coordinates are divided by this for the encoder
    seed: int = 0
    # "full": propose all 3n coordinates (Timewarp-like); "dihedrals": propose only the dihedral
    # coordinates of `dihedral_rows` (a Metropolis-within-Gibbs block; pair it with HMC).
    mode: str = "full"
    dihedral_rows: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # atomic numbers (empty in old files)
    # The bond graph the Z-matrix was built from (empty in old files): checked against the
    # structure a model is applied to, and the input of chemistry features (see _layout).
    bonds: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Validate sizes so that a bad config fails here and not deep inside torch."""
        self.zmatrix_roots = tuple(int(i) for i in self.zmatrix_roots)
        self.zmatrix_rows = [tuple(int(i) for i in r) for r in self.zmatrix_rows]
        self.numbers = [int(z) for z in self.numbers]
        self.bonds = [tuple(int(i) for i in b) for b in self.bonds]
        if ZMatrix(self.zmatrix_roots, self.zmatrix_rows).n_atoms != self.n_atoms:
            raise ValueError(f"Z-matrix does not cover n_atoms={self.n_atoms}")
        if self.numbers and len(self.numbers) != self.n_atoms:
            raise ValueError(f"numbers has {len(self.numbers)} entries for {self.n_atoms} atoms")
        if self.mode not in ("full", "dihedrals"):
            raise ValueError(f"mode must be 'full' or 'dihedrals', got {self.mode!r}")
        self.dihedral_rows = [int(i) for i in self.dihedral_rows]
        if self.mode == "dihedrals" and len(self.dihedral_rows) < 2:
            raise ValueError("mode='dihedrals' needs at least two dihedral_rows")
        if self.tau_ps <= 0:
            raise ValueError("tau_ps must be positive")

    def check_graph(self, graph) -> None:
        """Raise ValueError unless `graph` (a MolecularGraph) is the molecule of this config:
        same atom count, elements and bonds (as far as the config records them)."""
        if graph.n_atoms != self.n_atoms:
            raise ValueError(
                f"the propagator is for a molecule of {self.n_atoms} atoms; this structure "
                f"({graph.formula}) has {graph.n_atoms}"
            )
        if self.numbers and list(graph.numbers) != self.numbers:
            bad = [a for a, (z, w) in enumerate(zip(graph.numbers, self.numbers)) if z != w]
            raise ValueError(
                f"elements differ from the propagator's molecule at atoms {bad[:8]} (atom order "
                "or molecule differs)"
            )
        if self.bonds:
            want, have = {tuple(b) for b in self.bonds}, set(graph.bonds)
            if want != have:
                raise ValueError(
                    f"bonds differ from the propagator's molecule: missing {sorted(want - have)[:5]}"
                    f", extra {sorted(have - want)[:5]} (bonds from {graph.source})"
                )
            return
        # Old files record no bonds: every Z-matrix bond (atom-parent pair) must be a bond here.
        roots = self.zmatrix_roots
        pairs = [(roots[1], roots[0]), (roots[2], roots[0])] + [
            (r[0], r[1]) for r in self.zmatrix_rows
        ]
        missing = [p for p in pairs if not graph.has_bond(*p)]
        if missing:
            raise ValueError(
                f"structure atom order does not match the propagator's Z-matrix: atoms {missing[:5]} "
                "are not bonded in this structure"
            )

    @classmethod
    def for_layout(
        cls, layout: ZMatrixLayout, tau_ps: float, mode: str = "dihedrals", **kwargs
    ) -> PropagatorConfig:
        """Config for a molecule's automatic Z-matrix; mode "dihedrals" proposes its rotatable
        torsions (at least two needed). Other keyword arguments set the architecture."""
        rows = list(layout.rotatable_rows)
        if mode == "dihedrals" and "dihedral_rows" not in kwargs:
            if len(rows) < 2:
                raise ValueError(
                    f"the molecule ({layout.graph.formula}) has {len(rows)} rotatable torsion(s); "
                    "mode 'dihedrals' needs at least two: use mode 'full'"
                )
            kwargs["dihedral_rows"] = rows
        return cls(
            n_atoms=layout.graph.n_atoms,
            zmatrix_roots=layout.roots,
            zmatrix_rows=list(layout.rows),
            tau_ps=tau_ps,
            mode=mode,
            numbers=list(layout.graph.numbers),
            bonds=list(layout.graph.bonds),
            **kwargs,
        )


def save_module(
    path: str | os.PathLike, fmt: str, module: nn.Module, extra: dict | None = None
) -> Path:
    """Write a propagator's format tag, config (a dataclass), weights and extras atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": fmt,
        "config": asdict(module.config),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_payload(path: str | os.PathLike, fmt: str, what: str) -> tuple[Path, dict]:
    """Read a file written by save_module; the errors name the file and what was expected."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path} is not an mlsim {what} file")
    return path, payload


class Propagator(nn.Module):
    """Conditional flow over x' (Angstrom) given x, in internal coordinates relative to x.

    x' is mapped to the unconstrained variable s (Z-matrix relative to x, see ZMatrix.to_s), which
    is standardised per dimension and modelled by a conditional RealNVP whose context encodes x
    (its Cartesian coordinates in its own frame plus cos/sin of its dihedrals). Every map is a
    bijection with a closed-form Jacobian, so :meth:`log_prob` is the exact density of x' with
    respect to Cartesian volume (Angstrom^(3n)).
    """

    def __init__(self, config: PropagatorConfig) -> None:
        """Build the encoder and the flow from `config`."""
        super().__init__()
        self.config = config
        self.zmatrix = ZMatrix(config.zmatrix_roots, config.zmatrix_rows)
        d = 3 * config.n_atoms
        n_ang = config.n_atoms - 1 if config.mode == "full" else len(config.dihedral_rows)
        d_in = d + 2 * n_ang
        self.encoder = nn.Sequential(
            nn.Linear(d_in, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.d_context),
            nn.SiLU(),
        )
        if config.mode == "full":
            n_groups, per_group = config.n_atoms, 3
        else:
            n_groups, per_group = len(config.dihedral_rows), 1
        self.flow = ConditionalRealNVP(
            n_groups, config.d_context, config.hidden, config.n_layers, config.seed, per_group
        )
        self.register_buffer("s_mean", torch.zeros(n_groups * per_group))
        self.register_buffer("s_std", torch.ones(n_groups * per_group))

    @classmethod
    def for_molecule(cls, molecule, tau_ps: float, mode: str = "dihedrals", **kwargs) -> Propagator:
        """A new (untrained) propagator for a Molecule: its Z-matrix from the bond graph; mode
        "dihedrals" proposes the rotatable torsions. Keywords set the architecture (hidden,
        n_layers, d_context, seed)."""
        from mlsim.propagators._layout import build_zmatrix

        layout = build_zmatrix(molecule.graph, molecule.positions)
        return cls(PropagatorConfig.for_layout(layout, tau_ps, mode, **kwargs))

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        """Validate a batch of positions (B, n, 3)."""
        if x.ndim != 3 or x.shape[1:] != (self.config.n_atoms, 3):
            raise ValueError(
                f"positions must be (B, {self.config.n_atoms}, 3), got {tuple(x.shape)}"
            )
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Rigid-motion-invariant features of the conditioning structure x (B, 3n + 2(n-1))."""
        origin, rot = self.zmatrix.frame(self._check(x))
        u = torch.einsum("bnd,bde->bne", x - origin[:, None, :], rot).flatten(1)
        if self.config.mode == "full":
            ang = self.zmatrix.reference_angles(x)
        else:
            ang = self.zmatrix.dihedrals(x, self.config.dihedral_rows)
        return torch.cat([u / self.config.context_scale, torch.cos(ang), torch.sin(ang)], dim=1)

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """Context vector encoding the conditioning structure x."""
        return self.encoder(self.features(x))

    def log_prob_s(self, s: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """log density of the flow variable s given precomputed features (training fast path)."""
        sn = (s - self.s_mean) / self.s_std
        return self.flow.log_prob(sn, self.encoder(feats)) - torch.log(self.s_std).sum()

    def _to_s(self, x_new: torch.Tensor, x_old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow variable of x_new given x_old and log|det ds/d(proposed coordinates)|."""
        if self.config.mode == "full":
            return self.zmatrix.to_s(self._check(x_new), self._check(x_old))
        rows = self.config.dihedral_rows
        delta = self.zmatrix.wrapped_delta(
            self.zmatrix.dihedrals(self._check(x_new), rows), self.zmatrix.dihedrals(x_old, rows)
        )
        eps = 1e-6 if delta.dtype == torch.float32 else 1e-12
        s = torch.atanh((delta / math.pi).clamp(-1 + eps, 1 - eps))
        logdet = -(self.zmatrix._log_dtanh(s) + math.log(math.pi)).sum(-1)
        return s, logdet

    def _from_s(self, s: torch.Tensor, x_old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`_to_s`: (x_new, log|det d(proposed coordinates)/ds|)."""
        if self.config.mode == "full":
            return self.zmatrix.from_s(s, x_old)
        delta = math.pi * torch.tanh(s)
        logdet = (self.zmatrix._log_dtanh(s) + math.log(math.pi)).sum(-1)
        return self.zmatrix.rotate_dihedrals(x_old, self.config.dihedral_rows, delta), logdet

    def flow_variable(self, x_new: torch.Tensor, x_old: torch.Tensor) -> torch.Tensor:
        """Unstandardised flow variable s of x_new relative to x_old."""
        return self._to_s(x_new, x_old)[0]

    def set_normalisation(self, s: torch.Tensor) -> None:
        """Set the per-dimension standardisation of s from training data (N, 3n)."""
        self.s_mean.copy_(s.mean(0))
        self.s_std.copy_(s.std(0).clamp_min(1e-4))

    def log_prob(self, x_new: torch.Tensor, x_old: torch.Tensor) -> torch.Tensor:
        """Exact log q(x_new | x_old) (B,): w.r.t. Cartesian volume (Angstrom^(3n)) in mode
        "full", w.r.t. the proposed dihedrals (rad) in mode "dihedrals"."""
        s, logdet = self._to_s(x_new, x_old)
        sn = (s - self.s_mean) / self.s_std
        return self.flow.log_prob(sn, self._context(x_old)) - torch.log(self.s_std).sum() + logdet

    def sample(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x' ~ q(. | x) for each row of x (B, n, 3); return (x', log q(x' | x))."""
        sn, log_q = self.flow.sample(self._context(x), generator)
        s = sn * self.s_std + self.s_mean
        x_new, logdet = self._from_s(s, self._check(x))
        return x_new, log_q - torch.log(self.s_std).sum() - logdet

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write config + weights atomically (mlsim._fileio)."""
        return save_module(path, _FORMAT, self, extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Propagator:
        """Load a propagator written by :meth:`save` (or a training checkpoint)."""
        path, payload = load_payload(path, _FORMAT, "propagator model")
        model = cls(PropagatorConfig(**payload["config"]))
        # Keep the stored precision (load_state_dict would cast into float32 parameters).
        dtype = next(v.dtype for v in payload["state_dict"].values() if v.is_floating_point())
        model.to(dtype).load_state_dict(payload["state_dict"])
        model.extra = payload.get("extra", {})
        return model.eval()
