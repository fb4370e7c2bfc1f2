"""Labelled structures: containers, file formats, sampling and reference labelling.

    ds = mlsim.data.read("examples/ethanol/ethanol_train_dft.extxyz.gz")   # Dataset, validated
    train, val = ds.split(0.9, 0.1, seed=0)                                 # deterministic
    e0 = ds.fit_self_energies()                                             # {Z: eV}
    frames = mlsim.data.sample(start, TBLite(method="GFN2-xTB"), [300, 600], n_frames=100)
    mlsim.data.label(frames, "out.extxyz.gz", "dft")                        # resumable

Everything is in ASE units (Angstrom, eV, eV/A); npz files take explicit units.
"""

from mlsim.data._backends import make_calculator, make_labeller
from mlsim.data._dataset import Dataset
from mlsim.data._io import read, write
from mlsim.data._label import label
from mlsim.data._sample import sample, sample_trajectory
from mlsim.data._shipped import ethanol_path
from mlsim.data._structure import Structure

__all__ = [
    "Dataset",
    "Structure",
    "ethanol_path",
    "label",
    "make_calculator",
    "make_labeller",
    "read",
    "sample",
    "sample_trajectory",
    "write",
]
