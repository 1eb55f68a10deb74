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
