"""The architecture registry: model name -> class and hyperparameter schema, plus plug-ins.

An architecture is registered where its class is defined, with `@register_architecture(name,
hyperparameters={...})`; `build_model`, the training config and its reference docs read the
registry, so adding an architecture edits no list anywhere else. Outside packages add theirs
through the entry-point group `mlsim.architectures` (name = architecture name, value = the
decorated class or its module); an entry point is imported only when its name is first looked up.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from torch import nn

from mlsim._schema import Option, check_value, kind_of

__all__ = [
    "ENTRY_POINT_GROUP",
    "SET_FROM_DATA",
    "Architecture",
    "architectures",
    "get_architecture",
    "register_architecture",
]

ENTRY_POINT_GROUP = "mlsim.architectures"
# Constructor arguments every architecture takes that come from the training data (the trainer
# sets them), not from the config's hyperparameters.
SET_FROM_DATA = ("elements", "self_energies", "energy_scale")
# "ensemble" is the wrapper build_model puts around members of any architecture.
_RESERVED = {"ensemble"}
_NAME = re.compile(r"[a-z][a-z0-9_]*")

M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class Architecture:
    """A registered model class with the schema of the hyperparameters a config may set."""

    name: str
    cls: type[nn.Module]
    hyperparameters: Mapping[str, Option]  # name -> kind, range/choices, default, doc
    origin: str  # "module.Class" that registered it, for messages

    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter's default value."""
        return {k: opt.default for k, opt in self.hyperparameters.items()}

    def check(
        self, hyperparameters: Mapping[str, Any], where: str = "hyperparameters"
    ) -> dict[str, Any]:
        """Values checked against the schema and normalised (3 -> 3.0); ValueError naming the key.

        energy_scale (set from the data by the trainer, stored with the spec) passes unchecked.
        """
        unknown = sorted(set(hyperparameters) - set(self.hyperparameters) - {"energy_scale"})
        if unknown:
            raise ValueError(
                f"{where} (for {self.name}): unknown keys {unknown}; "
                f"valid keys: {sorted(self.hyperparameters)}"
            )
        return {
            k: check_value(f"{where}.{k}", self.hyperparameters[k], v)
            if k in self.hyperparameters
            else v
            for k, v in hyperparameters.items()
        }

    def build(
        self,
        elements: list[int],
        self_energies: Mapping[int, float] | None = None,
        **hyperparameters: Any,
    ) -> nn.Module:
        """A new eager model: ``cls(elements, self_energies=..., **hyperparameters)``, checked."""
        hp = self.check(hyperparameters)
        return self.cls(elements=elements, self_energies=self_energies, **hp)


class _Registry:
    """Registered architectures and the (lazily discovered, lazily loaded) plug-in entry points."""

    def __init__(self) -> None:
        """Empty: architectures register on import of their module."""
        self.architectures: dict[str, Architecture] = {}
        self.entry_points: dict[str, importlib.metadata.EntryPoint] | None = None

    def discover(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The group's entry points by (lower-case) name; read from the installed metadata once."""
        if self.entry_points is None:
            found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            self.entry_points = {ep.name.lower(): ep for ep in found}
        return self.entry_points

    def load(self, name: str) -> Architecture:
        """Import the plug-in `name`, which must register an architecture of that name."""
        ep = self.discover()[name]
        dist = getattr(ep, "dist", None)
        where = (
            f"architecture plug-in {name!r} (entry point '{ep.name} = {ep.value}' in group "
            f"{ENTRY_POINT_GROUP!r}" + (f" of {dist.name} {dist.version}" if dist else "") + ")"
        )
        try:
            obj = ep.load()
        except Exception as exc:  # anything its import raises: the plug-in is broken
            raise ValueError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
        if name not in self.architectures:
            other = next((a for a in self.architectures.values() if a.cls is obj), None)
            hint = ""
            if other is not None:
                hint = f"; it registers {other.origin} as {other.name!r}"
            elif isinstance(obj, type):
                hint = (
                    f"; decorate {obj.__qualname__} with "
                    f"@mlsim.models.register_architecture({name!r}, hyperparameters=...)"
                )
            raise ValueError(f"{where} did not register an architecture named {name!r}{hint}")
        return self.architectures[name]


_REGISTRY = _Registry()


@typing.overload
def register_architecture(
    name: str, cls: None = None, *, hyperparameters: Mapping[str, Option] | None = None
) -> Callable[[M], M]: ...


@typing.overload
def register_architecture(
    name: str, cls: M, *, hyperparameters: Mapping[str, Option] | None = None
) -> M: ...


def register_architecture(
    name: str, cls: M | None = None, *, hyperparameters: Mapping[str, Option] | None = None
) -> M | Callable[[M], M]:
    """Register a model class under `name`; used as `@register_architecture(name, hyperparameters=...)`.

    The class is built as ``cls(elements=[Z, ...], self_energies={Z: eV}, energy_scale=eV,
    **hyperparameters)`` and must be a TorchScript-scriptable nn.Module with `elements`,
    `cutoff`, ``forward(numbers, positions, cell, pbc, batch)`` -> energies (B,) and
    `energy_from_pairs`; subclassing mlsim.models.AtomicModel gives all of that. `hyperparameters` maps every other
    constructor keyword to an Option (doc, range or choices; the kind comes from the annotation
    when not given, the default always from the signature), so configs are checked against it.
    Returns the class (so it works as a decorator) or, without `cls`, the decorator.
    """
    if cls is None:

        def decorator(c: M) -> M:
            return register_architecture(name, c, hyperparameters=hyperparameters)

        return decorator
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(
            f"architecture name {name!r} is invalid: expected lower-case letters, digits and _ "
            f"(starting with a letter), not {sorted(_RESERVED)}"
        )
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_architecture({name!r}): {cls!r} is not an nn.Module subclass")
    origin = f"{cls.__module__}.{cls.__qualname__}"
    old = _REGISTRY.architectures.get(name)
    # The same class again (its module re-imported, e.g. by importlib.reload) replaces itself.
    if old is not None and old.origin != origin:
        raise ValueError(
            f"architecture {name!r} is already registered by {old.origin}; cannot register "
            f"{origin} under the same name"
        )
    schema = _schema(name, cls, dict(hyperparameters or {}))
    _REGISTRY.architectures[name] = Architecture(name, cls, MappingProxyType(schema), origin)
    return cls


def _schema(name: str, cls: type[nn.Module], declared: dict[str, Option]) -> dict[str, Option]:
    """The declared Options completed from cls's constructor (kind, default), checked against it."""
    where = f"register_architecture({name!r}, {cls.__qualname__})"
    params = inspect.signature(cls).parameters
    missing = [p for p in SET_FROM_DATA if p not in params]
    if missing:
        raise TypeError(f"{where}: the constructor must accept {', '.join(SET_FROM_DATA)}")
    options = {
        k: p
        for k, p in params.items()
        if k not in SET_FROM_DATA and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    # Every constructor option is settable from a config, and nothing else is.
    undeclared = sorted(set(options) - set(declared))
    unknown = sorted(set(declared) - set(options))
    if undeclared or unknown:
        raise TypeError(
            f"{where}: the hyperparameters must describe exactly the constructor's options "
            f"besides {', '.join(SET_FROM_DATA)}; "
            + "; ".join(
                f"{label}: {keys}"
                for label, keys in (
                    ("no Option for", undeclared),
                    ("not in the constructor", unknown),
                )
                if keys
            )
        )
    hints = typing.get_type_hints(cls.__init__)
    schema = {}
    for k, opt in declared.items():
        if not isinstance(opt, Option):
            raise TypeError(f"{where}: hyperparameters[{k!r}] must be an Option, got {opt!r}")
        p = options[k]
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{where}: hyperparameter {k!r} needs a default in the constructor")
        kind, nullable = opt.kind, opt.nullable
        if not kind:
            try:
                kind, nullable = kind_of(hints[k])
            except (KeyError, ValueError):
                raise TypeError(
                    f"{where}: cannot tell the kind of {k!r} from its annotation; "
                    "give Option(kind=...)"
                ) from None
        full = dataclasses.replace(opt, kind=kind, nullable=nullable, default=p.default)
        try:
            check_value(k, full, p.default)
        except ValueError as exc:
            raise TypeError(f"{where}: the default does not satisfy its Option: {exc}") from None
        schema[k] = full
    return schema


def architectures() -> list[str]:
    """Names of all architectures: registered ones and installed plug-ins (not yet imported)."""
    return sorted(set(_REGISTRY.architectures) | set(_REGISTRY.discover()))


def get_architecture(name: str) -> Architecture:
    """The architecture registered as `name` (any case), importing its plug-in on first use.

    ValueError for an unknown name (listing the known ones) or a broken plug-in (naming it).
    """
    key = str(name).lower()
    if key in _REGISTRY.architectures:
        return _REGISTRY.architectures[key]
    if key in _REGISTRY.discover():
        return _REGISTRY.load(key)
    raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(architectures())}")
