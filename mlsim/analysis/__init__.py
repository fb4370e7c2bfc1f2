"""Trajectory analysis: invariant features, TICA/VAMPnet, MSMs, state classifier, forecasters, plots.

Featurisation uses mdtraj; TICA, k-means, MSMs, implied timescales, the Chapman-Kolmogorov test,
PCCA+ and VAMPnet training use deeptime. Heavy dependencies are imported inside functions.
"""

from mlsim.analysis._attribution import integrated_gradients, state_attributions
from mlsim.analysis._classifier import StateClassifier, split_by_trajectory, train_state_classifier
from mlsim.analysis._features import (
    check_trajectory,
    contact_map,
    dihedral_features,
    featurize,
    heavy_atom_distances,
    load_trajectories,
    pairwise_distances,
    phi_psi_angles,
)
from mlsim.analysis._forecast import (
    ForecastScores,
    LSTMForecaster,
    compare_forecasts,
    make_windows,
    score_probabilities,
    train_lstm_forecaster,
)
from mlsim.analysis._kinetics import (
    ChapmanKolmogorov,
    MSMResult,
    bootstrap_msm,
    bootstrap_observable_populations,
    chapman_kolmogorov,
    estimate_msm,
    implied_timescales,
    kmeans_microstates,
    microstate_membership,
    observable_populations,
    tica_projection,
)
from mlsim.analysis._pipeline import AnalysisConfig, analyze, analyze_trajectories, choose_lag
from mlsim.analysis._plots import (
    free_energy_2d,
    plot_ck_test,
    plot_implied_timescales,
    plot_ramachandran,
    plot_tica,
)
from mlsim.analysis._states import ALANINE_STATES, alanine_state_labels, state_populations
from mlsim.analysis._synthetic import markov_chain, set_phi_psi, synthetic_alanine_trajectory
from mlsim.analysis._timestep import file_frame_interval_ps, resolve_frame_interval
from mlsim.analysis._vampnet import VAMPNetResult, train_vampnet, vamp2_score

__all__ = [
    "ALANINE_STATES",
    "AnalysisConfig",
    "ChapmanKolmogorov",
    "ForecastScores",
    "LSTMForecaster",
    "MSMResult",
    "StateClassifier",
    "VAMPNetResult",
    "alanine_state_labels",
    "analyze",
    "analyze_trajectories",
    "bootstrap_msm",
    "bootstrap_observable_populations",
    "chapman_kolmogorov",
    "check_trajectory",
    "choose_lag",
    "compare_forecasts",
    "contact_map",
    "dihedral_features",
    "estimate_msm",
    "featurize",
    "file_frame_interval_ps",
    "free_energy_2d",
    "heavy_atom_distances",
    "implied_timescales",
    "integrated_gradients",
    "kmeans_microstates",
    "load_trajectories",
    "make_windows",
    "markov_chain",
    "microstate_membership",
    "observable_populations",
    "pairwise_distances",
    "phi_psi_angles",
    "plot_ck_test",
    "plot_implied_timescales",
    "plot_ramachandran",
    "plot_tica",
    "resolve_frame_interval",
    "score_probabilities",
    "set_phi_psi",
    "split_by_trajectory",
    "state_attributions",
    "state_populations",
    "synthetic_alanine_trajectory",
    "tica_projection",
    "train_lstm_forecaster",
    "train_state_classifier",
    "train_vampnet",
    "vamp2_score",
]
