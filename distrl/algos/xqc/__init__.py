"""XQC: BatchNorm, weight-normalised, distributional critics (Palenicek et al. 2026); XQCfD learns
from demonstrations with CSIL's stationary prior policy."""

from distrl.algos.xqc.builder import XQCPolicy, make_learner, make_policy
from distrl.algos.xqc.config import XQCConfig, XQCfDConfig
from distrl.algos.xqc.learning import (
    RETURN_FIELD,
    ReturnScale,
    XQCLearner,
    categorical_loss,
    categorical_projection,
    categorical_target,
    xqc_fields,
)
from distrl.algos.xqc.networks import CategoricalCriticEnsemble, StationaryHead, XQCActor

__all__ = [
    "RETURN_FIELD",
    "CategoricalCriticEnsemble",
    "ReturnScale",
    "StationaryHead",
    "XQCActor",
    "XQCConfig",
    "XQCLearner",
    "XQCPolicy",
    "XQCfDConfig",
    "categorical_loss",
    "categorical_projection",
    "categorical_target",
    "make_learner",
    "make_policy",
    "xqc_fields",
]
