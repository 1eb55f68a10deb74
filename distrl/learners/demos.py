"""The learner-side demonstration table: a Zarr demo store held on the learner's device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distrl.algos import DEMO_FLAG, STEPS_FIELD, TransitionField
from distrl.data import Dataset, DatasetError, open_dataset
from distrl.data.chunks import chunk_transitions

log = logging.getLogger(__name__)


class DemoTable:
    """Every demonstrated transition as device tensors, sampled uniformly with replacement.

    The columns are the algorithm's declared `fields`, read from the store by name: a field the
    store lacks is filled with its declared fill value, or refused with an error naming it.
    `is_demo` is set on every item. A chunked algorithm (an `env_steps` field and a [k, A]
    action) gets the store's episodes as chunks of k steps (`distrl.data.chunks`). Given the
    run's `env_id`, a store recorded on another env is refused (see `check_demo_env`).
    """

    def __init__(
        self,
        path: Path,
        fields: Sequence[TransitionField],
        device: torch.device,
        seed: int = 0,
        env_id: str | None = None,
        allow_env_mismatch: bool = False,
    ) -> None:
        dataset = open_dataset(path)
        if env_id is not None:
            check_demo_env(dataset, env_id, allow_env_mismatch)
        chunk = _chunk_length(fields)
        data = chunk_transitions(dataset, chunk) if chunk > 1 else dataset.as_transitions()
        size = len(data["obs"])
        if size == 0:
            raise ValueError(f"demos {path}: the store holds no transitions")
        columns: dict[str, np.ndarray] = {}
        for field in fields:
            if field.name == DEMO_FLAG:
                columns[field.name] = np.ones((size, *field.shape), dtype=field.np_dtype)
                continue
            if field.name not in data:
                if field.fill is None:
                    raise DatasetError(
                        f"demos {path}: the store has no {field.name!r} field, which the algorithm's "
                        f"transitions need ({field.describe()}); the store holds {sorted(data)}"
                    )
                columns[field.name] = field.empty(size)
                continue
            value = np.asarray(data[field.name])
            _check_shape(path, field, value.shape[1:])
            columns[field.name] = value.astype(field.np_dtype, copy=False)
        self.path = Path(path)
        self.size = size
        self.episodes = dataset.episodes
        self.device = device
        self.fields = tuple(fields)
        self._tensors = {
            name: torch.as_tensor(np.ascontiguousarray(col), device=device) for name, col in columns.items()
        }
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,), device=self.device, generator=self._generator)
        return {name: t.index_select(0, idx) for name, t in self._tensors.items()}

    def transitions(self) -> dict[str, np.ndarray]:
        """All transitions as numpy columns of the declared fields (to insert into replay)."""
        return {name: t.cpu().numpy() for name, t in self._tensors.items()}


def check_demo_env(dataset: Dataset, env_id: str, allow_mismatch: bool = False) -> None:
    """Refuse a store recorded on another env than the run's: envs of the same sizes (gym
    HalfCheetah-v5 and dmc cheetah-run are both 17/6) would otherwise mix silently. A store that
    names no env cannot be checked and is taken as it is."""
    recorded = dataset.info.env_id
    if recorded is None or recorded == env_id:
        return
    if allow_mismatch:
        log.warning(
            "demos %s were recorded on %s, the run's env is %s (demos.allow_env_mismatch)",
            dataset.path,
            recorded,
            env_id,
        )
        return
    raise DatasetError(
        f"demos {dataset.path}: recorded on env {recorded!r}, but the run's env.id is {env_id!r}; "
        "use demos of the run's env, or set demos.allow_env_mismatch=true to mix them anyway"
    )


def check_demo_store(
    path: Path, fields: Sequence[TransitionField], env_id: str, allow_env_mismatch: bool = False
) -> None:
    """What `DemoTable` would refuse first, read from the store's attributes and column shapes
    without loading its data: its env, and the per-step shapes of obs, action and next_obs. The
    launchers call it before starting any component."""
    dataset = open_dataset(path)
    check_demo_env(dataset, env_id, allow_env_mismatch)
    columns = dataset.arrays
    stored = {name: columns[name].shape[1:] for name in ("obs", "action", "next_obs") if name in columns}
    if "next_obs" not in stored and "obs" in stored:  # derived from obs within episodes
        stored["next_obs"] = stored["obs"]
    chunk = _chunk_length(fields)
    if chunk > 1 and "action" in stored:
        stored["action"] = (chunk, *stored["action"])
    for field in fields:
        if field.name in stored:
            _check_shape(path, field, stored[field.name])


def _check_shape(path: Path, field: TransitionField, shape: tuple[int, ...]) -> None:
    if tuple(shape) == tuple(field.shape):
        return
    hint = (
        "; was it recorded on another env or obs key order?"
        if field.name in ("obs", "action", "next_obs")
        else ""
    )
    raise ValueError(
        f"demos {path}: {field.name!r} has per-step shape {tuple(shape)}, the algorithm's "
        f"transitions need {field.shape}{hint}"
    )


def _chunk_length(fields: Sequence[TransitionField]) -> int:
    """k when the fields describe chunked decisions storing [k, A] executed actions, else 1."""
    by_name = {f.name: f for f in fields}
    action = by_name.get("action")
    if STEPS_FIELD in by_name and action is not None and len(action.shape) == 2:
        return action.shape[0]
    return 1


def split_batch(batch_size: int, ratio: float) -> tuple[int, int]:
    """(online, demo) items of a learner batch of `batch_size` with `ratio` of it from demos."""
    demo = round(batch_size * ratio)
    return batch_size - demo, demo
