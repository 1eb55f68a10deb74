"""SAC hyperparameters. Defaults follow CleanRL's and Stable-Baselines3's SAC; RLPD's options are off."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bounds on the actor's log standard deviation (CleanRL's). The raw head output is squashed
# into them with tanh rather than hard-clamped, so its gradient never vanishes at a bound.
# exp(-5) ~ 0.007 keeps a little exploration noise; exp(2) ~ 7.4 is already uniform after tanh.
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


class SACConfig(BaseModel):
    """Soft Actor-Critic (Haarnoja et al. 2018) with a learned temperature, plus RLPD's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The paper's defaults.
    gamma: float = Field(0.99, gt=0.0, le=1.0, description="discount")
    tau: float = Field(0.005, gt=0.0, le=1.0, description="Polyak rate of the target critics")
    actor_lr: float = Field(3e-4, gt=0.0)
    critic_lr: float = Field(3e-4, gt=0.0)
    alpha_lr: float = Field(3e-4, gt=0.0)
    hidden_sizes: tuple[int, ...] = Field((256, 256), min_length=1, description="ReLU MLP widths")
    initial_alpha: float = Field(1.0, gt=0.0, description="initial temperature")
    autotune_alpha: bool = Field(True, description="learn the temperature toward target_entropy")
    target_entropy: float | None = Field(None, description="None means -action_dim")
    backup_entropy: bool = Field(
        True, description="the critic's target includes the entropy bonus (False: the plain return)"
    )
    log_std_min: float = LOG_STD_MIN
    log_std_max: float = LOG_STD_MAX
    actor_update_interval: int = Field(1, ge=1, description="actor/alpha step every N update calls")
    target_update_interval: int = Field(1, ge=1, description="Polyak step every N critic steps")
    adam_eps: float = Field(1e-8, gt=0.0)

    # RLPD (Ball et al. 2023) options, off by default.
    critic_layernorm: bool = Field(False, description="LayerNorm after every hidden critic layer")
    num_critics: int = Field(2, ge=1, description="critic ensemble size E")
    critic_subset: int = Field(2, ge=1, description="the backup takes the min over this many target critics")
    actor_q: Literal["min", "mean"] = Field(
        "min", description="how the actor loss reduces the ensemble (RLPD uses mean with E=10)"
    )
    utd_ratio: int = Field(
        1, ge=1, description="critic steps per update call (the batch is split in this many)"
    )
    actor_batch: Literal["last", "all"] = Field(
        "last", description="with utd_ratio > 1 the actor learns on the last minibatch (RLPD) or all of them"
    )
    bc_weight: float = Field(
        0.0, ge=0.0, description="weight of the actor's behaviour cloning on the demo items of each batch"
    )
    bc_q_filter: bool = Field(
        True, description="clone a demo action only where the critic values it above the policy's own"
    )
    bc_action_eps: float = Field(
        1e-5, gt=0.0, lt=0.1, description="demo actions are clamped to (-1+eps, 1-eps) before atanh"
    )

    # Speed flags, meant for CUDA. Off, the update runs eagerly (the fastest choice on a CPU, where
    # compiling measured slower). `compile` also works on a CPU; `cuda_graphs` refuses one.
    compile: bool = Field(False, description="torch.compile the critic and actor steps")
    cuda_graphs: bool = Field(False, description="capture the critic and actor steps in CUDA graphs")
    seed: int | None = Field(None, description="seeds network initialisation when set")

    @model_validator(mode="after")
    def _check(self) -> SACConfig:
        if self.critic_subset > self.num_critics:
            raise ValueError(
                f"critic_subset ({self.critic_subset}) must be <= num_critics ({self.num_critics})"
            )
        if self.log_std_min >= self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})")
        if any(width < 1 for width in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.target_entropy is not None and self.target_entropy != self.target_entropy:
            raise ValueError("target_entropy is NaN")
        return self

    def resolved_target_entropy(self, action_dim: int) -> float:
        return -float(action_dim) if self.target_entropy is None else self.target_entropy
