"""DSRL (Wagenmaker et al. 2025): steer a frozen diffusion policy through its latent noise.

Variants: `na` (noise aliasing, the default) and `sac`. The base policy comes from
`distrl pretrain diffusion` (`distrl.algos.diffusion`).
"""

from distrl.algos.dsrl.builder import DSRLPolicy, build_learner, check_base, make_learner, make_policy
from distrl.algos.dsrl.config import DSRLConfig
from distrl.algos.dsrl.learning import (
    BASE_PARAMS,
    DSRLLearner,
    actor_loss,
    critic_loss,
    distill_loss,
    dsrl_fields,
    td_target,
)
from distrl.algos.dsrl.networks import LatentActor, QEnsemble

__all__ = [
    "BASE_PARAMS",
    "DSRLConfig",
    "DSRLLearner",
    "DSRLPolicy",
    "LatentActor",
    "QEnsemble",
    "actor_loss",
    "build_learner",
    "check_base",
    "critic_loss",
    "distill_loss",
    "dsrl_fields",
    "make_learner",
    "make_policy",
    "td_target",
]
