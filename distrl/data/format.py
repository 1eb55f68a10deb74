"""Demonstration datasets in Zarr: the episode-by-episode writer and the validated reader.

The layout is diffusion_policy's replay buffer (see `layout`): `data/<key>` per-step arrays
concatenated over episodes and `meta/episode_ends`. Per-step keys:

- required: `obs` (T, D) float32, `action` (T, A) float32, `reward` (T,) float32,
  `terminated`, `truncated` (T,) bool;
- optional: `next_obs` (else derived within episodes), `cost` (T,) float32, `success` (T,) bool;
- raw observation keys, named `obs/<name>` in an episode and stored as `data/<name>` (listed
  in the `raw_obs_keys` attribute), which is where diffusion_policy's tools look for them
  (`data/agentview_image`); image keys are uint8 HWC;
- any other key is kept as an extra per-step field.

Crash safety: an episode's rows go into every data array first and `meta/episode_ends` is
appended last, and zarr's local store replaces each file atomically. A writer killed at any
point therefore leaves every committed episode intact; data arrays may hold rows past the
last end, which readers ignore and an appending writer cuts off.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pydantic import ValidationError

from distrl.data import layout
from distrl.envs.config import EnvConfig

RAW_PREFIX = "obs/"
# Arrays are copied into memory on first random access while they fit in this budget, so
# batches come from RAM instead of decompressing a chunk per sampled row.
DEFAULT_CACHE_BYTES = 4 << 30
# A buffering writer commits once this much is pending, whatever `buffer_steps` says.
_MAX_BUFFER_BYTES = 64 << 20
_FLOAT_KEYS = ("obs", "next_obs", "action", "reward", "cost")
_VECTOR_KEYS = ("obs", "next_obs", "action")


class DatasetError(ValueError):
    """A dataset (or a source being imported) that cannot be used; the message names the problem."""


@dataclass
class DatasetSource:
    """Where the data came from: the importer (or writer) and the original file."""

    importer: str
    file: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """The root attributes of a dataset."""

    env: EnvConfig | None = None
    # Names and flat sizes of the parts of `obs`, in order.
    obs_keys: list[str] = field(default_factory=list)
    obs_key_dims: list[int] = field(default_factory=list)
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    source: DatasetSource = field(default_factory=lambda: DatasetSource("python"))
    created: str | None = None
    format_version: int = layout.FORMAT_VERSION

    @property
    def env_id(self) -> str | None:
        return self.env.id if self.env is not None else None

    def to_attrs(self) -> dict[str, Any]:
        bounds = None
        if self.action_low is not None and self.action_high is not None:
            bounds = {
                "low": [float(v) for v in self.action_low],
                "high": [float(v) for v in self.action_high],
            }
        return {
            "format": layout.DEMOS_FORMAT,
            "format_version": self.format_version,
            "env_id": self.env_id,
            # Only what the importer set: the rest stays the env's default when rebuilt.
            "env": self.env.model_dump(mode="json", exclude_unset=True) if self.env is not None else None,
            "obs_keys": list(self.obs_keys),
            "obs_key_dims": [int(d) for d in self.obs_key_dims],
            "action_bounds": bounds,
            "source": {
                "importer": self.source.importer,
                "file": self.source.file,
                "options": self.source.options,
            },
            "created": self.created,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str) -> DatasetInfo:
        source = attrs.get("source") or {}
        if source.get("kind") == "replay_checkpoint":
            return cls(
                source=DatasetSource("replay_checkpoint", options={"table": source.get("table")}),
                created=attrs.get("created"),
                format_version=attrs["format_version"],
            )
        env = None
        if attrs.get("env") is not None:
            try:
                env = EnvConfig.model_validate(attrs["env"])
            except ValidationError as exc:
                raise DatasetError(f"{where}: attribute 'env' is not a valid env config: {exc}") from None
        elif attrs.get("env_id"):
            env = EnvConfig(id=attrs["env_id"])
        bounds = attrs.get("action_bounds") or {}
        return cls(
            env=env,
            obs_keys=list(attrs.get("obs_keys") or []),
            obs_key_dims=list(attrs.get("obs_key_dims") or []),
            action_low=bounds.get("low"),
            action_high=bounds.get("high"),
            source=DatasetSource(
                importer=source.get("importer", "unknown"),
                file=source.get("file"),
                options=dict(source.get("options") or {}),
            ),
            created=attrs.get("created"),
            format_version=attrs["format_version"],
        )


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- writing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeySpec:
    item_shape: tuple[int, ...]
    dtype: np.dtype


class DemoWriter:
    """Appends episodes to a dataset store.

    By default every `append_episode` is committed before it returns, so a crash loses at
    most the episode being written. `buffer_steps` > 0 commits in larger pieces (bulk
    imports: far fewer partial-chunk rewrites); a crash then loses the uncommitted buffer.
    `append=True` continues an existing store (creating it if absent), cutting off rows an
    interrupted writer left past the last committed episode.
    """

    def __init__(
        self,
        path: str | Path,
        info: DatasetInfo | None = None,
        *,
        append: bool = False,
        overwrite: bool = False,
        buffer_steps: int = 0,
        label: str | None = None,
    ) -> None:
        self.path = Path(path)
        # Named in error messages (an importer names its source file, not its staging dir).
        self._label = label or str(self.path)
        self._buffer_steps = buffer_steps
        self._specs: dict[str, _KeySpec] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_ends: list[int] = []
        self._pending_bytes = 0
        self._closed = False
        if append and self.path.exists():
            self._open_existing()
            return
        if self.path.exists():
            if not overwrite:
                raise DatasetError(f"{self.path}: already exists (pass overwrite, or append to continue it)")
            remove_store(self.path)
        info = info or DatasetInfo()
        attrs = info.to_attrs()
        attrs["created"] = info.created or now_iso()
        attrs["raw_obs_keys"] = []
        self._root = zarr.open_group(str(self.path), mode="w-")
        self._root.attrs.update(attrs)
        self._obs_dim = sum(info.obs_key_dims) if info.obs_key_dims else None
        self._raw: list[str] = []
        self._ends = layout.create_episode_ends(self._root)
        self._steps = 0
        self._episodes = 0

    def _open_existing(self) -> None:
        loaded = _load(self.path)
        if loaded.kind != "demos":
            raise DatasetError(f"{self.path}: only demonstration stores can be appended to")
        self._root = zarr.open_group(str(self.path), mode="r+")
        self._ends = self._root[f"{layout.META}/{layout.EPISODE_ENDS}"]
        self._steps = int(loaded.ends[-1]) if loaded.ends.size else 0
        self._episodes = len(loaded.ends)
        if self._ends.shape[0] != self._episodes:  # drop ends whose write was cut off
            self._ends.resize((self._episodes,))
        self._raw = list(loaded.raw_obs_keys)
        self._obs_dim = sum(loaded.info.obs_key_dims) if loaded.info.obs_key_dims else None
        for stored, arr in loaded.arrays.items():
            rw = self._root[f"{layout.DATA}/{stored}"]
            if rw.shape[0] != self._steps:
                rw.resize((self._steps, *rw.shape[1:]))
            name = RAW_PREFIX + stored if stored in self._raw else stored
            self._arrays[name] = rw
            self._specs[name] = _KeySpec(tuple(arr.shape[1:]), np.dtype(arr.dtype))

    @property
    def episodes(self) -> int:
        """Episodes appended so far (committed or buffered)."""
        return self._episodes + len(self._pending_ends)

    @property
    def steps(self) -> int:
        return self._pending_ends[-1] if self._pending_ends else self._steps

    def append_episode(self, episode: Mapping[str, Any]) -> None:
        """Add one episode: a mapping of per-step arrays of equal length (see the module doc)."""
        if self._closed:
            raise DatasetError(f"{self.path}: writer is closed")
        arrays = self._normalise(episode)
        n = len(arrays["obs"])
        for name, arr in arrays.items():
            self._pending.setdefault(name, []).append(arr)
            self._pending_bytes += arr.nbytes
        self._pending_ends.append(self.steps + n)
        pending = self.steps - self._steps
        if (
            self._buffer_steps <= 0
            or pending >= self._buffer_steps
            or self._pending_bytes >= _MAX_BUFFER_BYTES
        ):
            self.flush()

    def flush(self) -> None:
        """Commit buffered episodes: rows into every data array, then their episode ends."""
        if not self._pending_ends:
            return
        if not self._arrays:
            self._create_arrays()
        for name, pieces in self._pending.items():
            layout.append_rows(self._arrays[name], np.concatenate(pieces) if len(pieces) > 1 else pieces[0])
        layout.append_rows(self._ends, np.asarray(self._pending_ends, dtype=np.int64))
        self._steps = self._pending_ends[-1]
        self._episodes += len(self._pending_ends)
        self._pending = {}
        self._pending_ends = []
        self._pending_bytes = 0

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # On an error the buffered (uncommitted) episodes are dropped, as a crash would.
        if exc_type is None:
            self.close()
        else:
            self._closed = True

    def _create_arrays(self) -> None:
        raw = [name[len(RAW_PREFIX) :] for name in self._specs if name.startswith(RAW_PREFIX)]
        if raw:
            self._raw = raw
            self._root.attrs["raw_obs_keys"] = raw
        for name, spec in self._specs.items():
            stored = name[len(RAW_PREFIX) :] if name.startswith(RAW_PREFIX) else name
            self._arrays[name] = layout.create_appendable(
                self._root, f"{layout.DATA}/{stored}", spec.item_shape, spec.dtype
            )

    def _normalise(self, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
        where = f"{self._label}: episode {self.episodes}"
        missing = [k for k in layout.REQUIRED_KEYS if k not in episode]
        if missing:
            raise DatasetError(f"{where}: missing required key(s) {missing}")
        out = {name: _normalise_key(name, np.asarray(value), where) for name, value in episode.items()}
        n = len(out["obs"])
        if n == 0:
            raise DatasetError(f"{where}: an episode needs at least one step")
        for name, arr in out.items():
            if len(arr) != n:
                raise DatasetError(f"{where}: '{name}' has {len(arr)} steps but 'obs' has {n}")
        if "next_obs" in out and out["next_obs"].shape != out["obs"].shape:
            raise DatasetError(
                f"{where}: 'next_obs' per-step shape {out['next_obs'].shape[1:]} differs from "
                f"'obs' {out['obs'].shape[1:]}"
            )
        if self._obs_dim is not None and out["obs"].shape[1] != self._obs_dim:
            raise DatasetError(
                f"{where}: 'obs' has {out['obs'].shape[1]} values per step but obs_key_dims add up to "
                f"{self._obs_dim}"
            )
        specs = {name: _KeySpec(arr.shape[1:], arr.dtype) for name, arr in out.items()}
        if not self._specs:
            stored = [name.removeprefix(RAW_PREFIX) for name in specs]
            clash = sorted({s for s in stored if stored.count(s) > 1})
            if clash:
                raise DatasetError(f"{where}: raw observation key(s) {clash} clash with per-step keys")
            self._specs = specs
            return out
        if set(specs) != set(self._specs):
            extra, gone = sorted(set(specs) - set(self._specs)), sorted(set(self._specs) - set(specs))
            raise DatasetError(
                f"{where}: keys differ from earlier episodes "
                f"(new: {extra or 'none'}, missing: {gone or 'none'})"
            )
        for name, spec in specs.items():
            if spec != self._specs[name]:
                before = self._specs[name]
                raise DatasetError(
                    f"{where}: '{name}' is {spec.dtype}{list(spec.item_shape)} per step, earlier episodes "
                    f"{before.dtype}{list(before.item_shape)}"
                )
        return out


def _normalise_key(name: str, arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: '{name}' has dtype {arr.dtype}; per-step data must be numeric or bool")
    if arr.ndim == 0:
        raise DatasetError(f"{where}: '{name}' is a scalar; per-step data needs a leading time axis")
    if name.startswith(RAW_PREFIX):
        raw = name[len(RAW_PREFIX) :]
        if not raw or "/" in raw or raw in layout.REQUIRED_KEYS + layout.OPTIONAL_KEYS:
            raise DatasetError(f"{where}: bad raw observation key name {name!r}")
        if raw.endswith("image") and (
            arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4)
        ):
            raise DatasetError(
                f"{where}: image key '{name}' must be uint8 (T, H, W, C) with C in 1/3/4; "
                f"got {arr.dtype} {arr.shape}"
            )
        return np.ascontiguousarray(arr)
    if "/" in name:
        raise DatasetError(f"{where}: key {name!r} may not contain '/' (raw observations are 'obs/<name>')")
    if name in layout.FLAG_KEYS:
        return _as_flags(name, arr, where)
    if name in _FLOAT_KEYS:
        if arr.dtype.kind == "b":
            raise DatasetError(f"{where}: '{name}' is bool; expected numbers")
        if name in _VECTOR_KEYS and arr.ndim != 2:
            raise DatasetError(f"{where}: '{name}' must be (T, dim); got shape {arr.shape}")
        if name not in _VECTOR_KEYS:
            arr = _as_column(name, arr, where)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            bad = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0][0])
            raise DatasetError(f"{where}: '{name}' has a non-finite value at step {bad}")
        return arr
    return np.ascontiguousarray(arr)


def _as_column(name: str, arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError(f"{where}: '{name}' must be one value per step; got shape {arr.shape}")
    return arr


def _as_flags(name: str, arr: np.ndarray, where: str) -> np.ndarray:
    arr = _as_column(name, arr, where)
    if arr.dtype.kind != "b":
        bad = arr[(arr != 0) & (arr != 1)]
        if bad.size:
            raise DatasetError(f"{where}: '{name}' must be 0/1 flags; found {bad[0]!r}")
    return np.ascontiguousarray(arr.astype(bool))


def remove_store(path: Path) -> None:
    """Delete a Zarr store, refusing anything that does not look like one."""
    if path.is_dir() and (path / "zarr.json").is_file():
        shutil.rmtree(path)
    elif path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    else:
        raise DatasetError(f"{path}: exists and is not a Zarr store; not overwriting it")


# --- reading -------------------------------------------------------------------------------


@dataclass
class _CacheBudget:
    remaining: int


class Column:
    """One per-step array cut at the last committed step, read through an in-memory copy
    once random access asks for it and the dataset's cache budget allows."""

    def __init__(self, array: zarr.Array, length: int, budget: _CacheBudget) -> None:
        self._array = array
        self._length = length
        self._budget = budget
        self._memory: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._array.chunks)

    @property
    def nbytes(self) -> int:
        return self._length * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def nbytes_stored(self) -> int:
        return int(self._array.nbytes_stored())

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if self._memory is not None:
                return self._memory[start:stop:step]
            return (
                self._array[start:stop:step] if stop > start else np.zeros((0, *self.shape[1:]), self.dtype)
            )
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self._length if index < 0 else 0)
            if not 0 <= i < self._length:
                raise IndexError(f"step {index} out of range for {self._length} steps")
            return self._memory[i] if self._memory is not None else self._array[i]
        return self.take(np.asarray(index))

    def read(self) -> np.ndarray:
        """The whole column (kept in memory if it fits the budget)."""
        if self._memory is not None:
            return self._memory
        data = self[0 : self._length]
        if self.nbytes <= self._budget.remaining:
            self._memory = data
            self._budget.remaining -= self.nbytes
        return data

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices` (any order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._length):
            raise IndexError(f"step index out of range for {self._length} steps")
        return self._rows(indices)

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        """`take` for indices already known to be in range."""
        if self._memory is None and self.nbytes <= self._budget.remaining:
            self.read()
        if self._memory is not None:
            return self._memory[indices]
        # Sorted unique rows let zarr decode each touched chunk once.
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._array.get_orthogonal_selection((unique,))[inverse]


@dataclass
class _Loaded:
    kind: str  # "demos" or "replay_checkpoint"
    info: DatasetInfo
    ends: np.ndarray
    arrays: dict[str, zarr.Array]  # stored name -> array (possibly longer than the data)
    raw_obs_keys: list[str]
    uncommitted_steps: int


def _load(path: Path) -> _Loaded:
    """Open and validate a store; every problem is a DatasetError naming it."""
    where = str(path)
    if not path.exists():
        raise DatasetError(f"{where}: no such file or directory")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        hint = " (to convert an HDF5/parquet source, use `distrl demos import`)" if path.is_file() else ""
        raise DatasetError(f"{where}: not a Zarr group ({type(exc).__name__}){hint}") from None
    attrs = dict(root.attrs)
    if attrs.get("format") == layout.REPLAY_CHECKPOINT_FORMAT:
        tables = attrs.get("tables") or ["default"]
        raise DatasetError(
            f"{where}: is a replay checkpoint store; open one of its tables as a dataset, e.g. "
            f"{path / tables[0]}"
        )
    version = attrs.get("format_version")
    if version is None:
        raise DatasetError(f"{where}: no format_version attribute; not a distrl dataset")
    if version != layout.FORMAT_VERSION:
        raise DatasetError(
            f"{where}: format_version {version!r} is not supported (this distrl reads version "
            f"{layout.FORMAT_VERSION})"
        )
    replay = (attrs.get("source") or {}).get("kind") == "replay_checkpoint"
    if not replay and attrs.get("format") != layout.DEMOS_FORMAT:
        raise DatasetError(f"{where}: format {attrs.get('format')!r} is not {layout.DEMOS_FORMAT!r}")
    info = DatasetInfo.from_attrs(attrs, where)
    ends = _episode_ends(root, where)
    steps = int(ends[-1]) if ends.size else 0
    arrays: dict[str, zarr.Array] = {}
    if layout.DATA in root:
        data = root[layout.DATA]
        if not isinstance(data, zarr.Group):
            raise DatasetError(f"{where}: '{layout.DATA}' is an array; expected a group of per-step arrays")
        arrays = dict(data.arrays())
    if steps:
        missing = [k for k in layout.REQUIRED_KEYS if k not in arrays]
        if missing:
            raise DatasetError(f"{where}: missing {', '.join(f'data/{k}' for k in missing)}")
    if replay and steps and "next_obs" not in arrays:
        raise DatasetError(f"{where}: replay table without data/next_obs cannot serve as transitions")
    raw = list(attrs.get("raw_obs_keys") or [])
    for name in raw:
        if steps and name not in arrays:
            raise DatasetError(f"{where}: raw observation key {name!r} is listed but data/{name} is missing")
    uncommitted = 0
    for name, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] < steps:
            rows = arr.shape[0] if arr.ndim else 0
            raise DatasetError(
                f"{where}: data/{name} has {rows} rows but meta/episode_ends ends at step {steps}"
            )
        uncommitted = max(uncommitted, arr.shape[0] - steps)
        _check_dtype(name, arr, arrays, where)
    return _Loaded("replay_checkpoint" if replay else "demos", info, ends, arrays, raw, uncommitted)


def _episode_ends(root: zarr.Group, where: str) -> np.ndarray:
    name = f"{layout.META}/{layout.EPISODE_ENDS}"
    try:
        arr = root[name]
    except KeyError:
        raise DatasetError(f"{where}: missing {name}") from None
    if not isinstance(arr, zarr.Array) or arr.ndim != 1 or np.dtype(arr.dtype).kind not in "iu":
        desc = f"{arr.dtype} {arr.shape}" if isinstance(arr, zarr.Array) else "a group"
        raise DatasetError(f"{where}: {name} must be a 1-D integer array; found {desc}")
    ends = np.asarray(arr[...], dtype=np.int64)
    # An end whose write was cut off by a crash reads as the fill value: that episode was lost.
    n = len(ends)
    while n and ends[n - 1] == layout.UNCOMMITTED_END:
        n -= 1
    ends = ends[:n]
    if n and ends[0] <= 0:
        raise DatasetError(f"{where}: {name}[0] is {ends[0]}; episode ends must be positive")
    if n > 1:
        bad = np.flatnonzero(np.diff(ends) <= 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise DatasetError(
                f"{where}: {name} must increase strictly; episode {i} ends at {ends[i]} after {ends[i - 1]}"
            )
    return ends


def _check_dtype(name: str, arr: zarr.Array, arrays: Mapping[str, zarr.Array], where: str) -> None:
    dtype = np.dtype(arr.dtype)
    if name in layout.FLAG_KEYS and dtype != np.bool_:
        raise DatasetError(f"{where}: data/{name} has dtype {dtype}; flags must be bool")
    if name in _VECTOR_KEYS and (arr.ndim != 2 or dtype.kind != "f"):
        raise DatasetError(f"{where}: data/{name} must be (steps, dim) floats; found {dtype} {arr.shape}")
    if name in ("reward", "cost") and (arr.ndim != 1 or dtype.kind != "f"):
        raise DatasetError(f"{where}: data/{name} must be one float per step; found {dtype} {arr.shape}")
    if name == "next_obs" and "obs" in arrays and arr.shape[1:] != arrays["obs"].shape[1:]:
        raise DatasetError(
            f"{where}: data/next_obs per-step shape {arr.shape[1:]} differs from data/obs "
            f"{arrays['obs'].shape[1:]}"
        )


class Dataset:
    """A validated, read-only dataset: episodes, columns, random batches and transitions.

    Keys are the episode keys: raw observations appear as `obs/<name>`. When `next_obs` is
    not stored it is derived within episodes (`obs[t + 1]`); the last step of an episode
    that was not terminated then has no known next observation and is left out of
    `sample` and `as_transitions` (D4RL's convention), while a terminated last step's
    next_obs is a copy of its obs (never bootstrapped from).
    """

    def __init__(self, path: Path, loaded: _Loaded, cache_bytes: int) -> None:
        self.path = path
        self.kind = loaded.kind
        self.info = loaded.info
        self.episode_ends = loaded.ends
        self.raw_obs_keys = loaded.raw_obs_keys
        self.uncommitted_steps = loaded.uncommitted_steps
        budget = _CacheBudget(cache_bytes)
        steps = self.steps
        columns = {
            (RAW_PREFIX + name if name in loaded.raw_obs_keys else name): Column(arr, steps, budget)
            for name, arr in loaded.arrays.items()
        }
        known = layout.REQUIRED_KEYS + layout.OPTIONAL_KEYS
        order = [k for k in known if k in columns]
        order += sorted(k for k in columns if k not in known and not k.startswith(RAW_PREFIX))
        order += [RAW_PREFIX + k for k in loaded.raw_obs_keys if RAW_PREFIX + k in columns]
        self._columns = {k: columns[k] for k in order}
        self._valid: np.ndarray | None = None
        self._valid_known = False
        self._last: np.ndarray | None = None

    @property
    def episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def steps(self) -> int:
        return int(self.episode_ends[-1]) if self.episodes else 0

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    @property
    def keys(self) -> list[str]:
        return list(self._columns)

    @property
    def arrays(self) -> dict[str, Column]:
        return dict(self._columns)

    @property
    def has_next_obs(self) -> bool:
        return "next_obs" in self._columns

    def array(self, key: str) -> np.ndarray:
        """The whole column `key` as a numpy array."""
        if key not in self._columns:
            raise KeyError(f"{self.path}: no key {key!r}; keys: {', '.join(self._columns)}")
        return self._columns[key].read()

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Every key of one episode (negative indices count from the end), with next_obs."""
        i = index + self.episodes if index < 0 else index
        if not 0 <= i < self.episodes:
            raise IndexError(f"episode {index} out of range for {self.episodes} episodes")
        start = int(self.episode_ends[i - 1]) if i else 0
        end = int(self.episode_ends[i])
        out = {name: col[start:end] for name, col in self._columns.items()}
        if "next_obs" not in out:
            obs = out["obs"]
            out["next_obs"] = np.concatenate([obs[1:], obs[-1:]])
        return out

    def transition_indices(self) -> np.ndarray | None:
        """Steps usable as transitions, or None when every step is."""
        if not self._valid_known:
            self._valid_known = True
            if not self.has_next_obs and self.steps:
                terminated = self._columns["terminated"].read()
                cut = self.episode_ends - 1
                cut = cut[~terminated[cut]]
                if cut.size:
                    keep = np.ones(self.steps, dtype=bool)
                    keep[cut] = False
                    self._valid = np.flatnonzero(keep)
        return self._valid

    @property
    def transitions(self) -> int:
        valid = self.transition_indices()
        return self.steps if valid is None else len(valid)

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """A batch of transitions drawn uniformly with replacement."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rng = rng if rng is not None else np.random.default_rng()
        valid = self.transition_indices()
        count = self.steps if valid is None else len(valid)
        if count == 0:
            raise DatasetError(f"{self.path}: no transitions to sample")
        picks = rng.integers(0, count, size=batch_size)
        return self._gather(picks if valid is None else valid[picks])

    def as_transitions(self) -> dict[str, np.ndarray]:
        """Every transition as columns: obs, action, reward, next_obs, terminated, truncated
        (+ cost, success and extra per-step fields when present)."""
        valid = self.transition_indices()
        if valid is None:
            out = {name: col.read() for name, col in self._columns.items() if not name.startswith(RAW_PREFIX)}
            if "next_obs" not in out:
                out["next_obs"] = self._columns["obs"].take(self._next_index(np.arange(self.steps)))
            return out
        return self._gather(valid)

    def _next_index(self, indices: np.ndarray) -> np.ndarray:
        if self._last is None:
            last = np.zeros(self.steps, dtype=bool)
            last[self.episode_ends - 1] = True
            self._last = last
        return np.where(self._last[indices], indices, indices + 1)

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        # Indices come from transition_indices(), so they are in range.
        out = {
            name: col._rows(indices) for name, col in self._columns.items() if not name.startswith(RAW_PREFIX)
        }
        if "next_obs" not in out:
            out["next_obs"] = self._columns["obs"]._rows(self._next_index(indices))
        return out

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, episodes={self.episodes}, steps={self.steps})"


def open_dataset(path: str | Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Dataset:
    """Open and validate a dataset store (or one table group of a replay checkpoint).

    Raises DatasetError naming the problem: a missing key, mismatched lengths, bad
    `episode_ends`, a wrong format version. `cache_bytes` bounds the columns copied into
    memory for random access (0 reads every batch from the store).
    """
    path = Path(path)
    return Dataset(path, _load(path), cache_bytes)
