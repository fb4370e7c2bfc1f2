"""Train an mlsim potential for aspirin on GFN2-xTB labels: the ligand of the ML/MM density run.

No aspirin data set ships with mlsim, so this builds one the way a user with a new molecule would:
1. geometries: GAFF2 (AM1-BCC, via AmberTools) Langevin MD of aspirin in vacuum at 300 K and
   600 K in OpenMM (`mlsim.learn`'s classical initial sampler; milliseconds per step);
2. labels: GFN2-xTB energies and forces (tblite), about 0.1 s per frame;
3. model: PaiNN of the shipped size (train_aspirin.yaml), a fixed CPU-time budget.
Everything goes to runs/aspirin_xtb/; rerunning skips finished steps and resumes training. The
model it made (test force MAE 22.3 meV/A against xTB) ships as examples/mlmm/aspirin_xtb_model.pt.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python examples/mlmm/make_aspirin_model.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "runs" / "aspirin_xtb"
SMILES = "CC(=O)Oc1ccccc1C(=O)O"
SPLITS = {"train": 0, "val": 1, "test": 2}  # MD seed per split
FRAMES = {"train": 400, "val": 75, "test": 75}  # per temperature
TEMPERATURES = [300.0, 600.0]


def start_sdf() -> Path:
    """An RDKit (ETKDG + MMFF94) conformer of aspirin with hydrogens."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from mlsim._fileio import write_text

    path = OUT / "aspirin.sdf"
    if path.exists():
        return path
    mol = Chem.AddHs(Chem.MolFromSmiles(SMILES))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    return write_text(path, Chem.MolToMolBlock(mol))


def geometries(split: str) -> Path:
    """GAFF2 vacuum MD frames of one split (cached as extxyz)."""
    from mlsim.data import write
    from mlsim.learn._initial import initial_samples

    path = OUT / f"{split}_geometries.extxyz.gz"
    if path.exists():
        return path
    work = OUT / f"gaff2_{split}"
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "forcefield": "gaff2",
        "temperatures": TEMPERATURES,
        "frames": FRAMES[split],
        "every": 400,  # 0.2 ps apart at 0.5 fs
        "equilibration_fs": 20_000.0,
    }
    frames = initial_samples(settings, start_sdf(), [], work, SPLITS[split], progress=True)
    write(path, frames)
    return path


def main() -> int:
    """Geometries, xTB labels, then `mlsim train train_aspirin.yaml` (resumable)."""
    from mlsim.data import label
    from mlsim.train import load_config, train

    OUT.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        label(geometries(split), OUT / f"{split}_xtb.extxyz.gz", "xtb", threads=1)
    cfg = load_config(HERE / "train_aspirin.yaml")
    if not (OUT / "model" / "model.pt").exists():
        summary = train(cfg, resume=(OUT / "model" / "checkpoint.pt").exists())
        print({split: summary[split]["force_mae_meV_per_A"] for split in ("val", "test")})
    print(f"model: {OUT / 'model' / 'model.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
