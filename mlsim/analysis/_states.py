"""Conformational states of alanine dipeptide, defined by explicit regions of (phi, psi).

The regions partition the whole Ramachandran plane, so every frame gets exactly one label. Angles
are in degrees, in [-180, 180). Because the extended (beta) basin straddles phi = +-180, the
"left-handed" half of the plane is taken as phi < 0 **or** phi >= 120 deg, and the "right-handed"
half as 0 <= phi < 120 deg:

============  ====================================  ==========================================
label         phi (deg)                             psi (deg)
============  ====================================  ==========================================
C7eq          phi < 0 or phi >= 120                 0 <= psi < 120
C5/PII        phi < 0 or phi >= 120                 psi >= 120 or psi < -120 (beta, PII, C5)
alphaR        phi < 0 or phi >= 120                 -120 <= psi < 0
alphaL        0 <= phi < 120                        any (includes C7ax near (70, -70))
============  ====================================  ==========================================

The phi cuts at 0 and 120 deg run through the high free-energy band that separates left- and
right-handed conformers. The psi cut at 120 deg separates the C7eq basin (psi ~ 70) from the
extended C5/PII basin (psi ~ 150). The C7eq/alphaR cut is put at psi = 0 rather than at the
saddle of solvated alanine (~ +50 deg) because in vacuum, where C7eq dominates, its basin reaches
down to psi ~ 10; at psi = 0 both the vacuum C7eq tail and the alphaR basin (psi ~ -40) are thin.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALANINE_STATES", "alanine_state_labels", "state_populations"]

ALANINE_STATES: tuple[str, ...] = ("C7eq", "C5/PII", "alphaR", "alphaL")


def alanine_state_labels(phi: np.ndarray, psi: np.ndarray, degrees: bool = False) -> np.ndarray:
    """Label frames 0..3 (index into ALANINE_STATES) from phi/psi (radians unless ``degrees``)."""
    phi = np.asarray(phi, dtype=np.float64)
    psi = np.asarray(psi, dtype=np.float64)
    if phi.shape != psi.shape:
        raise ValueError(f"phi shape {phi.shape} != psi shape {psi.shape}")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(psi))):
        raise ValueError("phi/psi contain NaN or inf")
    if not degrees:
        phi, psi = np.degrees(phi), np.degrees(psi)
    # Wrap into [-180, 180) so that the region tests below are exhaustive.
    phi = (phi + 180.0) % 360.0 - 180.0
    psi = (psi + 180.0) % 360.0 - 180.0
    right = (phi >= 0.0) & (phi < 120.0)
    labels = np.full(phi.shape, 1, dtype=np.int64)  # C5/PII unless another region matches
    labels[(psi >= 0.0) & (psi < 120.0)] = 0
    labels[(psi >= -120.0) & (psi < 0.0)] = 2
    labels[right] = 3
    return labels


def state_populations(labels: np.ndarray, n_states: int = len(ALANINE_STATES)) -> np.ndarray:
    """Fraction of frames in each state (simple counting, no kinetic model)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("no labels")
    return np.bincount(labels.ravel(), minlength=n_states)[:n_states] / labels.size
