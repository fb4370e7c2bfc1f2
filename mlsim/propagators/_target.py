"""Boltzmann target densities pi(x) ~ exp(-U(x) / kT): any OpenMM System or an mlsim model.

A target is anything with `n_atoms`, `temperature` (K), `beta` (1/eV) and `energy(x)`: potential
energies in eV of positions in Angstrom (ASE units, as everywhere inside mlsim). `energy_forces`
(eV, eV/Angstrom) is needed only by the generic HMC kernel. OpenMM's nm and kJ/mol appear only
inside OpenMMTarget, converted through mlsim.units.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mlsim.units import (
    KB_EV_PER_K,
    energy_from_openmm,
    forces_from_openmm,
    positions_to_openmm,
)

__all__ = ["ModelTarget", "OpenMMTarget", "Target"]


@runtime_checkable
class Target(Protocol):
    """What the sampler needs of a target: energies (eV) of positions (Angstrom) and beta."""

    n_atoms: int
    temperature: float
    beta: float

    def energy(self, x: np.ndarray) -> np.ndarray:
        """Potential energies (B,) in eV of positions (B, n, 3) or (n, 3) in Angstrom."""
        ...


def _beta(temperature: float) -> float:
    """1/kT in 1/eV, after checking the temperature."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    return 1.0 / (KB_EV_PER_K * float(temperature))


def _as_batch(x: np.ndarray, n_atoms: int) -> tuple[np.ndarray, bool]:
    """(B, n, 3) float64 view of x and whether x was a single structure."""
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == 2
    xb = x[None] if single else x
    if xb.ndim != 3 or xb.shape[1:] != (n_atoms, 3):
        raise ValueError(f"positions must be (B, {n_atoms}, 3), got {x.shape}")
    return xb, single


class OpenMMTarget:
    """Potential energy U(x) in eV (x in Angstrom) of an OpenMM System, and beta = 1/kT in 1/eV.

    The System must have no constraints: the propagator proposes all 3n Cartesian coordinates,
    and the Metropolis-Hastings ratio needs the density on that full space. (With HBonds the
    Boltzmann density lives on a constraint manifold that a Cartesian flow cannot hit.) Any
    System works: a classical force field, or one with an mlsim TorchForce.
    """

    batched = False  # one Context evaluates structures one at a time: the sampler goes lazily

    def __init__(self, system, temperature: float = 300.0, platform: str = "CPU") -> None:
        """Create a single-thread Context for energy evaluations."""
        from mlsim.openmm._engine import make_context

        if system.getNumConstraints():
            raise ValueError(
                "target System has constraints; build it with constraints=None (flexible bonds)"
            )
        self.beta = _beta(temperature)
        self.system = system
        self.n_atoms = system.getNumParticles()
        self.temperature = float(temperature)
        self.platform = platform
        self._ctx = make_context(system, None, platform, threads=1)

    @classmethod
    def from_xml(
        cls, path: str | os.PathLike, temperature: float = 300.0, platform: str = "CPU"
    ) -> OpenMMTarget:
        """Target from a System serialised with openmm.XmlSerializer (flexible bonds)."""
        import openmm

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"OpenMM System file {path} not found")
        try:
            system = openmm.XmlSerializer.deserialize(path.read_text())
        except Exception as exc:  # OpenMM raises a bare Exception for malformed XML
            raise ValueError(f"{path} is not a serialised OpenMM System: {exc}") from exc
        if not isinstance(system, openmm.System):
            raise ValueError(f"{path} holds a {type(system).__name__}, not an OpenMM System")
        return cls(system, temperature, platform)

    def _state(self, xi: np.ndarray, forces: bool):
        """OpenMM State at positions xi (n, 3) Angstrom."""
        self._ctx.setPositions(positions_to_openmm(xi))
        return self._ctx.getState(getEnergy=True, getForces=forces)

    def energy(self, x: np.ndarray) -> np.ndarray:
        """Potential energies (B,) in eV of positions (B, n, 3) or (n, 3) in Angstrom."""
        from openmm import unit

        xb, single = _as_batch(x, self.n_atoms)
        out = np.empty(xb.shape[0])
        for b, xi in enumerate(xb):
            if not np.all(np.isfinite(xi)):
                out[b] = np.inf  # a non-finite proposal has zero target density
                continue
            e = self._state(xi, False).getPotentialEnergy()
            out[b] = energy_from_openmm(e.value_in_unit(unit.kilojoule_per_mole))
        out[~np.isfinite(out)] = np.inf
        return out[0:1] if single else out

    def energy_forces(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (n, 3) in eV/Angstrom of one structure (n, 3) in Angstrom."""
        from openmm import unit

        st = self._state(np.asarray(x, dtype=np.float64), True)
        e = energy_from_openmm(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return float(e), forces_from_openmm(f)


class ModelTarget:
    """Potential energy of an mlsim model (model.pt or a loaded model) for fixed atoms, in eV.

    Evaluates a whole batch of proposals in one model call (mlsim.models.compute_properties).
    Structures with two atoms closer than `hard_core` Angstrom get zero density: proposals that
    far outside the training data must not be accepted on a machine-learned energy.
    """

    batched = True  # a batch of structures costs little more than one

    def __init__(
        self,
        model,
        numbers: np.ndarray,
        temperature: float = 300.0,
        device: str = "cpu",
        hard_core: float = 0.5,
    ) -> None:
        """Load the model (if a path) and check that it knows every element."""
        import torch

        from mlsim.models import load_model

        self.beta = _beta(temperature)
        self.temperature = float(temperature)
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.n_atoms = int(len(self.numbers))
        self.source = str(model) if isinstance(model, (str, os.PathLike)) else "model"
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=device)
        self.model = model.eval()
        known = {int(z) for z in getattr(model, "elements", [])}
        if not known:
            raise ValueError("the model has no `elements` attribute; is it an mlsim model?")
        missing = sorted({int(z) for z in self.numbers} - known)
        if missing:
            raise ValueError(
                f"the model was not trained on elements {missing} (Z) of this molecule"
            )
        params = [
            t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()
        ]
        self.dtype = params[0].dtype if params else torch.float32
        self.device = torch.device(device)
        self.hard_core = float(hard_core)

    def _inputs(self, xb: np.ndarray):
        """Batched model inputs for structures xb (B, n, 3)."""
        import torch

        b, n = xb.shape[:2]
        kw = {"device": self.device}
        numbers = torch.as_tensor(np.tile(self.numbers, b), dtype=torch.long, **kw)
        pos = torch.as_tensor(xb.reshape(b * n, 3), dtype=self.dtype, **kw)
        cell = torch.zeros((b, 3, 3), dtype=self.dtype, **kw)
        pbc = torch.zeros((b, 3), dtype=torch.bool, **kw)
        batch = torch.arange(b, **kw).repeat_interleave(n)
        return numbers, pos, cell, pbc, batch

    def _allowed(self, xb: np.ndarray) -> np.ndarray:
        """Structures with finite positions and no pair closer than the hard core."""
        ok = np.all(np.isfinite(xb), axis=(1, 2))
        iu = np.triu_indices(self.n_atoms, 1)
        for b in np.flatnonzero(ok):
            d = np.linalg.norm(xb[b][:, None] - xb[b][None], axis=-1)[iu]
            ok[b] = d.min(initial=np.inf) >= self.hard_core
        return ok

    def energy(self, x: np.ndarray) -> np.ndarray:
        """Potential energies (B,) in eV of positions (B, n, 3) or (n, 3) in Angstrom."""
        import torch

        from mlsim.models import compute_properties

        xb, single = _as_batch(x, self.n_atoms)
        out = np.full(xb.shape[0], np.inf)
        ok = self._allowed(xb)
        if ok.any():
            with torch.no_grad():
                e = compute_properties(
                    self.model, *self._inputs(xb[ok]), forces=False, min_distance=None,
                    check_finite=False,
                )["energy"]  # fmt: skip
            out[ok] = e.detach().cpu().to(torch.float64).numpy()
        out[~np.isfinite(out)] = np.inf
        return out[0:1] if single else out

    def energy_forces(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (n, 3) in eV/Angstrom of one structure (n, 3) in Angstrom."""
        import torch

        from mlsim.models import compute_properties

        xb, _ = _as_batch(x, self.n_atoms)
        if not self._allowed(xb)[0]:
            return np.inf, np.zeros((self.n_atoms, 3))
        res = compute_properties(
            self.model, *self._inputs(xb), forces=True, min_distance=None, check_finite=False
        )
        e = float(res["energy"].detach().sum())
        f = res["forces"].detach().cpu().to(torch.float64).numpy()
        return (e if np.isfinite(e) else np.inf), f
