"""The on-disk layout shared by demonstration datasets and replay checkpoints.

Laid out like diffusion_policy's replay buffer so existing tools read it:
`data/<key>` arrays concatenated over episodes along axis 0 and
`meta/episode_ends` (int64, exclusive cumulative ends).
"""

from __future__ import annotations

import math

import numpy as np
import zarr
from zarr.codecs import BloscCodec

FORMAT_VERSION = 1
DATA = "data"
META = "meta"
EPISODE_ENDS = "episode_ends"
# Root `format` attribute of a demonstration store; replay checkpoint stores say
# REPLAY_CHECKPOINT_FORMAT at their root and hold one dataset-shaped group per table.
DEMOS_FORMAT = "distrl.demos"
REPLAY_CHECKPOINT_FORMAT = "distrl.replay_checkpoint"
REQUIRED_KEYS = ("obs", "action", "reward", "terminated", "truncated")
OPTIONAL_KEYS = ("next_obs", "cost", "success")
FLAG_KEYS = ("terminated", "truncated", "success")
# Appended episode ends are written after a resize; a crash between the two leaves this
# value at the tail, which readers drop (it can never be a real end).
UNCOMMITTED_END = -1
EPISODE_ENDS_CHUNK = 16384
# Aim for chunks of about this many bytes: large enough for fast sequential
# reads, small enough that a random batch touches little extra data.
TARGET_CHUNK_BYTES = 1 << 20


def compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def chunk_rows(item_shape: tuple[int, ...], dtype: np.dtype) -> int:
    item_bytes = max(1, math.prod(item_shape) * np.dtype(dtype).itemsize)
    return max(1, TARGET_CHUNK_BYTES // item_bytes)


def write_array(group: zarr.Group, path: str, data: np.ndarray) -> zarr.Array:
    """Write a whole array, chunked along axis 0 and compressed."""
    data = np.ascontiguousarray(data)
    rows = chunk_rows(data.shape[1:], data.dtype)
    arr = group.create_array(
        path,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(rows, *data.shape[1:]),
        compressors=[compressor()],
    )
    if data.size:
        arr[...] = data
    return arr


def create_appendable(
    group: zarr.Group, path: str, item_shape: tuple[int, ...], dtype: np.dtype
) -> zarr.Array:
    """An empty array that grows along axis 0, chunked and compressed like `write_array`."""
    rows = chunk_rows(item_shape, dtype)
    return group.create_array(
        path,
        shape=(0, *item_shape),
        dtype=dtype,
        chunks=(rows, *item_shape),
        compressors=[compressor()],
    )


def create_episode_ends(group: zarr.Group) -> zarr.Array:
    """An empty, appendable `meta/episode_ends` whose unwritten entries read as UNCOMMITTED_END."""
    return group.create_array(
        f"{META}/{EPISODE_ENDS}",
        shape=(0,),
        dtype=np.int64,
        chunks=(EPISODE_ENDS_CHUNK,),
        compressors=[compressor()],
        fill_value=UNCOMMITTED_END,
    )


def append_rows(array: zarr.Array, rows: np.ndarray) -> None:
    """Grow `array` along axis 0 by `rows` (the shape first, then the data)."""
    n = array.shape[0]
    array.resize((n + len(rows), *array.shape[1:]))
    array[n:] = rows
