"""The time between trajectory frames, from the file itself: never a silent 1 ps guess.

mdtraj gives DCD frames times 0, 1, 2, ... (it ignores the header), so a DCD written every
0.05 ps looked 20x slower than it is. The spacing is taken, in this order, from the
`<trajectory>.json` that mlsim writes next to every trajectory (mlsim md, mlsim.systems.write_dcd),
from a DCD header written by OpenMM (its time step times the frame interval; other writers such as
mdtraj leave placeholders there), or from the frame times of formats that store them (XTC, TRR,
HDF5, NetCDF). When none of these knows, the caller must pass the spacing (`--dt-ps`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["dcd_header_frame_interval_ps", "file_frame_interval_ps", "resolve_frame_interval"]

# OpenMM's DCDFile stores times in AKMA units: t_akma = t_ps / 0.04888821.
_AKMA_PS = 0.04888821
_TIMED_FORMATS = (".xtc", ".trr", ".h5", ".nc", ".netcdf")


def _round(x: float) -> float:
    """Round to 6 significant digits (the DCD header holds a float32)."""
    return float(f"{x:.6g}")


def dcd_header_frame_interval_ps(path: str | os.PathLike) -> float | None:
    """Frame spacing (ps) from a DCD header written by OpenMM; None for other writers."""
    with open(path, "rb") as fh:
        head = fh.read(180)
    if len(head) < 180 or head[4:8] != b"CORD" or struct.unpack("<i", head[:4])[0] != 84:
        return None
    interval = struct.unpack("<i", head[16:20])[0]
    (delta,) = struct.unpack("<f", head[44:48])
    if not head[100:180].startswith(b"Created by OpenMM"):
        return None  # e.g. mdtraj writes delta = 1 AKMA and interval 1 whatever the real spacing
    if interval <= 0 or not np.isfinite(delta) or delta <= 0:
        return None
    return _round(interval * delta * _AKMA_PS)


def file_frame_interval_ps(path: str | os.PathLike) -> tuple[float | None, str]:
    """(spacing of the frames in the file in ps or None, where it came from / why unknown)."""
    path = Path(path)
    meta = path.with_name(path.name + ".json")
    if meta.is_file():
        try:
            value = float(json.loads(meta.read_text())["frame_interval_ps"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the frame spacing from {meta}: {exc}") from exc
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{meta} gives a frame spacing of {value} ps; it must be positive")
        return value, f"{meta.name}"
    suffix = path.suffix.lower()
    if suffix == ".dcd":
        value = dcd_header_frame_interval_ps(path)
        if value is not None:
            return value, "DCD header (written by OpenMM)"
        return None, "its DCD header does not say (not written by OpenMM or mlsim)"
    if suffix in _TIMED_FORMATS:
        return None, "frame times"
    return None, f"{suffix or 'this'} files store no time"


def _times_spacing(traj) -> float | None:
    """Constant positive spacing of an mdtraj Trajectory's frame times, else None."""
    t = np.asarray(traj.time, dtype=np.float64)
    if len(t) < 2:
        return None
    d = np.diff(t)
    if not np.all(np.isfinite(d)) or d[0] <= 0 or not np.allclose(d, d[0], rtol=1e-3, atol=0):
        return None
    return float(d[0])


def resolve_frame_interval(
    paths: Sequence[str | os.PathLike], trajs: Sequence, dt_ps: float | None, stride: int = 1
) -> tuple[float, str, list[str]]:
    """Spacing (ps) of the analysed frames (after stride), its source, and warnings.

    dt_ps, when given, is the spacing of the frames in the files (before stride) and wins over
    the files; otherwise every file must tell its spacing, and all must agree.
    """
    warnings: list[str] = []
    found: list[tuple[str, float, str]] = []
    unknown: list[str] = []
    for p, t in zip(paths, trajs):
        value, source = file_frame_interval_ps(p)
        if value is None and source == "frame times":
            spacing = _times_spacing(t)
            value = spacing / stride if spacing is not None else None
            source = f"{Path(p).suffix} frame times" if spacing else "its frame times are unusable"
        if value is None:
            unknown.append(f"{p} ({source})")
        else:
            found.append((str(p), value, source))
    if dt_ps is not None:
        if not np.isfinite(dt_ps) or dt_ps <= 0:
            raise ValueError(f"frame spacing must be positive; got {dt_ps} ps")
        for p, value, _ in found:
            if not np.isclose(value, dt_ps, rtol=1e-4):
                warnings.append(
                    f"--dt-ps {dt_ps:g} ps overrides the frame spacing {value:g} ps stored with {p}"
                )
        return float(dt_ps) * stride, "given (--dt-ps)", warnings
    if unknown:
        raise ValueError(
            "cannot tell the time between frames of " + "; ".join(unknown) + ". Pass --dt-ps "
            "(dt_ps): the time between frames in the file, in ps"
        )
    values = np.array([v for _, v, _ in found])
    if not np.allclose(values, values[0], rtol=1e-4):
        listing = ", ".join(f"{p}: {v:g} ps" for p, v, _ in found)
        raise ValueError(f"the trajectories have different frame spacings ({listing})")
    # One name per kind of source: "<trajectory>.json" rather than every file's own.
    sources = sorted({"<trajectory>.json" if s.endswith(".json") else s for _, _, s in found})
    return float(values[0]) * stride, ", ".join(sources), warnings
