"""Learner checkpoints: algorithm state, counters, RNG states and the config, written atomically.

These are local files the learner itself wrote; they are loaded with
`weights_only=True`, so even a tampered file cannot run code.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distrl.algos import SpaceSpec

log = logging.getLogger(__name__)

_NAME = re.compile(r"^learner-(\d+)\.pt$")
# What every learner checkpoint holds; one without them is as unreadable as a truncated file.
_REQUIRED = ("algo", "updates", "version", "rng")


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete learner checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _python_state_to_tensors(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))


def _python_state_to_tensors(state: tuple) -> list:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def save_checkpoint(directory: Path, updates: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write `learner-<updates>.pt` (temp file + rename) and keep the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"learner-{updates:010d}.pt"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"cannot read learner checkpoint {path}: {exc}") from None


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_latest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that can be read, and its state; None when there is none.

    A newest file that is truncated or garbled (a full disk, a bad copy) is skipped with a
    warning naming it and why, and the one before it is used. Skipped files are left in place.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict) or (missing := [k for k in _REQUIRED if k not in state]):
                raise RuntimeError(f"learner checkpoint {path} lacks {missing or 'its state'}")
        except RuntimeError as exc:
            log.warning("skipping learner checkpoint %s (left in place): %s", path, exc)
            continue
        return path, state
    return None


def checkpoint_space(state: dict[str, Any]) -> SpaceSpec:
    """The env space a learner checkpoint was trained on (older checkpoints: sizes only)."""
    obs_dim, action_dim = (int(v) for v in state["space"])
    signals = tuple(str(name) for name in state.get("signals", ()))
    limit = state.get("max_episode_steps")
    return SpaceSpec(obs_dim, action_dim, signals, None if limit is None else int(limit))
