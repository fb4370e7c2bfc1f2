"""The `mlsim` command line: one subcommand per module in this package.

Each command module defines NAME, HELP, `add_arguments(parser)` and `run(args) -> int`. Modules are
discovered at start-up, so a subcommand exists exactly when its module does, and heavy imports
(torch, openmm, pyscf) stay inside `run` to keep `mlsim --help` fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

import mlsim

__all__ = ["build_parser", "main"]

# The pipeline order, so `mlsim --help` reads like the workflow; unknown names sort after these.
_ORDER = [
    "data",
    "label",
    "train",
    "evaluate",
    "learn",
    "export",
    "md",
    "propagate",
    "analyze",
    "bench",
]


def _command_modules() -> list[ModuleType]:
    """Import every command module in this package, in pipeline order."""
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{__name__}.{info.name}"))

    def rank(m: ModuleType) -> tuple[int, str]:
        return (_ORDER.index(m.NAME) if m.NAME in _ORDER else len(_ORDER), m.NAME)

    return sorted(mods, key=rank)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subparser per available command."""
    parser = argparse.ArgumentParser(
        prog="mlsim",
        description="Machine-learned potentials for OpenMM and ASE: label data, train, export, run.",
    )
    parser.add_argument("--version", action="version", version=f"mlsim {mlsim.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `mlsim` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # User errors (bad input file, bad option) get one clear line, not a traceback.
        print(f"mlsim {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
