"""SAC-Lagrangian: SAC under an episode cost limit, with a cost critic and a learned Lagrange multiplier."""

from distrl.algos.sac_lag.builder import make_cost_critic, make_learner, make_policy, sac_lag_fields
from distrl.algos.sac_lag.config import DEFAULT_EPISODE_STEPS, SACLagConfig
from distrl.algos.sac_lag.learning import (
    SACLagLearner,
    cost_columns,
    cost_td_target,
    lagrangian_actor_loss,
    lagrangian_loss,
    reduce_cost,
)

__all__ = [
    "DEFAULT_EPISODE_STEPS",
    "SACLagConfig",
    "SACLagLearner",
    "cost_columns",
    "cost_td_target",
    "lagrangian_actor_loss",
    "lagrangian_loss",
    "make_cost_critic",
    "make_learner",
    "make_policy",
    "reduce_cost",
    "sac_lag_fields",
]
