"""Labelled structures: containers, file formats, sampling and reference labelling."""

from mlsim.data._backends import LabelFailure, make_labeller
from mlsim.data._dataset import Dataset
from mlsim.data._io import read, write
from mlsim.data._label import LabelSummary, label
from mlsim.data._sample import sample, sample_trajectory
from mlsim.data._shipped import ethanol_path
from mlsim.data._structure import Structure
from mlsim.data._validate import validate_structure

__all__ = [
    "Dataset",
    "LabelFailure",
    "LabelSummary",
    "Structure",
    "ethanol_path",
    "label",
    "make_labeller",
    "read",
    "sample",
    "sample_trajectory",
    "validate_structure",
    "write",
]
