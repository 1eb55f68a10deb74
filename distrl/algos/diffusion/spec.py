"""What a diffusion policy is made of: sizes, the denoiser's architecture and the noise schedule.

A `DiffusionSpec` travels with the weights (in the checkpoint file and in the "base" parameter
set the DSRL learner publishes), so whoever holds the weights can rebuild the network and the
sampler without any other config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DiffusionSpec(BaseModel):
    """A noise-prediction policy over action chunks of `chunk` steps, conditioned on one observation.

    `network: mlp` is a residual MLP with a sinusoidal time embedding (fast on a CPU); `unet` is a
    1-D convolutional U-Net over the chunk (diffusion_policy's `ConditionalUnet1D`, smaller).
    Training noises with DDPM over `train_timesteps`; sampling runs DDIM with eta 0 over
    `inference_steps`, so a chunk is a deterministic function of the observation and the noise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    obs_dim: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    chunk: int = Field(4, ge=1, description="actions per chunk (Ta)")
    network: Literal["mlp", "unet"] = "mlp"
    hidden: int = Field(256, ge=1, description="MLP width")
    blocks: int = Field(3, ge=1, description="residual MLP blocks")
    time_dim: int = Field(32, ge=2, description="width of the sinusoidal time embedding")
    unet_channels: tuple[int, ...] = Field((64, 128), min_length=1, description="U-Net widths per level")
    unet_kernel: int = Field(3, ge=1)
    unet_groups: int = Field(8, ge=1, description="GroupNorm groups")
    train_timesteps: int = Field(20, ge=2, description="DDPM diffusion steps")
    inference_steps: int = Field(8, ge=1, description="DDIM denoising steps per decision")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    clip_sample: bool = Field(True, description="clip the predicted clean chunk to [-1, 1] at every step")

    @model_validator(mode="after")
    def _check(self) -> DiffusionSpec:
        if self.inference_steps > self.train_timesteps:
            raise ValueError(
                f"inference_steps ({self.inference_steps}) must be <= "
                f"train_timesteps ({self.train_timesteps})"
            )
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even, got {self.time_dim}")
        if self.network == "unet":
            levels = len(self.unet_channels)
            if self.chunk % (2 ** (levels - 1)):
                raise ValueError(
                    f"a U-Net with {levels} levels halves the chunk {levels - 1} times: chunk "
                    f"({self.chunk}) must be divisible by {2 ** (levels - 1)}"
                )
            if any(c % self.unet_groups for c in self.unet_channels):
                raise ValueError(
                    f"unet_channels {self.unet_channels} must be multiples of "
                    f"unet_groups ({self.unet_groups})"
                )
        return self

    @property
    def latent_dim(self) -> int:
        """Size of the noise a chunk is denoised from (chunk x action_dim)."""
        return self.chunk * self.action_dim
