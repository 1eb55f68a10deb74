"""Changing the number of actors of a running run: a request file the launcher watches.

`distrl scale RUN_DIR --actors N` writes RUN_DIR/scale.json; the launcher running
that directory (local or Ray) takes it within a second, starts or stops actors
(the learner, replay shards and parameter server keep running), and writes the
new count into RUN_DIR/config.yaml so that `distrl train --resume` keeps it. A
file rather than an RPC: it needs no open port, works the same for every
launcher, and a launcher on another machine sees it through the shared run
directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distrl.config import ExperimentConfig

log = logging.getLogger(__name__)

SCALE_FILE = "scale.json"
CONFIG_FILE = "config.yaml"


class ScaleRequestError(ValueError):
    """A scale request file that cannot be applied; the message says why."""


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actors: int = Field(ge=1, description="the number of actors wanted")
    requested_unix_s: float = Field(default_factory=time.time)


def _write_atomically(path: Path, text: str) -> None:
    # A reader never sees half a file: write beside it, then rename over it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def request_scale(run_dir: Path, actors: int) -> Path:
    """Ask the launcher of `run_dir` for `actors` actors; returns the request file."""
    request = ScaleRequest(actors=actors)
    path = Path(run_dir) / SCALE_FILE
    _write_atomically(path, request.model_dump_json())
    return path


def take_scale_request(run_dir: Path) -> ScaleRequest | None:
    """The pending request (removed from disk, so it is applied once), or None.

    Raises ScaleRequestError for a file that is not a valid request (removed too:
    it would fail again on every poll).
    """
    path = Path(run_dir) / SCALE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return ScaleRequest.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ScaleRequestError(f"{path}: not a scale request ({exc.__class__.__name__}: {exc})") from None


def actor_count_warning(config: ExperimentConfig, actors: int) -> str | None:
    """What running `actors` actors costs, when it leaves replay shards without a writer; else None.

    Actors write to consecutive shards (`home_shard`), so N >= K actors cover all K shards. With
    fewer, the shards nobody writes to keep their data, but once their rate limiter stops them
    the learner samples only the shards that get new data (see `distrl.replay.prefetch`).
    """
    shards = config.replay.num_shards
    if actors >= shards:
        return None
    return (
        f"{actors} actors for {shards} replay shards: {shards - actors} shard(s) get no new data; once "
        "their rate limiter holds them back, the learner samples only the shards actors write to"
    )


def poll_scale_request(run_dir: Path, config: ExperimentConfig, note: Callable[[str], None]) -> int | None:
    """A launcher's tick: the actor count a pending request asks for, or None.

    A malformed request is refused and a count that leaves shards without writers is accepted
    with a warning; both go to the log and to `note` (the coordinator's console notes).
    """
    try:
        request = take_scale_request(run_dir)
    except ScaleRequestError as exc:
        log.warning("scale request refused: %s", exc)
        note(f"scale request refused: {exc}")
        return None
    if request is None:
        return None
    warning = actor_count_warning(config, request.actors)
    if warning:
        log.warning("%s", warning)
        note(warning)
    return request.actors


def discard_scale_request(run_dir: Path) -> None:
    """Forget a request left over from an earlier session: a resumed run starts from its config."""
    (Path(run_dir) / SCALE_FILE).unlink(missing_ok=True)


def pending(run_dir: Path) -> bool:
    return (Path(run_dir) / SCALE_FILE).exists()


def record_actor_count(run_dir: Path, config: ExperimentConfig, actors: int) -> ExperimentConfig:
    """`config` with `actors.num_actors = actors`, also written to RUN_DIR/config.yaml (for --resume)."""
    updated = config.model_copy(
        update={"actors": config.actors.model_copy(update={"num_actors": actors})}, deep=True
    )
    _write_atomically(Path(run_dir) / CONFIG_FILE, updated.to_yaml())
    return updated
