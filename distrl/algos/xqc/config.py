"""XQC hyperparameters. Defaults follow the reference (danielpalenicek/xqc, `conf/agent/xqc.yaml`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class XQCConfig(BaseModel):
    """XQC (Palenicek et al. 2026): BatchNorm + weight-normalised critics with a categorical (C51)
    loss, a joint (s, a)/(s', a') pass as in CrossQ, a target critic, and rewards scaled by the
    running std of the discounted return. XQCfD adds demos and a stationary prior policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gamma: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="discount; None: clip((T/5 - 1)/(T/5), 0.95, 0.995) for time limit T",
    )
    tau: float = Field(0.005, gt=0.0, le=1.0, description="Polyak rate of the target critics")
    actor_lr: float = Field(3e-4, gt=0.0)
    critic_lr: float = Field(3e-4, gt=0.0)
    alpha_lr: float = Field(3e-4, gt=0.0)
    lr_end: float = Field(3e-5, gt=0.0, description="learning rates decay linearly to this")
    lr_decay_steps: int | None = Field(
        None, ge=1, description="critic steps over which the rates decay (None: constant rates)"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's decoupled weight decay")
    critic_hidden: tuple[int, ...] = Field((512, 512, 512, 512), min_length=1)
    actor_hidden: tuple[int, ...] = Field((256, 256, 256, 256), min_length=1)
    num_critics: int = Field(2, ge=1)
    num_bins: int = Field(101, ge=2, description="categorical support size")
    v_min: float = -5.0
    v_max: float = 5.0
    bn_momentum: float = Field(
        0.99, gt=0.0, lt=1.0, description="running statistics keep this much (flax's sense)"
    )
    bn_eps: float = Field(1e-3, gt=0.0)
    weight_norm: bool = Field(True, description="project weight rows to unit L2 norm after every step")
    initial_alpha: float = Field(0.01, gt=0.0)
    target_entropy: float | None = Field(None, description="None: -action_dim / 2")
    policy_delay: int = Field(3, ge=1, description="actor and temperature step every N critic steps")
    utd_ratio: int = Field(
        2, ge=1, description="critic steps per update call (the batch is split in this many)"
    )
    reward_scaling: bool = Field(
        True, description="divide rewards by the running std of the discounted return"
    )
    backup_entropy: bool = Field(
        True,
        description="the target includes -alpha log pi(a'|s') (False: the critic learns the plain return, "
        "which a sharply behaviour-cloned policy needs on sparse rewards)",
    )
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    # XQCfD: learning from demonstrations.
    stationary_policy: bool = Field(
        False, description="the actor's head is CSIL's stationary periodic-feature head (XQCfD)"
    )
    feature_dim: int = Field(256, ge=2, description="periodic features of the stationary head (even)")
    prior_std: float = Field(1.0, gt=0.0, description="the stationary head's std far from the data")
    std_rank: int | None = Field(
        None, ge=1, description="rank of the stationary head's variance factor (None: full, CSIL's)"
    )
    bc_weight: float = Field(
        0.0, ge=0.0, description="weight of a behaviour-cloning term on the demo items of each actor batch"
    )
    bc_q_filter: bool = Field(
        True, description="clone a demo action only where the critics value it above the policy's mode"
    )
    freeze_actor_norm: bool = Field(
        False,
        description="actor updates run the actor's BatchNorm in eval mode, so it keeps the statistics it "
        "had after pretraining (the stationary head's periodic features shift with them)",
    )
    pretrain_critic: bool = Field(
        False, description="pretraining on demos also trains the critics by TD on demo transitions"
    )
    bc_action_eps: float = Field(1e-5, gt=0.0, lt=0.1, description="demo actions clamp to (-1+eps, 1-eps)")

    compile: bool = Field(False, description="torch.compile the critic and actor steps")
    seed: int | None = Field(None, description="seeds network initialisation when set")

    @model_validator(mode="after")
    def _check(self) -> XQCConfig:
        if self.v_min >= self.v_max:
            raise ValueError(f"v_min ({self.v_min}) must be < v_max ({self.v_max})")
        if self.log_std_min >= self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})")
        if self.feature_dim % 2:
            raise ValueError(f"feature_dim must be even, got {self.feature_dim}")
        if self.lr_end > min(self.actor_lr, self.critic_lr, self.alpha_lr):
            raise ValueError("lr_end must not exceed the initial learning rates")
        return self

    def resolved_gamma(self, max_episode_steps: int | None) -> float:
        """The reference's episode-length heuristic unless `gamma` is set (0.99 without a time limit)."""
        if self.gamma is not None:
            return self.gamma
        if max_episode_steps is None:
            return 0.99
        horizon = max_episode_steps / 5.0
        return float(min(max((horizon - 1.0) / horizon, 0.95), 0.995))

    def resolved_target_entropy(self, action_dim: int) -> float:
        return -action_dim / 2.0 if self.target_entropy is None else self.target_entropy


class XQCfDConfig(XQCConfig):
    """XQC from demonstrations: the stationary prior policy on by default (demos and pretraining
    come from the experiment's `demos` and `pretrain` sections)."""

    stationary_policy: bool = True
