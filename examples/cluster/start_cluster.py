"""Start a Dask cluster of SLURM jobs for `mlsim label --scheduler`, print its address, keep it up.

Run it on the login node (it runs the scheduler; the workers are SLURM jobs it submits):

    python examples/cluster/start_cluster.py --jobs 4          # 4 jobs x 2 workers
    mlsim label geoms.extxyz --method dft --threads 4 --scheduler "$(cat scheduler.address)" \\
        --out dft.extxyz.gz                                    # in a second shell

Ctrl-C stops the scheduler and cancels the jobs. `--print-job-script` shows the script each job runs
(examples/cluster/README.md shows it for slurm.yaml). Needs `pip install 'mlsim[dask]'`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent / "slurm.yaml"


def load_config(path: str | Path) -> dict[str, Any]:
    """The jobqueue.slurm section of a dask-jobqueue YAML file, as SLURMCluster keyword arguments."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    try:
        slurm = dict(cfg["jobqueue"]["slurm"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: no jobqueue.slurm section") from None
    # The config file's `name` is the job name; the keyword `name` would be the worker's.
    slurm["job-name"] = slurm.pop("name", "dask-worker")
    return {key.replace("-", "_"): value for key, value in slurm.items()}


def make_cluster(config: str | Path = DEFAULT_CONFIG, **overrides: Any) -> Any:
    """A dask_jobqueue.SLURMCluster from `config`; `overrides` are SLURMCluster keyword arguments."""
    from dask_jobqueue import SLURMCluster

    kwargs = load_config(config)
    if "scheduler_options" in overrides:  # merged, not replaced: keep the file's other options
        overrides["scheduler_options"] = (kwargs.get("scheduler_options") or {}) | overrides[
            "scheduler_options"
        ]
    return SLURMCluster(**(kwargs | overrides))


def main() -> None:
    """Start the cluster, write its address to --address-file, wait for Ctrl-C."""
    from mlsim._fileio import write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="dask-jobqueue YAML")
    parser.add_argument("--jobs", type=int, default=1, help="SLURM jobs to submit (default 1)")
    parser.add_argument("--address-file", type=Path, default=Path("scheduler.address"))
    parser.add_argument(
        "--print-job-script", action="store_true", help="print the job script and exit"
    )
    args = parser.parse_args()
    cluster = make_cluster(args.config)
    try:
        if args.print_job_script:
            print(cluster.job_script())
            return
        cluster.scale(jobs=args.jobs)
        write_text(args.address_file, cluster.scheduler_address + "\n")
        print(f"scheduler at {cluster.scheduler_address} (in {args.address_file}); Ctrl-C stops it")
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
