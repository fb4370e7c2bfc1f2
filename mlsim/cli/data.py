"""`mlsim data`: inspect and convert data files (extxyz[.gz], npz, ASE db, other ASE formats)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "data"
HELP = "Inspect (info) or convert data files: extxyz[.gz], MD17-style npz, ASE db."


def _units(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--energy-unit", help="npz energy unit, e.g. kcal/mol, eV, hartree (MD17: kcal/mol)"
    )
    p.add_argument("--length-unit", help="npz length unit, e.g. angstrom, bohr, nm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `info` and `convert` actions."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print a summary: counts, elements, energy and force ranges")
    info.add_argument("file", type=Path)
    _units(info)
    info.add_argument("--no-validate", action="store_true", help="skip the per-structure checks")
    conv = sub.add_parser(
        "convert", help="convert between formats (by extension); output in eV/Angstrom"
    )
    conv.add_argument("input", type=Path)
    conv.add_argument("output", type=Path)
    _units(conv)


def _summary(path: Path, stats: dict[str, object]) -> str:
    from ase.data import chemical_symbols

    elements = stats["elements"]
    assert isinstance(elements, dict)
    lines = [
        f"file          {path}",
        f"structures    {stats['n_structures']}",
        f"atoms         {stats['n_atoms_min']}-{stats['n_atoms_max']} per structure, {stats['n_atoms_total']} in total",
        "elements      " + ", ".join(f"{chemical_symbols[z]} {c}" for z, c in elements.items()),
        f"labels        energy {stats['n_with_energy']}, forces {stats['n_with_forces']}, stress {stats['n_with_stress']}",
        f"periodic      {stats['n_periodic']}",
    ]
    if "energy_min" in stats:
        lines.append(
            f"energy (eV)   min {stats['energy_min']:.6f}  max {stats['energy_max']:.6f}  "
            f"mean {stats['energy_mean']:.6f}  std {stats['energy_std']:.6f}"
        )
    if "force_rms" in stats:
        lines.append(
            f"forces (eV/A) rms component {stats['force_rms']:.4f}  max |F| {stats['force_max_norm']:.4f}"
        )
    return "\n".join(lines)


def _info_summary(ds: object, max_distinct: int = 8) -> list[str]:
    """One line per metadata key with few distinct values (method, temperature, ...)."""
    values: dict[str, dict[object, int]] = {}
    for s in ds:  # type: ignore[attr-defined]
        for k, v in s.info.items():
            if isinstance(v, (str, int, float, bool)) or hasattr(v, "item"):
                v = v.item() if hasattr(v, "item") else v
                bucket = values.setdefault(k, {})
                if len(bucket) <= max_distinct:
                    bucket[v] = bucket.get(v, 0) + 1
    return [
        f"info {k:<8} " + ", ".join(f"{v}: {c}" for v, c in sorted(b.items(), key=str))
        for k, b in values.items()
        if len(b) <= max_distinct
    ]


def run(args: argparse.Namespace) -> int:
    """Run the chosen data action."""
    from mlsim.data import read, write

    if args.action == "info":
        ds = read(
            args.file,
            energy_unit=args.energy_unit,
            length_unit=args.length_unit,
            validate=not args.no_validate,
        )
        print(_summary(args.file, ds.stats()))
        for line in _info_summary(ds):
            print(line)
        return 0
    ds = read(args.input, energy_unit=args.energy_unit, length_unit=args.length_unit)
    write(args.output, ds)
    print(f"wrote {len(ds)} structures to {args.output}")
    return 0
