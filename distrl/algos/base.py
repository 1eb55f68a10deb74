"""The algorithm interface: what a learner holds, what an actor holds, and the batch they share.

System code (learners, actors) talks to every algorithm through these two protocols and never
branches on an algorithm's name. Everything here is pure PyTorch/numpy: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# Keys a training batch must carry. `truncated` travels too but never changes an update (only
# `terminated` cuts the bootstrap), so it is optional here, like `weights` and `is_demo`.
BATCH_KEYS: tuple[str, ...] = ("obs", "action", "reward", "next_obs", "terminated")
OPTIONAL_BATCH_KEYS: tuple[str, ...] = ("truncated", "weights", "is_demo")


class BatchError(ValueError):
    """A training batch with a missing key or a shape that does not match the algorithm's spaces."""


@dataclass(frozen=True)
class SpaceSpec:
    """The sizes an algorithm builds its networks from. Actions always live in [-1, 1]."""

    obs_dim: int
    action_dim: int

    def __post_init__(self) -> None:
        for name in ("obs_dim", "action_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SpaceSpec.{name} must be a positive integer, got {value!r}")


@runtime_checkable
class Policy(Protocol):
    """What an actor holds: a CPU, inference-only policy refreshed from `Algorithm.policy_state()`."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """[B, obs_dim] float32 observations -> [B, action_dim] float32 actions in [-1, 1]."""
        ...

    def load_policy_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the weights with a `policy_state()` published by a learner."""
        ...


@runtime_checkable
class Algorithm(Protocol):
    """What a learner holds: networks, optimizers and the update rule."""

    device: torch.device
    # Per-item tensors from the last `update` (e.g. "td_error" for prioritized replay), on `device`.
    extras: dict[str, torch.Tensor]

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        """One learner step on a batch already on `device`; returns float metrics."""
        ...

    def policy_state(self) -> dict[str, np.ndarray]:
        """float32 numpy copies of what actors need (the actor network)."""
        ...

    def make_policy(self) -> Policy:
        """A CPU policy holding the current actor weights."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Networks, targets, optimizers, temperature and counters, for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore everything `state_dict()` saved."""
        ...


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` picks CUDA when present, else the CPU; anything else must name an available device."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for CUDA but torch.cuda.is_available() is False")
    return resolved


def check_batch(
    batch: Mapping[str, torch.Tensor],
    spec: SpaceSpec,
    device: torch.device | None = None,
    name: str = "batch",
) -> int:
    """Check keys, shapes, dtypes and device of a training batch; returns its size B.

    Raises BatchError naming the offending key. Costs a few microseconds: no data is read.
    """
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise BatchError(f"{name} is missing {missing}; a batch needs {list(BATCH_KEYS)}")
    reward = batch["reward"]
    if not isinstance(reward, torch.Tensor) or reward.dim() != 1 or reward.shape[0] < 1:
        shape = tuple(reward.shape) if isinstance(reward, torch.Tensor) else type(reward).__name__
        raise BatchError(f"{name}['reward'] must be a non-empty 1-D tensor [B], got {shape}")
    size = reward.shape[0]
    expected = {
        "obs": (size, spec.obs_dim),
        "action": (size, spec.action_dim),
        "reward": (size,),
        "next_obs": (size, spec.obs_dim),
        "terminated": (size,),
        "truncated": (size,),
        "weights": (size,),
        "is_demo": (size,),
    }
    for key, shape in expected.items():
        if key not in batch:
            continue
        tensor = batch[key]
        if not isinstance(tensor, torch.Tensor):
            raise BatchError(f"{name}[{key!r}] must be a torch.Tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != shape:
            raise BatchError(
                f"{name}[{key!r}] has shape {tuple(tensor.shape)}, expected {shape} "
                f"(B from reward, obs_dim={spec.obs_dim}, action_dim={spec.action_dim})"
            )
        if key in _FLOAT_KEYS and tensor.dtype != torch.float32:
            raise BatchError(f"{name}[{key!r}] has dtype {tensor.dtype}, expected torch.float32")
        if device is not None and tensor.device != device:
            raise BatchError(f"{name}[{key!r}] is on {tensor.device}, the algorithm runs on {device}")
    return size


_FLOAT_KEYS = frozenset({"obs", "action", "reward", "next_obs", "weights"})
