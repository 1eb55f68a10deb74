"""Demo episodes as action chunks: what a chunked policy (k actions per decision) learns from.

A chunk starting at step t holds the actions t .. t+k-1 of its episode; one that runs past the
episode's end repeats the last action (diffusion_policy's edge padding) and counts only the steps
that exist. As an RL transition its reward (and any float signal such as `cost`) is the sum over
those steps, its next observation is the one after the last of them, `env_steps` counts them,
and it ends the episode when that last step did.

    chunks = chunk_episodes(open_dataset("demos.zarr"), k=4)
    chunks["obs"], chunks["action"]         # [N, D], [N, 4, A]: behaviour cloning pairs
    rl = chunk_transitions(open_dataset("demos.zarr"), k=4)   # only chunks with a known next obs
"""

from __future__ import annotations

import numpy as np

from distrl.data.format import Dataset, DatasetError

STEPS_KEY = "env_steps"
_SUMMED = ("reward", "cost")


def _episode_chunks(episode: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    length = len(episode["obs"])
    start = np.arange(length)
    end = np.minimum(start + k, length)
    take = np.minimum(start[:, None] + np.arange(k)[None], length - 1)
    last = end - 1
    out: dict[str, np.ndarray] = {
        "obs": episode["obs"][start],
        "action": episode["action"][take],
        "next_obs": episode["next_obs"][last],
        STEPS_KEY: (end - start).astype(np.int32),
    }
    for name, column in episode.items():
        if name in out or name.startswith("obs/"):
            continue
        column = np.asarray(column)
        if name in _SUMMED or (column.ndim == 1 and column.dtype.kind == "f"):
            sums = np.concatenate([[0.0], np.cumsum(column, dtype=np.float64)])
            out[name] = (sums[end] - sums[start]).astype(column.dtype)
        else:
            out[name] = column[last]
    return out


def chunk_episodes(dataset: Dataset, k: int) -> dict[str, np.ndarray]:
    """One chunk per demo step, every episode, with edge padding: the behaviour cloning data."""
    if k < 1:
        raise ValueError(f"chunk length must be >= 1, got {k}")
    if dataset.episodes == 0:
        raise DatasetError(f"{dataset.path}: the store holds no episodes")
    parts = [_episode_chunks(dataset.episode(i), k) for i in range(dataset.episodes)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def chunk_transitions(dataset: Dataset, k: int) -> dict[str, np.ndarray]:
    """`chunk_episodes` as RL transitions: chunks whose next observation the store does not know
    (they reach the end of an episode that was cut, not terminated, and no next_obs was stored)
    are left out, as single-step transitions are."""
    chunks = chunk_episodes(dataset, k)
    if dataset.has_next_obs:
        return chunks
    keep = np.ones(len(chunks["obs"]), dtype=bool)
    offset = 0
    for length, end in zip(dataset.episode_lengths, dataset.episode_ends, strict=True):
        terminated_end = bool(dataset.arrays["terminated"][int(end) - 1 : int(end)][0])
        if not terminated_end:
            starts = np.arange(length)
            keep[offset : offset + length] &= starts + k < length
        offset += int(length)
    return {name: column[keep] for name, column in chunks.items()}
