"""A corrupt newest checkpoint (learner or replay) falls back to the newest readable one before it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from test_replay_table import fill

from distrl.config import load_config
from distrl.learners import checkpoint as ckpt
from distrl.learners.learner import Learner
from distrl.replay.checkpoint import list_checkpoints, restore_tables, write_checkpoint
from distrl.replay.config import TableConfig
from distrl.replay.table import Table

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "sac_smoke.yaml"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[: min(len(data), 512)] = bytes(range(256)) * 2 if len(data) >= 512 else b"\xff" * len(data)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, garble])
def test_a_corrupt_newest_learner_checkpoint_falls_back_to_the_one_before(tmp_path: Path, damage, caplog):
    config = load_config(SMOKE, ["learner.device=cpu", "learner.keep_checkpoints=3"])
    learner = Learner(config, tmp_path, [], None)
    learner.updates = 500
    older = learner.save()
    learner.updates = 520
    newest = learner.save()
    damage(newest)

    with caplog.at_level(logging.WARNING, logger="distrl.learners.checkpoint"):
        resumed = Learner(config, tmp_path, [], None)
    assert resumed.resumed_from == older
    assert resumed.updates == 500  # the older checkpoint's counter, not 520 and not 0
    assert newest.name in caplog.text and "skipping" in caplog.text
    assert newest.exists(), "a skipped checkpoint is left for a person to look at"

    # With nothing readable the learner starts fresh, saying which files it skipped.
    truncate(older)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distrl.learners.checkpoint"):
        assert ckpt.load_latest_checkpoint(tmp_path / "checkpoints") is None
    assert older.name in caplog.text and newest.name in caplog.text


@pytest.mark.parametrize("part", ["default/data/obs/c/0/0", "default/meta/keys/c/0", "zarr.json"])
def test_a_corrupt_newest_replay_checkpoint_falls_back_to_the_one_before(tmp_path: Path, part, caplog):
    cfg = TableConfig(capacity=100)
    table = Table(cfg, seed=0)
    fill(table, 2)
    older = write_checkpoint([table], tmp_path, keep=3)
    fill(table, 3)  # 12 items now, 8 in the older checkpoint
    newest = write_checkpoint([table], tmp_path, keep=3)
    garble(newest / part)

    with caplog.at_level(logging.WARNING, logger="distrl.replay.checkpoint"):
        tables, path = restore_tables([cfg], tmp_path)
    assert path == older
    assert len(tables["default"]) == 8
    np.testing.assert_array_equal(tables["default"].snapshot().keys, np.arange(8))
    assert newest.name in caplog.text and "skipping" in caplog.text
    assert list_checkpoints(tmp_path) == [older, newest], "a skipped checkpoint is left in place"
