"""Safe exploration: KBSE, a kernel barrier shield usable with any single-step algorithm.

    algo:
      name: sac
      shield: {fit_every: 2000}     # see ShieldConfig

The learner keeps transitions, fits a barrier B by a linear program over a conditional mean
embedding of the dynamics (`fitting`, `barrier`, `cme`), and publishes it as the "shield"
parameter set; each actor checks E[B(x') | x, a] <= B(x) + c before executing an action and
replaces one that fails (`shield`, `wrapper`).
"""

from distrl.algos.safety.barrier import BarrierFit, BarrierFitError, KernelBarrier, fit_barrier
from distrl.algos.safety.cme import ConditionalMeanEmbedding
from distrl.algos.safety.config import ShieldConfig
from distrl.algos.safety.fitting import TransitionReservoir, fit_shield
from distrl.algos.safety.shield import FilterResult, Shield
from distrl.algos.safety.wrapper import (
    SHIELD_PARAMS,
    ShieldedLearner,
    ShieldedPolicy,
    ShieldError,
    check_shieldable,
    shield_fields,
)

__all__ = [
    "SHIELD_PARAMS",
    "BarrierFit",
    "BarrierFitError",
    "ConditionalMeanEmbedding",
    "FilterResult",
    "KernelBarrier",
    "Shield",
    "ShieldConfig",
    "ShieldError",
    "ShieldedLearner",
    "ShieldedPolicy",
    "TransitionReservoir",
    "check_shieldable",
    "fit_barrier",
    "fit_shield",
    "shield_fields",
]
