"""The XQC update (Palenicek et al. 2026), with XQCfD's demos and pretraining.

Per update call, for each of utd_ratio critic minibatches (demo items appended to each):

    a' ~ pi(s')                                   (actor in eval mode: running BN statistics)
    logits, target_logits = Q([s; s'], [a; a'])   (one joint pass each, BN in train mode: CrossQ)
    e*    = argmin_e E[Q'_e(s', a')]              (per item: the target critic with the lower value)
    Tz    = clip(r~ + gamma^k (1 - terminated) (z - alpha log pi(a'|s')), v_min, v_max)
    m     = C51 projection of softmax(target_logits[e*]) from Tz onto the support z
    L_Q   = sum_e mean_b CE(m, logits_e(s, a))                 -> critic step, unit-norm rows, Polyak
  every policy_delay critic steps:
    L_pi  = mean_b alpha log pi(a~|s) - min_e E[Q_e(s, a~)]     (critics in eval mode) -> actor step
    L_alpha = alpha (H - target_entropy)                                              -> temperature

r~ = r / (std of the discounted return G + 1e-8): G_t = gamma G_(t-1) + r_t along each env's
stream, G_(t-1) stored by the actor (`return_so_far`), its running std kept here from the online
items the learner sees. Learning rates decay linearly to `lr_end` over `lr_decay_steps`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from distrl.algos.base import (
    DEMO_FLAG,
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
from distrl.algos.xqc.config import XQCConfig
from distrl.algos.xqc.networks import CategoricalCriticEnsemble, XQCActor, tanh_gaussian_log_prob

# G_(t-1): the discounted return of the episode before this transition, kept by the actor's policy.
RETURN_FIELD = "return_so_far"
_SCALE_EPS = 1e-8


def xqc_fields(spec: SpaceSpec, config: XQCConfig) -> tuple[TransitionField, ...]:
    fields = base_fields(spec)
    if config.reward_scaling:
        fields = (*fields, TransitionField(RETURN_FIELD, "float32", fill=0.0))
    return fields


# --------------------------------------------------------------------------------------------
# Losses


def categorical_projection(
    probs: torch.Tensor, atoms: torch.Tensor, v_min: float, v_max: float
) -> torch.Tensor:
    """C51: distribute each atom's probability [B, K] at positions `atoms` [B, K] (within
    [v_min, v_max]) onto the two neighbouring points of the fixed support of K points."""
    k = probs.shape[-1]
    b = ((atoms - v_min) / ((v_max - v_min) / (k - 1))).clamp(0.0, k - 1)
    lower, upper = b.floor(), b.ceil()
    # An atom exactly on a support point (lower == upper) gives it all its mass.
    lower_mass = probs * (upper + (lower == upper).to(probs.dtype) - b)
    upper_mass = probs * (b - lower)
    out = torch.zeros_like(probs)
    out.scatter_add_(-1, lower.long(), lower_mass)
    out.scatter_add_(-1, upper.long(), upper_mass)
    return out


def categorical_target(
    target_logits: torch.Tensor,
    support: torch.Tensor,
    reward: torch.Tensor,
    discount: torch.Tensor,
    entropy_term: torch.Tensor,
    v_min: float,
    v_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The projected target distribution [B, K] from the target critics' logits [E, B, K] at
    (s', a'), taking per item the member with the lower expected value; and the clipped fraction."""
    probs = target_logits.softmax(-1)
    values = (probs * support).sum(-1)  # [E, B]
    pick = values.argmin(0)  # [B]
    chosen = probs.gather(0, pick.view(1, -1, 1).expand(1, *probs.shape[1:])).squeeze(0)
    raw = reward[:, None] + discount[:, None] * (support[None, :] - entropy_term[:, None])
    atoms = raw.clamp(v_min, v_max)
    clipped = ((raw <= v_min) | (raw >= v_max)).float().mean()
    return categorical_projection(chosen, atoms, v_min, v_max), clipped


def bc_loss_per_item(actor: XQCActor, obs: torch.Tensor, action: torch.Tensor, eps: float) -> torch.Tensor:
    """Behaviour cloning per item [B]: the squared error of the mode tanh(mean) to the demonstrated
    action plus its negative log-likelihood with the mean held fixed (the likelihood sets the std)."""
    mean, std = actor(obs)
    squared_error = (torch.tanh(mean) - action).square().sum(-1)
    return squared_error - tanh_gaussian_log_prob(mean.detach(), std, action, eps)


def categorical_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each member's logits [E, B, K] to the target [B, K]: mean over B, sum over E."""
    return -(target * logits.log_softmax(-1)).sum(-1).mean(-1).sum()


# --------------------------------------------------------------------------------------------
# Reward scaling


class ReturnScale:
    """Running variance of the discounted return G (Chan et al.'s parallel update), as tensors."""

    def __init__(self, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.var = torch.ones((), dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor) -> None:
        x = values.detach().to(torch.float64)
        n = x.numel()
        if n == 0:
            return
        batch_mean, batch_var = x.mean(), x.var(unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total

    def scale(self) -> torch.Tensor:
        """1 / (std + eps) as float32."""
        return (1.0 / (self.var.sqrt() + _SCALE_EPS)).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count.clone(), "mean": self.mean.clone(), "var": self.var.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name in ("count", "mean", "var"):
            setattr(
                self,
                name,
                torch.as_tensor(state[name], dtype=torch.float64, device=self.count.device).clone(),
            )


# --------------------------------------------------------------------------------------------
# The learner

CRITIC_METRICS = ("critic_loss", "q_mean", "target_q_mean", "target_clip_fraction")
SOURCE_METRICS = ("q_mean/online", "q_mean/demo")
ACTOR_METRICS = ("actor_loss", "alpha_loss", "alpha", "entropy")
BC_METRICS = ("bc_loss", "bc_action_mse", "entropy")


class XQCLearner:
    """XQC's learner side. Implements `distrl.algos.base.Algorithm`; batches must be on `device`."""

    can_pretrain = True

    def __init__(
        self,
        spec: SpaceSpec,
        config: XQCConfig,
        actor: XQCActor,
        critic: CategoricalCriticEnsemble,
        device: torch.device,
        make_policy: Callable[[], Any],
    ) -> None:
        self.spec = spec
        self.config = config
        self.device = device
        self.fields = xqc_fields(spec, config)
        self.batches_per_update = config.utd_ratio
        self.gamma = config.resolved_gamma(spec.max_episode_steps)
        self.target_entropy = config.resolved_target_entropy(spec.action_dim)
        self.actor = actor.to(device).eval()
        self.critic = critic.to(device).train()
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(np.log(config.initial_alpha)), device=device))
        self.returns = ReturnScale(device)
        self._make_policy = make_policy

        fused = {"fused": True}  # one kernel per parameter group, on the CPU too
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(), lr=config.critic_lr, weight_decay=config.weight_decay, **fused
        )
        self.actor_optimizer = torch.optim.AdamW(
            self.actor.parameters(), lr=config.actor_lr, weight_decay=config.weight_decay, **fused
        )
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self._base_lrs = [
            (self.critic_optimizer, config.critic_lr),
            (self.actor_optimizer, config.actor_lr),
            (self.alpha_optimizer, config.alpha_lr),
        ]
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        self.num_updates = 0
        self.num_critic_updates = 0
        self.num_actor_updates = 0
        self._priorities: torch.Tensor | None = None
        critic_step: Callable[..., torch.Tensor] = self._critic_step
        actor_step: Callable[..., torch.Tensor] = self._actor_step
        if config.compile:
            critic_step, actor_step = torch.compile(critic_step), torch.compile(actor_step)
        self._critic_step_fn, self._actor_step_fn = critic_step, actor_step

    # ---- the steps

    def _critic_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        discount: torch.Tensor,
        demo_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        cfg = self.config
        size = obs.shape[0]
        alpha = self.log_alpha.detach().exp() if cfg.backup_entropy else torch.zeros_like(self.log_alpha)
        joint_obs = torch.cat((obs, next_obs))
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(next_obs)
            joint_action = torch.cat((action, next_action))
            target_logits = self.target_critic(joint_obs, joint_action, rows=slice(size, None))
            target, clipped = categorical_target(
                target_logits,
                self.critic.support,
                reward,
                discount,
                alpha * next_log_prob,
                cfg.v_min,
                cfg.v_max,
            )
        logits = self.critic(joint_obs, joint_action, rows=slice(0, size))
        loss = categorical_loss(logits, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        if cfg.weight_norm:
            self.critic.normalize_()
        with torch.no_grad():
            q = self.critic.q(logits.detach())
            metrics = [loss.detach(), q.mean(), (target * self.critic.support).sum(-1).mean(), clipped]
            if demo_mask is not None:
                q_item = q.mean(0)
                num_demo = demo_mask.sum()
                q_demo = (q_item * demo_mask).sum()
                metrics += [
                    (q_item.sum() - q_demo) / (demo_mask.numel() - num_demo).clamp_min(1.0),
                    q_demo / num_demo.clamp_min(1.0),
                ]
            return torch.stack(metrics)

    def _actor_step(
        self,
        obs: torch.Tensor,
        demo_action: torch.Tensor | None = None,
        demo_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        self.actor.train(not cfg.freeze_actor_norm)
        self.critic.eval().requires_grad_(False)
        try:
            alpha = self.log_alpha.exp()
            action, log_prob = self.actor.sample(obs)
            q = self.critic.q(self.critic(obs, action)).amin(0)
            actor_loss = (alpha.detach() * log_prob - q).mean()
            entropy = -log_prob.detach().mean()
            alpha_loss = alpha * (entropy - self.target_entropy)
            loss = actor_loss + alpha_loss
            extra: list[torch.Tensor] = []
            if cfg.bc_weight > 0.0:
                bc, kept = self._demo_bc_term(obs, demo_action, demo_mask)
                loss = loss + cfg.bc_weight * bc
                extra = [bc.detach(), kept]
            self.actor_optimizer.zero_grad(set_to_none=True)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_optimizer.step()
            self.alpha_optimizer.step()
            if self.config.weight_norm:
                self.actor.normalize_()
        finally:
            self.actor.eval()
            self.critic.train().requires_grad_(True)
        return torch.stack([actor_loss.detach(), alpha_loss.detach(), alpha.detach(), entropy, *extra])

    def _demo_bc_term(
        self, obs: torch.Tensor, demo_action: torch.Tensor | None, demo_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviour cloning of the demo items of an actor batch (Nair et al. 2018's Q filter: only
        where the critics value the demo action above the policy's mode); (loss, fraction kept)."""
        if demo_action is None or demo_mask is None:
            zero = torch.zeros((), device=obs.device)
            return zero, zero
        keep = demo_mask
        if self.config.bc_q_filter:
            with torch.no_grad():
                q_demo = self.critic.q(self.critic(obs, demo_action)).amin(0)
                q_policy = self.critic.q(self.critic(obs, self.actor.deterministic(obs))).amin(0)
                keep = demo_mask * (q_demo > q_policy).to(demo_mask.dtype)
        kept = keep.sum()
        per_item = bc_loss_per_item(self.actor, obs, demo_action, self.config.bc_action_eps)
        loss = (per_item * keep).sum() / kept.clamp_min(1.0)
        return loss, kept / demo_mask.sum().clamp_min(1.0)

    # ---- the public interface

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        """utd_ratio critic steps (and an actor/temperature step every policy_delay of them)."""
        minibatches = self._minibatches(batch, demo_batch)
        critic_metrics, actor_metrics = [], []
        with torch.enable_grad():
            for obs, action, reward, next_obs, discount, demo_mask in minibatches:
                self._set_learning_rates()
                critic_metrics.append(
                    self._critic_step_fn(obs, action, reward, next_obs, discount, demo_mask)
                )
                self.num_critic_updates += 1
                polyak_update(self._target_params, self._critic_params, self.config.tau)
                if self.num_critic_updates % self.config.policy_delay == 0:
                    actor_metrics.append(self._actor_step_fn(obs, action, demo_mask))
                    self.num_actor_updates += 1
        self.num_updates += 1
        names = CRITIC_METRICS + (SOURCE_METRICS if minibatches[0][5] is not None else ())
        values = torch.stack(critic_metrics).mean(0).tolist()
        out = dict(zip(names, values, strict=True))
        if actor_metrics:
            names = ACTOR_METRICS + (("bc_loss", "bc_kept") if self.config.bc_weight > 0.0 else ())
            out.update(zip(names, torch.stack(actor_metrics).mean(0).tolist(), strict=True))
        out["reward_scale"] = float(self.returns.scale())
        out["lr"] = self.critic_optimizer.param_groups[0]["lr"]
        return out

    def priorities(self) -> torch.Tensor | None:
        return None  # a categorical loss has no single TD error; prioritized replay is not used

    def pretrain_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Behaviour cloning of the actor on a demo batch (squared error of the mode plus the
        likelihood with the mean held fixed); with `pretrain_critic`, also a critic TD step on it."""
        for key in ("obs", "action"):
            if key not in batch:
                raise BatchError(f"pretraining batch is missing {key!r}")
        obs, action = batch["obs"], batch["action"]
        if (
            obs.dim() != 2
            or obs.shape[1] != self.spec.obs_dim
            or action.shape != (obs.shape[0], self.spec.action_dim)
        ):
            raise BatchError(
                f"pretraining batch has obs {tuple(obs.shape)} and action {tuple(action.shape)}, "
                f"expected [B, {self.spec.obs_dim}] and [B, {self.spec.action_dim}]"
            )
        with torch.enable_grad():
            self.actor.train()
            try:
                loss = bc_loss_per_item(self.actor, obs, action, self.config.bc_action_eps).mean()
                self.actor_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.actor_optimizer.step()
                if self.config.weight_norm:
                    self.actor.normalize_()
            finally:
                self.actor.eval()
            if self.config.pretrain_critic:
                obs_, action_, reward, next_obs, discount, _ = self._minibatches(
                    batch, None, pretraining=True
                )[0]
                self._critic_step_fn(obs_, action_, reward, next_obs, discount, None)
                polyak_update(self._target_params, self._critic_params, self.config.tau)
        with torch.no_grad():
            mse = (self.actor.deterministic(obs) - action).square().mean()
            entropy = -self.actor.sample(obs)[1].mean()
            values = torch.stack([loss.detach(), mse, entropy]).tolist()
        return dict(zip(BC_METRICS, values, strict=True))

    def param_sets(self) -> tuple[ParamSetSpec, ...]:
        return (ParamSetSpec(POLICY_PARAMS),)

    def params(self, param_set: str) -> dict[str, np.ndarray]:
        """float32 copies of the actor's weights and BatchNorm running statistics."""
        if param_set != POLICY_PARAMS:
            raise KeyError(f"XQC publishes only the {POLICY_PARAMS!r} parameter set, not {param_set!r}")
        return policy_tensors(self.actor)

    def make_policy(self) -> Any:
        policy = self._make_policy()
        policy.load_params(POLICY_PARAMS, self.params(POLICY_PARAMS))
        return policy

    def state_dict(self) -> dict[str, Any]:
        counters = {
            "updates": self.num_updates,
            "critic_updates": self.num_critic_updates,
            "actor_updates": self.num_actor_updates,
        }
        state = learner_state(self._stateful(), {"log_alpha": self.log_alpha}, counters)
        state["returns"] = self.returns.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counters = load_learner_state(
            "XQC", state, self._stateful(), {"log_alpha": self.log_alpha}, optional=("alpha_optimizer",)
        )
        if "returns" in state:
            self.returns.load_state_dict(state["returns"])
        self.num_updates = counters.get("updates", 0)
        self.num_critic_updates = counters.get("critic_updates", 0)
        self.num_actor_updates = counters.get("actor_updates", 0)

    def _stateful(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "target_critic": self.target_critic,
            "critic_optimizer": self.critic_optimizer,
            "actor_optimizer": self.actor_optimizer,
            "alpha_optimizer": self.alpha_optimizer,
        }

    # ---- batch preparation

    def _set_learning_rates(self) -> None:
        steps = self.config.lr_decay_steps
        if steps is None:
            return
        frac = min(self.num_critic_updates / steps, 1.0)
        for optimizer, base in self._base_lrs:
            lr = base + frac * (self.config.lr_end - base)
            for group in optimizer.param_groups:
                group["lr"] = lr

    def _minibatches(
        self,
        batch: Mapping[str, torch.Tensor],
        demo_batch: Mapping[str, torch.Tensor] | None,
        pretraining: bool = False,
    ) -> list[tuple[torch.Tensor | None, ...]]:
        """(obs, action, scaled reward, next_obs, discount, demo_mask) per critic minibatch; a
        pretraining batch (all demos) is one minibatch and leaves the return statistics alone."""
        utd = 1 if pretraining else self.config.utd_ratio
        size = check_batch(batch, self.fields, self.device, "batch")
        if size % utd:
            raise BatchError(f"batch size {size} is not divisible by utd_ratio {utd}")
        online = self._columns(batch, is_demo=pretraining)
        if self.config.reward_scaling and not pretraining:
            self._update_returns(batch, online[5])
        if demo_batch is not None and online[5] is None:
            online = (*online[:5], torch.zeros_like(online[2]))
        parts = [online]
        if demo_batch is not None:
            demo_size = check_batch(demo_batch, self.fields, self.device, "demo_batch")
            if demo_size % utd:
                raise BatchError(f"demo_batch size {demo_size} is not divisible by utd_ratio {utd}")
            parts.append(self._columns(demo_batch, is_demo=True))
        scale = self.returns.scale() if self.config.reward_scaling else None
        out = []
        for i in range(utd):
            cols = []
            for k in range(6):
                pieces = [p[k] for p in parts]
                if any(piece is None for piece in pieces):
                    cols.append(None)
                    continue
                chunks = [piece.chunk(utd)[i] for piece in pieces]
                cols.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks))
            if scale is not None:
                cols[2] = cols[2] * scale
            out.append(tuple(cols))
        return out

    def _columns(self, batch: Mapping[str, torch.Tensor], is_demo: bool) -> tuple[torch.Tensor | None, ...]:
        terminated = batch["terminated"]
        not_terminated = (~terminated).float() if terminated.dtype == torch.bool else 1.0 - terminated
        discount = self.gamma * not_terminated
        if STEPS_FIELD in batch:
            discount = self.gamma ** batch[STEPS_FIELD].float() * not_terminated
        reward = batch["reward"]
        if is_demo:
            demo_mask = torch.ones_like(reward)
        elif DEMO_FLAG in batch:
            demo_mask = batch[DEMO_FLAG].to(reward.dtype)
        else:
            demo_mask = None
        return batch["obs"], batch["action"], reward, batch["next_obs"], discount, demo_mask

    def _update_returns(self, batch: Mapping[str, torch.Tensor], demo_mask: torch.Tensor | None) -> None:
        """G_t = gamma G_(t-1) + r_t of the online items (demo items carry no stream position)."""
        if RETURN_FIELD not in batch:
            return
        returns = self.gamma * batch[RETURN_FIELD] + batch["reward"]
        if demo_mask is not None:
            returns = returns[demo_mask == 0]
        self.returns.update(returns)


@torch.no_grad()
def polyak_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    torch._foreach_lerp_(target, online, tau)


def policy_tensors(actor: XQCActor) -> dict[str, np.ndarray]:
    """The actor's float tensors (weights and BN running statistics) as float32 numpy copies."""
    return {
        name: tensor.detach().to("cpu", torch.float32, copy=True).numpy()
        for name, tensor in actor.state_dict().items()
        if tensor.is_floating_point()
    }
