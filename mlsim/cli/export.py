"""`mlsim export`: write the TorchScript file that openmm-torch's TorchForce loads for one system.

A molecule's file needs no mlsim where it runs; a periodic system's file calls mlsim's
neighbor-list op, and the output says which library the host must load and how.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "Export a model for one system as an openmm-torch TorchForce file (nm, kJ/mol)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the export options."""
    parser.add_argument("model", type=Path, help="mlsim model file (model.pt)")
    parser.add_argument(
        "--structure",
        type=Path,
        required=True,
        help="structure file readable by ase.io (xyz, pdb, cif, ...): its elements and cell are baked in",
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="TorchScript file to write"
    )
    parser.add_argument(
        "--energy-only",
        action="store_true",
        help="return only the energy and let OpenMM differentiate (default: energy and forces; "
        "then call TorchForce.setOutputsForces(True))",
    )
    parser.add_argument(
        "--precision",
        choices=["single", "double"],
        help="cast the model (default: its own precision)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="export optimize_for_inference(model) (tabulated radial filters, fused kernel; "
        "same energies to ~1e-6 relative)",
    )
    parser.add_argument(
        "--skin",
        type=float,
        default=None,
        help="neighbor-list skin in Angstrom for periodic systems (default: mlsim's, 0.5)",
    )
    parser.add_argument(
        "--keep-kernel",
        action="store_true",
        help="with --fast on a molecule: keep the C++ kernel (several times faster; the host "
        "must then load mlsim's op library, as the output says)",
    )


def run(args: argparse.Namespace) -> int:
    """Export and print how to use the file."""
    import ase.io
    import torch

    from mlsim.data import Structure
    from mlsim.openmm import export_torchforce
    from mlsim.openmm._forces import uses_mlsim_ops

    if not args.structure.is_file():
        raise FileNotFoundError(f"structure file not found: {args.structure}")
    structure = Structure.from_atoms(ase.io.read(args.structure))
    if structure.periodic and not structure.pbc.all():
        raise ValueError("OpenMM needs a structure periodic in all three directions, or none")
    dtype = {None: None, "single": torch.float32, "double": torch.float64}[args.precision]
    if args.keep_kernel and not args.fast:
        raise ValueError("--keep-kernel needs --fast (only a fast model has a C++ kernel)")
    if args.skin is not None and not args.skin >= 0:
        raise ValueError(f"--skin must be >= 0 Angstrom, got {args.skin}")
    model = args.model
    if args.fast:
        from mlsim.models import load_model, optimize_for_inference

        model = optimize_for_inference(load_model(args.model))
    extra = {} if args.skin is None else {"skin": args.skin}
    out = export_torchforce(
        model,
        structure.numbers,
        args.output,
        periodic=structure.periodic,
        outputs_forces=not args.energy_only,
        dtype=dtype,
        self_contained=not args.keep_kernel,
        **extra,
    )
    print(
        f"wrote {out}: {len(structure)} atoms, {'periodic' if structure.periodic else 'non-periodic'}"
    )
    print(f"  force = openmmtorch.TorchForce({str(out)!r})")
    if not args.energy_only:
        print("  force.setOutputsForces(True)")
    if structure.periodic:
        print("  force.setUsesPeriodicBoundaryConditions(True)")
    if not uses_mlsim_ops(out):
        print("  needs no mlsim: any Python or C++ program with openmm-torch can load it")
        return 0
    from mlsim.neighbors import ops_library_path

    lib = ops_library_path()
    print(f"  it calls mlsim's neighbor-list op: load {lib} in the host first")
    print(f"    Python (before TorchForce): torch.ops.load_library({lib!r})")
    print(f'    C++ (before TorchForce): dlopen("{lib}", RTLD_NOW), or run with LD_PRELOAD={lib}')
    print("    (the host must use the libtorch that mlsim was built against)")
    return 0
