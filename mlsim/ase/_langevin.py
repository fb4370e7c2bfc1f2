"""The one ASE Langevin set-up mlsim uses (sampling, active-learning walkers): correct NVT for
small molecules, seeded, ASE units (fs, 1/fs, K)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["langevin_nvt"]


def langevin_nvt(
    atoms: Any,
    temperature_k: float,
    timestep_fs: float,
    friction_per_fs: float,
    rng: np.random.Generator,
) -> Any:
    """Thermalise `atoms` (momenta at temperature_k, no net momentum or rotation) and return the
    seeded Langevin integrator; atoms.calc must already be set."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    # FixCom + fixcm=False: ASE's fixcm=True Langevin samples a slightly wrong NVT ensemble,
    # which is noticeable for a 9-atom molecule.
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_k, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        # ASE divides by each principal moment before discarding zero ones (linear molecules).
        with np.errstate(divide="ignore", invalid="ignore"):
            ZeroRotation(atoms)
    return Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_k,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
