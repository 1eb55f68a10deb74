"""SAC-Lagrangian hyperparameters: every SAC option plus the cost constraint and its multiplier.

Defaults follow the Safety-Gymnasium convention (episode cost limit 25) and Safety-Starter-Agents'
SAC-Lag (Ha et al. 2020): the multiplier starts at 0 and only grows while the policy's expected
discounted cost is above its per-step budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distrl.algos.sac.config import SACConfig

# The episode length the per-step budget assumes when the env has no time limit (MuJoCo's and
# Safety-Gymnasium's usual 1000 steps).
DEFAULT_EPISODE_STEPS = 1000


class SACLagConfig(SACConfig):
    """SAC with a learned cost critic and a Lagrange multiplier enforcing E[episode cost] <= cost_limit."""

    cost_limit: float = Field(
        25.0, ge=0.0, description="the episode cost the policy may spend (Safety-Gymnasium's 25)"
    )
    cost_gamma: float | None = Field(
        None, gt=0.0, le=1.0, description="discount of the cost critic (None = gamma)"
    )
    lagrangian_lr: float = Field(
        5e-3, ge=0.0, description="Adam learning rate of lambda; 0 keeps lambda fixed at initial_lagrangian"
    )
    initial_lagrangian: float = Field(0.0, ge=0.0, description="lambda at the start of training")
    lagrangian_max: float = Field(100.0, gt=0.0, description="lambda is projected onto [0, lagrangian_max]")
    normalize_penalty: bool = Field(
        True, description="divide the actor loss by (1 + lambda), so its scale stays that of SAC's"
    )
    cost_q: Literal["max", "mean"] = Field(
        "max", description="how the twin cost critics are reduced (max: the conservative estimate)"
    )
    cost_critic_hidden: tuple[int, ...] | None = Field(
        None, min_length=1, description="cost critic widths (None = hidden_sizes)"
    )

    @model_validator(mode="after")
    def _check_lagrangian(self) -> SACLagConfig:
        # The lambda step and the cost critic run eagerly; nothing captures them in a graph yet.
        for flag in ("compile", "cuda_graphs"):
            if getattr(self, flag):
                raise ValueError(f"sac_lag does not support {flag}: true yet; leave {flag} false")
        if self.initial_lagrangian > self.lagrangian_max:
            raise ValueError(
                f"initial_lagrangian ({self.initial_lagrangian}) must be <= "
                f"lagrangian_max ({self.lagrangian_max})"
            )
        if self.cost_critic_hidden is not None and any(width < 1 for width in self.cost_critic_hidden):
            raise ValueError(f"cost_critic_hidden must be positive, got {self.cost_critic_hidden}")
        return self

    def resolved_cost_gamma(self) -> float:
        return self.gamma if self.cost_gamma is None else self.cost_gamma

    def resolved_cost_hidden(self) -> tuple[int, ...]:
        return self.hidden_sizes if self.cost_critic_hidden is None else self.cost_critic_hidden

    def cost_budget(self, max_episode_steps: int | None) -> float:
        """The per-step budget d the expected discounted cost Q_c(s, a~) is held to.

        A policy spending exactly cost_limit per episode of T steps, evenly (cost_limit / T a step),
        has Q_c = (cost_limit / T) (1 - cost_gamma^T) / (1 - cost_gamma) from the episode's start;
        T is the env's time limit, DEFAULT_EPISODE_STEPS without one.
        """
        steps = DEFAULT_EPISODE_STEPS if max_episode_steps is None else max_episode_steps
        gamma = self.resolved_cost_gamma()
        if gamma == 1.0:
            return self.cost_limit
        return self.cost_limit * (1.0 - gamma**steps) / ((1.0 - gamma) * steps)
