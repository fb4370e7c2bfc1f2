"""Accuracy against reference labels: conformer-relative energy and force errors, parity plots."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlsim import units
from mlsim._fileio import atomic_path
from mlsim.data import Structure
from suite._methods import Method, Skipped
from suite._metrics import energy_errors, force_errors

__all__ = ["load_structures", "parity_plot", "run_accuracy", "synthetic_ethanol"]

MethodFactory = Callable[[], Method]


def load_structures(path: str | Path) -> list[Structure]:
    """Read labelled structures (any format mlsim.data or ASE reads) and check they carry labels."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"test set {path} not found")
    structures: list[Structure] | None = None
    try:  # the project reader knows mlsim's own formats; fall back to ASE for extxyz & co.
        from mlsim.data import read as mlsim_read  # type: ignore[attr-defined]

        structures = list(mlsim_read(path))
    except ImportError:
        pass
    if structures is None:
        from ase.io import read

        structures = [Structure.from_atoms(a) for a in read(path, index=":")]
    unlabelled = [i for i, s in enumerate(structures) if s.energy is None or s.forces is None]
    if unlabelled:
        raise ValueError(
            f"{path}: {len(unlabelled)} structures lack energy/forces (first: {unlabelled[0]})"
        )
    if not structures:
        raise ValueError(f"{path} holds no structures")
    return structures


def synthetic_ethanol(n: int, seed: int = 0, amplitude: float = 0.04) -> list[Structure]:
    """Return n ethanol geometries: an RDKit conformer plus Gaussian noise (A), unlabelled.

    Used for smoke runs and tests where the DFT test set is not available; the caller labels them.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    if AllChem.EmbedMolecule(mol, randomSeed=seed + 1) != 0:
        raise RuntimeError("RDKit failed to embed ethanol")
    AllChem.MMFFOptimizeMolecule(mol)
    x0 = mol.GetConformer().GetPositions()
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    rng = np.random.default_rng(seed)
    out = [Structure(numbers=numbers, positions=x0.copy())]
    for _ in range(n - 1):
        out.append(Structure(numbers=numbers, positions=x0 + rng.normal(0.0, amplitude, x0.shape)))
    return out[:n]


def parity_plot(
    label: str,
    e_ref: np.ndarray,
    e_pred: np.ndarray,
    f_ref: np.ndarray,
    f_pred: np.ndarray,
    reference: str,
    path: Path,
) -> None:
    """Write a two-panel parity plot (relative energies in kcal/mol, force components in eV/A)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kcal = units.KCAL_PER_MOL_PER_EV
    offset = float((e_pred - e_ref).mean())
    er = (e_ref - e_ref.mean()) * kcal
    ep = (e_pred - offset - e_ref.mean()) * kcal
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for ax, x, y, unit, what in (
        (axes[0], er, ep, "kcal/mol", "relative energy"),
        (axes[1], f_ref.ravel(), f_pred.ravel(), "eV/Å", "force component"),
    ):
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(x, y, s=6, alpha=0.5, lw=0)
        mae = float(np.abs(y - x).mean())
        ax.text(0.04, 0.94, f"MAE {mae:.3g} {unit}", transform=ax.transAxes, va="top")
        ax.set_xlabel(f"reference {what} ({unit})")
        ax.set_ylabel(f"{label} {what} ({unit})")
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(f"{label} vs {reference}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by extension
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run_accuracy(
    structures: Sequence[Structure],
    reference: str,
    factories: dict[str, MethodFactory],
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every method on the labelled structures; return the accuracy section (JSON-able)."""
    from tqdm import tqdm

    if not structures:
        raise ValueError("no structures to evaluate")
    e_ref = np.array([s.energy for s in structures], dtype=float)
    f_ref = np.stack([s.forces for s in structures])
    methods: dict[str, Any] = {}
    for key, factory in factories.items():
        try:
            method = factory()
        except Skipped as exc:
            methods[key] = {"status": "skipped", "reason": str(exc)}
            continue
        e_pred = np.empty(len(structures))
        f_pred = np.empty_like(f_ref)
        it = tqdm(
            structures, desc=f"accuracy {method.label}", file=sys.stderr, disable=not progress
        )
        try:
            for i, s in enumerate(it):
                e_pred[i], f_pred[i] = method.evaluate(s)
        except Exception as exc:  # one broken method must not sink the whole report
            methods[key] = {"label": method.label, "status": "failed", "reason": repr(exc)}
            continue
        plot = out_dir / f"parity_{method.key}.png"
        parity_plot(method.label, e_ref, e_pred, f_ref, f_pred, reference, plot)
        methods[key] = {
            "label": method.label,
            "status": "ok",
            "energy_ev": energy_errors(e_pred, e_ref),
            "forces_ev_per_a": force_errors(f_pred, f_ref),
            "plot": plot.name,
            "notes": method.notes,
        }
    return {
        "reference": reference,
        "n_structures": len(structures),
        "n_atoms": len(structures[0]),
        "energy_std_ev": float(e_ref.std()),
        "force_std_ev_per_a": float(f_ref.std()),
        "methods": methods,
    }
