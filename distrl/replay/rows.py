"""Packed rows: every field of an item in one row of bytes, described by a `RowLayout`.

The table's storage keeps each item (its fields, key, policy version and the
learner version when it was inserted) in one row, and the wire carries batches
the same way: a sample is the gathered rows as one `uint8 [n, row_bytes]`
tensor plus the layout, and an actor's batch is its columns packed into rows.
A reader turns the layout into a numpy structured dtype, so unpacking is
`np.frombuffer` and every field is a zero-copy (strided) view. Values are
little-endian, as everywhere on the wire.

Columns are ordered widest element first (then by name), so every column sits
at a multiple of its element size and the order does not depend on the order
a batch's dict happens to have: a writer packing a batch and a table storing
it arrive at the same offsets, and the table copies the rows in one block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Per-item metadata the table stores after the fields; the spec reserves these names.
KEYS = "keys"
# The version of the policy that produced the item (its actor's).
POLICY_VERSION = "policy_version"
# The newest learner version the table had seen when the item was inserted: actor lag is
# learner_version - policy_version, sample age the learner's version at sampling - learner_version.
LEARNER_VERSION = "learner_version"
META_COLUMNS = (KEYS, POLICY_VERSION, LEARNER_VERSION)


class LayoutError(ValueError):
    """A row layout (or rows) that cannot describe a valid batch; `column` names the offending one."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"field {column!r}: {message}")
        self.column = column


@dataclass(frozen=True)
class RowColumn:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass(frozen=True, eq=False)
class RowLayout:
    """Where each column of an item lives in its row of `row_bytes` bytes.

    Compared by identity: layouts are built once per table or per decoded
    message layout and cached, so tables and caches key on them cheaply.
    """

    columns: tuple[RowColumn, ...]
    row_bytes: int

    @classmethod
    def pack(
        cls, fields: Iterable[tuple[str, np.dtype, tuple[int, ...]]], *, with_meta: bool = False
    ) -> RowLayout:
        """Columns back to back, widest element first; `with_meta` appends the int64 META_COLUMNS.

        The field columns come out the same with or without meta columns, so a
        writer's batch (fields only) is a prefix of a table row. Rows are padded
        to a multiple of 8 bytes, so every row of a block starts aligned.
        """
        specs = [(name, np.dtype(dtype).newbyteorder("<"), tuple(shape)) for name, dtype, shape in fields]
        specs.sort(key=lambda s: (-s[1].itemsize, s[0]))
        columns = []
        offset = 0
        for name, dtype, shape in specs:
            columns.append(RowColumn(name, dtype, shape, offset))
            offset += columns[-1].nbytes
        offset = -(-offset // 8) * 8
        if with_meta:
            for name in META_COLUMNS:
                columns.append(RowColumn(name, np.dtype("<i8"), (), offset))
                offset += 8
        return cls(tuple(columns), offset)

    @classmethod
    def of_batch(cls, batch: Mapping[str, np.ndarray]) -> RowLayout:
        """The layout a writer packs `batch` with (fields only)."""
        return cls.pack((name, arr.dtype, arr.shape[1:]) for name, arr in batch.items())

    @cached_property
    def by_name(self) -> dict[str, RowColumn]:
        return {c.name: c for c in self.columns}

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.name not in META_COLUMNS)

    @cached_property
    def numpy_dtype(self) -> np.dtype:
        """A structured dtype of one row: `rows.view(dtype)[name]` is the column of `name`."""
        return np.dtype(
            {
                "names": [c.name for c in self.columns],
                "formats": [(c.dtype, c.shape) if c.shape else c.dtype for c in self.columns],
                "offsets": [c.offset for c in self.columns],
                "itemsize": self.row_bytes,
            }
        )

    def is_prefix_of(self, other: RowLayout) -> bool:
        """True when `other` is this layout plus meta columns: a batch's rows are then a table row's head."""
        k = len(self.columns)
        return other.columns[:k] == self.columns and all(c.name in META_COLUMNS for c in other.columns[k:])

    def check(self) -> None:
        """Raise LayoutError unless the columns fit in the row without overlapping (layouts from the wire)."""
        if self.row_bytes < 0:
            raise LayoutError("layout", f"negative row size {self.row_bytes}")
        seen = set()
        for c in self.columns:
            if not c.name or c.name in seen:
                raise LayoutError(c.name, "empty or repeated column name in the row layout")
            seen.add(c.name)
            if any(s < 0 for s in c.shape):
                raise LayoutError(c.name, f"negative dimension in shape {c.shape}")
            if c.offset < 0 or c.end > self.row_bytes:
                raise LayoutError(
                    c.name, f"bytes {c.offset}..{c.end} do not fit in a row of {self.row_bytes} bytes"
                )
        spans = sorted((c.offset, c.end, c.name) for c in self.columns if c.nbytes)
        for (_, end, _), (start, _, name) in itertools.pairwise(spans):
            if start < end:
                raise LayoutError(name, "overlaps another column in the row layout")
        try:  # numpy's own limits (dimensions and sizes of a C int), which a 0-byte column can pass above
            self.numpy_dtype  # noqa: B018
        except (ValueError, TypeError) as exc:
            raise LayoutError("layout", f"numpy cannot lay out these columns: {exc}") from None

    def views(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every column of `rows` ((n, row_bytes) uint8 or (n,) structured) as a view of (n, *shape)."""
        structured = self.structured(rows)
        return {c.name: structured[c.name] for c in self.columns}

    def structured(self, rows: np.ndarray) -> np.ndarray:
        """`rows` as a 1-D structured array (a view: no copy)."""
        if rows.dtype == self.numpy_dtype:
            return rows
        if rows.ndim != 2 or rows.shape[1] != self.row_bytes:
            raise LayoutError("rows", f"rows of shape {rows.shape} do not have {self.row_bytes} bytes each")
        if not self.row_bytes:
            return np.zeros(len(rows), dtype=self.numpy_dtype)
        return rows.view(self.numpy_dtype).reshape(len(rows))

    def pack_batch(self, batch: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """`batch` (n items per column) as an (n, row_bytes) uint8 array; LayoutError names a column that
        does not have n items of its column's dtype and shape."""
        out = np.zeros(n, dtype=self.numpy_dtype)  # zeros: padding bytes are sent too
        for name, dtype, shape in self._item_specs:
            arr = batch[name]
            if arr.shape[1:] != shape or len(arr) != n or arr.dtype.newbyteorder("<") != dtype:
                column = f"{n} x {dtype}{list(shape)}"
                raise LayoutError(name, f"{arr.dtype}{list(arr.shape)} does not fit a column of {column}")
            out[name] = arr
        return out.view(np.uint8).reshape(n, self.row_bytes)

    @cached_property
    def _item_specs(self) -> tuple[tuple[str, np.dtype, tuple[int, ...]], ...]:
        return tuple((c.name, c.dtype, c.shape) for c in self.columns)


@dataclass
class PackedBatch:
    """A batch as a writer sends it: every item's fields packed into one row of bytes."""

    rows: np.ndarray  # (n, layout.row_bytes) uint8
    layout: RowLayout  # field columns only

    @cached_property
    def fields(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.rows)
