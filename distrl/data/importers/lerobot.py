"""A LeRobot dataset directory (v2.x or v3.0 parquet layout) -> a distrl demonstration dataset.

v2.x: one parquet file per episode at `info.json`'s `data_path`
(`data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet`), episodes listed in
`meta/episodes.jsonl` (`episode_index`, `length`). v3.0: many episodes per file
(`data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`), episodes listed in
`meta/episodes/chunk-*/file-*.parquet` (`episode_index`, `length`, `data/chunk_index`,
`data/file_index`). Frames carry `episode_index` and `frame_index`; `obs` is the chosen state
columns concatenated (default `observation.state`), `action` the action column, and the
optional `next.reward`, `next.done` (-> terminated) and `next.success` columns are used when
present (reward 0 otherwise). Image and video features are not imported. Files are read in
record batches, so memory is one batch plus the episode being assembled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distrl.data.format import DatasetInfo, DatasetSource, DemoWriter
from distrl.data.importers import (
    BUFFER_STEPS,
    ImportResult,
    SourceError,
    staged_output,
    step_progress,
    timed,
)
from distrl.envs.config import EnvConfig

_REWARD, _DONE, _SUCCESS = "next.reward", "next.done", "next.success"
_NOT_NUMERIC = ("video", "image", "string")
_BATCH_ROWS = 1 << 16


@dataclass(frozen=True)
class _EpisodeEntry:
    index: int
    length: int
    data_file: Path


def import_lerobot(
    src: str | Path,
    out: str | Path,
    *,
    state_keys: Sequence[str] = ("observation.state",),
    action_key: str = "action",
    env_id: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Import a LeRobot dataset directory; see the module doc."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # e.g. a pyarrow built for another NumPy major version
        raise SourceError(f"reading LeRobot parquet needs a working pyarrow: {exc}") from None

    root = Path(src)
    start = time.perf_counter()
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise SourceError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    try:
        meta = json.loads(info_path.read_text())
    except ValueError as exc:
        raise SourceError(f"{info_path}: not valid JSON ({exc})") from None
    version = str(meta.get("codebase_version", ""))
    features = meta.get("features") or {}
    dims = [_feature_width(features, k, info_path) for k in state_keys]
    action_dim = _feature_width(features, action_key, info_path)
    if version.startswith("v2."):
        entries = _episodes_v2(root, meta)
    elif version.startswith("v3."):
        entries = _episodes_v3(root, meta, pq)
    else:
        raise SourceError(f"{info_path}: codebase_version {version!r} is not supported (v2.x or v3.0)")
    total = meta.get("total_frames")
    if total is not None and int(total) != sum(e.length for e in entries):
        raise SourceError(
            f"{info_path}: total_frames is {int(total)} but the episode table adds up to "
            f"{sum(e.length for e in entries)}"
        )
    optional = [c for c in (_REWARD, _DONE, _SUCCESS) if c in features]
    columns = [*dict.fromkeys([*state_keys, action_key]), "episode_index", "frame_index", *optional]
    info = DatasetInfo(
        env=EnvConfig(id=env_id) if env_id else None,
        obs_keys=list(state_keys),
        obs_key_dims=dims,
        source=DatasetSource(
            "lerobot",
            str(root.resolve()),
            {
                "codebase_version": version,
                "robot_type": meta.get("robot_type"),
                "fps": meta.get("fps"),
                "state_keys": list(state_keys),
                "action_key": action_key,
                "reward_column": _REWARD in optional,
            },
        ),
    )
    expected = {e.index: e.length for e in entries}
    with (
        staged_output(out, overwrite) as stage,
        DemoWriter(stage, info, buffer_steps=BUFFER_STEPS, label=str(root)) as writer,
        step_progress(f"lerobot {root.name}", sum(expected.values()), progress) as advance,
    ):
        seen: set[int] = set()
        for index, frames in _episode_frames(entries, columns, pq):
            where = f"{root}: episode {index}"
            if index not in expected:
                raise SourceError(f"{where}: in the data files but not in the episode table")
            if index in seen:
                raise SourceError(f"{where}: its frames are split or repeated across the data files")
            seen.add(index)
            episode = _episode(frames, state_keys, action_key, dims, action_dim, expected[index], where)
            writer.append_episode(episode)
            advance(expected[index])
        missing = sorted(set(expected) - seen)
        if missing:
            raise SourceError(f"{root}: episodes {missing[:10]} are in the episode table but not in the data")
        episodes, steps = writer.episodes, writer.steps
    return ImportResult(Path(out), episodes, steps, timed(start))


def _feature_width(features: dict[str, Any], key: str, where: Path) -> int:
    if key not in features:
        numeric = [k for k, v in features.items() if v.get("dtype") not in _NOT_NUMERIC]
        raise SourceError(f"{where}: no feature {key!r}; numeric features: {', '.join(numeric)}")
    feature = features[key]
    if feature.get("dtype") in _NOT_NUMERIC:
        raise SourceError(f"{where}: feature {key!r} is {feature.get('dtype')}; only numeric columns import")
    return int(np.prod(feature.get("shape") or [1], dtype=np.int64))


def _episodes_v2(root: Path, meta: dict[str, Any]) -> list[_EpisodeEntry]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise SourceError(f"{root}: LeRobot v2 dataset without meta/episodes.jsonl")
    template = meta.get("data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet")
    chunks = int(meta.get("chunks_size", 1000))
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            index, length = int(row["episode_index"]), int(row["length"])
        except (ValueError, KeyError, TypeError):
            raise SourceError(f"{path}:{number}: needs episode_index and length") from None
        file = root / template.format(episode_chunk=index // chunks, episode_index=index)
        entries.append(_EpisodeEntry(index, length, file))
    if not entries:
        raise SourceError(f"{path}: lists no episodes")
    return entries


def _episodes_v3(root: Path, meta: dict[str, Any], pq: Any) -> list[_EpisodeEntry]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise SourceError(f"{root}: LeRobot v3 dataset without meta/episodes/chunk-*/file-*.parquet")
    template = meta.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
    needed = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    entries = []
    for path in files:
        table = _read_parquet(pq, path, needed)
        cols = {k: table.column(k).to_numpy() for k in needed}
        for i in range(table.num_rows):
            file = root / template.format(
                chunk_index=int(cols["data/chunk_index"][i]), file_index=int(cols["data/file_index"][i])
            )
            entries.append(_EpisodeEntry(int(cols["episode_index"][i]), int(cols["length"][i]), file))
    return sorted(entries, key=lambda e: e.index)


def _read_parquet(pq: Any, path: Path, columns: list[str]) -> Any:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise SourceError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}")
    return pq.read_table(path, columns=columns)


def _episode_frames(
    entries: list[_EpisodeEntry], columns: list[str], pq: Any
) -> Iterator[tuple[int, dict[str, list[Any]]]]:
    """(episode_index, {column: [arrow arrays]}) per run of equal episode_index, in file order."""
    files = list(dict.fromkeys(e.data_file for e in entries))
    current: int | None = None
    pieces: dict[str, list[Any]] = {}
    for path in files:
        if not path.is_file():
            raise SourceError(f"{path}: data file listed by the episode table is missing")
        try:
            reader = pq.ParquetFile(path)
        except Exception as exc:
            raise SourceError(f"{path}: not a readable parquet file ({exc})") from None
        missing = [c for c in columns if c not in reader.schema_arrow.names]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}")
        for batch in _iter_batches(reader, columns, path):
            episode = batch.column("episode_index").to_numpy()
            change = np.flatnonzero(np.diff(episode)) + 1
            for lo, hi in zip(np.r_[0, change], np.r_[change, len(episode)], strict=True):
                index = int(episode[lo])
                if index != current:
                    if current is not None:
                        yield current, pieces
                    current, pieces = index, {}
                for c in columns:
                    pieces.setdefault(c, []).append(batch.column(c).slice(lo, hi - lo))
    if current is not None:
        yield current, pieces


def _iter_batches(reader: Any, columns: list[str], path: Path) -> Iterator[Any]:
    try:
        yield from reader.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read to the end ({exc}); truncated file?") from None


def _episode(
    frames: dict[str, list[Any]],
    state_keys: Sequence[str],
    action_key: str,
    dims: list[int],
    action_dim: int,
    length: int,
    where: str,
) -> dict[str, np.ndarray]:
    n = sum(len(p) for p in frames["episode_index"])
    if n != length:
        raise SourceError(f"{where}: {n} frames in the data files but the episode table says {length}")
    frame_index = _numbers(frames["frame_index"], n, 1, where, "frame_index").reshape(n)
    if not np.array_equal(frame_index, np.arange(n)):
        raise SourceError(f"{where}: frame_index is not 0..{n - 1} in order")
    obs = np.concatenate(
        [_numbers(frames[k], n, d, where, k) for k, d in zip(state_keys, dims, strict=True)], axis=1
    )
    episode = {
        "obs": obs,
        "action": _numbers(frames[action_key], n, action_dim, where, action_key),
        "reward": _numbers(frames[_REWARD], n, 1, where, _REWARD).reshape(n)
        if _REWARD in frames
        else np.zeros(n, dtype=np.float32),
    }
    terminated = (
        _flags(_numbers(frames[_DONE], n, 1, where, _DONE), where, _DONE)
        if _DONE in frames
        else np.zeros(n, dtype=bool)
    )
    truncated = np.zeros(n, dtype=bool)
    truncated[-1] = not terminated[-1]
    episode["terminated"], episode["truncated"] = terminated, truncated
    if _SUCCESS in frames:
        episode["success"] = _flags(_numbers(frames[_SUCCESS], n, 1, where, _SUCCESS), where, _SUCCESS)
    return episode


def _numbers(pieces: list[Any], n: int, width: int, where: str, name: str) -> np.ndarray:
    """Arrow pieces of a scalar or list column as an (n, width) numpy array."""
    import pyarrow as pa

    values = []
    for piece in pieces:
        if piece.null_count:
            raise SourceError(f"{where}: column {name!r} has missing values")
        if (
            pa.types.is_list(piece.type)
            or pa.types.is_large_list(piece.type)
            or pa.types.is_fixed_size_list(piece.type)
        ):
            flat = piece.flatten()
            if flat.null_count:
                raise SourceError(f"{where}: column {name!r} has missing values")
            flat_np = flat.to_numpy(zero_copy_only=False)
            if flat_np.size != len(piece) * width:
                raise SourceError(f"{where}: column {name!r} rows are not {width} values each")
            values.append(flat_np.reshape(len(piece), width))
        else:
            if width != 1:
                raise SourceError(f"{where}: column {name!r} holds scalars but info.json says {width} values")
            values.append(piece.to_numpy(zero_copy_only=False).reshape(len(piece), 1))
    out = np.concatenate(values) if len(values) > 1 else values[0]
    if out.dtype.kind not in "biuf":
        raise SourceError(f"{where}: column {name!r} is {out.dtype}, not numeric")
    return out


def _flags(values: np.ndarray, where: str, name: str) -> np.ndarray:
    values = values.reshape(-1)
    bad = (values != 0) & (values != 1)
    if np.any(bad):
        raise SourceError(f"{where}: column {name!r} must be 0/1 or bool; found {values[bad][0]!r}")
    return values.astype(bool)
