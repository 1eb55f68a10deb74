"""What a dataset holds: episodes, steps, keys, return/length statistics and success rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distrl.data.format import Dataset, open_dataset

# Per-episode sums are computed over blocks of this many steps, so inspecting a large
# dataset reads one column block at a time.
_BLOCK_STEPS = 1 << 20


@dataclass
class Stats:
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Stats | None:
        if values.size == 0:
            return None
        values = values.astype(np.float64)
        return cls(float(values.mean()), float(values.std()), float(values.min()), float(values.max()))


@dataclass
class KeyReport:
    name: str
    shape: list[int]  # per step
    dtype: str
    chunk_rows: int
    bytes: int
    stored_bytes: int


@dataclass
class DatasetReport:
    path: str
    kind: str
    format_version: int
    created: str | None
    env_id: str | None
    env: dict[str, Any] | None
    source: dict[str, Any]
    episodes: int
    steps: int
    transitions: int
    uncommitted_steps: int
    obs_keys: list[str]
    obs_key_dims: list[int]
    action_low: list[float] | None
    action_high: list[float] | None
    keys: list[KeyReport]
    returns: Stats | None
    lengths: Stats | None
    costs: Stats | None
    success_rate: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect_dataset(dataset: Dataset | str | Path) -> DatasetReport:
    """Summarise a dataset (opened and validated first when given a path)."""
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset, cache_bytes=0)
    info = ds.info
    keys = [
        KeyReport(
            name=name,
            shape=list(col.shape[1:]),
            dtype=str(col.dtype),
            chunk_rows=col.chunks[0],
            bytes=col.nbytes,
            stored_bytes=col.nbytes_stored(),
        )
        for name, col in ds.arrays.items()
    ]
    returns = _episode_sums(ds, "reward")
    costs = _episode_sums(ds, "cost")
    successes = _episode_sums(ds, "success")
    return DatasetReport(
        path=str(ds.path),
        kind=ds.kind,
        format_version=info.format_version,
        created=info.created,
        env_id=info.env_id,
        env=info.env.model_dump(mode="json", exclude_unset=True) if info.env is not None else None,
        source={"importer": info.source.importer, "file": info.source.file, "options": info.source.options},
        episodes=ds.episodes,
        steps=ds.steps,
        transitions=ds.transitions,
        uncommitted_steps=ds.uncommitted_steps,
        obs_keys=list(info.obs_keys),
        obs_key_dims=list(info.obs_key_dims),
        action_low=info.action_low,
        action_high=info.action_high,
        keys=keys,
        returns=Stats.of(returns) if returns is not None else None,
        lengths=Stats.of(ds.episode_lengths),
        costs=Stats.of(costs) if costs is not None else None,
        # An episode succeeded if the task was solved at any step.
        success_rate=float(np.mean(successes > 0)) if successes is not None and successes.size else None,
    )


def _episode_sums(ds: Dataset, key: str) -> np.ndarray | None:
    """Per-episode sums of a per-step column, one block of steps at a time."""
    if key not in ds.arrays:
        return None
    column = ds.arrays[key]
    ends = ds.episode_ends
    totals = np.zeros(len(ends), dtype=np.float64)
    running = 0.0
    for lo in range(0, ds.steps, _BLOCK_STEPS):
        hi = min(ds.steps, lo + _BLOCK_STEPS)
        cumulative = np.cumsum(column[lo:hi], dtype=np.float64) + running
        inside = (ends > lo) & (ends <= hi)
        totals[inside] = cumulative[ends[inside] - lo - 1]
        running = float(cumulative[-1])
    return np.diff(np.concatenate([[0.0], totals]))


def format_report(report: DatasetReport) -> str:
    """The report as aligned text for a terminal."""
    lines = [f"dataset   {report.path}"]
    detail = f"{report.kind}, format {report.format_version}"
    if report.created:
        detail += f", created {report.created}"
    lines.append(f"          ({detail})")
    src = report.source
    options = {
        k: v for k, v in (src.get("options") or {}).items() if v not in (None, [], {}) and k != "env_args"
    }
    where = f": {src['file']}" if src.get("file") else ""
    lines.append(f"source    {src.get('importer')}{where}")
    if options:
        lines.append("          " + ", ".join(f"{k}={v}" for k, v in options.items()))
    lines.append(f"env       {report.env_id or '-'}")
    if report.env and set(report.env) - {"id"}:
        extra = {k: v for k, v in report.env.items() if k != "id"}
        lines.append(f"          {extra}")
    lines.append(
        f"episodes  {report.episodes:,}    steps {report.steps:,}    transitions {report.transitions:,}"
    )
    if report.uncommitted_steps:
        lines.append(
            f"          ({report.uncommitted_steps:,} uncommitted steps past the last episode ignored)"
        )
    if report.obs_keys:
        dims = report.obs_key_dims or ["?"] * len(report.obs_keys)
        parts = ", ".join(f"{k} {d}" for k, d in zip(report.obs_keys, dims, strict=False))
        lines.append(f"obs       {parts}")
    if report.action_low is not None and report.action_high is not None:
        lo, hi = min(report.action_low), max(report.action_high)
        lines.append(f"action    {len(report.action_low)} values in [{lo:g}, {hi:g}]")
    if report.keys:
        lines.append("keys")
        width = max(len(k.name) for k in report.keys)
        for k in report.keys:
            ratio = k.bytes / k.stored_bytes if k.stored_bytes else float("nan")
            lines.append(
                f"  {k.name.ljust(width)}  {str(tuple(k.shape)).ljust(14)} {k.dtype.ljust(8)} "
                f"{_size(k.stored_bytes):>9} stored ({ratio:.1f}x)"
            )
    for label, stats in (("return", report.returns), ("length", report.lengths), ("cost", report.costs)):
        if stats is not None:
            lines.append(
                f"{label.ljust(9)} mean {stats.mean:.4g}  std {stats.std:.4g}  min {stats.min:.4g}  "
                f"max {stats.max:.4g}"
            )
    if report.success_rate is not None:
        lines.append(f"success   {100 * report.success_rate:.1f}% of episodes")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
