"""Importers from the dataset formats users bring: robomimic/MimicGen HDF5, D4RL HDF5, Minari, LeRobot.

Each importer reads its source one episode (or one block) at a time, so memory stays
constant in the dataset size, checks the source's own bookkeeping (lengths, totals, episode
tables) before and while copying, and writes through `DemoWriter` into a staging directory
that is renamed onto OUT only when the import completed: a failed import leaves no OUT.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distrl.data.format import DatasetError, remove_store

FORMATS = ("robomimic", "d4rl", "minari", "lerobot")
# Importers commit in pieces of this many steps: a partial chunk is rewritten once per
# piece instead of once per episode.
BUFFER_STEPS = 1 << 16


class SourceError(DatasetError):
    """A source file that cannot be imported (truncated, mislabelled, unsupported)."""


@dataclass
class ImportResult:
    path: Path
    episodes: int
    steps: int
    seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")


@contextmanager
def staged_output(out: str | Path, overwrite: bool) -> Iterator[Path]:
    """A fresh directory to write into, renamed onto `out` when the block succeeds."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DatasetError(f"{out}: already exists (use --overwrite to replace it)")
    if out.exists():
        remove_store(out)  # refuses anything that is not a Zarr store, before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.importing-{os.getpid()}"
    if stage.exists():
        remove_store(stage)
    try:
        yield stage
    except BaseException:
        if stage.exists():
            remove_store(stage)
        raise
    os.rename(stage, out)


@contextmanager
def step_progress(description: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr counting steps; yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def flat_steps(values: np.ndarray, steps: int, where: str) -> np.ndarray:
    """(T, ...) numbers as (T, prod(...)) float32."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise SourceError(f"{where}: dtype {values.dtype} is not numeric")
    if values.ndim == 0 or len(values) != steps:
        length = len(values) if values.ndim else 0
        raise SourceError(f"{where}: has {length} rows, expected {steps}")
    return values.reshape(steps, -1).astype(np.float32, copy=False)


def open_hdf5(path: str | Path) -> Any:
    """An h5py File opened read-only; a clear error when it is not HDF5."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SourceError(f"{path}: not a readable HDF5 file ({exc})") from None


def timed(start: float) -> float:
    return time.perf_counter() - start
