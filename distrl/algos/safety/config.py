"""The `shield:` section of an algorithm config: KBSE's data, kernel, LP and actor-side settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ShieldConfig(BaseModel):
    """Kernel-based safe exploration (KBSE): a barrier fitted on the learner, checked on the actors.

    Set under `algo.shield` of any single-step algorithm (`sac`, `sac_lag`, `xqc`, ...); the env must
    report a per-step `cost` signal (a `safe:` id, or a wrapper declaring one): cost > 0 marks the
    state a step reached as unsafe.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["kbse"] = "kbse"
    state_dims: list[int] | None = Field(
        None,
        description="observation dims the barrier and the dynamics' state are functions of (None = all): "
        "the dims the unsafe predicate reads and those driving them, e.g. [8] (forward velocity) for "
        "safe:HalfCheetah-velocity; fewer dims make the kernels far more data-efficient",
    )
    # Data and fitting (learner).
    fit_every: int = Field(2000, ge=1, description="re-fit the barrier every N learner updates")
    min_transitions: int = Field(1000, ge=10, description="transitions seen before the first fit")
    buffer_size: int = Field(20_000, ge=100, description="reservoir of transitions the fits draw from")
    items_per_update: int = Field(64, ge=1, description="items of each update's batch kept for the shield")
    dictionary_size: int = Field(500, ge=10, description="m: CME dictionary transitions per fit")
    centers: int = Field(150, ge=1, description="p: kernel centers of the barrier expansion")
    max_unsafe: int = Field(200, ge=1, description="unsafe states constrained per fit (B >= 1)")
    max_initial: int = Field(100, ge=1, description="initial states constrained per fit (B <= gamma)")
    regularization: float = Field(1e-3, gt=0, description="lambda of the CME, (K + m lambda I)^-1")
    lengthscale_scale: float = Field(
        0.25, gt=0, description="kernel lengthscales = this x the median heuristic (standardised data)"
    )
    margin: float = Field(0.01, ge=0, description="eps: robustness margin eps sigma(z) ||alpha||_1 in the LP")
    slack_weight: float = Field(
        0.05, gt=0, description="price of one decrease slack relative to c (1/N: N outliers tolerated)"
    )
    action_candidates: int = Field(
        8, ge=1, description="actions per state (the explored one + uniform) the LP's decrease may use"
    )
    fit_iterations: int = Field(2, ge=1, description="LP solves per fit (each re-picks the actions)")
    min_c: float = Field(
        0.02,
        ge=0,
        description="floor on c, the expected barrier rise allowed per step: 0 lets no action approach the "
        "unsafe set (a supermartingale), larger values let the policy pass near it at a looser bound",
    )
    horizon: int | None = Field(None, ge=1, description="T of the bound gamma + c T; None = the env's limit")
    learn_from: Literal["proposed", "executed"] = Field(
        "proposed",
        description="the action the wrapped learner trains on where the shield intervened: the "
        "policy's proposal (the shield is part of the env) or the replacement that was executed",
    )
    intervention_penalty: float = Field(
        0.0,
        ge=0,
        description="subtracted from the reward of a step where the shield intervened, so the policy "
        "learns to propose actions that need no replacement (in the env's reward units)",
    )
    # The check (actors).
    candidates: int = Field(16, ge=1, description="M: candidate actions tried when a proposal fails")
    policy_candidates: float = Field(
        0.5, ge=0, le=1, description="share of the candidates drawn from the policy (the rest uniform)"
    )
    tolerance: float = Field(1e-6, ge=0, description="slack allowed in E[B(x')] <= B(x) + c at the check")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ShieldConfig:
        if self.state_dims is not None and (
            not self.state_dims
            or min(self.state_dims) < 0
            or len(set(self.state_dims)) != len(self.state_dims)
        ):
            raise ValueError(f"state_dims must be distinct non-negative indices, got {self.state_dims}")
        if self.min_transitions > self.buffer_size:
            raise ValueError(
                f"min_transitions ({self.min_transitions}) must be <= buffer_size ({self.buffer_size})"
            )
        return self
