"""Soft Actor-Critic with a learned temperature, plus RLPD's options (LayerNorm, ensembles, UTD, demos)."""

from distrl.algos.sac.builder import SACPolicy, make_learner, make_policy
from distrl.algos.sac.config import SACConfig
from distrl.algos.sac.learning import (
    SACLearner,
    actor_loss,
    bc_loss,
    critic_loss,
    soft_q_target,
    temperature_loss,
)
from distrl.algos.sac.networks import CriticEnsemble, TanhGaussianActor

__all__ = [
    "CriticEnsemble",
    "SACConfig",
    "SACLearner",
    "SACPolicy",
    "TanhGaussianActor",
    "actor_loss",
    "bc_loss",
    "critic_loss",
    "make_learner",
    "make_policy",
    "soft_q_target",
    "temperature_loss",
]
