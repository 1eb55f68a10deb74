"""A table's spec: the fields of a transition, their dtypes and per-item shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distrl.replay.config import FieldSpecConfig
from distrl.replay.rows import META_COLUMNS, RowColumn, RowLayout

# Stored beside every item by the table itself; batches may not use these names.
RESERVED_FIELDS = frozenset({*META_COLUMNS, "probabilities", "weights"})


class SpecViolation(ValueError):
    """The shard's verdict on a batch (or priority update) that does not match the table; names the field.

    The shard answers it with INVALID_ARGUMENT; the writer raises `InsertRejectedError` for it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class TableSpec:
    fields: dict[str, FieldSpec]

    @classmethod
    def from_config(cls, spec: dict[str, FieldSpecConfig]) -> TableSpec:
        fields = {}
        for name, cfg in spec.items():
            try:
                dtype = np.dtype(cfg.dtype)
            except TypeError:
                raise ValueError(f"spec.{name}.dtype: unknown dtype {cfg.dtype!r}") from None
            fields[name] = FieldSpec(name, dtype, tuple(int(s) for s in cfg.shape))
        _check_names(fields)
        return cls(fields)

    @classmethod
    def from_batch(cls, batch: dict[str, np.ndarray]) -> TableSpec:
        if not batch:
            raise SpecViolation("<fields>", "a batch needs at least one field")
        fields = {
            name: FieldSpec(name, arr.dtype.newbyteorder("="), tuple(arr.shape[1:]))
            for name, arr in batch.items()
        }
        for name, arr in batch.items():
            if arr.ndim == 0:
                raise SpecViolation(name, "needs a leading batch dimension, got a scalar")
        _check_names(fields)
        return cls(fields)

    def to_config(self) -> dict[str, dict]:
        return {n: {"dtype": str(f.dtype), "shape": list(f.shape)} for n, f in self.fields.items()}

    def validate(self, batch: dict[str, np.ndarray]) -> int:
        """Check a batch against the spec; returns its number of items or raises SpecViolation."""
        missing = sorted(set(self.fields) - set(batch))
        if missing:
            raise SpecViolation(
                missing[0], f"missing (batch has {sorted(batch)}, table expects {sorted(self.fields)})"
            )
        extra = sorted(set(batch) - set(self.fields))
        if extra:
            raise SpecViolation(extra[0], f"not in the table spec (table expects {sorted(self.fields)})")
        n = None
        for name, spec in self.fields.items():
            arr = batch[name]
            if arr.dtype.newbyteorder("=") != spec.dtype:
                raise SpecViolation(name, f"dtype {arr.dtype} does not match the table's {spec.dtype}")
            if arr.ndim == 0 or tuple(arr.shape[1:]) != spec.shape:
                raise SpecViolation(
                    name, f"per-item shape {tuple(arr.shape[1:])} does not match the table's {spec.shape}"
                )
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise SpecViolation(name, f"has {arr.shape[0]} items while other fields have {n}")
            if spec.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise SpecViolation(name, f"{bad} non-finite value(s) (NaN or inf)")
        if not n:
            raise SpecViolation(next(iter(self.fields)), "batch is empty")
        return int(n)


@dataclass(frozen=True)
class PackedCheck:
    """What is left to check of rows packed with a layout that matched the spec: item count, finite floats.

    A table validates the first batch of each layout in full (names, dtypes,
    shapes, values) and every later one with this: float columns of one dtype
    that sit side by side are checked as one block, one call per block.
    """

    spans: tuple[tuple[int, int, np.dtype, tuple[RowColumn, ...]], ...]
    first_field: str
    row_bytes: int

    @classmethod
    def of(cls, layout: RowLayout) -> PackedCheck:
        spans: list[tuple[int, int, np.dtype, tuple[RowColumn, ...]]] = []
        for c in layout.columns:
            if c.dtype.kind != "f" or not c.nbytes:
                continue
            if spans and spans[-1][1] == c.offset and spans[-1][2] == c.dtype:
                start, _, dtype, columns = spans[-1]
                spans[-1] = (start, c.end, dtype, (*columns, c))
            else:
                spans.append((c.offset, c.end, c.dtype, (c,)))
        return cls(tuple(spans), layout.columns[0].name if layout.columns else "<fields>", layout.row_bytes)

    def count(self, rows: np.ndarray) -> int:
        """The number of items in `rows` ((n, row_bytes) uint8); SpecViolation names a bad field."""
        n = len(rows)
        if rows.ndim != 2 or rows.shape[1] != self.row_bytes:
            raise SpecViolation("rows", f"shape {rows.shape} is not [n, {self.row_bytes}] as the layout says")
        if not n:
            raise SpecViolation(self.first_field, "batch is empty")
        for start, stop, dtype, columns in self.spans:
            if not np.isfinite(rows[:, start:stop].view(dtype)).all():
                for c in columns:
                    finite = np.isfinite(rows[:, c.offset : c.end].view(dtype))
                    if not finite.all():
                        bad = int(finite.size - np.count_nonzero(finite))
                        raise SpecViolation(c.name, f"{bad} non-finite value(s) (NaN or inf)")
        return n


def _check_names(fields: dict[str, FieldSpec]) -> None:
    reserved = sorted(set(fields) & RESERVED_FIELDS)
    if reserved:
        raise SpecViolation(reserved[0], "is a reserved name (stored by the table itself)")
    for name, spec in fields.items():
        if not name or name.startswith("/") or name.endswith("/"):
            raise SpecViolation(name, "invalid field name")
        if spec.dtype.kind not in "fiub":
            raise SpecViolation(name, f"dtype {spec.dtype} is not storable")
