"""The learner-side demonstration table: a Zarr demo store held on the learner's device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distrl.algos import SpaceSpec
from distrl.data import open_dataset

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class DemoTable:
    """Every demonstrated transition as device tensors, sampled uniformly with replacement."""

    def __init__(self, path: Path, space: SpaceSpec, device: torch.device, seed: int = 0) -> None:
        dataset = open_dataset(path)
        data = dataset.as_transitions()
        obs_dim, action_dim = data["obs"].shape[1], data["action"].shape[1]
        if (obs_dim, action_dim) != (space.obs_dim, space.action_dim):
            raise ValueError(
                f"demos {path}: obs/action dims ({obs_dim}, {action_dim}) do not match the env's "
                f"({space.obs_dim}, {space.action_dim}); was it recorded on another env or obs key order?"
            )
        if len(data["obs"]) == 0:
            raise ValueError(f"demos {path}: the store holds no transitions")
        self.path = Path(path)
        self.size = len(data["obs"])
        self.episodes = dataset.episodes
        self.device = device
        self._tensors = {
            name: torch.as_tensor(np.ascontiguousarray(data[name]), device=device) for name in FIELDS
        }
        for name in ("obs", "action", "reward", "next_obs"):
            self._tensors[name] = self._tensors[name].float()
        for name in ("terminated", "truncated"):
            self._tensors[name] = self._tensors[name].bool()
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,), device=self.device, generator=self._generator)
        return {name: t.index_select(0, idx) for name, t in self._tensors.items()}

    def transitions(self) -> dict[str, np.ndarray]:
        """All transitions as numpy columns (to insert into replay)."""
        return {name: t.cpu().numpy() for name, t in self._tensors.items()}


def split_batch(batch_size: int, ratio: float) -> tuple[int, int]:
    """(online, demo) items of a learner batch of `batch_size` with `ratio` of it from demos."""
    demo = round(batch_size * ratio)
    return batch_size - demo, demo
