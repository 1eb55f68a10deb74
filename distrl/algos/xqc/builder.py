"""How XQC's pieces are wired: networks from the spec and config, the learner, and the actors' policy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distrl.algos.base import POLICY_PARAMS, BasePolicy, PolicyStep, SpaceSpec, check_param_tensors
from distrl.algos.xqc.config import XQCConfig
from distrl.algos.xqc.learning import RETURN_FIELD, XQCLearner, policy_tensors
from distrl.algos.xqc.networks import (
    BatchNormTrunk,
    CategoricalCriticEnsemble,
    GaussianHead,
    StationaryHead,
    XQCActor,
)


def make_actor(spec: SpaceSpec, config: XQCConfig) -> XQCActor:
    trunk = BatchNormTrunk(spec.obs_dim, config.actor_hidden, config.bn_momentum, config.bn_eps)
    if config.stationary_policy:
        head = StationaryHead(
            trunk.out_dim, spec.action_dim, config.feature_dim, config.prior_std, config.std_rank
        )
    else:
        head = GaussianHead(trunk.out_dim, spec.action_dim, config.log_std_min, config.log_std_max)
    actor = XQCActor(trunk, head)
    if config.weight_norm:
        actor.normalize_()
    return actor


def make_critic(spec: SpaceSpec, config: XQCConfig) -> CategoricalCriticEnsemble:
    return CategoricalCriticEnsemble(
        spec.obs_dim,
        spec.action_dim,
        config.critic_hidden,
        config.num_critics,
        config.num_bins,
        config.v_min,
        config.v_max,
        config.bn_momentum,
        config.bn_eps,
    )


def make_learner(spec: SpaceSpec, config: XQCConfig, device: torch.device) -> XQCLearner:
    """An XQC learner on `device`; `config.seed` (when set) fixes the initial weights."""
    with torch.random.fork_rng(devices=[]):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        actor, critic = make_actor(spec, config), make_critic(spec, config)
    return XQCLearner(spec, config, actor, critic, device, make_policy=lambda: make_policy(spec, config))


def make_policy(spec: SpaceSpec, config: XQCConfig) -> XQCPolicy:
    return XQCPolicy(spec, make_actor(spec, config), config)


class XQCPolicy(BasePolicy):
    """The actor network on the CPU in eval mode (BatchNorm with the learner's running statistics).

    With reward scaling it also keeps each env's discounted return G and stores G_(t-1) with every
    transition (`return_so_far`), from which the learner tracks the scale of the returns.
    """

    def __init__(self, spec: SpaceSpec, actor: XQCActor, config: XQCConfig) -> None:
        super().__init__(spec)
        self.actor = actor.cpu().eval().requires_grad_(False)
        self.config = config
        self.gamma = config.resolved_gamma(spec.max_episode_steps)
        self._shapes = {name: tuple(t.shape) for name, t in policy_tensors(self.actor).items()}
        self._returns: np.ndarray | None = None

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        array, _ = self.check_obs(obs)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(array))
            action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return PolicyStep(action.numpy(), self._extras(len(array)))

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        step = super().warmup(obs, rng)
        return PolicyStep(step.env_actions, self._extras(len(obs)))

    def reset(self, mask: np.ndarray) -> None:
        if self._returns is None or len(self._returns) != len(mask):
            self._returns = np.zeros(len(mask), dtype=np.float32)
        self._returns[np.asarray(mask, dtype=bool)] = 0.0

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        if self._returns is None:
            self._returns = np.zeros(len(reward), dtype=np.float32)
        self._returns = (self.gamma * self._returns + reward).astype(np.float32)
        self._returns[np.asarray(ended, dtype=bool)] = 0.0

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        if param_set != POLICY_PARAMS:
            raise ValueError(
                f"XQC's policy loads only the {POLICY_PARAMS!r} parameter set, not {param_set!r}"
            )
        checked = check_param_tensors("XQC policy parameters", tensors, self._shapes)
        self.actor.load_state_dict(checked, strict=False)

    def _extras(self, n: int) -> dict[str, np.ndarray]:
        if not self.config.reward_scaling:
            return {}
        if self._returns is None or len(self._returns) != n:
            self._returns = np.zeros(n, dtype=np.float32)
        return {RETURN_FIELD: self._returns.copy()}
