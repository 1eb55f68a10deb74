"""D4RL-style flat HDF5 -> a distrl demonstration dataset.

Source layout: equal-length datasets `observations` (N, D), `actions` (N, A), `rewards`,
`terminals` and `timeouts` (N,), optionally `next_observations` (N, D). Episodes end after
every step with `terminals` or `timeouts` set; steps after the last such flag form a final
episode marked truncated. Files without `timeouts` (D4RL v0) split on terminals only.
The file is read in blocks, so memory is one block plus the episode being assembled.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from distrl.data.format import DatasetInfo, DatasetSource, DemoWriter
from distrl.data.importers import (
    BUFFER_STEPS,
    ImportResult,
    SourceError,
    open_hdf5,
    staged_output,
    step_progress,
    timed,
)
from distrl.envs.config import EnvConfig

REQUIRED = ("observations", "actions", "rewards", "terminals")
BLOCK_STEPS = 1 << 18


def import_d4rl(
    src: str | Path,
    out: str | Path,
    *,
    env_id: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    block_steps: int = BLOCK_STEPS,
) -> ImportResult:
    """Import a D4RL-style HDF5 file; see the module doc."""
    src = Path(src)
    start = time.perf_counter()
    with open_hdf5(src) as f:
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise SourceError(
                f"{src}: missing {', '.join(missing)}; a D4RL file holds observations, actions, rewards, "
                f"terminals and timeouts"
            )
        names = [*REQUIRED, *(k for k in ("timeouts", "next_observations") if k in f)]
        n = _check_lengths(f, names, src)
        obs_dim = int(np.prod(f["observations"].shape[1:], dtype=np.int64))
        info = DatasetInfo(
            env=EnvConfig(id=env_id) if env_id else None,
            obs_keys=["observations"],
            obs_key_dims=[obs_dim],
            source=DatasetSource(
                "d4rl", str(src.resolve()), {"split_on": [k for k in ("terminals", "timeouts") if k in f]}
            ),
        )
        with (
            staged_output(out, overwrite) as stage,
            DemoWriter(stage, info, buffer_steps=BUFFER_STEPS, label=str(src)) as writer,
            step_progress(f"d4rl {src.name}", n, progress) as advance,
        ):
            pending: list[dict[str, np.ndarray]] = []
            for lo in range(0, n, block_steps):
                hi = min(n, lo + block_steps)
                block = _read_block(f, names, lo, hi, src)
                ends = np.flatnonzero(block["terminated"] | block["truncated"]) + 1
                cut = 0
                for end in ends:
                    pending.append({k: v[cut:end] for k, v in block.items()})
                    writer.append_episode(_join(pending))
                    pending = []
                    cut = end
                if cut < hi - lo:
                    pending.append({k: v[cut:] for k, v in block.items()})
                advance(hi - lo)
            if pending:
                tail = _join(pending)
                tail["truncated"] = tail["truncated"].copy()
                tail["truncated"][-1] = True  # the file ends mid-episode
                writer.append_episode(tail)
            episodes, steps = writer.episodes, writer.steps
    return ImportResult(Path(out), episodes, steps, timed(start))


def _check_lengths(f: Any, names: list[str], src: Path) -> int:
    n = f["observations"].shape[0]
    for name in names:
        ds = f[name]
        if not hasattr(ds, "shape") or ds.ndim == 0:
            raise SourceError(f"{src}: {name} is not an array")
        if ds.shape[0] != n:
            raise SourceError(
                f"{src}: {name} has {ds.shape[0]} rows but observations has {n} (truncated file?)"
            )
        if name in ("rewards", "terminals", "timeouts") and not (ds.ndim == 1 or ds.shape[1:] == (1,)):
            raise SourceError(f"{src}: {name} must be one value per step; found shape {ds.shape}")
    if "next_observations" in names and f["next_observations"].shape != f["observations"].shape:
        raise SourceError(
            f"{src}: next_observations shape {f['next_observations'].shape} differs from observations "
            f"{f['observations'].shape}"
        )
    if n == 0:
        raise SourceError(f"{src}: holds no steps")
    return n


def _flags(f: Any, name: str, lo: int, hi: int, src: Path) -> np.ndarray:
    values = np.asarray(f[name][lo:hi]).reshape(hi - lo)
    bad = (values != 0) & (values != 1)
    if np.any(bad):
        step = lo + int(np.flatnonzero(bad)[0])
        raise SourceError(f"{src}: {name} must be 0/1; step {step} has {values[bad][0]!r}")
    return values.astype(bool)


def _read_block(f: Any, names: list[str], lo: int, hi: int, src: Path) -> dict[str, np.ndarray]:
    n = hi - lo
    terminated = _flags(f, "terminals", lo, hi, src)
    timeouts = _flags(f, "timeouts", lo, hi, src) if "timeouts" in names else np.zeros(n, bool)
    block = {
        "obs": np.asarray(f["observations"][lo:hi]).reshape(n, -1),
        "action": np.asarray(f["actions"][lo:hi]).reshape(n, -1),
        "reward": np.asarray(f["rewards"][lo:hi]).reshape(n),
        "terminated": terminated,
        "truncated": timeouts & ~terminated,
    }
    if "next_observations" in names:
        block["next_obs"] = np.asarray(f["next_observations"][lo:hi]).reshape(n, -1)
    return block


def _join(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
