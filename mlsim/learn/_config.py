"""`mlsim learn` configuration: a YAML file validated up front, before any MD, label or training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LearnConfig", "config_reference", "load_learn_config"]

# Settings a resumed run may change (they only bound how long the loop goes on).
RESUMABLE_CHANGES = ("max_iterations", "max_labels", "train_time_min")


@dataclass
class LearnConfig:
    """Everything one active-learning run needs; paths are relative to the YAML file."""

    output: str  # state folder: state.json, iter_NNN/, report.md
    structures: str  # starting structures (every frame of the file is a walker start) or smiles:
    train: str  # base training YAML (model, loss, schedule); its `ensemble` must be >= 2
    reference: dict[str, Any] = field(default_factory=lambda: {"method": "xtb"})
    initial_data: str | None = None  # labelled structures to start from
    initial_model: str | None = None  # a committee model.pt trained on initial_data
    # Without initial data: cheap MD, labelled afterwards: ASE with `calculator` (xtb or
    # module:Class) or OpenMM with `forcefield` (see mlsim.learn._initial). The default must stay
    # as it is: it is part of every saved state.json, which --resume compares.
    initial_samples: dict[str, Any] = field(
        default_factory=lambda: {
            "calculator": "xtb",
            "temperatures": [300.0],
            "frames": 20,
            "every": 20,
            "timestep_fs": 0.5,
        }
    )
    temperatures: list[float] = field(default_factory=lambda: [300.0])  # K, exploration ladder
    walkers: int = 1  # per temperature and iteration
    steps: int = 2000  # MD steps per walker and iteration
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    record_every: int = 10  # steps between candidate frames
    lower: float = 0.05  # eV/A: max per-atom force spread above which a frame is worth labelling
    upper: float = 0.5  # eV/A: beyond this the walker has left the trusted region; it stops
    max_per_iteration: int = 50  # labels per iteration
    max_labels: int = 500  # label budget of the whole run (initial samples included)
    max_iterations: int = 10
    train_time_min: float = 5.0  # retraining budget per iteration (warm start)
    converge_temperatures: list[float] | None = None  # default: the hottest of `temperatures`
    converge_fs: float | None = None  # default: one walker's full run, steps * timestep_fs
    min_distance: float = 0.5  # Angstrom: closer atoms stop a walker (unphysical geometry)
    test_data: str | None = None  # labelled file for force error vs iteration
    seed: int = 0
    base_dir: str = "."  # set by load_learn_config

    def path(self, p: str) -> Path:
        """Resolve a path relative to the config file."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    @property
    def target_temperatures(self) -> list[float]:
        """Temperatures at which exploration must stay confident for the run to stop."""
        return list(self.converge_temperatures or [max(self.temperatures)])

    @property
    def target_fs(self) -> float:
        """Simulated time (fs, summed over walkers at the target temperatures) required to stop."""
        return float(self.converge_fs or self.steps * self.timestep_fs)

    def validate(self) -> None:
        """Raise ValueError naming the first bad key."""

        def positive(name: str, integer: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"{name} must be {kind}, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")

        for name in ("walkers", "steps", "record_every", "max_per_iteration", "max_iterations"):
            positive(name, integer=True)
        if isinstance(self.max_labels, bool) or not isinstance(self.max_labels, int):
            raise ValueError(f"max_labels must be an integer, got {self.max_labels!r}")
        if self.max_labels <= 0:
            raise ValueError(f"max_labels (the label budget) must be > 0, got {self.max_labels}")
        for name in ("timestep_fs", "friction_per_fs", "lower", "upper", "train_time_min"):
            positive(name)
        if not self.lower < self.upper:
            raise ValueError(
                f"thresholds out of order: lower ({self.lower}) must be below upper ({self.upper})"
            )
        if self.record_every > self.steps:
            raise ValueError(f"record_every ({self.record_every}) exceeds steps ({self.steps})")
        if not self.temperatures or any(
            not isinstance(t, (int, float)) or t <= 0 for t in self.temperatures
        ):
            raise ValueError(
                f"temperatures must be positive kelvin values, got {self.temperatures}"
            )
        missing = set(self.target_temperatures) - set(self.temperatures)
        if missing:
            raise ValueError(
                f"converge_temperatures {sorted(missing)} are not among temperatures "
                f"{self.temperatures}"
            )
        if not isinstance(self.reference, dict) or "method" not in self.reference:
            raise ValueError(
                "reference must be a mapping with a 'method' (dft, xtb or module:Class)"
            )
        if self.initial_model and not self.initial_data:
            raise ValueError("initial_model needs the initial_data it was trained on")
        from mlsim.learn._initial import check_initial_samples, smiles_of

        smiles = smiles_of(self.structures)
        if smiles is not None and not smiles:
            raise ValueError("structures: 'smiles:' needs a SMILES string after it")
        for key in ("structures", "train", "initial_data", "initial_model", "test_data"):
            p = getattr(self, key)
            if key == "structures" and smiles is not None:
                continue
            if p is not None and not self.path(p).is_file():
                raise FileNotFoundError(f"{key}: file not found: {self.path(p)}")
        if not self.initial_data:
            structures = None if smiles is not None else self.path(self.structures)
            check_initial_samples(self.initial_samples, structures)


def load_learn_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LearnConfig:
    """Read and validate a learn YAML; unknown keys are an error (usually typos)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    raw.update(overrides or {})
    names = {f.name for f in dataclasses.fields(LearnConfig)} - {"base_dir"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {sorted(names)}")
    for key in ("output", "structures", "train"):
        if key not in raw:
            raise ValueError(f"{path}: '{key}' is required")
    raw.setdefault("base_dir", str(path.resolve().parent))
    if "temperatures" in raw and not isinstance(raw["temperatures"], list):
        raw["temperatures"] = [raw["temperatures"]]
    cfg = LearnConfig(**raw)
    cfg.validate()
    return cfg


DOCS: dict[str, str] = {
    "output": "state folder: state.json, iter_NNN/ (walkers, selected frames, labels, committee), "
    "model.pt, report.md",
    "structures": "starting structures; every frame of the file is a walker start (any ASE "
    "format, PDB, SDF/MOL2), or 'smiles:SMILES' (one RDKit conformer, written to OUTPUT/start.sdf)",
    "train": "base training YAML (model, loss, schedule); its `ensemble` must be >= 2",
    "reference": "reference method: {method: dft|xtb|module:Class, ...}; dft takes functional, "
    "basis, density_fit, charge, spin, threads; xtb takes charge, spin",
    "initial_data": "labelled structures to start from (null: sample and label first)",
    "initial_model": "a committee model.pt trained on initial_data (null: train one first)",
    "initial_samples": "without initial_data: cheap MD from every start, labelled by the reference "
    "afterwards: {calculator: xtb|module:Class (ASE MD), or forcefield: OpenMM files for a PDB "
    "(e.g. amber14-all.xml) or gaff2 (SDF/MOL2/SMILES molecule, AmberTools), temperatures (K), "
    "frames (per start and temperature), every (steps between frames), timestep_fs, "
    "equilibration_fs (default 1000), friction_per_fs (default 0.01)}",
    "temperatures": "exploration temperature ladder (K)",
    "walkers": "MD walkers per temperature and iteration",
    "steps": "MD steps per walker and iteration",
    "timestep_fs": "MD time step (fs)",
    "friction_per_fs": "Langevin friction (1/fs)",
    "record_every": "steps between uncertainty checks and candidate frames",
    "lower": "eV/A: frames whose max per-atom force spread is at least this are worth labelling",
    "upper": "eV/A: beyond this a walker has left the trusted region and stops",
    "max_per_iteration": "labels per iteration (farthest-point selection among candidates)",
    "max_labels": "label budget of the whole run, initial samples included",
    "max_iterations": "exploration iterations at most",
    "train_time_min": "retraining budget per iteration, minutes (warm start)",
    "converge_temperatures": "temperatures that must stay confident to stop (null: the hottest)",
    "converge_fs": "confident simulated time needed there, fs (null: one walker's full run)",
    "min_distance": "Angstrom: closer atoms stop a walker (unphysical geometry)",
    "test_data": "labelled file for the test error after every retraining (null: none)",
    "seed": "seed of the walkers' velocities and thermostat noise",
}


def config_reference() -> list[dict[str, str]]:
    """One row per learn-config key: key, default, description (for the docs)."""
    rows = []
    for f in dataclasses.fields(LearnConfig):
        if f.name == "base_dir":
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        rows.append({"key": f.name, "default": default, "description": DOCS[f.name]})
    return rows
