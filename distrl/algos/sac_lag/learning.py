"""The SAC-Lagrangian update (Ha et al. 2020; Safety-Starter-Agents' and OmniSafe's SAC-Lag).

SAC's update (`distrl.algos.sac.learning`) plus a cost critic and a Lagrange multiplier lambda.
Per update call:

    for each of utd_ratio critic minibatches (demo items appended to each):
        SAC's critic step on the reward
        y_c    = c + cost_gamma^k (1 - terminated) reduce_{j=1,2} Q'_c,j(s', a'),  a' ~ pi(s')
        L_Qc   = sum_j mean_b w_b (Q_c,j(s, a) - y_c)^2     -> cost critic step, Polyak targets (SAC's tau)
    on the last minibatch (or all of them), with a~ ~ pi(s):
        L_pi   = mean_b [alpha log pi(a~|s) - Q_r(s, a~) + lambda Q_c(s, a~)] / (1 + lambda)
        L_alpha = SAC's temperature loss                                -> actor/alpha step (as SAC's)
        L_lambda = -lambda (mean_b Q_c(s, a~) - d)                       -> lambda step, then
        lambda <- clamp(lambda, 0, lagrangian_max)

`reduce` is the max of the twin cost critics by default (`cost_q: max`, the conservative estimate);
the (1 + lambda) division is `normalize_penalty`. The cost target has no entropy term: Q_c is the
plain expected discounted cost of the policy. d is the per-step budget (`SACLagConfig.cost_budget`),
so lambda grows while the policy's expected discounted cost is above it and shrinks to 0 below.

lambda is a raw scalar projected onto [0, lagrangian_max] after each Adam step (OmniSafe's
choice): 0 is reachable exactly, and its gradient does not vanish near 0 as a softplus's would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from distrl.algos.base import (
    STEPS_FIELD,
    BatchError,
    SpaceSpec,
    learner_state,
    load_learner_state,
)
from distrl.algos.sac.learning import (
    ACTOR_METRICS,
    CRITIC_METRICS,
    DEMO_BC_METRICS,
    SOURCE_METRICS,
    SACLearner,
    critic_loss,
    demo_bc_term,
    reduce_ensemble,
    temperature_loss,
)
from distrl.algos.sac.networks import CriticEnsemble, TanhGaussianActor
from distrl.algos.sac_lag.config import SACLagConfig

COST_FIELD = "cost"
COST_CRITIC_METRICS = ("cost_critic_loss", "cost_q", "cost_target_q_mean")
LAGRANGIAN_ACTOR_METRICS = ("cost_q_pi", "lagrangian_loss")
NUM_COST_CRITICS = 2

# --------------------------------------------------------------------------------------------
# Losses


def reduce_cost(q: torch.Tensor, reduce: str) -> torch.Tensor:
    """Cost Q values [E, B] -> [B]: the max over the members (conservative) or their mean."""
    return torch.amax(q, dim=0) if reduce == "max" else q.mean(dim=0)


def cost_td_target(
    actor: TanhGaussianActor,
    target_cost_critic: CriticEnsemble,
    next_obs: torch.Tensor,
    cost: torch.Tensor,
    cost_discount: torch.Tensor,
    reduce: str = "max",
) -> torch.Tensor:
    """The cost critic's backup y_c [B]; `cost_discount` is cost_gamma^k * (1 - terminated).

    No entropy term: the cost critic learns the policy's plain expected discounted cost.
    """
    next_action, _ = actor.sample(next_obs)
    return cost + cost_discount * reduce_cost(target_cost_critic(next_obs, next_action), reduce)


def lagrangian_actor_loss(
    actor: TanhGaussianActor,
    critic: CriticEnsemble,
    cost_critic: CriticEnsemble,
    obs: torch.Tensor,
    alpha: torch.Tensor,
    lagrangian: torch.Tensor,
    reward_reduce: str = "min",
    cost_reduce: str = "max",
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E[alpha log pi(a|s) - Q_r(s, a) + lambda Q_c(s, a)] (/ (1 + lambda)), a ~ pi(s), against fixed
    critics and a fixed lambda; returns (loss, log pi [B], Q_c(s, a) [B] detached)."""
    action, log_prob = actor.sample(obs)
    q_reward = reduce_ensemble(critic(obs, action, detach_params=True), reward_reduce)
    q_cost = reduce_cost(cost_critic(obs, action, detach_params=True), cost_reduce)
    loss = (alpha * log_prob - q_reward + lagrangian * q_cost).mean()
    if normalize:
        loss = loss / (1.0 + lagrangian)
    return loss, log_prob, q_cost.detach()


def lagrangian_loss(lagrangian: torch.Tensor, q_cost: torch.Tensor, budget: float) -> torch.Tensor:
    """-lambda (E[Q_c(s, a~)] - d): descending it raises lambda while the expected discounted cost is
    above the budget d and lowers it below."""
    return -lagrangian * (q_cost.detach().mean() - budget)


# --------------------------------------------------------------------------------------------
# The learner


def missing_cost_error(spec: SpaceSpec) -> ValueError:
    return ValueError(
        f"sac_lag needs a per-step {COST_FIELD!r} signal from the env, but its signals are "
        f"{list(spec.signals)}: use a safe: env id (e.g. safe:point-goal) or add an env wrapper "
        f"(env.wrappers) that reports info['cost'] and declares distrl_signals = ('cost',)"
    )


class SACLagLearner(SACLearner):
    """SAC's learner plus a twin cost critic (with its Polyak target) and the multiplier lambda.

    Implements `distrl.algos.base.Algorithm`; batches hold a float32 `cost` column (a demo batch
    without one counts as cost 0). Priorities are SAC's reward |TD| errors.
    """

    def __init__(
        self,
        spec: SpaceSpec,
        config: SACLagConfig,
        actor: TanhGaussianActor,
        critic: CriticEnsemble,
        cost_critic: CriticEnsemble,
        device: torch.device,
        make_policy: Callable[[], Any],
    ) -> None:
        if COST_FIELD not in spec.signals:
            raise missing_cost_error(spec)
        super().__init__(spec, config, actor, critic, device, make_policy)
        self.config: SACLagConfig = config
        self.cost_gamma = config.resolved_cost_gamma()
        self.cost_budget = config.cost_budget(spec.max_episode_steps)
        self.cost_critic = cost_critic.to(device)
        self.target_cost_critic = CriticEnsemble(
            spec.obs_dim,
            spec.action_dim,
            config.resolved_cost_hidden(),
            NUM_COST_CRITICS,
            config.critic_layernorm,
        ).to(device)
        self.target_cost_critic.load_state_dict(self.cost_critic.state_dict())
        self.target_cost_critic.requires_grad_(False)
        # Eager steps only (the config refuses compile and cuda_graphs): one fused Adam kernel.
        self.cost_critic_optimizer = torch.optim.Adam(
            self.cost_critic.parameters(), lr=config.critic_lr, eps=config.adam_eps, fused=True
        )
        self.lagrangian = torch.nn.Parameter(torch.tensor(config.initial_lagrangian, device=device))
        self.lagrangian_optimizer = torch.optim.Adam([self.lagrangian], lr=config.lagrangian_lr)
        # One fused Polyak op over the reward and the cost targets.
        self._target_params = [*self._target_params, *self.target_cost_critic.parameters()]
        self._critic_params = [*self._critic_params, *self.cost_critic.parameters()]

    # ---- the steps

    def _cost_critic_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        next_obs: torch.Tensor,
        cost: torch.Tensor,
        cost_discount: torch.Tensor,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        with torch.no_grad():
            target = cost_td_target(
                self.actor, self.target_cost_critic, next_obs, cost, cost_discount, self.config.cost_q
            )
        loss, q = critic_loss(self.cost_critic, obs, action, target, weights)
        self.cost_critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.cost_critic_optimizer.step()
        with torch.no_grad():
            return torch.stack([loss, q.mean(), target.mean()])

    def _actor_step(
        self, obs: torch.Tensor, action: torch.Tensor | None = None, demo_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        config = self.config
        alpha = self.log_alpha.exp()
        lagrangian = self.lagrangian.detach()
        loss_pi, log_prob, q_cost = lagrangian_actor_loss(
            self.actor, self.critic, self.cost_critic, obs, alpha.detach(), lagrangian,
            config.actor_q, config.cost_q, config.normalize_penalty,
        )  # fmt: skip
        loss = loss_pi
        if config.autotune_alpha:
            loss_alpha = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
            loss = loss + loss_alpha
        else:
            loss_alpha = torch.zeros((), device=obs.device)
        metrics = [loss_pi, loss_alpha, alpha, -log_prob.mean()]
        if config.bc_weight > 0.0 and demo_mask is not None:
            bc, kept = demo_bc_term(
                self.actor, self.critic, obs, action, demo_mask, config.bc_q_filter,
                config.actor_q, config.bc_action_eps,
            )  # fmt: skip
            loss = loss + config.bc_weight * bc
            metrics += [bc, kept]
        elif config.bc_weight > 0.0:
            metrics += [torch.zeros_like(alpha), torch.zeros_like(alpha)]
        loss_lambda = lagrangian_loss(self.lagrangian, q_cost, self.cost_budget)
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.lagrangian_optimizer.zero_grad(set_to_none=True)
        (loss + loss_lambda).backward()
        self.policy_optimizer.step()
        self.lagrangian_optimizer.step()
        with torch.no_grad():
            self.lagrangian.clamp_(0.0, config.lagrangian_max)
            return torch.stack([*metrics, q_cost.mean(), loss_lambda]).detach()

    # ---- the public interface

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        """SAC's update plus, on every critic minibatch, a cost critic step, and with every actor
        step a lambda step. Metrics: SAC's plus `cost_critic_loss`, `cost_q`, `cost_target_q_mean`,
        `lagrangian` (after this update), `cost_budget`, and with an actor step `cost_q_pi`
        (E[Q_c(s, a~)], what lambda is driven by) and `lagrangian_loss`."""
        minibatches, num_online = self._minibatches(batch, demo_batch)
        cost_parts = self._cost_minibatches(batch, demo_batch)

        def cost_step(i: int, mb: Any) -> torch.Tensor:
            cost, cost_discount = cost_parts[i]
            return self._cost_critic_step(mb.obs, mb.action, mb.next_obs, cost, cost_discount, mb.weights)

        critic_metrics, actor_metrics = self._steps(minibatches, num_online, cost_step)
        names = [
            *CRITIC_METRICS,
            *(SOURCE_METRICS if minibatches[0].demo_mask is not None else ()),
            *COST_CRITIC_METRICS,
        ]
        tensors = [torch.stack(critic_metrics).mean(dim=0), self.lagrangian.detach().reshape(1)]
        names.append("lagrangian")
        if actor_metrics is not None:
            tensors.append(actor_metrics)
            names += [
                *ACTOR_METRICS,
                *(DEMO_BC_METRICS if self.config.bc_weight > 0.0 else ()),
                *LAGRANGIAN_ACTOR_METRICS,
            ]
        # One device->host transfer for all metrics.
        out = dict(zip(names, torch.cat(tensors).tolist(), strict=True))
        out["cost_budget"] = self.cost_budget
        return out

    def lagrangian_value(self) -> float:
        """The current lambda."""
        return float(self.lagrangian.detach())

    def state_dict(self) -> dict[str, Any]:
        return learner_state(self._stateful(), self._loose_params(), self._counters())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counters = load_learner_state("SAC-Lag", state, self._stateful(), self._loose_params())
        self.num_updates = counters.get("updates", 0)
        self.num_critic_updates = counters.get("critic_updates", 0)
        self.num_actor_updates = counters.get("actor_updates", 0)

    def _stateful(self) -> dict[str, Any]:
        return {
            **super()._stateful(),
            "cost_critic": self.cost_critic,
            "target_cost_critic": self.target_cost_critic,
            "cost_critic_optimizer": self.cost_critic_optimizer,
            "lagrangian_optimizer": self.lagrangian_optimizer,
        }

    def _loose_params(self) -> dict[str, torch.Tensor]:
        return {"log_alpha": self.log_alpha, "lagrangian": self.lagrangian}

    # ---- batch preparation

    def _cost_minibatches(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(cost, cost_discount) per critic minibatch, in the rows `_minibatches` gave it: the
        online block, then (with demos) the demo block. SAC's `_minibatches` checked both batches."""
        utd = self.config.utd_ratio
        sources = [cost_columns(batch, self.cost_gamma, "batch")]
        if demo_batch is not None:
            sources.append(cost_columns(demo_batch, self.cost_gamma, "demo_batch", missing_is_zero=True))
        blocks = [(cost.chunk(utd), discount.chunk(utd)) for cost, discount in sources]
        return [
            (torch.cat([cost[i] for cost, _ in blocks]), torch.cat([discount[i] for _, discount in blocks]))
            for i in range(utd)
        ]


def cost_columns(
    batch: Mapping[str, torch.Tensor], cost_gamma: float, name: str = "batch", missing_is_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost [B], cost_gamma^k * (1 - terminated) [B]) of one source, k the executed env steps of a
    decision (1 without a step count); truncation never cuts the bootstrap.

    A source without a cost column is refused, or (`missing_is_zero`, for demo batches from a store
    recorded without costs) counted as cost 0.
    """
    reward = batch["reward"]
    if COST_FIELD in batch:
        cost = batch[COST_FIELD]
    elif missing_is_zero:
        cost = torch.zeros_like(reward)
    else:
        raise BatchError(f"{name} is missing {COST_FIELD!r}; sac_lag trains its cost critic on it")
    terminated = batch["terminated"]
    not_terminated = ~terminated if terminated.dtype == torch.bool else 1.0 - terminated
    steps = batch[STEPS_FIELD].to(reward.dtype) if STEPS_FIELD in batch else torch.ones_like(reward)
    return cost, cost_gamma**steps * not_terminated
