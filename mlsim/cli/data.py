"""`mlsim data`: inspect, convert, split and sample data files (extxyz[.gz], npz, ASE db, ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "data"
HELP = "Data files (extxyz[.gz], MD17-style npz, ASE db): info, convert, split, sample (MD)."


def _units(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--energy-unit", help="npz energy unit, e.g. kcal/mol, eV, hartree (MD17: kcal/mol)"
    )
    p.add_argument("--length-unit", help="npz length unit, e.g. angstrom, bohr, nm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the info, split, sample and convert actions."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print a summary: counts, elements, energy and force ranges")
    info.add_argument("file", type=Path)
    _units(info)
    info.add_argument("--no-validate", action="store_true", help="skip the per-structure checks")
    spl = sub.add_parser("split", help="seeded random split into files, e.g. 0.8 0.1 0.1 or counts")
    spl.add_argument("file", type=Path)
    spl.add_argument("sizes", nargs="+", help="fractions (sum <= 1) or integer counts")
    spl.add_argument("--out", type=Path, nargs="+", required=True, help="one output file per size")
    spl.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _units(spl)
    smp = sub.add_parser(
        "sample",
        help="Langevin MD from a start structure, keeping every k-th frame with the energy and "
        "forces the MD calculator computed for it",
    )
    smp.add_argument("start", type=Path, help="start structure (first frame of any readable file)")
    _units(smp)
    smp.add_argument(
        "--calc", default="xtb", help="xtb (default) or package.module:CalculatorClass"
    )
    smp.add_argument(
        "--engine",
        choices=["ase", "openmm"],
        default="ase",
        help="ase: MD with --calc, frames keep its energy/forces (default); openmm: classical "
        "pre-sampling with --forcefield, unlabelled frames to label afterwards",
    )
    smp.add_argument(
        "--forcefield",
        nargs="+",
        default=None,
        help="--engine openmm: OpenMM force field files, e.g. amber14/tip3pfb.xml",
    )
    smp.add_argument(
        "--rigid-water",
        action="store_true",
        help="--engine openmm: rigid water (default: flexible, the force field's bond/angle terms)",
    )
    smp.add_argument(
        "--pressure",
        type=float,
        default=None,
        help="--engine openmm: Monte Carlo barostat at this pressure, bar (default: NVT)",
    )
    smp.add_argument(
        "--cutoff",
        type=float,
        default=9.0,
        help="--engine openmm: PME direct-space cutoff, Angstrom (default 9)",
    )
    smp.add_argument("--temperatures", type=float, nargs="+", required=True, help="kelvin")
    smp.add_argument("--frames", type=int, required=True, help="frames kept per temperature")
    smp.add_argument("--every", type=int, default=80, help="MD steps between kept frames (80)")
    smp.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    smp.add_argument("--friction", type=float, default=0.01, help="1/fs (default 0.01)")
    smp.add_argument("--equilibration", type=float, default=1000.0, help="fs (default 1000)")
    smp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    smp.add_argument("--charge", type=int, default=0, help="total charge for xtb (default 0)")
    smp.add_argument("--out", type=Path, required=True, help="output file (format by extension)")
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
    if args.action == "split":
        return _split(args)
    if args.action == "sample":
        return _sample(args)
    ds = read(args.input, energy_unit=args.energy_unit, length_unit=args.length_unit)
    write(args.output, ds)
    print(f"wrote {len(ds)} structures to {args.output}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from mlsim.data import read, write

    if len(args.out) != len(args.sizes):
        raise ValueError(f"{len(args.sizes)} sizes but {len(args.out)} --out files")
    try:
        sizes: list[float] = [int(x) for x in args.sizes]
    except ValueError:
        sizes = [float(x) for x in args.sizes]
    ds = read(args.file, energy_unit=args.energy_unit, length_unit=args.length_unit)
    for part, path in zip(ds.split(*sizes, seed=args.seed), args.out, strict=True):
        write(path, part)
        print(f"wrote {len(part)} structures to {path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from mlsim.data import read, sample, write
    from mlsim.data._backends import make_calculator

    common = dict(
        every=args.every,
        timestep_fs=args.timestep,
        friction_per_fs=args.friction,
        equilibration_fs=args.equilibration,
        seed=args.seed,
    )
    if args.engine == "openmm":
        if not args.forcefield:
            raise ValueError("--engine openmm needs --forcefield, e.g. amber14/tip3pfb.xml")
        start = (
            args.start
            if args.start.suffix.lower() == ".pdb"
            else read(args.start, energy_unit=args.energy_unit, length_unit=args.length_unit)[0]
        )
        ds = sample(
            start,
            None,
            args.temperatures,
            args.frames,
            engine="openmm",
            forcefield=args.forcefield,
            rigid_water=args.rigid_water,
            pressure_bar=args.pressure,
            cutoff=args.cutoff,
            **common,
        )
        write(args.out, ds)
        print(
            f"wrote {len(ds)} unlabelled structures to {args.out} (sampled with "
            f"{ds[0].info['md_forcefield']}); label them with `mlsim label`"
        )
        return 0
    if args.forcefield or args.pressure is not None or args.rigid_water:
        raise ValueError("--forcefield, --pressure and --rigid-water need --engine openmm")
    start = read(args.start, energy_unit=args.energy_unit, length_unit=args.length_unit)[0]
    calc, _ = make_calculator(args.calc, charge=args.charge)
    ds = sample(start, calc, args.temperatures, args.frames, **common)
    write(args.out, ds)
    print(f"wrote {len(ds)} structures to {args.out} (labelled by {ds[0].info['method']})")
    return 0
