"""Committee uncertainty through `mlsim evaluate`: calibration numbers, CSV columns and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlsim.cli import main
from mlsim.data import Structure, write
from mlsim.models import build_model, save_model
from mlsim.models._uncertainty import committee_properties


def _labelled(n: int) -> list[Structure]:
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(2)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]], dtype=float)
    out = []
    for _ in range(n):
        s = Structure([29] * 4, base + rng.normal(0, 0.12, base.shape))
        atoms = s.to_atoms()
        atoms.calc = EMT()
        out.append(
            Structure(s.numbers, s.positions, energy=atoms.get_potential_energy(),
                      forces=atoms.get_forces())
        )  # fmt: skip
    return out


def _committee(path, members: int = 3):
    member = {
        "architecture": "painn",
        "elements": [29],
        "self_energies": {"29": -0.5},
        "hyperparameters": {"features": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": 4.0},
    }
    spec = {"architecture": "ensemble", "members": [member] * members}
    torch.manual_seed(0)
    model = build_model(spec)
    save_model(model, path, spec)
    return model, spec


def test_evaluate_reports_committee_calibration_csv_and_plot(tmp_path, capsys):
    structures = _labelled(12)
    write(tmp_path / "data.extxyz", structures)
    model, _ = _committee(tmp_path / "committee.pt")
    rc = main([
        "evaluate", str(tmp_path / "committee.pt"), str(tmp_path / "data.extxyz"), "--json",
        "--no-progress", "--uncertainty-csv", str(tmp_path / "u.csv"),
        "--calibration-plot", str(tmp_path / "cal.png"),
    ])  # fmt: skip
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    cal = metrics["uncertainty"]["calibration"]
    assert cal["n_atoms"] == 48 and cal["scale"] > 0 and -1 <= cal["spearman"] <= 1
    rows = (tmp_path / "u.csv").read_text().splitlines()
    assert rows[0].startswith("# units: eV") and len(rows) == 2 + 12
    header = rows[1].split(",")
    first = dict(zip(header, map(float, rows[2].split(",")), strict=True))
    # The CSV's spread and error for structure 0 are the committee's own, computed directly.
    s = structures[0]
    out = committee_properties(
        model.eval(), torch.tensor(s.numbers), torch.tensor(s.positions, dtype=torch.float32),
        torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool), torch.zeros(4, dtype=torch.long),
    )  # fmt: skip
    assert first["max_force_std"] == pytest.approx(float(out["forces_std"].max()), rel=1e-4)
    err = np.linalg.norm(s.forces - out["forces"].double().numpy(), axis=1).max()
    assert first["max_force_error"] == pytest.approx(err, rel=1e-4)
    assert first["energy_error"] == pytest.approx(float(out["energy"][0]) - s.energy, abs=1e-4)
    assert (tmp_path / "cal.png").stat().st_size > 1000


def test_evaluate_uncertainty_options_need_a_committee(tmp_path, capsys):
    write(tmp_path / "data.extxyz", _labelled(3))
    member = {
        "architecture": "painn",
        "elements": [29],
        "hyperparameters": {"features": 8, "num_interactions": 1, "cutoff": 4.0},
    }
    save_model(build_model(member), tmp_path / "single.pt", member)
    rc = main(["evaluate", str(tmp_path / "single.pt"), str(tmp_path / "data.extxyz"),
               "--uncertainty-csv", str(tmp_path / "u.csv"), "--no-progress"])  # fmt: skip
    assert rc == 1
    assert "not a committee" in capsys.readouterr().err
    assert not (tmp_path / "u.csv").exists()
