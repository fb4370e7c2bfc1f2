"""Stress in training: the strain derivative the loss uses, the stress term, its metrics and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlsim.data import Structure, write
from mlsim.models import build_model, compute_properties, load_model
from mlsim.train import load_config, train
from mlsim.train._batching import collate
from mlsim.train._data import read_structures

torch.set_num_threads(1)


def _cells(n: int, seed: int) -> list[Structure]:
    """Rattled, strained 4-atom fcc Cu/Al cells (a ~3.8 A: smaller than the cutoff) with EMT labels."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
        atoms.numbers = rng.choice([13, 29], size=4)
        strain = np.eye(3) + np.diag(rng.uniform(-0.04, 0.04, 3))
        strain[0, 1] = strain[1, 0] = rng.uniform(-0.03, 0.03)
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=(4, 3))
        atoms.calc = EMT()
        s = Structure.from_atoms(atoms)
        s.energy = atoms.get_potential_energy()
        s.forces = atoms.get_forces()
        s.stress = atoms.get_stress(voigt=False)
        out.append(s)
    return out


def _clusters(n: int, seed: int) -> list[Structure]:
    """Rattled 4-atom Cu/Al clusters (no cell) with EMT energies and forces, no stress."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    out = []
    for _ in range(n):
        atoms = Atoms(
            numbers=rng.choice([13, 29], size=4), positions=base + rng.normal(0, 0.1, (4, 3))
        )
        atoms.calc = EMT()
        out.append(
            Structure(
                atoms.numbers,
                atoms.positions,
                energy=atoms.get_potential_energy(),
                forces=atoms.get_forces(),
            )
        )
    return out


def _model(arch: str) -> torch.nn.Module:
    """A small random model on Cu/Al (float64), with weights large enough for a real stress."""
    torch.manual_seed(0)
    hp = (
        {"features": 8, "num_interactions": 2, "num_rbf": 6, "cutoff": 4.0}
        if arch == "painn"
        else {"hidden": [8], "radial_cutoff": 4.0, "angular_cutoff": 3.0}
    )
    spec = {"architecture": arch, "elements": [13, 29], "hyperparameters": hp}
    return build_model(spec).double()


@pytest.mark.parametrize("arch", ["painn", "ani"])
def test_training_batch_stress_is_the_finite_strain_derivative(arch: str) -> None:
    """In a batch mixing a molecule with periodic cells (one of a single atom, far below the
    cutoff), the stress the loss compares is (1/V) dE/d(strain) by central differences, and the
    strainable cells leave every energy and force as they were."""
    from ase.build import bulk

    model = _model(arch)
    tiny = Structure.from_atoms(bulk("Cu", "fcc", a=2.6))  # 1 atom, primitive cell ~1.84 A edges
    cells = _cells(2, seed=5)
    molecule = Structure(numbers=[29, 13, 29], positions=[[0, 0, 0], [2.4, 0, 0], [0.3, 2.3, 0]])
    structures = [cells[0], molecule, tiny, cells[1]]
    b = collate(structures, torch.float64)
    plain = compute_properties(model, *b.inputs())
    out = compute_properties(model, *b.strain_inputs(), stress=True)
    torch.testing.assert_close(out["energy"], plain["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["forces"], plain["forces"], rtol=0, atol=1e-12)
    h = 1e-5
    for k in (0, 2, 3):  # the periodic ones
        one = collate([structures[k]], torch.float64)
        numbers, pos, cell, pbc, batch = one.inputs()
        volume = abs(float(torch.linalg.det(cell[0])))
        fd = np.zeros((3, 3))
        for a in range(3):
            for c in range(3):
                e = []
                for sign in (1, -1):
                    deform = torch.eye(3, dtype=torch.float64)
                    deform[a, c] += sign * h
                    e.append(model(numbers, pos @ deform, cell @ deform, pbc, batch).item())
                fd[a, c] = (e[0] - e[1]) / (2 * h) / volume
        got = out["stress"][k].detach().numpy()
        assert np.abs(fd).max() > 1e-4  # a real stress, not zeros on both sides
        np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def periodic(tmp_path_factory) -> Path:
    """train.extxyz (32 labelled cells), test.extxyz (8), a molecule-only file and a base config."""
    d = tmp_path_factory.mktemp("stress")
    write(d / "train.extxyz", _cells(32, 0))
    write(d / "test.extxyz", _cells(8, 1))
    cfg = {
        "data": "train.extxyz",
        "test_data": "test.extxyz",
        "seed": 0,
        "n_val": 8,
        "model": {
            "architecture": "painn",
            "hyperparameters": {"features": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": 4.0},
        },
        "energy_weight": 1.0,
        "forces_weight": 10.0,
        "lr": 0.01,
        "batch_size": 4,
        "epochs": 12,
        "ema_decay": 0.5,
        "threads": 1,
        "plots": False,
        "dtype": "float64",
    }
    (d / "base.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _config(d: Path, name: str, **changes) -> Path:
    cfg = yaml.safe_load((d / "base.yaml").read_text())
    cfg.update(changes, output=name)
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_stress_term_lowers_the_stress_error(periodic, capsys) -> None:
    """The same run with stress_weight > 0 predicts EMT's stress better than with 0; the stress
    MAE reaches log.csv, summary.json and `mlsim evaluate` and agrees with a direct computation."""
    from mlsim.cli import main

    without = train(load_config(_config(periodic, "s0")), progress=False)
    with_ = train(load_config(_config(periodic, "s1", stress_weight=3000.0)), progress=False)
    for summary in (without, with_):
        assert summary["val"]["stress_mae_meV_per_A3"] is not None
        assert summary["test"]["stress_mae_meV_per_A3"] is not None
    mae0 = without["test"]["stress_mae_meV_per_A3"]
    mae1 = with_["test"]["stress_mae_meV_per_A3"]
    assert mae1 < 0.6 * mae0  # 3.7 vs 7.6 meV/A^3 when written, (mae0, mae1)
    rows = list(csv.DictReader((periodic / "s1" / "log.csv").open()))
    assert len(rows) == 12
    assert float(rows[-1]["val_stress_mae_meV_per_A3"]) < float(
        rows[0]["val_stress_mae_meV_per_A3"]
    )
    # The metric, recomputed from the model's stress and the labels read back from the file.
    model = load_model(periodic / "s1" / "model.pt")
    test = read_structures(periodic / "test.extxyz")
    b = collate(test, torch.float64)
    pred = compute_properties(model, *b.inputs(), stress=True)["stress"].detach().numpy()
    ref = np.stack([s.stress for s in test])
    direct = 1000 * np.abs(pred - ref).mean()
    assert mae1 == pytest.approx(direct, rel=1e-6)
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(periodic / "s1" / "model.pt"),
                str(periodic / "test.extxyz"),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert got["stress_mae_meV_per_A3"] == pytest.approx(direct, rel=1e-6)
    assert (
        main(
            [
                "evaluate",
                str(periodic / "s1" / "model.pt"),
                str(periodic / "test.extxyz"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "stress MAE" in capsys.readouterr().out


def test_stress_config_errors(periodic, tmp_path) -> None:
    """stress_weight > 0 without stress labels, a negative weight, and a stress label on a
    molecule are refused before training, naming the key or the structure."""
    write(periodic / "molecules.extxyz", _clusters(12, 0))
    with pytest.raises(ValueError, match=r"stress_weight = 1\.0 but none of the .* stress label"):
        train(
            load_config(
                _config(
                    periodic,
                    "e1",
                    data="molecules.extxyz",
                    test_data=None,
                    n_val=2,
                    stress_weight=1.0,
                )
            ),
            progress=False,
        )
    with pytest.raises(ValueError, match="stress_weight"):
        load_config(_config(periodic, "e2", stress_weight=-1.0))
    bad = _clusters(6, 1)
    bad[3].stress = np.eye(3) * 0.01
    write(periodic / "bad.extxyz", bad + _cells(6, 2))
    with pytest.raises(
        ValueError, match="structure 3 carries a stress label but is not fully periodic"
    ):
        train(
            load_config(
                _config(
                    periodic, "e3", data="bad.extxyz", test_data=None, n_val=2, forces_weight=10.0
                )
            ),
            progress=False,
        )
    assert not (periodic / "e3" / "model.pt").exists()
