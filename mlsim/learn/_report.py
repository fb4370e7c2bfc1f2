"""The active-learning report: a Markdown page with PNG plots, rewritten after every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlsim._fileio import atomic_path, write_text
from mlsim.learn._config import LearnConfig

__all__ = ["write_report"]


def _plot(out: Path, history: list[dict[str, Any]]) -> list[str]:
    """Labels, test error and per-temperature uncertainty vs iteration; returns the PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(its, [h.get("n_labels_total", np.nan) for h in history], "o-")
    axes[0].set(xlabel="iteration", ylabel="labels (total)", title="labels")
    test = [((h.get("train") or {}).get("test") or {}).get("force_mae_meV_per_A") for h in history]
    axes[1].plot(its, [np.nan if t is None else t for t in test], "o-")
    axes[1].set(xlabel="iteration", ylabel="force MAE (meV/A)", title="test error")
    temps = sorted({w["temperature_K"] for h in history for w in h["walkers"]})
    for t in temps:
        u = [
            max(
                (w["max_uncertainty"] for w in h["walkers"] if w["temperature_K"] == t),
                default=np.nan,
            )
            for h in history
        ]
        axes[2].semilogy(its, u, "o-", label=f"{t:g} K")
    axes[2].set(xlabel="iteration", ylabel="max force spread (eV/A)", title="exploration")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    name = "learn_progress.png"
    with atomic_path(out / name, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [name]


def write_report(out: Path, state: dict[str, Any], cfg: LearnConfig) -> Path:
    """Write out/report.md (and its PNGs) from the run's state."""
    hist = state["history"]
    pngs = _plot(out, hist) if hist else []
    lines = [
        "# mlsim learn report",
        "",
        f"Status: **{state['status']}** after {len(hist)} exploration iterations; "
        f"{state['n_labels']} labels with {cfg.reference.get('method')} "
        f"(budget {cfg.max_labels}). Final model: `{state.get('final_model', state.get('model'))}`.",
        f"Thresholds: label frames with max per-atom force spread in [{cfg.lower}, {cfg.upper}) "
        f"eV/A; temperatures {cfg.temperatures} K; {cfg.walkers} walker(s) x {cfg.steps} steps of "
        f"{cfg.timestep_fs} fs per temperature and iteration.",
        "",
        "| iteration | frames | candidates | selected | labels total | walkers stopped early "
        "| calibration Spearman | calibration scale | test force MAE (meV/A) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in hist:
        early = [
            f"{w['temperature_K']:g} K: {w['stop_reason']}"
            for w in h["walkers"]
            if w["stop_reason"] != "completed"
        ]
        cal = h.get("calibration") or {}
        test = ((h.get("train") or {}).get("test") or {}).get("force_mae_meV_per_A")

        def fmt(x: Any, spec: str = ".3g") -> str:
            return (
                "-"
                if x is None or (isinstance(x, float) and not np.isfinite(x))
                else format(x, spec)
            )

        lines.append(
            f"| {h['iteration']} | {h['n_frames']} | {h['n_candidates']} | "
            f"{h.get('n_selected', '-')} | {h.get('n_labels_total', '-')} | "
            f"{'; '.join(early) or '-'} | {fmt(cal.get('spearman'), '.2f')} | "
            f"{fmt(cal.get('scale'), '.2f')} | {fmt(test, '.1f')} |"
        )
    lines += [""] + [f"![{p}]({p})" for p in pngs] + [""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
