"""`mlsim learn CONFIG.yaml`: the active-learning loop (explore, select, label, retrain), resumable."""

from __future__ import annotations

import argparse

NAME = "learn"
HELP = (
    "Active learning: explore with a committee, label what it doubts, retrain; --resume continues."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the learn options."""
    parser.add_argument("config", help="YAML learn configuration")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in the config's output folder"
    )
    parser.add_argument(
        "--max-labels", type=int, help="override the label budget (may be raised on --resume)"
    )
    parser.add_argument(
        "--max-iterations", type=int, help="override the iteration cap (may be raised on --resume)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Load the config and run the loop; exit 0 when it converged or used its budget."""
    from mlsim.learn import learn, load_learn_config

    overrides = {}
    if args.max_labels is not None:
        overrides["max_labels"] = args.max_labels
    if args.max_iterations is not None:
        overrides["max_iterations"] = args.max_iterations
    cfg = load_learn_config(args.config, overrides)
    state = learn(cfg, resume=args.resume, progress=not args.no_progress)
    # A stalled loop did not reach its goal: say so through the exit status.
    return 0 if state["status"] in ("converged", "budget", "max_iterations") else 3
