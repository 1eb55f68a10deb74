"""Replay checkpoints in Zarr, in the dataset layout (`data/<field>`, `meta/episode_ends`).

A checkpoint directory holds `replay-<n>.zarr` stores, one per checkpoint,
each with one group per table. A store is written beside under a temporary
name and renamed into place when complete, so a crash (even `kill -9`) mid-write
leaves the previous checkpoint as the newest. Each table group loads as an
offline dataset: its items (oldest first) form a single episode.

Checkpoints written before items carried `meta/learner_version` still load:
each item then counts as inserted at its own policy version (no actor lag).
The root's `snapshot_time` (when the tables were copied; `snapshot_time()`) is newer too: older
checkpoints have none and load the same.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr

from distrl.data import layout
from distrl.replay.config import FieldSpecConfig, TableConfig
from distrl.replay.sequences import IncarnationSequence
from distrl.replay.spec import TableSpec
from distrl.replay.stats import TableCounters
from distrl.replay.table import Table, TableSnapshot

log = logging.getLogger(__name__)

FORMAT = "distrl.replay_checkpoint"
# Unix time just before the tables were copied: an insert acked later is not in the checkpoint.
SNAPSHOT_TIME = "snapshot_time"
_NAME = re.compile(r"^replay-(\d+)\.zarr$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back; the message names the problem."""


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def write_checkpoint(tables: Iterable[Table], directory: Path, keep: int = 2) -> Path:
    """Write every table to a new checkpoint atomically; keeps the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = list_checkpoints(directory)
    number = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1
    final = directory / f"replay-{number:08d}.zarr"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    # Read before the tables are: whatever a writer had acked by then is in this checkpoint.
    copied_at = time.time()
    snaps = [t.snapshot() for t in tables]
    root = zarr.open_group(str(tmp), mode="w")
    root.attrs.update(
        {
            "format": FORMAT,
            "format_version": layout.FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            SNAPSHOT_TIME: copied_at,
            "tables": [s.config.name for s in snaps],
        }
    )
    for snap in snaps:
        _write_table(root, snap)
    _fsync_tree(tmp)
    os.rename(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> dict[str, TableSnapshot]:
    """Read every table of one checkpoint store."""
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable Zarr store ({exc})") from None
    if root.attrs.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a replay checkpoint (format={root.attrs.get('format')!r})")
    if root.attrs.get("format_version") != layout.FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {root.attrs.get('format_version')!r}, expected {layout.FORMAT_VERSION}"
        )
    return {name: _read_table(root, name, path) for name in root.attrs["tables"]}


def snapshot_time(path: Path) -> float | None:
    """When a checkpoint's tables were copied (Unix time); None for checkpoints written before it
    was recorded."""
    try:
        value = zarr.open_group(str(path), mode="r").attrs.get(SNAPSHOT_TIME)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable Zarr store ({exc})") from None
    return None if value is None else float(value)


def restore_tables(
    configs: list[TableConfig], directory: Path | None, seed: int | None = None
) -> tuple[dict[str, Table], Path | None]:
    """Tables from the newest readable checkpoint in `directory` (fresh ones if there is none).

    The configuration given now wins over the stored one (e.g. a larger
    capacity); tables in the checkpoint but not configured are dropped. A
    checkpoint that cannot be read (a garbled or missing file) is skipped with a
    warning naming it and why, and left in place.
    """
    path, snaps = None, {}
    for candidate in reversed(list_checkpoints(directory) if directory is not None else []):
        try:
            snaps = read_checkpoint(candidate)
        except Exception as exc:  # a garbled chunk fails in the codec, not only as CheckpointError
            log.warning(
                "skipping replay checkpoint %s (left in place): %s: %s", candidate, type(exc).__name__, exc
            )
            continue
        path = candidate
        break
    tables = {}
    for i, cfg in enumerate(configs):
        table_seed = None if seed is None else seed + i
        snap = snaps.get(cfg.name)
        tables[cfg.name] = Table.from_snapshot(cfg, snap, table_seed) if snap else Table(cfg, table_seed)
    return tables, path


def _write_table(root: zarr.Group, snap: TableSnapshot) -> None:
    group = root.create_group(snap.config.name)
    n = len(snap.keys)
    group.attrs.update(
        {
            "format_version": layout.FORMAT_VERSION,
            "source": {"kind": "replay_checkpoint", "table": snap.config.name},
            "config": json.loads(snap.config.model_dump_json()),
            "spec": snap.spec.to_config() if snap.spec is not None else None,
            "next_key": int(snap.next_key),
            "counters": snap.counters.to_dict(),
            "last_sequence": snap.last_sequence,
            # [actor_id, incarnation as hex, last sequence], least recently stored first.
            "incarnation_sequences": [
                [e.actor_id, e.incarnation.hex(), int(e.sequence)] for e in snap.incarnation_sequences
            ],
            "max_priority": float(snap.max_priority),
            "latest_learner_version": int(snap.latest_learner_version),
        }
    )
    for name, arr in snap.fields.items():
        layout.write_array(group, f"{layout.DATA}/{name}", arr)
    layout.write_array(group, f"{layout.META}/{layout.EPISODE_ENDS}", np.array([n] if n else [], np.int64))
    layout.write_array(group, f"{layout.META}/keys", snap.keys)
    layout.write_array(group, f"{layout.META}/policy_version", snap.policy_version)
    layout.write_array(group, f"{layout.META}/learner_version", snap.learner_version)
    layout.write_array(group, f"{layout.META}/priorities", snap.priorities)


def _read_table(root: zarr.Group, name: str, path: Path) -> TableSnapshot:
    try:
        group = root[name]
        attrs = dict(group.attrs)
        config = TableConfig.model_validate(attrs["config"])
        spec = (
            TableSpec.from_config({k: FieldSpecConfig(**v) for k, v in attrs["spec"].items()})
            if attrs["spec"]
            else None
        )
        keys = group[f"{layout.META}/keys"][...]
        fields = {f: group[f"{layout.DATA}/{f}"][...] for f in (spec.fields if spec else {})}
        policy_version = group[f"{layout.META}/policy_version"][...]
        # Older checkpoints lack it: items count as inserted at their own policy version.
        learner_version = (
            group[f"{layout.META}/learner_version"][...]
            if "learner_version" in group[layout.META]
            else policy_version.copy()
        )
        latest = attrs.get("latest_learner_version")
        snap = TableSnapshot(
            config=config,
            spec=spec,
            fields=fields,
            keys=keys,
            policy_version=policy_version,
            learner_version=learner_version,
            priorities=group[f"{layout.META}/priorities"][...],
            next_key=int(attrs["next_key"]),
            counters=TableCounters.from_dict(attrs["counters"]),
            last_sequence=attrs["last_sequence"],
            # Older checkpoints predate incarnations: every writer was keyed by actor_id alone.
            incarnation_sequences=[
                IncarnationSequence(str(a), bytes.fromhex(i), int(q))
                for a, i, q in attrs.get("incarnation_sequences", [])
            ],
            max_priority=float(attrs.get("max_priority", 1.0)),
            latest_learner_version=int(
                latest if latest is not None else (learner_version.max() if len(learner_version) else 0)
            ),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: table {name!r} is incomplete or corrupt ({exc})") from None
    columns = {**snap.fields, "policy_version": snap.policy_version, "learner_version": snap.learner_version}
    bad = [f for f, a in columns.items() if len(a) != len(keys)]
    if bad:
        raise CheckpointError(f"{path}: table {name!r} field {bad[0]!r} length differs from its keys")
    return snap


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
