"""Render the benchmark report: own sections as fixed tables, peers' JSON files as generic tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlsim import units

__all__ = ["PEER_BENCHMARKS", "collect_peer", "md_speed_markdown", "render_markdown"]

# The other benchmarks in benchmarks/, collected into the report when their JSON exists.
PEER_BENCHMARKS = {
    "neighbor_list": "Neighbor list speed",
    "training": "Training speed",
    "propagator": "Learned propagator",
    "analysis": "Analysis",
}
_MAX_ROWS = 40


def _esc(text: str) -> str:
    """Escape '*' so 6-31G* cannot start italics (intraword '_' is literal in CommonMark)."""
    return text.replace("*", "\\*")


def _fmt(v: Any) -> str:
    """Format a table cell: 4 significant digits for floats, plain text otherwise."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if 1e4 <= abs(v) < 1e9:  # 13250 steps/s reads better than 1.325e+04
            return f"{v:.0f}"
        if v != 0 and (abs(v) >= 1e9 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return _esc(str(v)).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Return a markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows[:_MAX_ROWS]]
    if len(rows) > _MAX_ROWS:
        out.append(
            f"| ... {len(rows) - _MAX_ROWS} more rows in the JSON |" + " |" * (len(header) - 1)
        )
    return out


def _status_line(section: dict[str, Any] | None, what: str) -> list[str] | None:
    """Return a one-line 'not run' / 'skipped: reason' paragraph, or None when the section ran."""
    if section is None:
        return [f"_not run_ ({what} missing)", ""]
    if section.get("status") != "ok":
        return [
            f"_{section.get('status', 'skipped')}: {section.get('reason', 'no reason given')}_",
            "",
        ]
    return None


def _is_scalar(v: Any) -> bool:
    """True for JSON scalars."""
    return v is None or isinstance(v, (str, int, float, bool))


def _flat(record: dict[str, Any]) -> dict[str, Any] | None:
    """Flatten a record's nested dicts of scalars into dotted keys; None if it nests deeper."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if _is_scalar(v):
            out[k] = v
        elif isinstance(v, dict):
            if not all(_is_scalar(x) for x in v.values()):
                return None
            out.update({f"{k}.{k2}": x for k2, x in v.items()})
        # lists inside a record are left to the JSON file
    return out


def _records_table(records: list[dict[str, Any]], names: list[str] | None) -> list[str]:
    """Table of flattened records, one row each (with a name column when names are given)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    header = (["name"] if names else []) + keys
    rows = [
        ([n] if names else []) + [r.get(k, "") for k in keys]
        for n, r in zip(names or records, records)
    ]
    return _table(header, rows) + [""]


def _generic(data: Any, title: str = "") -> list[str]:
    """Render an arbitrary JSON document: scalars as key/value tables, records as tables."""
    if isinstance(data, list):
        flat = [_flat(r) if isinstance(r, dict) else None for r in data]
        if data and all(f is not None for f in flat):
            return _records_table(flat, None)  # type: ignore[arg-type]
        return [f"`{_fmt(data)}`", ""]
    if not isinstance(data, dict):
        return [f"{title}: {_fmt(data)}", ""]
    out: list[str] = []
    scalars = [[k, v] for k, v in data.items() if _is_scalar(v)]
    scalars += [[k, v] for k, v in data.items() if isinstance(v, list) and all(map(_is_scalar, v))]
    if scalars:
        out += _table(["key", "value"], scalars) + [""]
    for k, v in data.items():
        if _is_scalar(v) or (isinstance(v, list) and all(map(_is_scalar, v))):
            continue
        name = f"{title}.{k}" if title else k
        out += [f"**{name}**", ""]
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            flat = [_flat(x) for x in v.values()]
            if all(f is not None for f in flat):  # records keyed by name: one table
                out += _records_table(flat, list(v))  # type: ignore[arg-type]
                continue
            for rk, rv in v.items():  # deeper nesting: one block per entry
                out += [f"*{name}.{rk}*", ""] + _generic(rv, f"{name}.{rk}")
            continue
        out += _generic(v, name)
    return out


def collect_peer(results_dir: Path, name: str) -> dict[str, Any] | None:
    """Load benchmarks/results/<name>.json, or None when that benchmark has not been run."""
    path = results_dir / f"{name}.json"
    if not path.exists():
        return None
    try:
        return {"status": "ok", "path": str(path), "data": json.loads(path.read_text())}
    except (OSError, json.JSONDecodeError) as exc:
        return {"status": "failed", "reason": f"could not read {path}: {exc}"}


def _accuracy_md(sec: dict[str, Any] | None) -> list[str]:
    """Accuracy section: one row per method, conformer-relative energy and force errors."""
    out = ["## Accuracy vs the reference (held-out ethanol)", ""]
    status = _status_line(sec, "accuracy.json")
    if status:
        return out + status
    kcal = units.KCAL_PER_MOL_PER_EV
    out += [
        f"Reference: **{_esc(sec['reference'])}**, {sec['n_structures']} structures of {sec['n_atoms']} atoms"
        f" (`{sec.get('test_set', '?')}`). Energies are conformer-relative: each method's mean offset"
        " from the reference is removed before the errors are taken. For scale, the spread of the"
        f" reference itself is {sec['energy_std_ev'] * kcal:.2f} kcal/mol (energy std) and"
        f" {sec['force_std_ev_per_a'] * 1000:.0f} meV/Å (force component std).",
        "",
    ]
    rows, notes = [], []
    for key, m in sec["methods"].items():
        if m.get("status") != "ok":
            notes.append(_esc(f"- {m.get('label', key)}: {m.get('status')}: {m.get('reason')}"))
            continue
        e, f = m["energy_ev"], m["forces_ev_per_a"]
        rows.append(
            [
                m["label"],
                e["mae"] * kcal,
                e["rmse"] * kcal,
                e["mae"] * 1000,
                f["mae"] * 1000,
                f["rmse"] * 1000,
                f["mae"] * kcal,
                f"[{m['plot']}]({m['plot']})",
            ]
        )
        if m.get("notes"):
            notes.append(_esc(f"- {m['label']}: {m['notes']}"))
    header = [
        "method",
        "E MAE (kcal/mol)",
        "E RMSE (kcal/mol)",
        "E MAE (meV)",
        "F MAE (meV/Å)",
        "F RMSE (meV/Å)",
        "F MAE (kcal/mol/Å)",
        "parity plot",
    ]
    cross = sec.get("xtb_crosscheck")
    if cross:
        notes.append(
            f"- Check: recomputing GFN2-xTB (mlsim's labeller) reproduces the stored xTB labels"
            f" (`{cross['file']}`) on {cross['n']} frames to"
            f" {cross['max_force_diff_ev_per_a'] * 1000:.2g} meV/Å (max force difference)."
        )
    out += _table(header, rows) + [""] + notes + [""]
    return out


def _load(sec: dict[str, Any]) -> str:
    """Sentence giving the machine load when a section was measured (timings depend on it)."""
    load = (sec.get("env") or {}).get("load_average")
    if not load:
        return ""
    return f" Load average (1/5/15 min) when measured: {', '.join(f'{x:.1f}' for x in load)}."


def _cost_md(sec: dict[str, Any] | None) -> list[str]:
    """Cost section: seconds per energy+force evaluation and ratio to the baseline."""
    out = ["## Cost per energy+force evaluation", ""]
    status = _status_line(sec, "cost.json")
    if status:
        return out + status
    base = sec.get("baseline")
    base_label = sec["methods"][base]["label"] if base else "none"
    out += [
        f"One molecule of {sec['n_atoms']} atoms, one call = energy + all forces, {sec.get('threads', '?')}"
        f" thread(s), median over the timed calls (xTB and DFT start every SCF from scratch, as for an independent"
        f" label). Ratio = time / time of **{_esc(base_label)}**." + _load(sec),
        "",
    ]
    rows, notes = [], []
    for key, m in sec["methods"].items():
        if m.get("status") != "ok":
            notes.append(_esc(f"- {m.get('label', key)}: {m.get('status')}: {m.get('reason')}"))
            continue
        rows.append(
            [m["label"], m["seconds_per_eval"] * 1000, m.get("ratio_to_baseline", ""), m["n_evals"]]
        )
        if key == "mlsim" and m.get("notes"):  # which model was timed
            notes.append(_esc(f"- {m['label']}: {m['notes']}"))
    out += _table(["method", "ms / eval", f"× {base or 'baseline'}", "calls timed"], rows)
    out += [""] + notes + [""]
    ala = sec.get("alanine")
    if ala:
        out += ["**Alanine dipeptide (22 atoms)**: how the cost grows with size (no DFT here).", ""]
        if ala.get("status") != "ok":
            return out + [_esc(f"_{ala.get('status')}: {ala.get('reason')}_"), ""]
        rows = [
            [m["label"], m["seconds_per_eval"] * 1000, m.get("ratio_to_baseline", ""), m["n_evals"]]
            for m in ala["methods"].values()
            if m.get("status") == "ok"
        ]
        out += _table(["method", "ms / eval", f"× {ala.get('baseline')}", "calls timed"], rows)
        out += [""]
    return out


def _alanine_md(sec: dict[str, Any]) -> list[str]:
    """The alanine table: Amber14 vs the mlsim model in OpenMM Langevin MD."""
    out = ["### OpenMM Langevin MD: Amber14 vs mlsim (alanine dipeptide)", ""]
    if sec.get("status") != "ok":
        return out + [_esc(f"_{sec.get('status')}: {sec.get('reason')}_"), ""]
    out += [
        f"{sec['system']}, {sec['n_atoms']} atoms, vacuum, LangevinMiddleIntegrator 300 K, 1/ps;"
        " same integrator, platform and thread count for every potential. The instantaneous"
        " temperature at the end shows the timed trajectory stayed physical.",
        "",
    ]
    rows, notes = [], []
    for key, r in sec["runs"].items():
        if r.get("status") != "ok":
            notes.append(_esc(f"- {r.get('label', key)}: {r.get('status')}: {r.get('reason')}"))
            continue
        rows.append(
            [
                r["label"],
                f"{r['platform']} ×{r['threads']}",
                r["dt_fs"],
                r["steps_per_s"],
                r["ns_per_day"],
                r["slowdown_vs_amber14_flexible"],
                r.get("final_temperature_k", ""),
            ]
        )
    header = [
        "potential",
        "platform",
        "dt (fs)",
        "steps/s",
        "ns/day",
        "× slower than Amber14 1 fs",
        "T at end (K)",
    ]
    out += _table(header, rows)
    info = sec.get("ml_model") or {}
    if info.get("trained_here"):
        hp = ", ".join(f"{k}={v}" for k, v in info.get("hyperparameters", {}).items())
        notes.append(
            f"- ML model: {info['architecture']} ({hp}) trained by the benchmark for"
            f" {info['train_seconds']:.0f} s ({info['epochs']} epochs of mlsim.train) on {info['n_train']}"
            f" {info['reference']}-labelled frames from 500 K Amber14 MD; held-out force MAE"
            f" {info['val_force_mae_ev_per_a'] * 1000:.0f} meV/Å vs xTB"
            f"{' (reused from an earlier run)' if info.get('reused') else ''}."
        )
    elif info.get("model"):
        notes.append(f"- ML model: {info['model']} (given with --md-model).")
    return out + [""] + notes + [""]


def _engines_md(sec: dict[str, Any]) -> list[str]:
    """The engines table: one model raw, in OpenMM and in ASE, steps per CPU-second."""
    out = ["### One model in every engine: raw vs OpenMM vs ASE", ""]
    if sec.get("status") != "ok":
        return out + [_esc(f"_{sec.get('status')}: {sec.get('reason')}_"), ""]
    out += [
        f"Model: {_esc(str(sec['model']))}; {sec['threads']} thread(s); best of {sec['rounds']}"
        " interleaved rounds. Steps per second of process CPU time (robust on a shared machine;"
        " wall-clock alongside). Overhead = time per step / raw model forward+backward - 1.",
        "",
    ]
    rows = []
    for name, r in sec["systems"].items():
        for method, m in r["methods"].items():
            overhead = "" if method.startswith("raw") else f"{100 * m['overhead_vs_raw']:+.1f}%"
            rows.append(
                [
                    name,
                    r["atoms"],
                    method,
                    m["steps_per_s_cpu"],
                    m["steps_per_s_wall"],
                    m["ms_per_step_cpu"],
                    overhead,
                ]
            )
    header = ["system", "atoms", "engine", "steps/s (CPU)", "steps/s (wall)", "ms/step", "overhead"]
    return out + _table(header, rows) + [""]


def md_speed_markdown(sec: dict[str, Any] | None) -> list[str]:
    """MD speed section: the alanine comparison and the engines comparison."""
    out = ["## MD speed", ""]
    status = _status_line(sec, "md_speed.json")
    if status:
        return out + status
    load = _load(sec)
    if load:
        out += [load.strip(), ""]
    if sec.get("provenance"):
        out += [_esc(f"_{sec['provenance']}._"), ""]
    return out + _alanine_md(sec.get("alanine") or {}) + _engines_md(sec.get("engines") or {})


def _summary_md(sections: dict[str, Any]) -> list[str]:
    """Headline numbers: what accuracy the mlsim model buys and what it costs, in one paragraph."""
    acc, cost, md = sections.get("accuracy"), sections.get("cost"), sections.get("md_speed")
    lines: list[str] = []
    if acc and acc.get("status") == "ok":
        ok = {k: m for k, m in acc["methods"].items() if m.get("status") == "ok"}
        if ok:
            parts = [
                f"{m['label']} {m['forces_ev_per_a']['mae'] * 1000:.3g}"
                for m in sorted(ok.values(), key=lambda m: m["forces_ev_per_a"]["mae"])
            ]
            ref = _esc(acc["reference"])
            lines.append(f"- Force MAE vs {ref} (meV/Å): " + _esc(", ".join(parts)) + ".")
    if cost and cost.get("status") == "ok" and cost.get("baseline"):
        ok = {k: m for k, m in cost["methods"].items() if m.get("status") == "ok"}
        base = ok[cost["baseline"]]
        parts = []
        for m in ok.values():
            if m is base:
                continue
            r = m["ratio_to_baseline"]
            parts.append(f"{m['label']} {_fmt(r)}×" if r >= 1 else f"{m['label']} 1/{_fmt(1 / r)}")
        lines.append(
            f"- Cost per energy+force call relative to {_esc(base['label'])}"
            f" ({base['seconds_per_eval'] * 1000:.3g} ms): " + _esc(", ".join(parts)) + "."
        )
    ala = (cost or {}).get("alanine") or {}
    if ala.get("status") == "ok":
        ok = [m for m in ala["methods"].values() if m.get("status") == "ok"]
        parts = [f"{m['label']} {_fmt(m['seconds_per_eval'] * 1000)} ms" for m in ok]
        lines.append("- Same on alanine dipeptide (22 atoms): " + _esc(", ".join(parts)) + ".")
    ala_md = (md or {}).get("alanine") or {}
    if md and md.get("status") == "ok" and ala_md.get("status") == "ok":
        runs = [r for r in ala_md["runs"].values() if r.get("status") == "ok"]
        parts = [f"{r['label']}: {_fmt(r['ns_per_day'])} ns/day" for r in runs]
        lines.append("- OpenMM MD, alanine dipeptide: " + _esc("; ".join(parts)) + ".")
    if not lines:
        return []
    return ["## Summary", "", *lines, ""]


def render_markdown(report: dict[str, Any]) -> str:
    """Return report.md for the collected report dictionary."""
    env = report.get("env", {})
    out = [
        "# mlsim benchmark report",
        "",
        f"Generated {report.get('generated', '?')} by `mlsim bench`"
        f"{' --quick (smoke run: tiny subsets, numbers not meaningful)' if report.get('quick') else ''}.",
        "",
        f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores; benchmark threads: "
        f"{env.get('threads', '?')}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        "",
    ]
    sections = report.get("sections", {})
    out += _summary_md(sections)
    out += _accuracy_md(sections.get("accuracy"))
    out += _cost_md(sections.get("cost"))
    out += md_speed_markdown(sections.get("md_speed"))
    out += ["## Collected from the other benchmarks", ""]
    for name, title in PEER_BENCHMARKS.items():
        out += [f"### {title} (`{name}.json`)", ""]
        peer = sections.get(name)
        status = _status_line(peer, f"benchmarks/results/{name}.json")
        out += status if status else _generic(peer["data"])
    return "\n".join(out).rstrip() + "\n"
