"""Configuration of a replay shard and its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FieldSpecConfig(BaseModel):
    """Per-item dtype and shape of one field (the leading batch dimension excluded)."""

    model_config = ConfigDict(extra="forbid")

    dtype: str
    shape: list[int] = Field(default_factory=list)


class TableConfig(BaseModel):
    """A table: ring storage x sampler x FIFO remover x rate limiter.

    Rate limiting follows Reverb's SampleToInsertRatio: with
    `samples_per_insert` set, `inserts * samples_per_insert - samples` is kept
    within `min_size_to_sample * samples_per_insert +- error_buffer`; the side
    that is ahead waits. Unset, nothing waits (sampling still needs
    `min_size_to_sample` items).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field("default", min_length=1)
    capacity: int = Field(1_000_000, gt=0)
    sampler: Literal["uniform", "prioritized"] = "uniform"
    priority_exponent: float = Field(0.6, ge=0.0, description="alpha: P(i) ~ p_i^alpha")
    importance_exponent: float = Field(0.4, ge=0.0, description="beta: w_i = (N P(i))^-beta")
    samples_per_insert: float | None = Field(None, gt=0)
    min_size_to_sample: int = Field(1, ge=1)
    error_buffer: float | None = Field(None, gt=0, description="default: 100 x max(1, samples_per_insert)")
    spec: dict[str, FieldSpecConfig] | None = None
    max_wait_s: float = Field(60.0, gt=0, description="longest a call waits for the rate limiter")

    @model_validator(mode="after")
    def _check(self) -> TableConfig:
        if self.min_size_to_sample > self.capacity:
            raise ValueError(
                f"min_size_to_sample ({self.min_size_to_sample}) exceeds capacity ({self.capacity})"
            )
        if self.samples_per_insert is not None and self.error_buffer is not None:
            # Below this both sides could be blocked at once.
            floor = max(1.0, self.samples_per_insert)
            if self.error_buffer < floor:
                raise ValueError(f"error_buffer ({self.error_buffer}) must be >= max(1, samples_per_insert)")
        return self

    @property
    def resolved_error_buffer(self) -> float:
        if self.error_buffer is not None:
            return self.error_buffer
        return 100.0 * max(1.0, self.samples_per_insert or 1.0)


class ReplayShardConfig(BaseModel):
    """One replay shard: its tables and checkpointing."""

    model_config = ConfigDict(extra="forbid")

    tables: list[TableConfig] = Field(default_factory=lambda: [TableConfig()])
    checkpoint_dir: Path | None = None
    checkpoint_every_s: float | None = Field(None, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int | None = None
    ack_delay_ms: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description="longest an insert ack waits so later batches on its stream share it (0: at once)",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ReplayShardConfig:
        names = [t.name for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate table names: {dupes}")
        if not self.tables:
            raise ValueError("a shard needs at least one table")
        return self
