"""`mlsim train CONFIG.yaml`: train a potential on energies and forces (also under torchrun)."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "train"
HELP = "Train a neural network potential from a YAML config (data, model, loss, schedule)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("config", help="YAML training configuration")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoint.pt exactly where it stopped",
    )
    parser.add_argument("--output", help="override the config's output folder")
    parser.add_argument("--epochs", type=int, help="override the config's maximum number of epochs")
    parser.add_argument(
        "--time-budget-min", type=float, help="override the training time budget (minutes)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print the summary as JSON."""
    from mlsim.train import load_config, train
    from mlsim.train._outputs import OutputWriteError

    overrides = {}
    if args.output:
        overrides["output"] = args.output
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.time_budget_min is not None:
        overrides["time_budget_min"] = args.time_budget_min
    cfg = load_config(args.config, overrides)
    try:
        summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    except OutputWriteError as exc:
        # Disk full / quota / size limit while writing a checkpoint or result: a clear line and
        # a non-zero exit, not a traceback (the message says which file and what was kept).
        print(f"mlsim train: error: {exc}", file=sys.stderr)
        return 1
    if summary.get("world_size", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    return 0
