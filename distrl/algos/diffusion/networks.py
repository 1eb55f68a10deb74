"""Noise-prediction networks eps(x_t, t, obs) over action chunks x_t of shape [B, chunk, action_dim]."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from distrl.algos.diffusion.spec import DiffusionSpec


class SinusoidalTime(nn.Module):
    """Diffusion step t -> [B, dim] sin/cos features at geometrically spaced frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _time_batch(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(batch) if t.dim() == 0 else t


class ResidualBlock(nn.Module):
    """x + Linear(Mish(Linear(LayerNorm(x)))): a pre-norm residual MLP block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.mish(self.fc1(self.norm(x))))


class ResidualMLPDenoiser(nn.Module):
    """[noisy chunk (flat), obs, time embedding] -> residual MLP -> predicted noise."""

    def __init__(self, spec: DiffusionSpec) -> None:
        super().__init__()
        self.chunk, self.action_dim = spec.chunk, spec.action_dim
        self.time = nn.Sequential(
            SinusoidalTime(spec.time_dim), nn.Linear(spec.time_dim, spec.time_dim * 2), nn.Mish()
        )
        self.inp = nn.Linear(spec.latent_dim + spec.obs_dim + 2 * spec.time_dim, spec.hidden)
        self.blocks = nn.Sequential(*(ResidualBlock(spec.hidden) for _ in range(spec.blocks)))
        self.out = nn.Sequential(nn.LayerNorm(spec.hidden), nn.Linear(spec.hidden, spec.latent_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, obs: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = torch.cat([x.reshape(batch, -1), obs, self.time(_time_batch(t, batch, x.device))], dim=-1)
        return self.out(self.blocks(self.inp(h))).view(batch, self.chunk, self.action_dim)


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__(
            nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish()
        )


class _FiLMResBlock(nn.Module):
    """Two conv blocks; the condition scales and shifts the first one's output (FiLM)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _ConvBlock(cin, cout, kernel, groups)
        self.conv2 = _ConvBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None].chunk(2, dim=1)
        h = self.conv1(x) * (1 + scale) + shift
        return self.conv2(h) + self.skip(x)


class UNetDenoiser(nn.Module):
    """A 1-D U-Net over the chunk's time axis with FiLM conditioning on (time embedding, obs)."""

    def __init__(self, spec: DiffusionSpec) -> None:
        super().__init__()
        self.chunk, self.action_dim = spec.chunk, spec.action_dim
        k, g = spec.unet_kernel, spec.unet_groups
        cond_dim = 2 * spec.time_dim + spec.obs_dim
        self.time = nn.Sequential(
            SinusoidalTime(spec.time_dim), nn.Linear(spec.time_dim, spec.time_dim * 2), nn.Mish()
        )
        channels = (spec.action_dim, *spec.unet_channels)
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
            last = i == len(spec.unet_channels) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        _FiLMResBlock(cin, cout, cond_dim, k, g),
                        nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1),
                    ]
                )
            )
        mid = spec.unet_channels[-1]
        self.mid = _FiLMResBlock(mid, mid, cond_dim, k, g)
        self.up = nn.ModuleList()
        widths = list(spec.unet_channels)
        for cout, cskip in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(
                nn.ModuleList(
                    [
                        _FiLMResBlock(cskip * 2, cout, cond_dim, k, g),
                        nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
                    ]
                )
            )
        self.final = nn.Sequential(
            _ConvBlock(widths[0], widths[0], k, g), nn.Conv1d(widths[0], spec.action_dim, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, obs: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        cond = torch.cat([self.time(_time_batch(t, batch, x.device)), obs], dim=-1)
        h = x.transpose(1, 2)  # [B, action_dim, chunk]
        skips = []
        for block, downsample in self.down:
            h = block(h, cond)
            skips.append(h)
            h = downsample(h)
        h = self.mid(h, cond)
        for block, upsample in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
            h = upsample(h)
        # The finest level's skip is left unused, as in diffusion_policy's ConditionalUnet1D.
        return self.final(h).transpose(1, 2)


def make_denoiser(spec: DiffusionSpec) -> nn.Module:
    return ResidualMLPDenoiser(spec) if spec.network == "mlp" else UNetDenoiser(spec)
