"""How SAC's pieces are wired: networks from the spec and config, the learner, and the actors' policy.

The same builder serves a single process and a distributed run: learners call `make_learner`,
actors call `make_policy` and then feed it the "policy" parameter set the learner publishes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distrl.algos.base import POLICY_PARAMS, BasePolicy, PolicyStep, SpaceSpec, check_param_tensors
from distrl.algos.sac.config import SACConfig
from distrl.algos.sac.learning import SACLearner
from distrl.algos.sac.networks import CriticEnsemble, TanhGaussianActor


def make_actor(spec: SpaceSpec, config: SACConfig) -> TanhGaussianActor:
    return TanhGaussianActor(
        spec.obs_dim, spec.action_dim, config.hidden_sizes, config.log_std_min, config.log_std_max
    )


def make_critic(spec: SpaceSpec, config: SACConfig) -> CriticEnsemble:
    return CriticEnsemble(
        spec.obs_dim, spec.action_dim, config.hidden_sizes, config.num_critics, config.critic_layernorm
    )


def make_learner(spec: SpaceSpec, config: SACConfig, device: torch.device) -> SACLearner:
    """A SAC learner on `device`; `config.seed` (when set) fixes the initial weights."""
    with torch.random.fork_rng(devices=[]):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        actor, critic = make_actor(spec, config), make_critic(spec, config)
    return SACLearner(spec, config, actor, critic, device, make_policy=lambda: make_policy(spec, config))


def make_policy(spec: SpaceSpec, config: SACConfig) -> SACPolicy:
    return SACPolicy(spec, make_actor(spec, config), config)


class SACPolicy(BasePolicy):
    """What an actor holds: the tanh-Gaussian actor on the CPU, numpy in and out, inference only."""

    def __init__(self, spec: SpaceSpec, actor: TanhGaussianActor, config: SACConfig) -> None:
        super().__init__(spec)
        self.spec = spec
        self.actor = actor.cpu().eval().requires_grad_(False)
        self.config = config
        self._shapes = {name: tuple(t.shape) for name, t in self.actor.state_dict().items()}

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        """[B, obs_dim] observations -> float32 actions [B, action_dim] (a [obs_dim] obs gives B = 1)."""
        array, _ = self.check_obs(obs)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(array))
            action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return PolicyStep(action.numpy())

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        """Copy in weights from `SACLearner.params("policy")`; bad names, shapes or values raise."""
        if param_set != POLICY_PARAMS:
            raise ValueError(
                f"SAC's policy loads only the {POLICY_PARAMS!r} parameter set, not {param_set!r}"
            )
        # Checked first, copied after: a refused state leaves the old weights whole.
        self.actor.load_state_dict(check_param_tensors("SAC policy parameters", tensors, self._shapes))
