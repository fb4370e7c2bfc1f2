"""Trajectory analysis: invariant features, TICA/VAMPnet, MSMs, state classifier, forecasters, plots.

Featurisation uses mdtraj; TICA, k-means, MSMs, implied timescales, the Chapman-Kolmogorov test,
PCCA+ and VAMPnet training use deeptime. Heavy dependencies are imported inside functions. The
names below are what an analysis script calls; the building blocks (bootstrap, plots, forecasters,
synthetic trajectories, attributions) stay importable from their private modules.
"""

from mlsim.analysis._classifier import train_state_classifier
from mlsim.analysis._ess import effective_sample_size
from mlsim.analysis._features import featurize, load_trajectories
from mlsim.analysis._kinetics import (
    chapman_kolmogorov,
    estimate_msm,
    implied_timescales,
    kmeans_microstates,
    tica_projection,
)
from mlsim.analysis._pipeline import AnalysisConfig, analyze, analyze_trajectories
from mlsim.analysis._vampnet import train_vampnet

__all__ = [
    "AnalysisConfig",
    "analyze",
    "analyze_trajectories",
    "chapman_kolmogorov",
    "effective_sample_size",
    "estimate_msm",
    "featurize",
    "implied_timescales",
    "kmeans_microstates",
    "load_trajectories",
    "tica_projection",
    "train_state_classifier",
    "train_vampnet",
]
