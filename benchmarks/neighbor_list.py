"""Neighbor-list speed: mlsim vs vesin, matscipy and ASE on rattled fcc Cu (cutoff 5 A, full lists).

Run: .venv/bin/python benchmarks/neighbor_list.py [--repeats 7]
Prints a table and writes benchmarks/results/neighbor_list.json. All implementations are timed in
one run, interleaved repeat by repeat, so machine load affects them alike; the median of the
repeats is reported (wall time, and process CPU time, which is less sensitive to other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

SIZES = (6, 13, 22)  # fcc cubic cells: 864, 8,788 and 42,592 atoms
CUTOFF = 5.0
ASE_MAX_ATOMS = 10_000  # ASE takes seconds per call beyond this


def make_system(reps: int, seed: int = 0):
    """Cubic fcc Cu (a = 3.6 A) repeated reps^3 times, rattled by 0.05 A."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=seed)
    return atoms


def implementations(atoms, n_atoms: int) -> dict[str, Callable[[], int]]:
    """Name -> zero-argument callable returning the number of pairs (i, j, S computed)."""
    import torch

    from mlsim.neighbors import neighbor_list, neighbor_list_torch

    pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    pos_t, cell_t, pbc_t = torch.tensor(pos), torch.tensor(cell), torch.tensor(pbc)
    impls: dict[str, Callable[[], int]] = {
        "mlsim": lambda: len(neighbor_list(pos, CUTOFF, cell, pbc, full=True)[0]),
        "mlsim (torch op)": lambda: len(neighbor_list_torch(pos_t, CUTOFF, cell_t, pbc_t)[0]),
    }
    try:
        import vesin

        nl = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
        impls["vesin"] = lambda: len(
            nl.compute(points=pos, box=cell, periodic=True, quantities="ijS")[0]
        )
    except ImportError:
        pass
    try:
        from matscipy.neighbours import neighbour_list as msp_nl

        impls["matscipy"] = lambda: len(msp_nl("ijS", atoms, CUTOFF)[0])
    except ImportError:
        pass
    if n_atoms <= ASE_MAX_ATOMS:
        from ase.neighborlist import neighbor_list as ase_nl

        impls["ase"] = lambda: len(ase_nl("ijS", atoms, CUTOFF)[0])
    return impls


def main() -> int:
    """Time every implementation at every size; print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per implementation")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "neighbor_list.json"
    )
    args = parser.parse_args()

    rows = []
    for reps in SIZES:
        atoms = make_system(reps)
        n = len(atoms)
        impls = implementations(atoms, n)
        counts = {name: f() for name, f in impls.items()}  # warm-up and pair-count check
        if len(set(counts.values())) != 1:
            raise SystemExit(f"pair counts differ at {n} atoms: {counts}")
        wall: dict[str, list[float]] = {name: [] for name in impls}
        cpu: dict[str, list[float]] = {name: [] for name in impls}
        for rep in range(args.repeats):
            for name, f in impls.items():
                if name == "ase" and rep >= 2:  # seconds per call; two repeats are enough
                    continue
                c0, t0 = time.process_time(), time.perf_counter()
                f()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        row = {
            "n_atoms": n,
            "pairs": next(iter(counts.values())),
            "wall_ms": {k: 1e3 * statistics.median(v) for k, v in wall.items()},
            "cpu_ms": {k: 1e3 * statistics.median(v) for k, v in cpu.items()},
            "repeats": {k: len(v) for k, v in wall.items()},
        }
        if "vesin" in row["wall_ms"]:
            row["mlsim_over_vesin_wall"] = row["wall_ms"]["mlsim"] / row["wall_ms"]["vesin"]
            row["mlsim_over_vesin_cpu"] = row["cpu_ms"]["mlsim"] / row["cpu_ms"]["vesin"]
        rows.append(row)

    names = list(rows[0]["wall_ms"])
    print(f"neighbor list, fcc Cu, cutoff {CUTOFF} A, full list; median wall ms (cpu ms)")
    print(f"{'atoms':>8} {'pairs':>10} " + " ".join(f"{k:>18}" for k in names) + "  mlsim/vesin")
    for row in rows:
        cells = []
        for k in names:
            if k in row["wall_ms"]:
                cells.append(f"{row['wall_ms'][k]:>9.1f} ({row['cpu_ms'][k]:>6.1f})")
            else:
                cells.append(f"{'-':>18}")
        ratio = row.get("mlsim_over_vesin_wall", float("nan"))
        print(f"{row['n_atoms']:>8} {row['pairs']:>10} " + " ".join(cells) + f"  {ratio:.2f}")

    import torch

    result = {
        "benchmark": "neighbor_list",
        "system": "fcc Cu, a = 3.6 A cubic cell, rattled 0.05 A, periodic",
        "cutoff_A": CUTOFF,
        "full_list": True,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
