"""A Minari dataset directory -> a distrl demonstration dataset.

Source layout: `<dataset>/data/main_data.hdf5` with one group `episode_<k>` per episode
holding `observations` (T + 1 rows: the reset observation and every step's next one; a
group of such arrays for Dict observation spaces), `actions`, `rewards`, `terminations`,
`truncations` (T rows) and optionally `infos/success`; metadata (spaces, env spec, totals) in
`data/metadata.json` (older Minari: attributes of main_data.hdf5). Both `obs` and
`next_obs` are stored, so no step loses its next observation. Dict observations are
flattened in the observation space's key order (nested keys joined by '/').
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distrl.data.format import DatasetInfo, DatasetSource, DemoWriter
from distrl.data.importers import (
    BUFFER_STEPS,
    ImportResult,
    SourceError,
    flat_steps,
    open_hdf5,
    staged_output,
    step_progress,
    timed,
)
from distrl.envs.config import EnvConfig

_EPISODE = re.compile(r"^episode_(\d+)$")
_PER_STEP = ("actions", "rewards", "terminations", "truncations")


def import_minari(
    src: str | Path,
    out: str | Path,
    *,
    obs_keys: Sequence[str] | None = None,
    env_id: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Import a Minari dataset directory (or its main_data.hdf5); see the module doc."""
    src = Path(src)
    start = time.perf_counter()
    main = _main_file(src)
    with open_hdf5(main) as f:
        metadata = _metadata(main, f)
        episodes = sorted((k for k in f if _EPISODE.match(k)), key=lambda k: int(k[8:]))
        if not episodes:
            raise SourceError(f"{main}: holds no episode_<k> groups")
        declared = metadata.get("total_episodes")
        if declared is not None and int(declared) != len(episodes):
            raise SourceError(
                f"{main}: metadata says {int(declared)} episodes but the file holds {len(episodes)} "
                f"(truncated?)"
            )
        obs_space = _space(metadata.get("observation_space"))
        available = _obs_leaves(f[episodes[0]]["observations"], obs_space)
        keys = _choose_keys(available, obs_keys, main)
        lengths, dims = _check_episodes(f, episodes, keys, main)
        declared = metadata.get("total_steps")
        if declared is not None and int(declared) != sum(lengths):
            raise SourceError(
                f"{main}: metadata says {int(declared)} steps but the episodes hold {sum(lengths)} "
                f"(truncated?)"
            )
        action_space = _space(metadata.get("action_space"))
        bounded = action_space is not None and action_space.get("type") == "Box"
        env_id = env_id or _env_id(metadata)
        names = [k or "observations" for k in keys]  # a Box observation is one unnamed array
        info = DatasetInfo(
            env=EnvConfig(id=env_id) if env_id else None,
            obs_keys=names,
            obs_key_dims=dims,
            action_low=_flat_list(action_space["low"]) if bounded else None,
            action_high=_flat_list(action_space["high"]) if bounded else None,
            source=DatasetSource(
                "minari", str(src.resolve()), {"dataset_id": metadata.get("dataset_id"), "obs_keys": names}
            ),
        )
        with (
            staged_output(out, overwrite) as stage,
            DemoWriter(stage, info, buffer_steps=BUFFER_STEPS, label=str(main)) as writer,
            step_progress(f"minari {src.name}", sum(lengths), progress) as advance,
        ):
            for name in episodes:
                episode = _episode(f[name], keys, f"{main}: {name}")
                writer.append_episode(episode)
                advance(len(episode["action"]))
            count, steps = writer.episodes, writer.steps
    return ImportResult(Path(out), count, steps, timed(start))


def _main_file(src: Path) -> Path:
    for candidate in (src / "data" / "main_data.hdf5", src / "main_data.hdf5", src):
        if candidate.is_file():
            return candidate
    raise SourceError(f"{src}: not a Minari dataset (no data/main_data.hdf5)")


def _metadata(main: Path, f: Any) -> dict[str, Any]:
    path = main.parent / "metadata.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise SourceError(f"{path}: not valid JSON ({exc})") from None
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def _space(serialized: Any) -> dict[str, Any] | None:
    if serialized is None:
        return None
    if isinstance(serialized, str):
        try:
            serialized = json.loads(serialized)
        except ValueError:
            return None
    return serialized if isinstance(serialized, dict) else None


def _env_id(metadata: dict[str, Any]) -> str | None:
    spec = metadata.get("env_spec")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return None
    if isinstance(spec, dict) and spec.get("id"):
        return f"gym:{spec['id']}"
    return None


def _flat_list(values: Any) -> list[float]:
    return [float(v) for v in np.ravel(np.asarray(values, dtype=np.float64))]


def _obs_leaves(node: Any, space: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """Paths of the observation arrays: '' for a Box, 'key' or 'key/sub' for Dict spaces."""
    if not hasattr(node, "keys"):
        return [prefix]
    names = list(node.keys())
    if space is not None and space.get("type") == "Dict":
        order = list(space.get("subspaces", {}))
        names = [n for n in order if n in names] + [n for n in names if n not in order]
    leaves = []
    for name in names:
        sub = (space or {}).get("subspaces", {}).get(name) if space else None
        leaves += _obs_leaves(node[name], sub, f"{prefix}/{name}" if prefix else name)
    return leaves


def _choose_keys(available: list[str], chosen: Sequence[str] | None, main: Path) -> list[str]:
    if not chosen:
        return available
    if available == [""]:
        raise SourceError(f"{main}: observations are a single array; there are no keys to choose")
    missing = [k for k in chosen if k not in available]
    if missing:
        raise SourceError(f"{main}: no observation key(s) {missing}; available: {', '.join(available)}")
    return list(chosen)


def _obs_array(group: Any, key: str) -> Any:
    node = group["observations"]
    return node[key] if key else node


def _check_episodes(f: Any, episodes: list[str], keys: list[str], main: Path) -> tuple[list[int], list[int]]:
    lengths: list[int] = []
    first: dict[str, tuple[int, ...]] = {}
    for name in episodes:
        group = f[name]
        where = f"{main}: {name}"
        missing = [k for k in ("observations", *_PER_STEP) if k not in group]
        if missing:
            raise SourceError(f"{where}: missing {', '.join(missing)}")
        if hasattr(group["actions"], "keys"):
            raise SourceError(f"{where}: actions are a Dict/Tuple space; distrl needs one Box action array")
        n = group["actions"].shape[0]
        for k in _PER_STEP:
            if group[k].shape[0] != n:
                raise SourceError(f"{where}: {k} has {group[k].shape[0]} rows but actions has {n}")
        for key in keys:
            ds = _obs_array(group, key)
            label = f"observations/{key}" if key else "observations"
            if ds.shape[0] != n + 1:
                raise SourceError(
                    f"{where}: {label} has {ds.shape[0]} rows, expected actions + 1 = {n + 1} "
                    f"(Minari stores the reset observation too)"
                )
            shape = tuple(ds.shape[1:])
            if first.setdefault(key, shape) != shape:
                raise SourceError(f"{where}: {label} is {shape} per step, {episodes[0]} has {first[key]}")
        declared = group.attrs.get("total_steps")
        if declared is not None and int(declared) != n:
            raise SourceError(f"{where}: total_steps says {int(declared)} but actions has {n} rows")
        lengths.append(n)
    dims = [int(np.prod(first[k], dtype=np.int64)) for k in keys]
    return lengths, dims


def _episode(group: Any, keys: list[str], where: str) -> dict[str, np.ndarray]:
    actions = np.asarray(group["actions"][...])
    n = len(actions)
    observations = np.concatenate(
        [flat_steps(_obs_array(group, k)[...], n + 1, f"{where}/observations/{k}") for k in keys], axis=1
    )
    episode = {
        "obs": observations[:-1],
        "next_obs": observations[1:],
        "action": actions.reshape(n, -1),
        "reward": np.asarray(group["rewards"][...]).reshape(n),
        "terminated": _flags(group["terminations"][...], n, f"{where}/terminations"),
        "truncated": _flags(group["truncations"][...], n, f"{where}/truncations"),
    }
    infos = group.get("infos")
    if infos is not None and hasattr(infos, "keys") and "success" in infos:
        success = np.asarray(infos["success"][...]).reshape(-1)
        # Minari's infos include the reset's info, like its observations.
        if len(success) == n + 1:
            success = success[1:]
        if len(success) == n:
            episode["success"] = _flags(success, n, f"{where}/infos/success")
    return episode


def _flags(values: Any, n: int, where: str) -> np.ndarray:
    values = np.asarray(values).reshape(n)
    bad = (values != 0) & (values != 1)
    if np.any(bad):
        raise SourceError(f"{where}: must be 0/1; found {values[bad][0]!r}")
    return values.astype(bool)
