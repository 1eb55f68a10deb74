"""How SAC-Lag's pieces are wired: SAC's actor and critics plus a twin cost critic, the learner,
and the actors' policy (SAC's own: constraints change the update, not how the policy acts)."""

from __future__ import annotations

import torch

from distrl.algos.base import SpaceSpec, TransitionField, base_fields
from distrl.algos.sac.builder import SACPolicy, make_actor, make_critic
from distrl.algos.sac.networks import CriticEnsemble
from distrl.algos.sac_lag.config import SACLagConfig
from distrl.algos.sac_lag.learning import COST_FIELD, NUM_COST_CRITICS, SACLagLearner, missing_cost_error


def sac_lag_fields(spec: SpaceSpec, config: SACLagConfig) -> tuple[TransitionField, ...]:
    """SAC's fields with the env's `cost` signal required; demo stores recorded without costs
    load with cost 0 (its fill value)."""
    if COST_FIELD not in spec.signals:
        raise missing_cost_error(spec)
    return tuple(
        TransitionField(COST_FIELD, "float32", fill=0.0) if field.name == COST_FIELD else field
        for field in base_fields(spec)
    )


def make_cost_critic(spec: SpaceSpec, config: SACLagConfig) -> CriticEnsemble:
    return CriticEnsemble(
        spec.obs_dim,
        spec.action_dim,
        config.resolved_cost_hidden(),
        NUM_COST_CRITICS,
        config.critic_layernorm,
    )


def make_learner(spec: SpaceSpec, config: SACLagConfig, device: torch.device) -> SACLagLearner:
    """A SAC-Lag learner on `device`; `config.seed` (when set) fixes the initial weights."""
    if COST_FIELD not in spec.signals:
        raise missing_cost_error(spec)
    with torch.random.fork_rng(devices=[]):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        actor, critic = make_actor(spec, config), make_critic(spec, config)
        cost_critic = make_cost_critic(spec, config)
    return SACLagLearner(
        spec, config, actor, critic, cost_critic, device, make_policy=lambda: make_policy(spec, config)
    )


def make_policy(spec: SpaceSpec, config: SACLagConfig) -> SACPolicy:
    """SAC's policy: the same tanh-Gaussian actor (refused, like the learner, without a cost signal)."""
    if COST_FIELD not in spec.signals:
        raise missing_cost_error(spec)
    return SACPolicy(spec, make_actor(spec, config), config)
