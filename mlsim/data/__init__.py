"""Labelled structures: containers, file formats, sampling and reference labelling."""

from mlsim.data._structure import Structure

__all__ = ["Structure"]
