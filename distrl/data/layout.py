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
