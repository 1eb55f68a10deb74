"""A diffusion policy over action chunks: `chunk = pi_dp(obs, w)`, a deterministic function of the noise.

Training (behaviour cloning) noises demo chunks with diffusers' `DDPMScheduler` and regresses the
noise; sampling starts from the latent `w` and runs diffusers' `DDIMScheduler` with eta 0, the
schedulers diffusion_policy and LeRobot use. Observations are normalised with the statistics of
the demos it was trained on; they are buffers of the module and travel with the weights.

    model = DiffusionModel(spec)
    loss = model.loss(obs, chunks)                      # [B, obs_dim], [B, chunk, action_dim]
    chunk = model.denoise(obs, w)                       # w: [B, chunk, action_dim] or [B, chunk*action_dim]
    tensors = model.tensors()                           # a parameter set / checkpoint, spec included
    same = DiffusionModel.from_tensors(tensors)
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from pydantic import ValidationError
from torch import nn

from distrl.algos.diffusion.networks import make_denoiser
from distrl.algos.diffusion.spec import DiffusionSpec

# The spec rides along with the weights as JSON bytes under this name (uint8), so a parameter set
# or a checkpoint file is self-describing.
SPEC_TENSOR = "spec_json"
_STD_FLOOR = 1e-3


class DiffusionModelError(ValueError):
    """Weights or a spec that do not make a diffusion policy; the message names the problem."""


class DiffusionModel(nn.Module):
    def __init__(self, spec: DiffusionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.denoiser = make_denoiser(spec)
        self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.obs_dim))
        schedule = dict(
            num_train_timesteps=spec.train_timesteps,
            beta_schedule=spec.beta_schedule,
            clip_sample=spec.clip_sample,
            prediction_type="epsilon",
        )
        self.train_scheduler = DDPMScheduler(**schedule)
        self.sample_scheduler = DDIMScheduler(**schedule, set_alpha_to_one=True, steps_offset=0)
        self.sample_scheduler.set_timesteps(spec.inference_steps)
        self._timesteps = [int(t) for t in self.sample_scheduler.timesteps]

    # -- normalisation ---------------------------------------------------------------------

    def set_obs_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if mean.shape != (self.spec.obs_dim,) or std.shape != (self.spec.obs_dim,):
            raise DiffusionModelError(f"obs statistics must have shape ({self.spec.obs_dim},)")
        with torch.no_grad():
            self.obs_mean.copy_(torch.from_numpy(mean))
            self.obs_std.copy_(torch.from_numpy(np.maximum(std, _STD_FLOOR)))

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    # -- training and sampling -------------------------------------------------------------

    def loss(
        self, obs: torch.Tensor, chunks: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The DDPM noise-regression loss on demo chunks [B, chunk, action_dim] in [-1, 1]."""
        batch = chunks.shape[0]
        noise = torch.randn(chunks.shape, device=chunks.device, generator=generator)
        t = torch.randint(0, self.spec.train_timesteps, (batch,), device=chunks.device, generator=generator)
        noisy = self.train_scheduler.add_noise(chunks, noise, t)
        return F.mse_loss(self.denoiser(noisy, t, self.normalise(obs)), noise)

    def denoise(self, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim], noise w [B, chunk, action_dim] (or flat) -> chunk [B, chunk, action_dim].

        DDIM with eta 0 adds no noise of its own, so the same (obs, w) always gives the same chunk.
        Gradients flow through when the caller enables them (nothing here detaches).
        """
        spec = self.spec
        x = w.reshape(w.shape[0], spec.chunk, spec.action_dim)
        cond = self.normalise(obs)
        scheduler = self.sample_scheduler
        for t in self._timesteps:
            eps = self.denoiser(x, t, cond)
            x = scheduler.step(eps, t, x, eta=0.0, return_dict=False)[0]
        return x.clamp(-1.0, 1.0)

    # -- weights in and out -----------------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        """Every weight and statistic as float32 numpy arrays, plus the spec as JSON bytes."""
        out = {name: t.detach().cpu().numpy().astype(np.float32) for name, t in self.state_dict().items()}
        out[SPEC_TENSOR] = np.frombuffer(self.spec.model_dump_json().encode(), dtype=np.uint8).copy()
        return out

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, np.ndarray], what: str = "diffusion weights"
    ) -> DiffusionModel:
        """Rebuild a model from `tensors()`; a missing spec, a bad spec, or weights that do not fit
        it raise DiffusionModelError naming the problem."""
        spec = spec_from_tensors(tensors, what)
        model = cls(spec)
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        given = {name: np.asarray(v) for name, v in tensors.items() if name != SPEC_TENSOR}
        if set(given) != set(expected):
            raise DiffusionModelError(
                f"{what} do not fit their spec: missing {sorted(set(expected) - set(given))}, "
                f"unexpected {sorted(set(given) - set(expected))}"
            )
        state = {}
        for name, array in given.items():
            if array.shape != expected[name]:
                raise DiffusionModelError(
                    f"{what}: {name!r} has shape {array.shape}, expected {expected[name]}"
                )
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise DiffusionModelError(f"{what}: {name!r} must hold finite floats")
            state[name] = torch.tensor(array, dtype=torch.float32)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)


def spec_from_tensors(tensors: Mapping[str, np.ndarray], what: str = "diffusion weights") -> DiffusionSpec:
    if SPEC_TENSOR not in tensors:
        raise DiffusionModelError(
            f"{what} carry no {SPEC_TENSOR!r}: not written by distrl's diffusion policy"
        )
    raw = np.asarray(tensors[SPEC_TENSOR])
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise DiffusionModelError(f"{what}: {SPEC_TENSOR!r} must be 1-D uint8 JSON bytes")
    try:
        return DiffusionSpec.model_validate(json.loads(raw.tobytes().decode()))
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise DiffusionModelError(f"{what}: the spec is not valid: {exc}") from None
