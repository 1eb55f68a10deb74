"""How SAC's pieces are wired: networks from the spec and config, the learner, and the actors' policy.

The same builder serves a single process and a distributed run: learners call `make_learner`,
actors call `make_policy` and then feed it `policy_state()` dicts that arrive from the learner.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distrl.algos.base import SpaceSpec
from distrl.algos.sac.config import SACConfig
from distrl.algos.sac.learning import SACLearner
from distrl.algos.sac.networks import Actor, CriticEnsemble


def make_actor(spec: SpaceSpec, config: SACConfig) -> Actor:
    return Actor(spec.obs_dim, spec.action_dim, config.hidden_sizes, config.log_std_min, config.log_std_max)


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


class SACPolicy:
    """What an actor holds: the tanh-Gaussian actor on the CPU, numpy in and out, inference only."""

    def __init__(self, spec: SpaceSpec, actor: Actor, config: SACConfig) -> None:
        self.spec = spec
        self.actor = actor.cpu().eval().requires_grad_(False)
        self.config = config
        self._shapes = {name: tuple(t.shape) for name, t in self.actor.state_dict().items()}

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """[B, obs_dim] (or [obs_dim]) observations -> float32 actions [B, action_dim] (or [action_dim])."""
        array = np.asarray(obs, dtype=np.float32)
        if array.ndim not in (1, 2) or array.shape[-1] != self.spec.obs_dim:
            raise ValueError(
                f"obs has shape {array.shape}, expected [B, {self.spec.obs_dim}] or [{self.spec.obs_dim}]"
            )
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(array))
            action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return action.numpy()

    def load_policy_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy in weights from `SACLearner.policy_state()`; bad names, shapes or non-finite values raise."""
        names, expected = set(state), set(self._shapes)
        if names != expected:
            raise ValueError(
                f"policy state does not match the SAC actor: missing {sorted(expected - names)}, "
                f"unexpected {sorted(names - expected)}"
            )
        arrays = {}
        for name, value in state.items():
            array = np.asarray(value)
            if array.shape != self._shapes[name]:
                raise ValueError(
                    f"policy state {name!r} has shape {array.shape}, expected {self._shapes[name]}"
                )
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise ValueError(f"policy state {name!r} must hold finite floats (dtype {array.dtype})")
            arrays[name] = torch.tensor(array, dtype=torch.float32)
        # Checked first, copied after: a refused state leaves the old weights whole.
        self.actor.load_state_dict(arrays)
