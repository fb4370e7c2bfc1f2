"""Training configuration: a YAML file, checked against one schema, into a dataclass.

Every key is declared once, as a field of `TrainConfig` carrying its default and an `Option`: its
allowed range or choices, a one-line description and whether it may change on `--resume`. The type
comes from the field's annotation. `SCHEMA` collects them; validation, the error messages, the
`--resume` comparison and `config_reference()` (the rows of the config reference docs) all read
it, so a rule is never written twice. Model hyper-parameters are declared by each architecture
where its class is registered (`mlsim.models.register_architecture`); the config reads the
architecture names and their schemas from that registry (`HYPERPARAMETERS` is a view of it).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsim._schema import Option, check_value, kind_of

__all__ = [
    "HYPERPARAMETERS",
    "MODEL_KEYS",
    "SCHEMA",
    "Option",
    "TrainConfig",
    "config_reference",
    "hyperparameter_defaults",
    "load_config",
    "resume_changes",
]


def _key(default: Any, doc: str, *, factory: Any = None, **rules: Any) -> Any:
    """A TrainConfig field with its schema entry (see Option) in the field's metadata."""
    meta = {"option": Option(doc=doc, **rules)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_REQUIRED = dataclasses.MISSING


@dataclass
class TrainConfig:
    """Everything `mlsim train` needs; paths are resolved relative to the YAML file."""

    data: str = _key(
        _REQUIRED,
        "training pool (any format mlsim.data reads); split into train/validation",
        kind="path",
    )
    output: str = _key(
        "run",
        "folder for checkpoint.pt, log.csv, train.log, model.pt, summary.json, plots",
        kind="path",
        resume="free",
    )
    test_data: str | None = _key(
        None,
        "held-out file evaluated once at the end (null: none)",
        kind="path",
        resume="free",
    )
    seed: int = _key(0, "seed of the split, the initial weights and the batch order", ge=0)
    n_train: int | None = _key(
        None, "train on a seeded subset of this size (null: all not in validation)", ge=1
    )
    val_fraction: float = _key(
        0.1, "fraction of the pool held out for validation (unless n_val/val_data)", gt=0, lt=1
    )
    init_model: str | None = _key(
        None,
        "warm start: a model.pt of the same architecture whose weights, shifts and scales start "
        "this run (null: random initial weights)",
        kind="path",
    )
    n_val: int | None = _key(
        None, "number of pool structures held out for validation; overrides val_fraction", ge=1
    )
    val_data: str | None = _key(
        None, "separate validation file; then the whole pool trains (null: split)", kind="path"
    )
    model: dict[str, Any] = _key(
        None,
        "architecture and hyperparameters (see MODEL_KEYS, HYPERPARAMETERS)",
        factory=lambda: {"architecture": "ani"},
    )
    ensemble: int = _key(1, "members trained side by side from different initial weights", ge=1)
    energy_weight: float = _key(1.0, "loss weight of mean (dE per atom)^2, eV^2", ge=0)
    forces_weight: float = _key(10.0, "loss weight of mean (dF component)^2, (eV/A)^2", ge=0)
    stress_weight: float = _key(
        0.0,
        "loss weight of mean (d stress component)^2, (eV/A^3)^2, over the structures with a "
        "stress label (periodic ones); 0: stress not trained",
        ge=0,
    )
    lr: float = _key(1e-3, "initial (peak) learning rate of AdamW", gt=0)
    weight_decay: float = _key(0.0, "AdamW weight decay", ge=0)
    schedule: str = _key(
        "plateau",
        "lr schedule: 'plateau' (on val force MAE) or 'cosine' (over `epochs`)",
        choices=("plateau", "cosine"),
    )
    plateau_factor: float = _key(0.5, "plateau schedule: lr multiplier on a plateau", gt=0, lt=1)
    plateau_patience: int = _key(
        10, "plateau schedule: epochs without improvement before lr drops", ge=0
    )
    min_lr: float = _key(1e-5, "lower bound of the lr schedule (<= lr)", ge=0)
    ema_decay: float = _key(
        0.99, "exponential moving average of the weights (0 disables it)", ge=0, lt=1
    )
    batch_size: int = _key(32, "global batch (split over ranks under torchrun)", ge=1)
    eval_batch_size: int = _key(128, "batch for validation/test predictions", ge=1, resume="free")
    epochs: int = _key(100, "maximum number of epochs", ge=1, resume="free")
    time_budget_min: float | None = _key(
        None,
        "stop (and finish normally) after this much training, minutes (null: no limit)",
        gt=0,
        resume="free",
    )
    time_budget_clock: str = _key(
        "wall",
        "what time_budget_min counts: 'wall' (elapsed time) or 'cpu' (this process's CPU time, "
        "all threads: the same amount of training whatever else runs on the machine)",
        choices=("wall", "cpu"),
        resume="free",
    )
    early_stopping_patience: int = _key(
        50, "stop after this many epochs without val improvement", ge=1, resume="free"
    )
    threads: int | None = _key(
        None, "torch intra-op threads (null: torch's default)", ge=1, resume="free"
    )
    dtype: str = _key("float32", "floating-point precision", choices=("float32", "float64"))
    device: str = _key(
        "cpu",
        "'cuda' trains on the GPU (cuda:LOCAL_RANK under torchrun)",
        choices=("cpu", "cuda"),
        resume="free",
    )
    grad_clip: float = _key(10.0, "gradient-norm clipping threshold (0 disables it)", ge=0)
    plots: bool = _key(True, "write parity.png and learning_curve.png", resume="free")
    base_dir: str = _key(
        ".",
        "set by load_config: the YAML file's folder (paths resolve from it)",
        kind="path",
        resume="free",
    )

    def path(self, p: str) -> Path:
        """Resolve a path from the config relative to the config file."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def validate(self) -> None:
        """Check every key against SCHEMA (in place: 1 -> 1.0); ValueError naming key, value and what is allowed."""
        for name, opt in SCHEMA.items():
            setattr(self, name, check_value(name, opt, getattr(self, name)))
        self.model = _check_model(self.model)
        for keys, ok, message in _RULES:
            values = [getattr(self, k) for k in keys]
            if not ok(*values):
                raise ValueError(message.format(*values))


def _build_schema() -> dict[str, Option]:
    """SCHEMA from TrainConfig's fields: the Option in each field plus its annotation and default."""
    hints = typing.get_type_hints(TrainConfig)
    schema = {}
    for f in dataclasses.fields(TrainConfig):
        opt: Option = f.metadata["option"]
        kind, nullable = kind_of(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        schema[f.name] = dataclasses.replace(
            opt, kind=opt.kind or kind, nullable=nullable, default=default
        )
    return schema


SCHEMA: dict[str, Option] = _build_schema()

MODEL_KEYS: dict[str, Option] = {
    # The choices are the registered architectures, filled in when checked (_architecture_option).
    "architecture": Option("the network: a registered architecture", kind="str"),
    "hyperparameters": Option(
        "architecture options (see HYPERPARAMETERS); null: defaults", kind="mapping", nullable=True
    ),
}


def _architecture_option() -> Option:
    """MODEL_KEYS['architecture'] with the architectures registered now (plug-ins included)."""
    from mlsim.models import architectures

    names = tuple(architectures())
    doc = "the network: " + ", ".join(repr(n) for n in names)
    return dataclasses.replace(MODEL_KEYS["architecture"], doc=doc, choices=names)


class _Hyperparameters(Mapping[str, Mapping[str, Option]]):
    """Architecture name -> its hyperparameter schema, read from the model registry on access."""

    def __getitem__(self, arch: str) -> Mapping[str, Option]:
        """The schema of `arch` (KeyError if unknown; ValueError naming a broken plug-in)."""
        from mlsim.models import architectures
        from mlsim.models._registry import get_architecture

        if not isinstance(arch, str) or arch.lower() not in architectures():
            raise KeyError(arch)
        return get_architecture(arch).hyperparameters

    def __iter__(self) -> Iterator[str]:
        """Registered architecture names."""
        from mlsim.models import architectures

        return iter(architectures())

    def __len__(self) -> int:
        """Number of registered architectures."""
        from mlsim.models import architectures

        return len(architectures())


# Per architecture: every constructor option a config may set (energy_scale and the elements are
# set by the trainer from the data); registration checks each table against its constructor.
HYPERPARAMETERS: Mapping[str, Mapping[str, Option]] = _Hyperparameters()

# Rules between keys: (keys, check on their values, message formatted with the values).
_RULES: list[tuple[tuple[str, ...], Any, str]] = [
    (
        ("val_data", "n_val"),
        lambda val_data, n_val: not (val_data and n_val is not None),
        "set either val_data (a validation file) or n_val (a split), not both "
        "(val_data = {0!r}, n_val = {1!r})",
    ),
    (
        ("energy_weight", "forces_weight"),
        lambda e, f: e + f > 0,
        "energy_weight = {0!r} and forces_weight = {1!r}: the loss weights cannot both be 0",
    ),
    (
        ("min_lr", "lr"),
        lambda min_lr, lr: min_lr <= lr,
        "min_lr = {0!r} is invalid: expected a number <= lr = {1!r} (the schedule only lowers lr)",
    ),
]


def _check_model(model: dict[str, Any]) -> dict[str, Any]:
    """The `model` mapping checked against MODEL_KEYS and the architecture's HYPERPARAMETERS."""
    from mlsim.models._registry import get_architecture

    _unknown("model", model, MODEL_KEYS)
    arch_opt = _architecture_option()
    if "architecture" not in model:
        raise ValueError(f"model.architecture is required ({arch_opt.allowed()})")
    out = dict(model)
    arch = model["architecture"]
    # build_model ignores case, so configs that say `PaiNN` keep working.
    if not isinstance(arch, str) or arch.lower() not in (arch_opt.choices or ()):
        raise ValueError(f"model.architecture = {arch!r} is invalid: expected {arch_opt.allowed()}")
    entry = get_architecture(arch)
    hp = check_value(
        "model.hyperparameters", MODEL_KEYS["hyperparameters"], model.get("hyperparameters")
    )
    if hp is not None:
        table = entry.hyperparameters
        _unknown(f"model.hyperparameters (for {arch})", hp, table)
        out["hyperparameters"] = {
            k: check_value(f"model.hyperparameters.{k}", table[k], v) for k, v in hp.items()
        }
    return out


def _unknown(where: str, given: dict[str, Any], valid: dict[str, Any]) -> None:
    """ValueError for keys of `given` that `valid` does not list (usually typos)."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(valid)}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config; unknown keys are an error (they are usually typos)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    raw.update(overrides or {})
    names = set(SCHEMA)
    unknown = sorted(set(raw) - names, key=str)
    if unknown:
        raise ValueError(
            f"{path}: unknown config keys {unknown}; valid keys: {sorted(names - {'base_dir'})}"
        )
    if raw.get("data") is None:
        raise ValueError(f"{path}: 'data' (the training data file) is required")
    raw.setdefault("base_dir", str(path.resolve().parent))
    cfg = TrainConfig(**raw)
    try:
        cfg.validate()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return cfg


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """Nested mappings as dotted keys, so a difference names `model.hyperparameters.cutoff`."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}", v))
        return out
    return {prefix: value}


def resume_changes(old: dict[str, Any], new: TrainConfig) -> tuple[list[str], list[str]]:
    """(forbidden, allowed) differences 'key: old -> new' between a checkpoint's config and `new`.

    Keys marked resume="fixed" in SCHEMA shaped the run so far (data, model, optimiser, schedule)
    and must not change; "free" ones (stop criteria, output, evaluation) may. A key the old
    config lacks (written by an older mlsim) is compared with its default.
    """
    forbidden: list[str] = []
    allowed: list[str] = []
    for name, opt in SCHEMA.items():
        before = old.get(name, opt.default)
        after = getattr(new, name)
        with_ok = opt.resume == "free"
        # The cosine schedule is laid out over `epochs` when the run starts: a new count would
        # not stretch it (the restored scheduler keeps the old length), so it cannot change.
        if name == "epochs" and new.schedule == "cosine":
            with_ok = False
        if opt.kind == "path" and name != "base_dir" and before and after and before != after:
            # The same file written differently (relative vs absolute, config moved) is no change.
            old_base = Path(old.get("base_dir") or ".")
            if _resolved(old_base, before) == _resolved(Path(new.base_dir), after):
                continue
        a, b = _flat(name, before), _flat(name, after)
        for k in sorted(set(a) | set(b)):
            va, vb = a.get(k, _UNSET), b.get(k, _UNSET)
            if va != vb:
                (allowed if with_ok else forbidden).append(f"{k}: {_show(va)} -> {_show(vb)}")
    return forbidden, allowed


_UNSET = object()


def _resolved(base: Path, p: str) -> Path:
    """A config path as an absolute path (relative ones are relative to the config's folder)."""
    q = Path(p).expanduser()
    return (q if q.is_absolute() else base / q).resolve()


def _show(v: Any) -> str:
    """A config value in a difference listing."""
    return "(unset)" if v is _UNSET else repr(v)


def config_reference() -> list[dict[str, str]]:
    """One row per config key (name, type, default, allowed, description, on --resume): the reference docs' table."""
    rows = []
    for name, opt in SCHEMA.items():
        if name == "base_dir":
            continue  # internal
        rows.append(_row(name, opt))
    rows.append(_row("model.architecture", _architecture_option(), "required"))
    rows.append(_row("model.hyperparameters", MODEL_KEYS["hyperparameters"], "None"))
    for arch, table in HYPERPARAMETERS.items():
        for name, opt in table.items():
            rows.append(_row(f"model.hyperparameters.{name} ({arch})", opt))
    return rows


def hyperparameter_defaults(arch: str) -> dict[str, str]:
    """The architecture's constructor options a config may set, with their defaults (as text)."""
    import inspect

    from mlsim.models._registry import SET_FROM_DATA, get_architecture

    cls = get_architecture(arch).cls
    return {
        name: repr(p.default)
        for name, p in inspect.signature(cls).parameters.items()
        if name not in SET_FROM_DATA and p.default is not inspect.Parameter.empty
    }


def _row(name: str, opt: Option, default: str | None = None) -> dict[str, str]:
    """A config_reference() row; `default` overrides the text of the default."""
    if default is None:
        default = "required" if opt.default is _REQUIRED else repr(opt.default)
    return {
        "key": name,
        "type": opt.kind,
        "default": default,
        "allowed": opt.allowed(),
        "description": opt.doc,
        "on_resume": "may change" if opt.resume == "free" else "fixed",
    }
