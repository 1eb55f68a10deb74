"""How DSRL's pieces are wired: the base policy from its file, the networks, the learner, and the
actors' policy (latent actor + the frozen base, which arrives once as the "base" parameter set)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distrl.algos.base import POLICY_PARAMS, BasePolicy, PolicyStep, SpaceSpec, check_param_tensors
from distrl.algos.diffusion import DiffusionModel, DiffusionModelError, DiffusionSpec, load_model
from distrl.algos.dsrl.config import DSRLConfig
from distrl.algos.dsrl.learning import BASE_PARAMS, DSRLLearner
from distrl.algos.dsrl.networks import LatentActor, QEnsemble


def check_base(base_spec: DiffusionSpec, spec: SpaceSpec, config: DSRLConfig, where: str) -> None:
    """The base policy must fit the env and the config's chunk; the error names every mismatch."""
    problems = [
        f"{name} {have} (the {what} has {want})"
        for name, have, want, what in (
            ("obs_dim", base_spec.obs_dim, spec.obs_dim, "env"),
            ("action_dim", base_spec.action_dim, spec.action_dim, "env"),
            ("chunk", base_spec.chunk, config.chunk, "config's algo.chunk"),
        )
        if have != want
    ]
    if problems:
        raise DiffusionModelError(f"{where} does not fit this run: " + "; ".join(problems))


def make_actor(spec: SpaceSpec, config: DSRLConfig) -> LatentActor:
    return LatentActor(
        spec.obs_dim,
        config.chunk * spec.action_dim,
        config.hidden_sizes,
        config.layernorm,
        config.activation,
        config.latent_bound,
        config.log_std_min,
        config.log_std_max,
    )


def make_critic(obs_dim: int, in_dim: int, config: DSRLConfig) -> QEnsemble:
    return QEnsemble(
        obs_dim, in_dim, config.hidden_sizes, config.num_critics, config.layernorm, config.activation
    )


def build_learner(
    spec: SpaceSpec, config: DSRLConfig, base: DiffusionModel, device: torch.device
) -> DSRLLearner:
    """A DSRL learner around a given base policy (`make_learner` reads it from `config.base_policy`)."""
    check_base(base.spec, spec, config, "the base diffusion policy")
    latent_dim = config.chunk * spec.action_dim
    with torch.random.fork_rng(devices=[]):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        actor = make_actor(spec, config)
        critic = make_critic(spec.obs_dim, latent_dim, config)
        noise_critic = make_critic(spec.obs_dim, latent_dim, config) if config.variant == "na" else None
    return DSRLLearner(
        spec, config, base, actor, critic, noise_critic, device, make_policy=lambda: make_policy(spec, config)
    )


def make_learner(spec: SpaceSpec, config: DSRLConfig, device: torch.device) -> DSRLLearner:
    if config.base_policy is None:
        raise DiffusionModelError(
            "DSRL needs algo.base_policy: a directory written by `distrl pretrain diffusion --out DIR`"
        )
    return build_learner(spec, config, load_model(config.base_policy), device)


def make_policy(spec: SpaceSpec, config: DSRLConfig) -> DSRLPolicy:
    return DSRLPolicy(spec, config)


class DSRLPolicy(BasePolicy):
    """What an actor holds: the latent actor and the frozen base. Each decision picks w and
    executes the chunk pi_dp(s, w) open loop; warm-up picks w ~ N(0, I) (the base policy as is).

    DSRL-NA stores the executed chunk as the transition's action, DSRL-SAC the latent.
    """

    param_sets = (POLICY_PARAMS, BASE_PARAMS)
    required_params = (BASE_PARAMS,)

    def __init__(self, spec: SpaceSpec, config: DSRLConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.actor = make_actor(spec, config).eval().requires_grad_(False)
        self.base: DiffusionModel | None = None
        self._shapes = {name: tuple(t.shape) for name, t in self.actor.state_dict().items()}

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        array, _ = self.check_obs(obs)
        x = torch.from_numpy(np.ascontiguousarray(array))
        with torch.inference_mode():
            w = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return self._step(x, w)

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        array, _ = self.check_obs(obs)
        m = self.config.latent_bound
        w = np.clip(rng.standard_normal((len(array), self.config.chunk * self.space.action_dim)), -m, m)
        return self._step(
            torch.from_numpy(np.ascontiguousarray(array)), torch.from_numpy(w.astype(np.float32))
        )

    def chunk(self, obs: np.ndarray, w: np.ndarray) -> np.ndarray:
        """pi_dp(obs, w) as numpy [B, chunk, action_dim] (the base policy must have arrived)."""
        array, _ = self.check_obs(obs)
        step = self._step(
            torch.from_numpy(np.ascontiguousarray(array)), torch.as_tensor(np.asarray(w, np.float32))
        )
        return step.env_actions

    def _step(self, obs: torch.Tensor, w: torch.Tensor) -> PolicyStep:
        if self.base is None:
            raise RuntimeError(
                f"DSRL's policy has no base diffusion policy yet (the {BASE_PARAMS!r} parameter set)"
            )
        with torch.inference_mode():
            chunk = self.base.denoise(obs, w).numpy()
        extras = {"action": w.numpy().astype(np.float32)} if self.config.variant == "sac" else {}
        return PolicyStep(chunk, extras)

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        if param_set == BASE_PARAMS:
            base = DiffusionModel.from_tensors(tensors, what="DSRL base policy parameters")
            check_base(base.spec, self.space, self.config, "the base policy sent by the learner")
            self.base = base
            return
        if param_set != POLICY_PARAMS:
            raise ValueError(f"DSRL's policy loads {POLICY_PARAMS!r} and {BASE_PARAMS!r}, not {param_set!r}")
        self.actor.load_state_dict(check_param_tensors("DSRL policy parameters", tensors, self._shapes))
