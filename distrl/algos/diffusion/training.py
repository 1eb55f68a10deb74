"""Behaviour cloning of a diffusion policy on demo chunks: the optimiser loop, no I/O.

trainer = DiffusionTrainer(model, TrainConfig(steps=5000), device)
trainer.fit_stats(obs)                          # normalisation from the demos
for step in range(config.steps):
    loss = trainer.step(obs, chunks)            # numpy or tensors, the whole demo set
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from distrl.algos.diffusion.model import DiffusionModel


class TrainConfig(BaseModel):
    """Pretraining settings (`distrl pretrain diffusion` overrides them with key=value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(5000, ge=1, description="gradient steps")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0, description="peak AdamW learning rate (cosine decay to 1%)")
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(1e-6, ge=0.0)
    ema: float = Field(0.995, ge=0.0, lt=1.0, description="EMA of the weights that is saved (0: off)")
    seed: int = 0


class DiffusionTrainer:
    def __init__(self, model: DiffusionModel, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.model = model.to(device).train()
        self.ema = DiffusionModel(model.spec).to(device).eval().requires_grad_(False)
        self.ema.load_state_dict(model.state_dict())
        self.optimizer = torch.optim.AdamW(
            model.denoiser.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.steps = 0
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit_stats(self, obs: np.ndarray) -> None:
        obs = np.asarray(obs, dtype=np.float64)
        for model in (self.model, self.ema):
            model.set_obs_stats(obs.mean(axis=0), obs.std(axis=0))

    def lr(self) -> float:
        c = self.config
        if self.steps < c.warmup_steps:
            return c.lr * (self.steps + 1) / c.warmup_steps
        progress = (self.steps - c.warmup_steps) / max(c.steps - c.warmup_steps, 1)
        return c.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def step(self, obs: np.ndarray | torch.Tensor, chunks: np.ndarray | torch.Tensor) -> float:
        """One gradient step on a batch drawn uniformly from the given demo set."""
        if self._data is None or self._data[0].shape[0] != len(obs):
            self._data = (
                torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device),
                torch.as_tensor(np.asarray(chunks), dtype=torch.float32, device=self.device),
            )
        all_obs, all_chunks = self._data
        idx = torch.randint(
            0, len(all_obs), (self.config.batch_size,), device=self.device, generator=self.generator
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        loss = self.model.loss(all_obs[idx], all_chunks[idx], generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.denoiser.parameters(), 1.0)
        self.optimizer.step()
        self._update_ema()
        self.steps += 1
        return float(loss.detach())

    def result(self) -> DiffusionModel:
        """The weights to keep: the EMA copy when on, on the CPU, frozen."""
        chosen = self.ema if self.config.ema > 0 else self.model
        out = DiffusionModel(chosen.spec)
        out.load_state_dict({k: v.detach().cpu() for k, v in chosen.state_dict().items()})
        return out.eval().requires_grad_(False)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.config.ema <= 0:
            return
        # Warm start as diffusion_policy does: the decay grows toward its target over the first steps.
        decay = min(self.config.ema, (1 + self.steps) / (10 + self.steps))
        for ema_p, p in zip(self.ema.denoiser.parameters(), self.model.denoiser.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
