"""The architecture registry: outside architectures (decorator or entry point) train, save and load."""

from __future__ import annotations

import csv
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor

from mlsim.data import Structure, write
from mlsim.models import (
    AtomicModel,
    Option,
    _registry,
    architectures,
    build_model,
    compute_properties,
    load_model,
    register_architecture,
)
from mlsim.models._io import load_trainable
from mlsim.models._registry import get_architecture
from mlsim.models.blocks import (
    ElementEmbedding,
    GaussianRBF,
    PolynomialCutoff,
    pair_vectors,
    pairs_within,
)
from mlsim.train import config_reference, load_config, train


# A toy architecture defined outside mlsim, registered the way a plug-in does it.
@register_architecture(
    "toy_pair",
    hyperparameters={
        "cutoff": Option("pair cutoff, Angstrom", gt=0),
        "num_rbf": Option("Gaussian radial basis functions", ge=2),
    },
)
class ToyPairModel(AtomicModel):
    """Pair potential: Gaussian distance features weighted by both atoms' element embeddings."""

    def __init__(
        self,
        elements: list[int],
        self_energies: dict[int, float] | None = None,
        energy_scale: float = 1.0,
        cutoff: float = 4.0,
        num_rbf: int = 8,
    ) -> None:
        """Blocks from mlsim.models.blocks; the base adds the shifts and the scale."""
        super().__init__(elements, self_energies, energy_scale)
        self.cutoff = float(cutoff)
        self.rbf = GaussianRBF(num_rbf, cutoff)
        self.fcut = PolynomialCutoff(cutoff)
        self.embedding = ElementEmbedding(len(self.elements), num_rbf)

    def atomic_outputs_from_pairs(
        self,
        species: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Half of each pair's energy to each of its atoms."""
        i, j, shifts = pairs_within(positions, cell, batch, i, j, shifts, self.cutoff)
        d = torch.linalg.vector_norm(pair_vectors(positions, cell, batch, i, j, shifts), dim=1)
        emb = self.embedding(species).to(positions.dtype)
        w = 0.5 * (self.rbf(d) * emb[i] * emb[j]).sum(1) * self.fcut(d)
        out = torch.zeros(species.shape[0], dtype=positions.dtype, device=positions.device)
        return out.index_add(0, i, w).index_add(0, j, w)


def _emt_structures(n: int, seed: int) -> list[Structure]:
    """Rattled 5-atom Cu/Al clusters labelled with ASE's EMT."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [1.6, 1.6, 1.6]])
    out = []
    for _ in range(n):
        atoms = Atoms(rng.choice([13, 29], size=5), base + rng.normal(scale=0.15, size=(5, 3)))
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        out.append(Structure(atoms.numbers, atoms.positions, energy=e, forces=f))
    return out


def _inputs(structures: list[Structure]) -> tuple[Tensor, ...]:
    """Batched float32 model inputs of non-periodic structures."""
    numbers = torch.tensor(np.concatenate([s.numbers for s in structures]))
    pos = torch.tensor(np.concatenate([s.positions for s in structures]), dtype=torch.float32)
    cell = torch.zeros(len(structures), 3, 3)
    pbc = torch.zeros(len(structures), 3, dtype=torch.bool)
    batch = torch.cat([torch.full((len(s.numbers),), k) for k, s in enumerate(structures)])
    return numbers, pos, cell, pbc, batch


def test_toy_architecture_from_a_test_module_trains_saves_and_loads(tmp_path) -> None:
    """Registered outside mlsim: the config accepts it, one epoch trains, model.pt round-trips."""
    assert "toy_pair" in architectures()
    write(tmp_path / "train.extxyz", _emt_structures(16, 0))
    config = {
        "data": "train.extxyz",
        "n_val": 4,
        "model": {"architecture": "Toy_Pair", "hyperparameters": {"num_rbf": 6}},
        "epochs": 1,
        "batch_size": 4,
        "threads": 1,
        "plots": False,
        "output": "run",
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    train(load_config(tmp_path / "train.yaml"), progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    scripted = load_model(tmp_path / "run" / "model.pt")
    eager, meta = load_trainable(tmp_path / "run" / "model.pt")
    assert isinstance(eager, ToyPairModel) and meta["spec"]["architecture"] == "Toy_Pair"
    assert meta["hyperparameters"]["num_rbf"] == 6 and eager.rbf.num_rbf == 6
    inputs = _inputs(_emt_structures(3, 1))
    got = compute_properties(scripted, *inputs)
    ref = compute_properties(eager, *inputs)
    torch.testing.assert_close(got["energy"], ref["energy"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["forces"], ref["forces"], rtol=0, atol=1e-5)
    # Its schema is the config's: checked like a built-in's, listed in the reference docs.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({**config, "model": {**config["model"], "hyperparameters": {"num_rbf": 1}}})
    )
    with pytest.raises(
        ValueError, match="model.hyperparameters.num_rbf = 1 is invalid: expected an integer >= 2"
    ):
        load_config(bad)
    rows = {r["key"]: r for r in config_reference()}
    assert rows["model.hyperparameters.cutoff (toy_pair)"]["default"] == "4.0"


def test_register_architecture_checks_the_schema_against_the_constructor() -> None:
    """Missing, extra or ill-typed options, reserved or taken names: refused at registration."""

    class Net(AtomicModel):
        """Stand-in."""

        def __init__(
            self,
            elements: list[int],
            self_energies: dict[int, float] | None = None,
            energy_scale: float = 1.0,
            width: int = 4,
        ) -> None:
            super().__init__(elements, self_energies, energy_scale)

    width = {"width": Option("layer width", ge=1)}
    with pytest.raises(TypeError, match=r"no Option for: \['width'\]"):
        register_architecture("net_a", Net, hyperparameters={})
    with pytest.raises(TypeError, match=r"not in the constructor: \['depth'\]"):
        register_architecture("net_a", Net, hyperparameters={**width, "depth": Option("x")})
    with pytest.raises(TypeError, match="default does not satisfy"):
        register_architecture("net_a", Net, hyperparameters={"width": Option("w", ge=8)})
    with pytest.raises(ValueError, match="architecture name 'ensemble' is invalid"):
        register_architecture("ensemble", Net, hyperparameters=width)
    with pytest.raises(ValueError, match="architecture name 'Net-A' is invalid"):
        register_architecture("Net-A", Net, hyperparameters=width)
    with pytest.raises(ValueError, match="'painn' is already registered by mlsim.models._painn"):
        register_architecture("painn", Net, hyperparameters=width)
    with pytest.raises(TypeError, match="must accept elements, self_energies, energy_scale"):
        register_architecture("net_a", torch.nn.Linear, hyperparameters={})
    assert "net_a" not in architectures()
    with pytest.raises(ValueError, match="unknown architecture 'schnet'; choose one of .*painn"):
        get_architecture("schnet")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch) -> Path:
    """A folder on sys.path holding an installed distribution's metadata and its modules; the
    registry is a fresh copy (built-ins only) that discovers entry points again."""
    fresh = _registry._Registry()
    fresh.architectures = dict(_registry._REGISTRY.architectures)
    monkeypatch.setattr(_registry, "_REGISTRY", fresh)
    dist = tmp_path / "fake_mlsim_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-mlsim-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mlsim.architectures]\n"
        "fakenet = fake_mlsim_plugin_net:FakeNet\n"
        "brokennet = fake_mlsim_plugin_broken:Net\n"
        "lazynet = fake_mlsim_plugin_net:NotRegistered\n"
    )
    (tmp_path / "fake_mlsim_plugin_net.py").write_text(
        textwrap.dedent(
            '''
            """An outside package's architecture."""
            import torch
            from mlsim.models import AtomicModel, Option, register_architecture
            from mlsim.models.blocks import CosineCutoff, pair_vectors, pairs_within

            @register_architecture("fakenet", hyperparameters={"cutoff": Option("cutoff, A", gt=0)})
            class FakeNet(AtomicModel):
                """Coordination number: the sum of cutoff weights over neighbours."""

                def __init__(self, elements, self_energies=None, energy_scale=1.0, cutoff: float = 3.0):
                    super().__init__(elements, self_energies, energy_scale)
                    self.cutoff = float(cutoff)
                    self.fcut = CosineCutoff(cutoff)

                def atomic_outputs_from_pairs(self, species, positions, cell, pbc, batch, i, j, shifts):
                    i, j, shifts = pairs_within(positions, cell, batch, i, j, shifts, self.cutoff)
                    vec = pair_vectors(positions, cell, batch, i, j, shifts)
                    w = self.fcut(torch.linalg.vector_norm(vec, dim=1))
                    out = torch.zeros(species.shape[0], dtype=positions.dtype)
                    return out.index_add(0, i, w).index_add(0, j, w)

            class NotRegistered(torch.nn.Module):
                """Forgot the decorator."""
            '''
        )
    )
    (tmp_path / "fake_mlsim_plugin_broken.py").write_text("import mlsim_no_such_dependency\n")
    for name in ("fake_mlsim_plugin_net", "fake_mlsim_plugin_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_plugin_is_found_and_imported_on_first_lookup(plugin_dir, tmp_path) -> None:
    """An installed distribution's `mlsim.architectures` entry point: listed without importing
    it, imported by the first lookup, then built, scripted and accepted by the config."""
    assert {"fakenet", "brokennet", "lazynet", "painn"} <= set(architectures())
    assert "fake_mlsim_plugin_net" not in sys.modules  # listed, not imported
    model = build_model({"architecture": "FakeNet", "elements": [1, 8], "self_energies": {8: -2.0}})
    assert type(model).__name__ == "FakeNet" and "fake_mlsim_plugin_net" in sys.modules
    assert get_architecture("fakenet").defaults() == {"cutoff": 3.0}
    # Water: O has two neighbours (1 A apart), each H one, plus the H-H pair at 1.6 A.
    numbers = torch.tensor([8, 1, 1])
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-0.28, 0.96, 0.0]])
    args = (numbers, pos, torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool))
    energy = torch.jit.script(model)(*args, torch.zeros(3, dtype=torch.long))
    assert energy.shape == (1,) and torch.isfinite(energy).all() and energy.item() > -2.0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: d.extxyz\nmodel: {architecture: fakenet, hyperparameters: {cutoff: 0}}\n")
    with pytest.raises(ValueError, match="model.hyperparameters.cutoff = 0 is invalid"):
        load_config(cfg)


def test_broken_plugins_give_errors_naming_them(plugin_dir) -> None:
    """A plug-in that fails to import, or does not register its name, is named in the error;
    the built-in architectures keep working."""
    with pytest.raises(
        ValueError,
        match=r"architecture plug-in 'brokennet' \(entry point 'brokennet = "
        r"fake_mlsim_plugin_broken:Net' in group 'mlsim.architectures' of fake-mlsim-plugin "
        r"0.1\) failed to load: ModuleNotFoundError: No module named 'mlsim_no_such_dependency'",
    ):
        build_model({"architecture": "brokennet", "elements": [1]})
    with pytest.raises(
        ValueError,
        match=r"'lazynet' .* did not register an architecture named 'lazynet'; decorate "
        r"NotRegistered with @mlsim.models.register_architecture\('lazynet'",
    ):
        get_architecture("lazynet")
    assert type(build_model({"architecture": "painn", "elements": [1]})).__name__ == "PaiNNModel"
