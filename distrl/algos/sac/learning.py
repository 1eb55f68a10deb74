"""The SAC update (Haarnoja et al. 2018, learned temperature) with RLPD's options (Ball et al. 2023).

The loss functions come first and read like the paper; `SACLearner` wires them to optimizers.
Per update call:

    for each of utd_ratio critic minibatches (demo items appended to each):
        y      = r + gamma (1 - terminated) (min_{k in K} Q'_k(s', a') - alpha log pi(a'|s')),  a' ~ pi(s')
        L_Q    = sum_e mean_b w_b (Q_e(s, a) - y)^2                     -> critic step, Polyak targets
    on the last minibatch (or all of them):
        L_pi   = mean_b alpha log pi(a~|s) - reduce_e Q_e(s, a~),  a~ ~ pi(s)  -> actor step
        L_alpha = -mean_b log_alpha (log pi(a~|s) + target_entropy)           (same step)
        + bc_weight * L_BC over the demo items (kept by the Q filter)         (same step)

With `backup_entropy: false` the alpha log pi term leaves y (the critic learns the plain return).

Only `terminated` cuts the bootstrap: a time-limit truncation is not the end of the task, so the
transition bootstraps from s' like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    base_fields,
    check_batch,
    learner_state,
    load_learner_state,
)
from distrl.algos.sac.config import SACConfig
from distrl.algos.sac.networks import CriticEnsemble, TanhGaussianActor, gaussian_tanh_log_prob

# --------------------------------------------------------------------------------------------
# Losses


def soft_q_target(
    actor: TanhGaussianActor,
    target_critic: CriticEnsemble,
    next_obs: torch.Tensor,
    reward: torch.Tensor,
    discount: torch.Tensor,
    alpha: torch.Tensor,
    members: torch.Tensor | None = None,
) -> torch.Tensor:
    """The soft Bellman backup y [B]; `discount` is gamma * (1 - terminated), `members` a target subset."""
    next_action, next_log_prob = actor.sample(next_obs)
    next_q = torch.amin(target_critic(next_obs, next_action, members=members), dim=0)
    return reward + discount * (next_q - alpha * next_log_prob)


def critic_loss(
    critic: CriticEnsemble,
    obs: torch.Tensor,
    action: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's (importance-weighted) mean squared TD error, summed over the ensemble; and Q [E, B].

    Summing (CleanRL's qf1_loss + qf2_loss) keeps each member's gradient independent of E.
    """
    q = critic(obs, action)
    squared_error = (q - target).square()
    if weights is not None:
        squared_error = squared_error * weights
    return squared_error.mean(dim=-1).sum(), q


def actor_loss(
    actor: TanhGaussianActor,
    critic: CriticEnsemble,
    obs: torch.Tensor,
    alpha: torch.Tensor,
    reduce: str = "min",
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[alpha log pi(a|s) - Q(s, a)], a ~ pi(s), against a fixed critic; returns (loss, log pi [B])."""
    action, log_prob = actor.sample(obs)
    q = reduce_ensemble(critic(obs, action, detach_params=True), reduce)
    return (alpha * log_prob - q).mean(), log_prob


def reduce_ensemble(q: torch.Tensor, reduce: str) -> torch.Tensor:
    """Q [E, B] -> [B]: the min over the ensemble members, or their mean (`actor_q`)."""
    return torch.amin(q, dim=0) if reduce == "min" else q.mean(dim=0)


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Raises alpha while the entropy (-log pi) is below target_entropy, lowers it above (SB3's form)."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def bc_loss(
    actor: TanhGaussianActor, obs: torch.Tensor, action: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Behaviour cloning of the tanh-Gaussian policy: the batch mean of `bc_loss_per_item`."""
    return bc_loss_per_item(actor, obs, action, eps).mean()


def bc_loss_per_item(
    actor: TanhGaussianActor, obs: torch.Tensor, action: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Behaviour cloning per item [B], summed over action dims: the squared error of the
    deterministic action tanh(mean) to the demonstrated one, plus the negative log-likelihood of
    the demonstrated action with the mean held fixed.

    The mean learns from the squared error only. Under the likelihood alone, a dim the policy
    fits badly (a gripper command at exactly +-1, atanh'd to +-6) can widen its std instead, which
    shrinks its gradient to nothing while tight dims shrink theirs; the likelihood then keeps
    improving while the deterministic action stays wrong in that dim. Here the likelihood only
    sets the std (the spread of the demos around the mean), which SAC takes over afterwards.
    """
    mean, log_std = actor(obs)
    squared_error = (torch.tanh(mean) - action).square().sum(-1)
    log_prob = gaussian_tanh_log_prob(mean.detach(), log_std, action, eps)
    return squared_error - log_prob


def demo_bc_term(
    actor: TanhGaussianActor,
    critic: CriticEnsemble,
    obs: torch.Tensor,
    action: torch.Tensor,
    demo_mask: torch.Tensor,
    q_filter: bool,
    reduce: str = "min",
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The actor's auxiliary behaviour cloning on the demonstration items of a batch (Nair et al.
    2018), with their Q filter: an item is cloned only where the critic values the demonstrated
    action above the policy's own deterministic action, so the policy may outgrow the demos.

    Returns (the mean `bc_loss_per_item` over the kept items, the fraction of demo items kept).
    """
    keep = demo_mask
    if q_filter:
        with torch.no_grad():
            q_demo = reduce_ensemble(critic(obs, action), reduce)
            q_policy = reduce_ensemble(critic(obs, actor.deterministic(obs)), reduce)
            keep = demo_mask * (q_demo > q_policy).to(demo_mask.dtype)
    kept = keep.sum()
    loss = (bc_loss_per_item(actor, obs, action, eps) * keep).sum() / kept.clamp_min(1.0)
    return loss, kept / demo_mask.sum().clamp_min(1.0)


@torch.no_grad()
def polyak_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau online, as one fused foreach op over all tensors."""
    torch._foreach_lerp_(list(target), list(online), tau)


# --------------------------------------------------------------------------------------------
# The learner


@dataclass(frozen=True)
class _Minibatch:
    """One critic minibatch, already in the form the losses want."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor  # gamma * (1 - terminated)
    weights: torch.Tensor | None
    demo_mask: torch.Tensor | None  # 1.0 for demonstration items, for per-source metrics

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        """The step functions' positional arguments."""
        return (
            self.obs,
            self.action,
            self.reward,
            self.next_obs,
            self.discount,
            self.weights,
            self.demo_mask,
        )


CRITIC_METRICS = ("critic_loss", "q_mean", "q_std", "target_q_mean", "td_error")
SOURCE_METRICS = ("q_mean/online", "q_mean/demo", "td_error/online", "td_error/demo")
ACTOR_METRICS = ("actor_loss", "alpha_loss", "alpha", "entropy")
DEMO_BC_METRICS = ("bc_loss", "bc_kept")
BC_METRICS = ("bc_loss", "bc_action_mse", "entropy")


class SACLearner:
    """SAC's learner side: networks, target critics, temperature, optimizers and counters.

    Implements `distrl.algos.base.Algorithm`. Batches must already be on `device`.
    """

    can_pretrain = True

    def __init__(
        self,
        spec: SpaceSpec,
        config: SACConfig,
        actor: TanhGaussianActor,
        critic: CriticEnsemble,
        device: torch.device,
        make_policy: Callable[[], Any],
    ) -> None:
        self.spec = spec
        self.config = config
        self.device = device
        self.fields = base_fields(spec)
        self.batches_per_update = config.utd_ratio
        self.actor = actor.to(device)
        self.critic = critic.to(device)
        self.target_critic = CriticEnsemble(
            spec.obs_dim, spec.action_dim, config.hidden_sizes, config.num_critics, config.critic_layernorm
        ).to(device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(
            torch.tensor(math.log(config.initial_alpha), device=device), requires_grad=config.autotune_alpha
        )
        self.target_entropy = config.resolved_target_entropy(spec.action_dim)
        self._make_policy = make_policy

        optim_flags = _optimizer_flags(device, config)
        self.critic_optimizer = torch.optim.Adam(
            self.critic.parameters(), lr=config.critic_lr, eps=config.adam_eps, **optim_flags
        )
        # Actor and temperature share one optimizer (one fused step) with their own learning rates;
        # their losses touch disjoint parameters, so one backward of the sum gives both gradients.
        policy_groups: list[dict[str, Any]] = [
            {"params": list(self.actor.parameters()), "lr": config.actor_lr}
        ]
        if config.autotune_alpha:
            policy_groups.append({"params": [self.log_alpha], "lr": config.alpha_lr})
        self.policy_optimizer = torch.optim.Adam(policy_groups, eps=config.adam_eps, **optim_flags)

        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        self.num_updates = 0
        self.num_critic_updates = 0
        self.num_actor_updates = 0
        self._priorities: torch.Tensor | None = None

        # The CPU default runs the steps eagerly. `compile` wraps them in torch.compile; `cuda_graphs`
        # then captures (compiled or eager) steps in CUDA graphs and replays them.
        critic_step: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._critic_step
        actor_step: Callable[..., torch.Tensor] = self._actor_step
        if config.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, but the algorithm runs on {device}")
        if config.compile:
            critic_step, actor_step = torch.compile(critic_step), torch.compile(actor_step)
        if config.cuda_graphs:
            critic_step, actor_step = _GraphedStep(critic_step), _GraphedStep(actor_step)
        self._critic_step_fn = critic_step
        self._actor_step_fn = actor_step

    # ---- the steps (pure tensor functions: compile and CUDA-graph friendly, no host syncs)

    def _members(self) -> torch.Tensor | None:
        """A random subset of critic_subset target critics for this backup (RLPD), or None for all."""
        if self.config.critic_subset == self.config.num_critics:
            return None
        return torch.rand(self.config.num_critics, device=self.device).topk(self.config.critic_subset).indices

    def _critic_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        discount: torch.Tensor,
        weights: torch.Tensor | None,
        demo_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Without backup_entropy the critic learns the plain return of the policy (SERL's choice
        # for sparse rewards): the entropy bonus then shapes the actor only, not the values.
        alpha = (
            self.log_alpha.detach().exp() if self.config.backup_entropy else torch.zeros_like(self.log_alpha)
        )
        with torch.no_grad():
            target = soft_q_target(
                self.actor, self.target_critic, next_obs, reward, discount, alpha, self._members()
            )
        loss, q = critic_loss(self.critic, obs, action, target, weights)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()

        with torch.no_grad():
            td_error = (q - target).abs().mean(dim=0)
            metrics = [loss, q.mean(), q.std(), target.mean(), td_error.mean()]
            if demo_mask is not None:
                q_item = q.mean(dim=0)
                num_demo = demo_mask.sum()
                num_online = (demo_mask.numel() - num_demo).clamp_min(1.0)
                num_demo = num_demo.clamp_min(1.0)
                q_demo, td_demo = (q_item * demo_mask).sum(), (td_error * demo_mask).sum()
                metrics += [
                    (q_item.sum() - q_demo) / num_online,
                    q_demo / num_demo,
                    (td_error.sum() - td_demo) / num_online,
                    td_demo / num_demo,
                ]
            return torch.stack(metrics), td_error

    def _actor_step(
        self, obs: torch.Tensor, action: torch.Tensor | None = None, demo_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        alpha = self.log_alpha.exp()
        loss_pi, log_prob = actor_loss(self.actor, self.critic, obs, alpha.detach(), self.config.actor_q)
        loss = loss_pi
        if self.config.autotune_alpha:
            loss_alpha = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
            loss = loss + loss_alpha
        else:
            loss_alpha = torch.zeros((), device=obs.device)
        metrics = [loss_pi, loss_alpha, alpha, -log_prob.mean()]
        if self.config.bc_weight > 0.0 and demo_mask is not None:
            bc, kept = demo_bc_term(
                self.actor, self.critic, obs, action, demo_mask, self.config.bc_q_filter,
                self.config.actor_q, self.config.bc_action_eps,
            )  # fmt: skip
            loss = loss + self.config.bc_weight * bc
            metrics += [bc, kept]
        elif self.config.bc_weight > 0.0:  # no demos in this batch: nothing to clone, nothing computed
            metrics += [torch.zeros_like(alpha), torch.zeros_like(alpha)]
        self.policy_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.policy_optimizer.step()
        with torch.no_grad():
            return torch.stack(metrics).detach()

    # ---- the public interface

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        """utd_ratio critic steps and (every actor_update_interval calls) one actor/temperature step.

        `batch` holds utd_ratio * B online items; `demo_batch`, when given, is split the same way and
        appended to every minibatch. `priorities()` then holds |TD| per online item, in order.
        """
        minibatches, num_online = self._minibatches(batch, demo_batch)
        critic_metrics, actor_metrics = self._steps(minibatches, num_online)
        # One device->host transfer for all metrics.
        values = torch.cat([*critic_metrics, *([] if actor_metrics is None else [actor_metrics])]).tolist()
        names = CRITIC_METRICS + (SOURCE_METRICS if minibatches[0].demo_mask is not None else ())
        out = {
            name: float(np.mean(values[i :: len(names)][: len(minibatches)])) for i, name in enumerate(names)
        }
        if actor_metrics is not None:
            actor_names = ACTOR_METRICS + (DEMO_BC_METRICS if self.config.bc_weight > 0.0 else ())
            out.update(zip(actor_names, values[len(names) * len(minibatches) :], strict=True))
        return out

    def _steps(
        self,
        minibatches: list[_Minibatch],
        num_online: int,
        extra_step: Callable[[int, _Minibatch], torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The critic steps (and Polyak updates) of one update call, then its actor step when due;
        sets `priorities()`. Returns each critic step's metrics (with `extra_step(i, minibatch)`'s
        appended: a subclass's own critic on the same minibatch) and the actor's, or None."""
        critic_metrics: list[torch.Tensor] = []
        td_errors: list[torch.Tensor] = []
        with torch.enable_grad():
            for i, minibatch in enumerate(minibatches):
                metrics, td_error = self._critic_step_fn(*minibatch.tensors())
                if extra_step is not None:
                    metrics = torch.cat((metrics, extra_step(i, minibatch)))
                critic_metrics.append(metrics)
                td_errors.append(td_error[:num_online])
                self.num_critic_updates += 1
                if self.num_critic_updates % self.config.target_update_interval == 0:
                    polyak_update(self._target_params, self._critic_params, self.config.tau)
            self.num_updates += 1
            actor_metrics = None
            if self.num_updates % self.config.actor_update_interval == 0:
                actor_metrics = self._actor_step_fn(*self._actor_inputs(minibatches))
                self.num_actor_updates += 1
        self._priorities = td_errors[0] if len(td_errors) == 1 else torch.cat(td_errors)
        return critic_metrics, actor_metrics

    def _actor_inputs(self, minibatches: list[_Minibatch]) -> tuple[torch.Tensor | None, ...]:
        """The actor step's (obs, action, demo_mask): the last minibatch (RLPD) or all of them;
        actions and the demo mask only when the actor clones demos (`bc_weight`)."""
        chosen = minibatches if self.config.actor_batch == "all" else minibatches[-1:]
        obs = chosen[0].obs if len(chosen) == 1 else torch.cat([mb.obs for mb in chosen])
        if self.config.bc_weight == 0.0 or chosen[0].demo_mask is None:
            return (obs,)
        if len(chosen) == 1:
            return obs, chosen[0].action, chosen[0].demo_mask
        return obs, torch.cat([mb.action for mb in chosen]), torch.cat([mb.demo_mask for mb in chosen])

    def bc_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`bc_loss` of a batch with obs and action (differentiable w.r.t. the actor)."""
        for key in ("obs", "action"):
            if key not in batch:
                raise BatchError(f"behaviour-cloning batch is missing {key!r}")
        obs, action = batch["obs"], batch["action"]
        if (
            obs.dim() != 2
            or obs.shape[1] != self.spec.obs_dim
            or action.shape != (obs.shape[0], self.spec.action_dim)
        ):
            raise BatchError(
                f"behaviour-cloning batch has obs {tuple(obs.shape)} and action {tuple(action.shape)}, "
                f"expected [B, {self.spec.obs_dim}] and [B, {self.spec.action_dim}]"
            )
        return bc_loss(self.actor, obs, action, self.config.bc_action_eps)

    def priorities(self) -> torch.Tensor | None:
        """|TD error| per online item of the last update (mean over the ensemble), on `device`."""
        return self._priorities

    def pretrain_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One behaviour-cloning step of the actor on a batch with obs and action (see `bc_loss`)."""
        with torch.enable_grad():
            loss = self.bc_loss(batch)
            self.policy_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.policy_optimizer.step()
        obs, action = batch["obs"], batch["action"]
        with torch.no_grad():
            action_mse = (self.actor.deterministic(obs) - action).square().mean()
            entropy = -self.actor.sample(obs)[1].mean()
            values = torch.stack([loss.detach(), action_mse, entropy]).tolist()
        return dict(zip(BC_METRICS, values, strict=True))

    def param_sets(self) -> tuple[ParamSetSpec, ...]:
        return (ParamSetSpec(POLICY_PARAMS),)

    def params(self, param_set: str) -> dict[str, np.ndarray]:
        """float32 numpy copies of the actor's weights (copies: the learner keeps updating in place)."""
        if param_set != POLICY_PARAMS:
            raise KeyError(f"SAC publishes only the {POLICY_PARAMS!r} parameter set, not {param_set!r}")
        return {
            name: tensor.detach().to("cpu", torch.float32, copy=True).numpy()
            for name, tensor in self.actor.state_dict().items()
        }

    def make_policy(self) -> Any:
        policy = self._make_policy()
        policy.load_params(POLICY_PARAMS, self.params(POLICY_PARAMS))
        return policy

    def state_dict(self) -> dict[str, Any]:
        return learner_state(self._stateful(), {"log_alpha": self.log_alpha}, self._counters())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counters = load_learner_state("SAC", state, self._stateful(), {"log_alpha": self.log_alpha})
        self.num_updates = counters.get("updates", 0)
        self.num_critic_updates = counters.get("critic_updates", 0)
        self.num_actor_updates = counters.get("actor_updates", 0)
        # Optimizer state tensors were replaced: captured CUDA graphs point at the old ones.
        for step in (self._critic_step_fn, self._actor_step_fn):
            if isinstance(step, _GraphedStep):
                step.reset()

    def _stateful(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "target_critic": self.target_critic,
            "critic_optimizer": self.critic_optimizer,
            "policy_optimizer": self.policy_optimizer,
        }

    def _counters(self) -> dict[str, int]:
        return {
            "updates": self.num_updates,
            "critic_updates": self.num_critic_updates,
            "actor_updates": self.num_actor_updates,
        }

    # ---- batch preparation

    def _minibatches(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None
    ) -> tuple[list[_Minibatch], int]:
        """Split into utd_ratio minibatches, append the demo share to each; also returns the online size."""
        utd = self.config.utd_ratio
        size = check_batch(batch, self.fields, self.device, "batch")
        if size % utd:
            raise BatchError(f"batch size {size} is not divisible by utd_ratio {utd}")
        online = _columns(batch, self.config.gamma, source_is_demo=False)
        if demo_batch is None:
            parts = [{key: _rows(col, i, size // utd) for key, col in online.items()} for i in range(utd)]
            return [_Minibatch(**part) for part in parts], size // utd

        demo_size = check_batch(demo_batch, self.fields, self.device, "demo_batch")
        if demo_size % utd:
            raise BatchError(f"demo_batch size {demo_size} is not divisible by utd_ratio {utd}")
        demo = _columns(demo_batch, self.config.gamma, source_is_demo=True)
        # Both sources need the same columns to concatenate: missing weights are 1, missing masks 0.
        if (online["weights"] is None) != (demo["weights"] is None):
            for columns, n in ((online, size), (demo, demo_size)):
                if columns["weights"] is None:
                    columns["weights"] = torch.ones(n, device=self.device)
        if online["demo_mask"] is None:
            online["demo_mask"] = torch.zeros(size, device=self.device)
        minibatches = []
        for i in range(utd):
            part = {
                key: None
                if col is None
                else torch.cat((_rows(col, i, size // utd), _rows(demo[key], i, demo_size // utd)))
                for key, col in online.items()
            }
            minibatches.append(_Minibatch(**part))
        return minibatches, size // utd


def _columns(
    batch: Mapping[str, torch.Tensor], gamma: float, source_is_demo: bool
) -> dict[str, torch.Tensor | None]:
    """The minibatch columns of one source; `discount` = gamma^k * (1 - terminated) for a decision
    that executed k env steps (k = 1 without a step count); truncation never cuts the bootstrap."""
    terminated = batch["terminated"]
    not_terminated = ~terminated if terminated.dtype == torch.bool else 1.0 - terminated
    discount = gamma * not_terminated
    if STEPS_FIELD in batch:
        discount = gamma ** batch[STEPS_FIELD].to(batch["reward"].dtype) * not_terminated
    demo_mask = batch.get(DEMO_FLAG)
    if source_is_demo:
        demo_mask = torch.ones_like(batch["reward"])
    elif demo_mask is not None:
        demo_mask = demo_mask.to(batch["reward"].dtype)
    return {
        "obs": batch["obs"],
        "action": batch["action"],
        "reward": batch["reward"],
        "next_obs": batch["next_obs"],
        "discount": discount,
        "weights": batch.get("weights"),
        "demo_mask": demo_mask,
    }


def _rows(column: torch.Tensor | None, index: int, size: int) -> torch.Tensor | None:
    """The index-th block of `size` rows (a view), or None for an absent column."""
    return None if column is None else column[index * size : (index + 1) * size]


def _optimizer_flags(device: torch.device, config: SACConfig) -> dict[str, bool]:
    """One fused Adam kernel per parameter group; on CUDA, state that graphs and compile can capture."""
    if device.type == "cuda" and (config.cuda_graphs or config.compile):
        # torch.compile traces the foreach implementation; a bare CUDA graph captures the fused one.
        return {"fused": not config.compile, "foreach": config.compile, "capturable": True}
    return {"fused": True}


@dataclass
class _Capture:
    calls: int = 0
    graph: Any = None
    static_inputs: tuple[torch.Tensor | None, ...] = ()
    static_outputs: Any = None


class _GraphedStep:
    """Runs a step eagerly for `warmup` calls per input signature, then captures it in a CUDA graph.

    Warm-up calls are real updates (they also create the optimizer state that capture must see).
    Capturing records kernels without running them, so the capturing call replays once to do its
    update. Inputs are copied into static buffers; outputs are cloned because the next replay
    overwrites them.
    """

    def __init__(self, step: Callable[..., Any], warmup: int = 3) -> None:
        self._step = step
        self._warmup = warmup
        self._captures: dict[tuple[Any, ...], _Capture] = {}

    def reset(self) -> None:
        self._captures.clear()

    def __call__(self, *inputs: torch.Tensor | None) -> Any:
        key = tuple(None if x is None else (tuple(x.shape), x.dtype) for x in inputs)
        capture = self._captures.setdefault(key, _Capture())
        if capture.graph is None and capture.calls < self._warmup:
            capture.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outputs = self._step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return outputs
        if capture.graph is None:
            capture.static_inputs = tuple(None if x is None else x.clone() for x in inputs)
            capture.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(capture.graph):
                capture.static_outputs = self._step(*capture.static_inputs)
        for static, x in zip(capture.static_inputs, inputs, strict=True):
            if static is not None:
                static.copy_(x)
        capture.graph.replay()
        return (
            tuple(out.clone() for out in capture.static_outputs)
            if isinstance(capture.static_outputs, tuple)
            else capture.static_outputs.clone()
        )
