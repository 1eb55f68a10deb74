"""Random training batches for the SAC-family learner tests (same generator, same draws)."""

from __future__ import annotations

import torch

from distrl.algos import SpaceSpec


def random_batch(size: int, seed: int, spec: SpaceSpec) -> dict[str, torch.Tensor]:
    """obs, action in [-1, 1], reward, next_obs, and ~30% terminated / truncated items."""
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(size, spec.obs_dim, generator=g),
        "action": torch.rand(size, spec.action_dim, generator=g) * 2 - 1,
        "reward": torch.randn(size, generator=g),
        "next_obs": torch.randn(size, spec.obs_dim, generator=g),
        "terminated": torch.rand(size, generator=g) < 0.3,
        "truncated": torch.rand(size, generator=g) < 0.3,
    }


def bandit_batch(best: torch.Tensor, size: int = 64) -> dict[str, torch.Tensor]:
    """A one-step bandit over 2-d obs: uniform actions, reward -|a - best|^2, every step terminal.
    Draws from torch's global generator (the caller seeds it)."""
    action = torch.rand(size, 2) * 2 - 1
    return {
        "obs": torch.randn(size, 2),
        "action": action,
        "reward": -(action - best).square().sum(-1),
        "next_obs": torch.randn(size, 2),
        "terminated": torch.ones(size, dtype=torch.bool),
    }
