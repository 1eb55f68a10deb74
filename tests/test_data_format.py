"""The Zarr demonstration format: writer, validated reader, batches, crash safety, replay checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from distrl.data import layout
from distrl.data.format import DatasetError, DatasetInfo, DatasetSource, DemoWriter, open_dataset
from distrl.envs.config import EnvConfig


def make_episode(episode: int, length: int, start: int, *, terminated: bool, obs_dim: int = 3) -> dict:
    """Column 0 of obs is the global step index, column 1 the episode: every row says where it came from."""
    steps = np.arange(start, start + length)
    obs = np.zeros((length, obs_dim))
    obs[:, 0] = steps
    obs[:, 1] = episode
    flags = np.zeros(length, dtype=bool)
    term, trunc = flags.copy(), flags.copy()
    (term if terminated else trunc)[-1] = True
    return {
        "obs": obs,
        "action": np.stack([steps, -steps], axis=1).astype(np.float64),
        "reward": steps * 0.5,
        "terminated": term,
        "truncated": trunc.astype(np.int64),  # 0/1 integers are accepted as flags
        "cost": (steps % 3 == 0).astype(np.float32),
        "success": steps % 4 == 0,
        "discount": np.full(length, 0.99, dtype=np.float32),
        "obs/agentview_image": np.full((length, 4, 5, 3), episode, dtype=np.uint8),
    }


def write_episodes(
    path: Path, lengths: list[int], terminated: list[bool] | None = None, **kwargs
) -> list[dict]:
    info = DatasetInfo(
        env=EnvConfig(id="gym:Hopper-v5"),
        obs_keys=["pos", "vel"],
        obs_key_dims=[2, 1],
        action_low=[-1.0, -2.0],
        action_high=[1.0, 2.0],
        source=DatasetSource("test", "/src/file.hdf5", {"a": 1}),
    )
    episodes, start = [], 0
    with DemoWriter(path, info, **kwargs) as writer:
        for i, n in enumerate(lengths):
            ep = make_episode(i, n, start, terminated=terminated[i] if terminated else i % 2 == 0)
            writer.append_episode(ep)
            episodes.append(ep)
            start += n
    return episodes


def test_round_trip_keys_attrs_and_compression(tmp_path):
    path = tmp_path / "demos.zarr"
    episodes = write_episodes(path, [5, 7, 3])
    ds = open_dataset(path)
    assert (ds.episodes, ds.steps) == (3, 15)
    assert ds.episode_lengths.tolist() == [5, 7, 3]
    assert ds.episode_ends.dtype == np.int64 and ds.episode_ends.tolist() == [5, 12, 15]
    assert ds.keys == [
        "obs",
        "action",
        "reward",
        "terminated",
        "truncated",
        "cost",
        "success",
        "discount",
        "obs/agentview_image",
    ]
    for i, src in enumerate(episodes):
        got = ds.episode(i)
        for key, value in src.items():
            want = np.asarray(value)
            if key in ("obs", "action", "reward"):
                want = want.astype(np.float32)
            if key in ("terminated", "truncated", "success"):
                want = want.astype(bool)
            np.testing.assert_array_equal(got[key], want, err_msg=key)
            assert got[key].dtype == want.dtype, key
    assert ds.episode(-1)["obs"][0, 1] == 2
    info = ds.info
    assert info.env_id == "gym:Hopper-v5"
    assert info.obs_keys == ["pos", "vel"] and info.obs_key_dims == [2, 1]
    assert info.action_low == [-1.0, -2.0] and info.action_high == [1.0, 2.0]
    assert info.source == DatasetSource("test", "/src/file.hdf5", {"a": 1})
    assert info.created and info.format_version == layout.FORMAT_VERSION
    # The layout other tools read: raw keys live beside the others under data/.
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["format"] == "distrl.demos" and root.attrs["raw_obs_keys"] == ["agentview_image"]
    assert root["data/agentview_image"].shape == (15, 4, 5, 3)
    codec = root["data/obs"].metadata.to_dict()["codecs"][-1]
    assert codec["name"] == "blosc" and codec["configuration"]["cname"] == "zstd"


def test_derived_next_obs_skips_unknown_last_steps(tmp_path):
    path = tmp_path / "demos.zarr"
    write_episodes(path, [4, 3, 2], terminated=[True, False, True])
    ds = open_dataset(path)
    assert not ds.has_next_obs
    tr = ds.as_transitions()
    # The truncated episode's last step (index 6) has no known next observation.
    assert tr["obs"][:, 0].tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    assert tr["next_obs"][:, 0].tolist() == [1, 2, 3, 3, 5, 6, 8, 8]
    assert tr["terminated"].tolist() == [False, False, False, True, False, False, False, True]
    assert set(tr) >= {"obs", "action", "reward", "next_obs", "terminated", "truncated", "cost", "success"}
    assert "obs/agentview_image" not in tr
    ep = ds.episode(1)
    assert ep["next_obs"][:, 0].tolist() == [5, 6, 6]


def test_stored_next_obs_is_used(tmp_path):
    path = tmp_path / "demos.zarr"
    with DemoWriter(path) as writer:
        ep = make_episode(0, 4, 0, terminated=False)
        ep["next_obs"] = ep["obs"] + 100
        writer.append_episode(ep)
    ds = open_dataset(path)
    assert ds.has_next_obs and ds.transitions == 4
    np.testing.assert_array_equal(ds.as_transitions()["next_obs"], (ep["obs"] + 100).astype(np.float32))


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])
def test_sample_rows_are_consistent_transitions(tmp_path, cache_bytes):
    path = tmp_path / "demos.zarr"
    write_episodes(path, [50, 30, 20], terminated=[False, True, False])
    ds = open_dataset(path, cache_bytes=cache_bytes)
    batch = ds.sample(512, np.random.default_rng(0))
    idx = batch["obs"][:, 0]
    np.testing.assert_array_equal(batch["action"][:, 0], idx)
    np.testing.assert_array_equal(batch["reward"], idx * 0.5)
    np.testing.assert_array_equal(batch["next_obs"][:, 0], np.where(idx == 79, 79, idx + 1))
    assert not np.isin(idx, [49, 99]).any()  # truncated episodes' last steps are never drawn
    assert len(np.unique(idx)) > 80  # draws cover the dataset
    again = open_dataset(path, cache_bytes=cache_bytes).sample(512, np.random.default_rng(0))
    np.testing.assert_array_equal(again["obs"], batch["obs"])


def test_buffered_writer_commits_in_pieces(tmp_path):
    path = tmp_path / "demos.zarr"
    writer = DemoWriter(path, buffer_steps=10)
    writer.append_episode(make_episode(0, 4, 0, terminated=True))
    assert open_dataset(path).episodes == 0  # still buffered
    writer.append_episode(make_episode(1, 8, 4, terminated=True))
    assert open_dataset(path).episodes == 2
    writer.append_episode(make_episode(2, 2, 12, terminated=True))
    writer.close()
    assert open_dataset(path).episode_lengths.tolist() == [4, 8, 2]


def test_interrupted_write_is_trimmed_and_append_continues(tmp_path):
    path = tmp_path / "demos.zarr"
    episodes = write_episodes(path, [5, 6, 4])
    # A crash mid-4th episode: some arrays got its rows, episode_ends was resized but its
    # new end never written (reads as the fill value).
    root = zarr.open_group(str(path), mode="r+")
    for key in ("obs", "action", "reward"):
        layout.append_rows(root[f"data/{key}"], np.full((3, *root[f"data/{key}"].shape[1:]), 7))
    root["meta/episode_ends"].resize((4,))
    ds = open_dataset(path)
    assert (ds.episodes, ds.steps, ds.uncommitted_steps) == (3, 15, 3)
    assert len(ds.arrays["obs"]) == 15 and ds.as_transitions()["obs"].shape == (15 - 1, 3)
    np.testing.assert_array_equal(ds.episode(2)["obs"], episodes[2]["obs"].astype(np.float32))

    with DemoWriter(path, append=True) as writer:
        assert (writer.episodes, writer.steps) == (3, 15)
        writer.append_episode(make_episode(3, 2, 15, terminated=True))
    ds = open_dataset(path)
    assert ds.uncommitted_steps == 0 and ds.episode_lengths.tolist() == [5, 6, 4, 2]
    assert ds.episode(3)["obs"][:, 0].tolist() == [15, 16]
    assert ds.array("reward")[-2:].tolist() == [7.5, 8.0]


WRITER_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from distrl.data.format import DemoWriter
    writer = DemoWriter(sys.argv[1])
    start = 0
    for episode in range(100000):
        n = 50 + episode % 7
        obs = np.full((n, 64), episode, dtype=np.float32)
        flags = np.zeros(n, dtype=bool)
        writer.append_episode({"obs": obs, "action": obs[:, :4], "reward": np.full(n, episode),
                               "terminated": flags, "truncated": flags})
    """
)


def test_killed_writer_leaves_every_committed_episode_readable(tmp_path):
    path = tmp_path / "demos.zarr"
    child = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(path)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if open_dataset(path).episodes >= 5:
                    break
            except DatasetError:
                pass  # not created yet
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    ds = open_dataset(path)
    assert ds.episodes >= 5
    for i in range(ds.episodes):
        ep = ds.episode(i)
        assert len(ep["obs"]) == 50 + i % 7
        assert np.all(ep["obs"] == i) and np.all(ep["reward"] == i)
    with DemoWriter(path, append=True) as writer:
        writer.append_episode(
            {
                "obs": np.ones((3, 64)),
                "action": np.ones((3, 4)),
                "reward": np.ones(3),
                "terminated": np.ones(3, bool),
                "truncated": np.zeros(3, bool),
            }
        )
    assert open_dataset(path).episode(-1)["obs"].shape == (3, 64)


# --- validation ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "demos.zarr"
    write_episodes(path, [5, 6, 4])
    return path


def _root(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r+")


def test_missing_key_is_named(store):
    del _root(store)["data/reward"]
    with pytest.raises(DatasetError, match="missing data/reward"):
        open_dataset(store)


def test_short_array_is_named(store):
    _root(store)["data/action"].resize((10, 2))
    with pytest.raises(DatasetError, match="data/action has 10 rows but meta/episode_ends ends at step 15"):
        open_dataset(store)


def test_bad_episode_ends_are_named(store):
    ends = _root(store)["meta/episode_ends"]
    ends[:] = [5, 4, 15]
    with pytest.raises(DatasetError, match="increase strictly; episode 1 ends at 4 after 5"):
        open_dataset(store)
    ends[:] = [0, 4, 15]
    with pytest.raises(DatasetError, match="must be positive"):
        open_dataset(store)
    root = _root(store)
    del root["meta/episode_ends"]
    layout.write_array(root, "meta/episode_ends", np.array([5.0, 11.0, 15.0]))
    with pytest.raises(DatasetError, match="1-D integer array; found float64"):
        open_dataset(store)
    del root["meta/episode_ends"]
    with pytest.raises(DatasetError, match="missing meta/episode_ends"):
        open_dataset(store)


def test_wrong_format_version_is_named(store):
    _root(store).attrs["format_version"] = 99
    with pytest.raises(DatasetError, match="format_version 99 is not supported"):
        open_dataset(store)
    del _root(store).attrs["format_version"]
    with pytest.raises(DatasetError, match="no format_version"):
        open_dataset(store)


def test_mislabelled_arrays_are_named(store):
    root = _root(store)
    del root["data/terminated"]
    layout.write_array(root, "data/terminated", np.zeros(15, np.float32))
    with pytest.raises(DatasetError, match="data/terminated has dtype float32; flags must be bool"):
        open_dataset(store)


def test_not_a_store_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "nope.zarr")
    (tmp_path / "demos.hdf5").write_bytes(b"\x89HDF\r\n")
    with pytest.raises(DatasetError, match=r"not a Zarr group.*distrl demos import"):
        open_dataset(tmp_path / "demos.hdf5")


def test_bad_episodes_are_rejected_by_the_writer(tmp_path):
    writer = DemoWriter(tmp_path / "demos.zarr", label="mine")
    good = make_episode(0, 4, 0, terminated=True)
    writer.append_episode(good)
    cases = [
        ({**good, "truncated": np.array([0, 2, 0, 0])}, "'truncated' must be 0/1 flags; found 2"),
        ({**good, "reward": np.ones(3)}, "'reward' has 3 steps but 'obs' has 4"),
        ({**good, "obs": np.full((4, 3), np.nan)}, "'obs' has a non-finite value at step 0"),
        ({k: v for k, v in good.items() if k != "action"}, "missing required key"),
        (
            {**good, "obs": np.zeros((4, 5))},
            "'obs' is float32\\[5\\] per step, earlier episodes float32\\[3\\]",
        ),
        ({**good, "extra": np.zeros(4)}, "keys differ from earlier episodes"),
        (
            {**good, "obs/agentview_image": np.zeros((4, 3, 4, 5), np.float32)},
            "image key 'obs/agentview_image' must be uint8",
        ),
        ({**good, "obs": np.zeros(4)}, "'obs' must be \\(T, dim\\)"),
    ]
    for episode, message in cases:
        with pytest.raises(DatasetError, match=f"mine: episode 1: {message}"):
            writer.append_episode(episode)
    writer.close()
    assert open_dataset(tmp_path / "demos.zarr").episodes == 1


def test_existing_paths_are_not_clobbered(tmp_path, store):
    with pytest.raises(DatasetError, match="already exists"):
        DemoWriter(store)
    DemoWriter(store, overwrite=True).close()
    assert open_dataset(store).episodes == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not a Zarr store; not overwriting"):
        DemoWriter(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"


# --- replay checkpoints ----------------------------------------------------------------------


def test_replay_checkpoint_table_opens_as_offline_dataset(tmp_path):
    from distrl.replay.checkpoint import write_checkpoint
    from distrl.replay.config import TableConfig
    from distrl.replay.table import Table

    table = Table(TableConfig(capacity=50))
    rng = np.random.default_rng(0)
    inserted = []
    for seq in range(4):
        n = 16
        batch = {
            "obs": rng.normal(size=(n, 5)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
            "reward": rng.normal(size=n).astype(np.float32),
            "next_obs": rng.normal(size=(n, 5)).astype(np.float32),
            "terminated": rng.random(n) < 0.1,
            "truncated": rng.random(n) < 0.1,
        }
        table.insert(batch, actor_id="a", sequence=seq)
        inserted.append(batch)
    path = write_checkpoint([table], tmp_path)
    with pytest.raises(DatasetError, match="replay checkpoint store; open one of its tables"):
        open_dataset(path)
    ds = open_dataset(path / "default")
    assert ds.kind == "replay_checkpoint" and ds.info.source.importer == "replay_checkpoint"
    # The ring keeps the newest 50 items, oldest first, as one episode.
    assert (ds.episodes, ds.steps) == (1, 50)
    transitions = ds.as_transitions()
    for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        want = np.concatenate([b[key] for b in inserted])[-50:]
        np.testing.assert_array_equal(transitions[key], want, err_msg=key)
    batch = ds.sample(32, np.random.default_rng(1))
    assert batch["next_obs"].shape == (32, 5)
