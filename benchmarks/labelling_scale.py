"""Labelling throughput by executor: in-process, 2 local worker processes, a 2-worker Dask LocalCluster.

Run: nice .venv/bin/python benchmarks/labelling_scale.py [--dft 10] [--xtb 1000] [--rounds 3]
Prints a table and writes benchmarks/results/labelling_scale.json. GFN2-xTB labels ethanol
training geometries, B3LYP/6-31G* (density fitting) a handful of the validation geometries, every
configuration with one thread per worker. Each row is one `mlsim.data.label` call, timed whole:
start-up (spawning workers, a LocalCluster), imports, labelling and shutdown. CPU time is this
process plus its reaped children (the workers, and Dask's worker processes). `busy` is the summed
time inside the labeller over wall x workers: the fraction of the workers' time spent labelling.
`cpu s/structure` is the median CPU time of the worker process while it labels one structure
(what hosting the labeller in that process costs, Dask's housekeeping threads included), and
`thread_cpu_s_per_structure_median` that of the labelling thread alone (the DFT itself): unlike
wall time, it hardly moves when other jobs share the machine. The Dask overhead compares it, and
the wall and CPU times, with the 2-process executor's; the LocalCluster start-up alone is timed
separately, since on a real cluster it happens once, outside `mlsim label`. With --rounds R the
DFT configurations run R times, interleaved in rotating order, and each row sums its rounds: on a
shared machine the changing load then reaches every configuration alike. A one-worker Dask
cluster is also compared with labelling in this process (the second core left to the scheduler
and nanny, as on a cluster where they run off the compute node).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "examples" / "ethanol"

CONFIGS = [  # (name, workers whose time counts, label() keyword arguments)
    ("in-process, 1 worker", 1, {"workers": 1}),
    ("local processes, 2 workers", 2, {"workers": 2}),
    ("Dask LocalCluster, 2 workers", 2, {"executor": "dask", "workers": 2}),
]
DFT_EXTRA = [
    ("in-process, 1 worker x 2 threads", 1, {"workers": 1, "threads": 2}),
    # one Dask worker leaves the second core to the scheduler and nanny, as on a cluster where
    # they run off the compute node: compared with labelling in this process
    ("Dask LocalCluster, 1 worker", 1, {"executor": "dask", "workers": 1}),
]


class TimedLabeller:
    """A method's labeller that also records the CPU time of its process per structure (`cpu_s`).

    Sent to the workers as an object; the labeller itself is built there, on first use. The CPU
    time of the worker process includes whatever else runs in it (Dask's housekeeping threads),
    which is the cost of hosting the labeller there.
    """

    def __init__(self, method: str, options: dict) -> None:
        from mlsim.data import make_labeller

        self.method, self.options = method, options
        probe = make_labeller(method, **options)
        self.name, self.settings = probe.name, dict(probe.settings)
        self._inner = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_inner": None}

    def __call__(self, s):  # type: ignore[no-untyped-def]
        """Label `s`; the extra info gains cpu_s."""
        from mlsim.data import make_labeller

        if self._inner is None:
            self._inner = make_labeller(self.method, **self.options)
        c0, t0 = time.process_time(), time.thread_time()
        energy, forces, info = self._inner(s)
        # thread_s: the labelling thread alone (the DFT itself); cpu_s: the whole process.
        return (
            energy,
            forces,
            {
                **info,
                "cpu_s": round(time.process_time() - c0, 4),
                "thread_cpu_s": round(time.thread_time() - t0, 4),
            },
        )


def _cpu_seconds() -> float:
    """User + system time of this process and of every child it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_local_cluster() -> float:
    """Seconds to start a 2-worker LocalCluster, connect and close it again (cold start-up)."""
    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(2)
    client.close()
    cluster.close()
    return time.perf_counter() - t0


def run(
    inputs: list, method: str, options: dict, name: str, slots: int, kwargs: dict, folder: Path
) -> tuple[dict, dict[int, tuple[float, np.ndarray]]]:
    """Label `inputs` once with one configuration; return its row and {index: (energy, forces)}."""
    from mlsim.data import label, read

    out = folder / f"{method}-{len(list(folder.iterdir()))}.extxyz"
    kw = {"threads": 1, **options, **kwargs}
    labeller = TimedLabeller(method, {**options, "threads": kw["threads"]})
    ex = {k: v for k, v in kw.items() if k in ("workers", "executor", "threads")}
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    summ = label(inputs, out, labeller, progress=False, **ex)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    recs = read(out)
    assert summ.n_labelled == len(inputs) == len(recs), (name, summ)
    busy = sum(float(r.info["label_seconds"]) for r in recs)
    worker_cpu = float(np.median([float(r.info["cpu_s"]) for r in recs]))
    labels = {int(r.info["label_index"]): (r.energy, r.forces) for r in recs}
    row = {
        "method": method,
        "executor": name,
        "workers": slots,
        "threads_per_worker": kw["threads"],
        "structures": len(inputs),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "labels_per_min": round(60 * len(inputs) / wall, 2),
        "labels_per_cpu_min": round(60 * len(inputs) / cpu, 2),
        "busy_fraction": round(busy / (wall * slots), 3),
        "worker_cpu_s_per_structure_median": round(worker_cpu, 4),
        "thread_cpu_s_per_structure_median": round(
            float(np.median([float(r.info["thread_cpu_s"]) for r in recs])), 4
        ),
        "_worker_cpu": [float(r.info["cpu_s"]) for r in recs],
        "_thread_cpu": [float(r.info["thread_cpu_s"]) for r in recs],
        "_busy": busy,
    }
    return row, labels


def _combine(parts: list[dict]) -> dict:
    """One row from the rounds of one configuration: sums, and medians over every structure."""
    row = dict(parts[0])
    wall = sum(p["wall_s"] for p in parts)
    n = sum(p["structures"] for p in parts)
    cpu_per = [c for p in parts for c in p["_worker_cpu"]]
    row.update(
        rounds=len(parts),
        round_wall_s=[p["wall_s"] for p in parts],
        structures=n,
        wall_s=round(wall, 3),
        cpu_s=round(sum(p["cpu_s"] for p in parts), 3),
        labels_per_min=round(60 * n / wall, 2),
        labels_per_cpu_min=round(60 * n / sum(p["cpu_s"] for p in parts), 2),
        busy_fraction=round(sum(p["_busy"] for p in parts) / (wall * row["workers"]), 3),
        worker_cpu_s_per_structure_median=round(float(np.median(cpu_per)), 4),
        thread_cpu_s_per_structure_median=round(
            float(np.median([c for p in parts for c in p["_thread_cpu"]])), 4
        ),
        max_abs_energy_diff_eV=max(p["max_abs_energy_diff_eV"] for p in parts),
        max_abs_force_diff_eV_A=max(p["max_abs_force_diff_eV_A"] for p in parts),
    )
    for key in ("_worker_cpu", "_thread_cpu", "_busy"):
        row.pop(key)
    return row


def _overhead(base: dict, dsk: dict, cluster_start: float) -> dict:
    """Dask's row against `base`'s: wall (with and without the cluster start), CPU, worker CPU."""
    return {
        "dask_vs": base["executor"],
        "dask_vs_local_wall_percent": round(100 * (dsk["wall_s"] / base["wall_s"] - 1), 1),
        "dask_vs_local_wall_percent_without_cluster_start": round(
            100 * ((dsk["wall_s"] - cluster_start) / base["wall_s"] - 1), 1
        ),
        "dask_vs_local_cpu_percent": round(100 * (dsk["cpu_s"] / base["cpu_s"] - 1), 1),
        "dask_vs_local_worker_cpu_per_structure_percent": round(
            100
            * (
                dsk["worker_cpu_s_per_structure_median"] / base["worker_cpu_s_per_structure_median"]
                - 1
            ),
            1,
        ),
        # The labelling thread alone: is the DFT itself slower in a Dask worker, or is the
        # difference the worker's other threads (event loop, heartbeats, monitors)?
        "dask_vs_local_thread_cpu_per_structure_percent": round(
            100
            * (
                dsk["thread_cpu_s_per_structure_median"] / base["thread_cpu_s_per_structure_median"]
                - 1
            ),
            1,
        ),
    }


def main() -> None:
    """Run every configuration for xTB and DFT; print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xtb", type=int, default=1000, help="xTB structures (default 1000)")
    parser.add_argument("--dft", type=int, default=10, help="DFT structures (default 10)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "labelling_scale.json"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="DFT rounds, interleaved in rotating order (default 1); each labels --dft structures",
    )
    parser.add_argument(
        "--note", default="", help="what else ran on the machine (stored in the JSON)"
    )
    args = parser.parse_args()

    import dask
    import distributed
    import pyscf
    import tblite

    from mlsim._fileio import write_json
    from mlsim.data import read

    load_before = os.getloadavg()
    cluster_start = time_local_cluster()
    jobs = [
        ("xtb", read(ETHANOL / "ethanol_train_geometries.extxyz.gz")[: args.xtb], {}),
        (
            "dft",
            read(ETHANOL / "ethanol_val_geometries.extxyz.gz")[: args.dft],
            {"functional": "b3lyp", "basis": "6-31g*"},
        ),
    ]
    rows: list[dict] = []
    overhead: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, inputs, options in jobs:
            inputs = list(inputs)
            configs = CONFIGS + (DFT_EXTRA if method == "dft" else [])
            rounds = args.rounds if method == "dft" else 1
            parts: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
            ref = None
            for r in range(rounds):
                # interleaved, each round in another order: load changes on a shared machine
                # then reach every configuration alike
                shift = r % len(configs)
                for name, slots, kwargs in configs[shift:] + configs[:shift]:
                    row, labels = run(inputs, method, options, name, slots, kwargs, Path(tmp))
                    if ref is None:
                        ref = labels
                    # identical labels whatever runs them (bitwise for one thread per worker)
                    row["max_abs_energy_diff_eV"] = max(abs(labels[i][0] - ref[i][0]) for i in ref)
                    row["max_abs_force_diff_eV_A"] = max(
                        float(np.abs(labels[i][1] - ref[i][1]).max()) for i in ref
                    )
                    parts[name].append(row)
            by_name = {}
            for name, _, _ in configs:
                row = _combine(parts[name])
                rows.append(row)
                by_name[name] = row
                print(
                    f"{method:4s} {name:34s} {row['wall_s']:7.1f} s wall {row['cpu_s']:7.1f} s cpu"
                    f" {row['labels_per_min']:9.1f} labels/min  busy {row['busy_fraction']:.2f}"
                    f"  {row['worker_cpu_s_per_structure_median']:.3f} cpu s/structure"
                    f" ({row['thread_cpu_s_per_structure_median']:.3f} labelling thread)",
                    flush=True,
                )
            local, dsk = by_name[CONFIGS[1][0]], by_name[CONFIGS[2][0]]
            overhead[method] = _overhead(local, dsk, cluster_start)
            if method == "dft":
                overhead["dft_one_worker"] = _overhead(
                    by_name[CONFIGS[0][0]], by_name[DFT_EXTRA[1][0]], cluster_start
                )
    result = {
        "benchmark": "labelling_scale",
        "inputs": {
            "xtb": f"{args.xtb} of examples/ethanol/ethanol_train_geometries.extxyz.gz, GFN2-xTB",
            "dft": f"{args.dft} of examples/ethanol/ethanol_val_geometries.extxyz.gz, "
            "B3LYP/6-31G* density-fitted (pyscf)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "nice": os.nice(0),
            "platform": platform.platform(),
            "note": args.note,
        },
        "versions": {
            "dask": dask.__version__,
            "distributed": distributed.__version__,
            "pyscf": pyscf.__version__,
            "tblite": getattr(tblite, "__version__", "?"),
        },
        "local_cluster_start_s": round(cluster_start, 2),
        "results": rows,
        "dask_overhead": overhead,
    }
    write_json(args.out, result)
    print(f"\nLocalCluster start + close: {cluster_start:.1f} s")
    for method, o in overhead.items():
        print(
            f"{method}: Dask vs local processes {o['dask_vs_local_wall_percent']:+.1f}% wall "
            f"({o['dask_vs_local_wall_percent_without_cluster_start']:+.1f}% without the cluster "
            f"start), {o['dask_vs_local_cpu_percent']:+.1f}% CPU, "
            f"{o['dask_vs_local_worker_cpu_per_structure_percent']:+.1f}% worker CPU per structure "
            f"({o['dask_vs_local_thread_cpu_per_structure_percent']:+.1f}% in the labelling thread)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
