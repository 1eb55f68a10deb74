"""The DSRL update (Wagenmaker et al. 2025): SAC whose action is the latent noise w of a frozen
diffusion policy, `chunk = pi_dp(s, w)`. The loss functions come first; `DSRLLearner` wires them.

Per update call, for each of utd_ratio minibatches (demo chunks appended, DSRL-NA only):

    DSRL-SAC (transitions store w):
        y    = r + gamma^k (1 - terminated) (min_e Q'_e(s', w') - alpha log pi(w'|s')),   w' ~ pi_W(s')
        L_Q  = 1/2 sum_e mean_b (Q_e(s, w) - y)^2
        L_pi = mean_b alpha log pi(w~|s) - min_e Q_e(s, w~)
    DSRL-NA (noise aliasing; transitions store the executed chunk a):
        y    = r + gamma^k (1 - terminated) (min_e Q'_A,e(s', pi_dp(s', w')) - alpha log pi(w'|s'))
        L_QA = 1/2 sum_e mean_b (Q_A,e(s, a) - y)^2
        L_pi = mean_b alpha log pi(w~|s) - min_e Q_W,e(s, w~)
    (`backup_entropy: false` drops the alpha log pi term from y: the critic learns the plain return)
    then noise_critic_steps distillation steps on w ~ N(0, I) (clipped to the latent box):
        L_QW = 1/2 sum_e mean_b (Q_W,e(s, w) - Q_A,e(s, pi_dp(s, w)))^2
    and the temperature: L_alpha = -mean_b log_alpha (log pi(w~|s) + target_entropy).

k is the number of env steps the decision executed (`env_steps`); only `terminated` cuts the
bootstrap. Q_W never sees executed chunks, so it values every latent by what the base policy
makes of it: this is what lets the latent actor learn from demo chunks and from chunks that
many latents alias to.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from distrl.algos.base import (
    POLICY_PARAMS,
    STEPS_FIELD,
    BatchError,
    ParamSetSpec,
    SpaceSpec,
    TransitionField,
    base_fields,
    check_batch,
    learner_state,
    load_learner_state,
)
from distrl.algos.diffusion import DiffusionModel
from distrl.algos.dsrl.config import DSRLConfig
from distrl.algos.dsrl.networks import LatentActor, QEnsemble
from distrl.algos.sac.learning import polyak_update, temperature_loss

BASE_PARAMS = "base"
CRITIC_METRICS = ("critic_loss", "q_mean", "target_mean")
ACTOR_METRICS = ("actor_loss", "alpha", "entropy", "latent_abs", "latent_saturated")


def dsrl_fields(space: SpaceSpec, config: DSRLConfig) -> tuple[TransitionField, ...]:
    """DSRL-NA stores the executed chunk [k, A]; DSRL-SAC the latent [k * A]; both count env steps."""
    k = config.chunk
    action_shape = (k, space.action_dim) if config.variant == "na" else (k * space.action_dim,)
    fields = base_fields(space, action_shape, chunk=k)
    if k == 1:  # a one-step chunk still counts its steps, so demo tables chunk the same way
        fields = (*fields, TransitionField(STEPS_FIELD, "int32", fill=1))
    return fields


# --------------------------------------------------------------------------------------------
# Losses


def td_target(
    reward: torch.Tensor,
    discount: torch.Tensor,
    next_q: torch.Tensor,
    next_log_prob: torch.Tensor,
    alpha: torch.Tensor,
) -> torch.Tensor:
    """y = r + discount * (min_e Q'_e - alpha log pi); next_q is [E, B]."""
    return reward + discount * (next_q.min(dim=0).values - alpha * next_log_prob)


def critic_loss(q: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """1/2 sum_e mean_b w_b (Q_e - y)^2 for q [E, B] and y [B] (w: importance weights, or 1)."""
    err = (q - target.unsqueeze(0)).square()
    if weights is not None:
        err = err * weights.unsqueeze(0)
    return 0.5 * err.mean(dim=1).sum()


def actor_loss(alpha: torch.Tensor, log_prob: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """mean_b alpha log pi(w|s) - min_e Q_e(s, w) for q [E, B]."""
    return (alpha * log_prob - q.min(dim=0).values).mean()


def distill_loss(q_latent: torch.Tensor, q_action: torch.Tensor) -> torch.Tensor:
    """1/2 sum_e mean_b (Q_W,e(s, w) - Q_A,e(s, pi_dp(s, w)))^2, member by member."""
    return 0.5 * (q_latent - q_action).square().mean(dim=1).sum()


# --------------------------------------------------------------------------------------------
# The learner


class DSRLLearner:
    """DSRL's learner side: the frozen base policy, the latent actor, Q (DSRL-SAC) or Q_A and Q_W
    (DSRL-NA), targets, temperature and optimizers. Implements `distrl.algos.base.Algorithm`."""

    can_pretrain = False

    def __init__(
        self,
        spec: SpaceSpec,
        config: DSRLConfig,
        base: DiffusionModel,
        actor: LatentActor,
        critic: QEnsemble,
        noise_critic: QEnsemble | None,
        device: torch.device,
        make_policy: Any,
    ) -> None:
        self.spec = spec
        self.config = config
        self.device = device
        self.fields = dsrl_fields(spec, config)
        self.batches_per_update = config.utd_ratio
        self.latent_dim = config.chunk * spec.action_dim
        self.base = base.to(device).eval().requires_grad_(False)
        self.actor = actor.to(device)
        self.critic = critic.to(device)
        self.target_critic = _frozen_copy(critic).to(device)
        self.noise_critic = noise_critic.to(device) if noise_critic is not None else None
        self.log_alpha = torch.nn.Parameter(
            torch.tensor(math.log(config.initial_alpha), device=device), requires_grad=config.autotune_alpha
        )
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.noise_critic_optimizer = (
            torch.optim.Adam(self.noise_critic.parameters(), lr=config.critic_lr)
            if self.noise_critic is not None
            else None
        )
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        self._make_policy = make_policy
        self._generator = torch.Generator(device=device).manual_seed(config.seed or 0)
        self._priorities: torch.Tensor | None = None
        self.num_updates = 0

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    # ---- pieces (also used by tests)

    def chunk_of(self, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """pi_dp(s, w) flattened to [B, chunk * action_dim]: what Q_A takes."""
        return self.base.denoise(obs, w).reshape(obs.shape[0], -1)

    def critic_input(self, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The critic's action input for latent w: w itself (SAC) or the chunk it denoises to (NA)."""
        return w if self.config.variant == "sac" else self.chunk_of(obs, w)

    def prior_latents(self, n: int) -> torch.Tensor:
        """w ~ N(0, I) in the latent box: the distillation inputs (and the actors' warm-up noise)."""
        w = torch.randn(n, self.latent_dim, device=self.device, generator=self._generator)
        return w.clamp(-self.config.latent_bound, self.config.latent_bound)

    # ---- the update

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        minibatches, num_online = self._minibatches(batch, demo_batch)
        sums: dict[str, list[torch.Tensor]] = {}
        td_errors = []
        with torch.enable_grad():
            for mb in minibatches:
                metrics, td = self._critic_step(mb)
                td_errors.append(td[:num_online])
                for name, value in metrics.items():
                    sums.setdefault(name, []).append(value)
                for name, value in self._actor_step(mb["obs"]).items():
                    sums.setdefault(name, []).append(value)
            if self.noise_critic is not None:
                for i in range(self.config.noise_critic_steps):
                    loss = self._distill_step(minibatches[i % len(minibatches)]["obs"])
                    sums.setdefault("distill_loss", []).append(loss)
        self.num_updates += 1
        self._priorities = torch.cat(td_errors)
        names = list(sums)
        values = torch.stack([torch.stack(sums[n]).mean() for n in names]).tolist()
        return dict(zip(names, values, strict=True))

    def _critic_step(self, mb: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            next_w, next_log_prob = self.actor.sample(mb["next_obs"])
            next_q = self.target_critic(mb["next_obs"], self.critic_input(mb["next_obs"], next_w))
            alpha = self.alpha if self.config.backup_entropy else torch.zeros((), device=self.device)
            target = td_target(mb["reward"], mb["discount"], next_q, next_log_prob, alpha)
        q = self.critic(mb["obs"], mb["action"])
        loss = critic_loss(q, target, mb.get("weights"))
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        polyak_update(self._target_params, self._critic_params, self.config.tau)
        q = q.detach()
        metrics = {"critic_loss": loss.detach(), "q_mean": q.mean(), "target_mean": target.mean()}
        return metrics, (q - target.unsqueeze(0)).abs().mean(dim=0)

    def _actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        w, log_prob = self.actor.sample(obs)
        critic = self.critic if self.noise_critic is None else self.noise_critic
        critic.requires_grad_(False)
        try:
            loss = actor_loss(self.alpha, log_prob, critic(obs, w))
        finally:
            critic.requires_grad_(True)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        if self.config.autotune_alpha:
            alpha_loss = temperature_loss(self.log_alpha, log_prob, self.config.target_entropy)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        w = w.detach() / self.config.latent_bound
        return {
            "actor_loss": loss.detach(),
            "alpha": self.alpha,
            "entropy": -log_prob.detach().mean(),
            "latent_abs": w.abs().mean(),
            "latent_saturated": (w.abs() > 0.95).float().mean(),
        }

    def _distill_step(self, obs: torch.Tensor) -> torch.Tensor:
        assert self.noise_critic is not None and self.noise_critic_optimizer is not None
        w = self.prior_latents(obs.shape[0])
        with torch.no_grad():
            target = self.critic(obs, self.chunk_of(obs, w))
        loss = distill_loss(self.noise_critic(obs, w), target)
        self.noise_critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.noise_critic_optimizer.step()
        return loss.detach()

    def distill_loss(self, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The distillation loss of Q_W at (obs, w) against the current Q_A (no step)."""
        if self.noise_critic is None:
            raise ValueError("distill_loss: DSRL-SAC has no latent critic (variant 'sac')")
        with torch.no_grad():
            return distill_loss(self.noise_critic(obs, w), self.critic(obs, self.chunk_of(obs, w)))

    def _minibatches(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None
    ) -> tuple[list[dict[str, torch.Tensor]], int]:
        """utd_ratio minibatches with the demo share appended to each, and the online items in each."""
        utd = self.config.utd_ratio
        size = check_batch(batch, self.fields, self.device, "batch")
        sources = [(batch, size)]
        if demo_batch is not None:
            if self.config.variant == "sac":
                raise BatchError("DSRL-SAC learns from latents; demo chunks have none (use variant 'na')")
            sources.append((demo_batch, check_batch(demo_batch, self.fields, self.device, "demo_batch")))
        for _, n in sources:
            if n % utd:
                raise BatchError(f"batch size {n} is not divisible by utd_ratio {utd}")
        columns = [self._columns(source, n) for source, n in sources]
        if len(columns) == 2 and ("weights" in columns[0]) != ("weights" in columns[1]):
            for cols, (_, n) in zip(columns, sources, strict=True):
                cols.setdefault("weights", torch.ones(n, device=self.device))
        out = []
        for i in range(utd):
            parts = [
                {k: v[i * (n // utd) : (i + 1) * (n // utd)] for k, v in cols.items()}
                for cols, (_, n) in zip(columns, sources, strict=True)
            ]
            out.append(
                {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
            )
        return out, size // utd

    def _columns(self, batch: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        terminated = batch["terminated"]
        alive = (~terminated if terminated.dtype == torch.bool else 1.0 - terminated).to(
            batch["reward"].dtype
        )
        steps = batch[STEPS_FIELD].to(batch["reward"].dtype) if STEPS_FIELD in batch else None
        discount = alive * (self.config.gamma**steps if steps is not None else self.config.gamma)
        cols = {
            "obs": batch["obs"],
            "action": batch["action"].reshape(n, -1),
            "reward": batch["reward"],
            "next_obs": batch["next_obs"],
            "discount": discount,
        }
        if "weights" in batch:
            cols["weights"] = batch["weights"]
        return cols

    # ---- the rest of the contract

    def priorities(self) -> torch.Tensor | None:
        return self._priorities

    def pretrain_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError(
            "DSRL pretrains its base policy with `distrl pretrain diffusion`, not in the learner"
        )

    def param_sets(self) -> tuple[ParamSetSpec, ...]:
        # The frozen base goes out once (and again if the parameter server loses it).
        return (ParamSetSpec(POLICY_PARAMS), ParamSetSpec(BASE_PARAMS, every_updates=0))

    def params(self, param_set: str) -> dict[str, np.ndarray]:
        if param_set == POLICY_PARAMS:
            return {
                name: t.detach().to("cpu", torch.float32, copy=True).numpy()
                for name, t in self.actor.state_dict().items()
            }
        if param_set == BASE_PARAMS:
            return self.base.tensors()
        raise KeyError(f"DSRL publishes {POLICY_PARAMS!r} and {BASE_PARAMS!r}, not {param_set!r}")

    def make_policy(self) -> Any:
        policy = self._make_policy()
        policy.load_params(BASE_PARAMS, self.params(BASE_PARAMS))
        policy.load_params(POLICY_PARAMS, self.params(POLICY_PARAMS))
        return policy

    def state_dict(self) -> dict[str, Any]:
        return learner_state(self._stateful(), {"log_alpha": self.log_alpha}, {"updates": self.num_updates})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counters = load_learner_state("DSRL", state, self._stateful(), {"log_alpha": self.log_alpha})
        self.num_updates = counters.get("updates", 0)

    def _stateful(self) -> dict[str, Any]:
        modules: dict[str, Any] = {
            "base": self.base,
            "actor": self.actor,
            "critic": self.critic,
            "target_critic": self.target_critic,
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
            "alpha_optimizer": self.alpha_optimizer,
        }
        if self.noise_critic is not None:
            modules["noise_critic"] = self.noise_critic
            modules["noise_critic_optimizer"] = self.noise_critic_optimizer
        return modules


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).requires_grad_(False)
