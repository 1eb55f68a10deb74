"""DSRL hyperparameters. Defaults follow the reference (ajwagen/dsrl, `cfg/robomimic/dsrl_lift.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DSRLConfig(BaseModel):
    """DSRL (Wagenmaker et al. 2025): SAC in the latent-noise space of a frozen diffusion policy.

    `variant: na` (noise aliasing, the default) learns a critic Q_A on executed chunks by TD and
    distils a latent critic Q_W(s, w) = Q_A(s, pi_dp(s, w)) on w ~ N(0, I) for the latent actor;
    `variant: sac` is plain SAC over w with the chunk's rewards summed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Literal["na", "sac"] = "na"
    base_policy: str | None = Field(
        None, description="the frozen diffusion policy: a directory written by `distrl pretrain diffusion`"
    )
    chunk: int = Field(4, ge=1, description="actions per decision; must match the base policy's chunk")
    latent_bound: float = Field(
        1.5, gt=0.0, description="the latent actor acts in [-m, m]^(chunk*action_dim)"
    )
    gamma: float = Field(
        0.99, gt=0.0, le=1.0, description="discount per env step (a chunk of k steps discounts by gamma**k)"
    )
    tau: float = Field(0.005, gt=0.0, le=1.0)
    actor_lr: float = Field(3e-4, gt=0.0)
    critic_lr: float = Field(3e-4, gt=0.0)
    alpha_lr: float = Field(3e-4, gt=0.0)
    hidden_sizes: tuple[int, ...] = Field(
        (2048, 2048, 2048), min_length=1, description="actor and critic widths"
    )
    layernorm: bool = Field(True, description="LayerNorm after every hidden layer")
    activation: Literal["tanh", "relu"] = "tanh"
    num_critics: int = Field(2, ge=1)
    utd_ratio: int = Field(
        20, ge=1, description="critic and actor steps per update call (the batch is split)"
    )
    noise_critic_steps: int = Field(10, ge=1, description="DSRL-NA: Q_W distillation steps per update call")
    initial_alpha: float = Field(1.0, gt=0.0)
    autotune_alpha: bool = True
    target_entropy: float = Field(0.0, description="of the latent actor, measured in [-1, 1]^d")
    backup_entropy: bool = Field(
        True,
        description="the TD target includes -alpha log pi(w'|s') (False: the critic learns the plain "
        "return, which a sparse 0/1 reward needs when alpha decays slowly at a low UTD)",
    )
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    seed: int | None = Field(None, description="seeds network initialisation when set")

    @model_validator(mode="after")
    def _check(self) -> DSRLConfig:
        if any(width < 1 for width in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.log_std_min >= self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})")
        return self
