"""MD speed of mlsim models, one benchmark, one JSON (benchmarks/results/md_speed.json).

Two sections (suite/_md.py has the details):
  alanine   OpenMM Langevin MD of alanine dipeptide: Amber14 (flexible 1 fs, HBonds 2 fs) vs an
            mlsim model (trained here on GFN2-xTB labels unless --md-model) on TorchForce and
            PythonForce: steps/s, ns/day, slowdown vs Amber14.
  engines   one model (--model, default the shipped ethanol model) raw (forward + backward), in
            OpenMM (TorchForce, PythonForce) and in ASE (MLCalculator) on ethanol and a periodic
            water box: steps per CPU-second and overhead vs raw.

    .venv/bin/python benchmarks/md_speed.py                 # both sections (what `mlsim bench --only md` runs)
    .venv/bin/python benchmarks/md_speed.py --engines-only --systems ethanol --model M.pt --out x.json

`mlsim bench --only md` runs the same and also rebuilds report.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# benchmarks/ (this script's folder) is on sys.path, so the suite next to it imports.
from suite._md import ENGINE_SYSTEMS, run_md_speed
from suite._report import md_speed_markdown
from suite._runner import QUICK_DIR, RESULTS, BenchConfig, md_config, run_part, write_json


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its tables, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (tiny, no training)")
    ap.add_argument("--model", type=Path, help="model for the engines section")
    ap.add_argument("--md-model", type=Path, help="alanine dipeptide model (default: train one)")
    ap.add_argument("--engines-only", action="store_true", help="skip the alanine section")
    ap.add_argument("--alanine-only", action="store_true", help="skip the engines section")
    ap.add_argument(
        "--systems", nargs="+", choices=list(ENGINE_SYSTEMS), help="engines section: systems"
    )
    ap.add_argument("--steps", type=int, help="engines: steps per round on ethanol (default 200)")
    ap.add_argument("--box-steps", type=int, help="engines: steps per round on the water box (5)")
    ap.add_argument("--rounds", type=int, help="engines: interleaved rounds (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenMM CPU threads")
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/md_speed.json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    cfg = BenchConfig(quick=args.quick, md_model=args.md_model, threads=args.threads)
    cfg.progress = not args.no_progress
    if args.model is not None:
        cfg.model = args.model
    md = md_config(cfg)
    md.alanine, md.engines = not args.engines_only, not args.alanine_only
    if args.rounds is not None:
        md.rounds = args.rounds
    asked = {"ethanol": args.steps, "water_box": args.box_steps}
    default = {"ethanol": 20 if args.quick else 200, "water_box": 5}
    md.systems = {
        name: asked[name] if asked[name] is not None else default[name]
        for name in (args.systems or md.systems)
    }
    sec = run_part("md", cfg, lambda _: run_md_speed(md))
    out = args.out or (QUICK_DIR if args.quick else RESULTS) / "md_speed.json"
    write_json(out, sec)
    print("\n".join(md_speed_markdown(sec)))
    print(f"wrote {out} (`mlsim bench --only report` adds it to report.md)", file=sys.stderr)
    failed = [k for k in ("alanine", "engines") if sec.get(k, {}).get("status") == "failed"]
    return 1 if sec["status"] == "failed" or failed else 0


if __name__ == "__main__":
    sys.exit(main())
