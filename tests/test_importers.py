"""Importers: tiny source files in each layout, built here, imported and compared with the source."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("MUJOCO_GL", "disable")

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

if TYPE_CHECKING:
    import pyarrow as pa

from distrl.data.format import DatasetError, open_dataset
from distrl.data.importers import SourceError
from distrl.data.importers.d4rl import import_d4rl
from distrl.data.importers.lerobot import import_lerobot
from distrl.data.importers.minari import import_minari
from distrl.data.importers.robomimic import import_robomimic
from distrl.data.inspect import inspect_dataset

LOW_DIM = {
    "object": 10,
    "robot0_eef_pos": 3,
    "robot0_eef_quat": 4,
    "robot0_gripper_qpos": 2,
    "robot0_joint_pos": 7,
}
DEFAULT_KEYS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
LIFT_ENV_ARGS = {
    "env_name": "Lift",
    "env_version": "1.4.1",
    "type": 1,
    "env_kwargs": {
        "has_renderer": False,
        "has_offscreen_renderer": False,
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": False,
        "control_freq": 20,
        "controller_configs": {"type": "OSC_POSE", "input_max": 1, "input_min": -1, "control_delta": True},
        "robots": ["Panda"],
        "reward_shaping": False,
    },
}


# --- robomimic -------------------------------------------------------------------------------


def write_robomimic(
    path: Path, lengths: list[int], *, env_args: dict | None = None, image: bool = False, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """A robomimic-layout file; returns each demo's source arrays."""
    rng = np.random.default_rng(seed)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in enumerate(lengths):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = n
            g.attrs["model_file"] = "<mujoco/>"
            src: dict[str, np.ndarray] = {}
            for key, dim in LOW_DIM.items():
                values = rng.normal(size=(n + 1, dim))  # float64, as robomimic stores it
                g[f"obs/{key}"], g[f"next_obs/{key}"] = values[:-1], values[1:]
                src[f"obs/{key}"], src[f"next_obs/{key}"] = values[:-1], values[1:]
            if image:
                src["obs/agentview_image"] = rng.integers(0, 256, size=(n, 6, 8, 3), dtype=np.uint8)
                g["obs/agentview_image"] = src["obs/agentview_image"]
            src["actions"] = rng.uniform(-1, 1, size=(n, 7))
            src["rewards"] = np.zeros(n)
            src["dones"] = np.zeros(n, dtype=np.int64)
            if i % 2 == 0:  # even demos succeed at the end
                src["rewards"][-2:] = 1.0
                src["dones"][-1] = 1
            src["states"] = rng.normal(size=(n, 32))
            for key in ("actions", "rewards", "dones", "states"):
                g[key] = src[key]
            demos[f"demo_{i}"] = src
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps(env_args if env_args is not None else LIFT_ENV_ARGS)
        train = [f"demo_{i}" for i in range(len(lengths)) if i % 3 != 1]
        f["mask/train"] = np.array([d.encode() for d in train], dtype="S")
        f["mask/valid"] = np.array(
            [f"demo_{i}".encode() for i in range(len(lengths)) if i % 3 == 1], dtype="S"
        )
    return demos


def test_robomimic_import_equals_source(tmp_path):
    src = tmp_path / "low_dim.hdf5"
    lengths = [5, 3, 4, 6, 2, 3, 4, 5, 3, 2, 7]  # 11 demos: demo_10 must come after demo_9
    demos = write_robomimic(src, lengths, image=True)
    result = import_robomimic(src, tmp_path / "lift.zarr", raw_obs_keys=["agentview_image"], progress=False)
    assert (result.episodes, result.steps) == (11, sum(lengths))
    ds = open_dataset(tmp_path / "lift.zarr")
    assert ds.episode_lengths.tolist() == lengths
    for i in range(len(lengths)):
        want = demos[f"demo_{i}"]
        got = ds.episode(i)
        obs = np.concatenate([want[f"obs/{k}"] for k in DEFAULT_KEYS], axis=1).astype(np.float32)
        next_obs = np.concatenate([want[f"next_obs/{k}"] for k in DEFAULT_KEYS], axis=1).astype(np.float32)
        np.testing.assert_array_equal(got["obs"], obs)
        np.testing.assert_array_equal(got["next_obs"], next_obs)
        np.testing.assert_array_equal(got["action"], want["actions"].astype(np.float32))
        np.testing.assert_array_equal(got["reward"], want["rewards"].astype(np.float32))
        np.testing.assert_array_equal(got["terminated"], want["dones"].astype(bool))
        assert got["truncated"].tolist() == [False] * (lengths[i] - 1) + [not want["dones"][-1]]
        np.testing.assert_array_equal(got["success"], want["rewards"] > 0)
        np.testing.assert_array_equal(got["obs/agentview_image"], want["obs/agentview_image"])
    info = ds.info
    assert info.obs_keys == DEFAULT_KEYS and info.obs_key_dims == [3, 4, 2, 10]
    assert info.env is not None
    assert info.env.model_dump(mode="json", exclude_unset=True) == {
        "id": "robosuite:Lift",
        "robosuite": {
            "reward_shaping": False,
            "robot": "Panda",
            "controller": "OSC_POSE",
            "control_freq": 20.0,
        },
    }
    assert info.action_low == [-1.0] * 7 and info.action_high == [1.0] * 7
    assert info.source.importer == "robomimic" and info.source.file == str(src.resolve())
    assert info.source.options["env_args"] == LIFT_ENV_ARGS
    report = inspect_dataset(tmp_path / "lift.zarr")
    assert report.success_rate == pytest.approx(6 / 11)
    assert report.returns is not None and report.returns.max == 2.0 and report.returns.min == 0.0
    assert report.lengths is not None and report.lengths.max == 7


def test_robomimic_filter_and_chosen_keys(tmp_path):
    src = tmp_path / "low_dim.hdf5"
    demos = write_robomimic(src, [3, 4, 5, 6, 2])
    keys = ["robot0_joint_pos", "object"]
    import_robomimic(src, tmp_path / "valid.zarr", obs_keys=keys, filter_key="valid", progress=False)
    ds = open_dataset(tmp_path / "valid.zarr")
    assert ds.episode_lengths.tolist() == [4, 2]  # demo_1 and demo_4
    want = np.concatenate([demos["demo_4"][f"obs/{k}"] for k in keys], axis=1).astype(np.float32)
    np.testing.assert_array_equal(ds.episode(1)["obs"], want)
    assert ds.info.env is not None and ds.info.env.robosuite.obs_keys == ["robot0_joint_pos", "object-state"]
    with pytest.raises(SourceError, match="no filter key 'test'; available: train, valid"):
        import_robomimic(src, tmp_path / "x.zarr", filter_key="test", progress=False)
    with pytest.raises(SourceError, match="no observation key 'robot0_eef_vel'"):
        import_robomimic(src, tmp_path / "x.zarr", obs_keys=["robot0_eef_vel"], progress=False)
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f["data"].attrs.__setitem__("total", 99), "total=99 but the demos hold 14 samples"),
        (lambda f: f["data/demo_1"].attrs.__setitem__("num_samples", 9), "demo_1: num_samples says 9"),
        (
            lambda f: _shorten(f, "data/demo_2/obs/object", 3),
            "demo_2: obs/object has 3 rows but actions has 5",
        ),
        (
            lambda f: _replace(f, "data/demo_0/dones", np.array([0, 0, 2])),
            "demo_0: dones must be 0/1; found 2",
        ),
        (
            lambda f: _replace(f, "data/demo_0/rewards", np.zeros((3, 2))),
            "rewards must be one value per step",
        ),
        (lambda f: f["data"].attrs.__setitem__("env_args", "{not json"), "env_args is not JSON"),
        (lambda f: f.__delitem__("data/demo_1/dones"), "demo_1: missing dones"),
    ],
)
def test_robomimic_damaged_files_fail_clearly(tmp_path, damage, message):
    src = tmp_path / "low_dim.hdf5"
    write_robomimic(src, [3, 4, 5, 2])
    with h5py.File(src, "a") as f:
        damage(f)
    with pytest.raises(SourceError, match=message):
        import_robomimic(src, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    assert not any(p.name.startswith(".out.zarr") for p in tmp_path.iterdir())  # no staging left behind


def _shorten(f: h5py.File, name: str, rows: int) -> None:
    _replace(f, name, f[name][:rows])


def _replace(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


def test_not_robomimic_or_not_hdf5(tmp_path):
    (tmp_path / "junk.hdf5").write_text("hello")
    with pytest.raises(SourceError, match="not a readable HDF5 file"):
        import_robomimic(tmp_path / "junk.hdf5", tmp_path / "out.zarr", progress=False)
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(SourceError, match="no 'data' group; not a robomimic file"):
        import_robomimic(tmp_path / "d4rl.hdf5", tmp_path / "out.zarr", progress=False)


@pytest.mark.slow
def test_robomimic_env_config_builds_an_env_with_the_same_observation(tmp_path):
    from distrl.envs import make_env

    src = tmp_path / "low_dim.hdf5"
    write_robomimic(src, [3])
    import_robomimic(src, tmp_path / "lift.zarr", progress=False)
    ds = open_dataset(tmp_path / "lift.zarr")
    env = make_env(ds.info.env, seed=0)
    try:
        assert env.observation_space.shape == (ds.arrays["obs"].shape[1],)
        assert env.action_space.shape == (len(ds.info.action_low),)
    finally:
        env.close()


@pytest.mark.slow
def test_robomimic_dense_reward_replays_recorded_states(tmp_path):
    from distrl.envs.config import RobosuiteOptions
    from distrl.envs.robosuite_envs import RobosuiteEnv

    # Record a real Lift rollout with shaped rewards, then store it as a sparse-reward file.
    env = RobosuiteEnv("Lift", RobosuiteOptions(reward_shaping=True), step_limit=None, seed=0)
    raw = env._env
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n = 8
    states, actions, shaped, obs = [], [], [], {k: [] for k in DEFAULT_KEYS}
    observation = raw._get_observations(force_update=True)
    for _ in range(n):
        states.append(raw.sim.get_state().flatten())
        for k in DEFAULT_KEYS:
            obs[k].append(observation[k if k != "object" else "object-state"])
        action = rng.uniform(-1, 1, size=7)
        observation, reward, _, _ = raw.step(action)
        actions.append(action)
        shaped.append(reward)
    env.close()
    src = tmp_path / "lift.hdf5"
    with h5py.File(src, "w") as f:
        g = f.create_group("data/demo_0")
        for k in DEFAULT_KEYS:
            g[f"obs/{k}"] = np.array(obs[k])
        g["actions"], g["states"] = np.array(actions), np.array(states)
        g["rewards"], g["dones"] = np.zeros(n), np.zeros(n)
        f["data"].attrs["env_args"] = json.dumps(LIFT_ENV_ARGS)
    import_robomimic(src, tmp_path / "dense.zarr", reward="dense", progress=False)
    ds = open_dataset(tmp_path / "dense.zarr")
    rewards = ds.episode(0)["reward"]
    # r(s') at the recorded next states; the last step re-executes its action. robosuite's own
    # step reward reads kinematics from before the final physics substep (mj_step), the replay
    # from the state itself (robomimic's convention), so they agree to within about 1%.
    np.testing.assert_allclose(rewards[:-1], np.array(shaped[:-1], dtype=np.float32), rtol=0.02)
    assert np.isfinite(rewards[-1]) and rewards.std() > 0
    assert ds.info.env is not None and ds.info.env.robosuite.reward_shaping is True
    assert ds.info.source.options["reward_recomputed"] is True
    with h5py.File(src, "a") as f:
        _replace(f, "data/demo_0/states", np.zeros((n, 5)))
    with pytest.raises(
        SourceError, match="states are \\(5,\\) per step but this robosuite model's state has"
    ):
        import_robomimic(src, tmp_path / "bad.zarr", reward="dense", progress=False)


# --- D4RL ------------------------------------------------------------------------------------


def write_d4rl(path: Path, n: int, *, next_obs: bool = True, timeouts: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    src = {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }
    src["terminals"][[i for i in (4, 15) if i < n]] = True
    src["timeouts"][[i for i in (10,) if i < n]] = True
    if next_obs:
        src["next_observations"] = rng.normal(size=(n, 4)).astype(np.float32)
    if not timeouts:
        del src["timeouts"]
    with h5py.File(path, "w") as f:
        for k, v in src.items():
            f[k] = v
    return src


def test_d4rl_splits_on_terminals_and_timeouts_across_blocks(tmp_path):
    src = write_d4rl(tmp_path / "hopper.hdf5", 23)
    result = import_d4rl(
        tmp_path / "hopper.hdf5",
        tmp_path / "hopper.zarr",
        env_id="gym:Hopper-v5",
        progress=False,
        block_steps=6,
    )
    assert result.steps == 23
    ds = open_dataset(tmp_path / "hopper.zarr")
    assert ds.episode_ends.tolist() == [5, 11, 16, 23]  # the last 7 steps end the file mid-episode
    tr = ds.as_transitions()
    np.testing.assert_array_equal(tr["obs"], src["observations"])
    np.testing.assert_array_equal(tr["next_obs"], src["next_observations"])
    np.testing.assert_array_equal(tr["action"], src["actions"])
    np.testing.assert_array_equal(tr["reward"], src["rewards"])
    np.testing.assert_array_equal(tr["terminated"], src["terminals"])
    assert np.flatnonzero(tr["truncated"]).tolist() == [10, 22]
    assert ds.info.env_id == "gym:Hopper-v5" and ds.info.obs_key_dims == [4]


def test_d4rl_without_next_observations_or_timeouts(tmp_path):
    src = write_d4rl(tmp_path / "v0.hdf5", 12, next_obs=False, timeouts=False)
    import_d4rl(tmp_path / "v0.hdf5", tmp_path / "v0.zarr", progress=False)
    ds = open_dataset(tmp_path / "v0.zarr")
    assert ds.episode_ends.tolist() == [5, 12]
    tr = ds.as_transitions()  # the final, truncated step has no next observation
    np.testing.assert_array_equal(tr["obs"], src["observations"][:11])
    np.testing.assert_array_equal(tr["next_obs"][:4], src["observations"][1:5])
    np.testing.assert_array_equal(tr["next_obs"][5:], src["observations"][6:12])


def test_d4rl_damaged_files_fail_clearly(tmp_path):
    path = tmp_path / "bad.hdf5"
    write_d4rl(path, 10)
    with h5py.File(path, "a") as f:
        _shorten(f, "actions", 7)
    with pytest.raises(SourceError, match="actions has 7 rows but observations has 10"):
        import_d4rl(path, tmp_path / "out.zarr", progress=False)
    write_d4rl(path, 10)
    with h5py.File(path, "a") as f:
        _replace(f, "terminals", np.array([0, 0, 0.5, 0, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(SourceError, match=r"terminals must be 0/1; step 2 has 0.5"):
        import_d4rl(path, tmp_path / "out.zarr", progress=False)
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(SourceError, match="missing actions, rewards, terminals"):
        import_d4rl(path, tmp_path / "out.zarr", progress=False)


# --- Minari ----------------------------------------------------------------------------------


def write_minari(root: Path, lengths: list[int], *, dict_obs: bool = False) -> list[dict]:
    rng = np.random.default_rng(2)
    (root / "data").mkdir(parents=True)
    episodes = []
    with h5py.File(root / "data" / "main_data.hdf5", "w") as f:
        for k, n in enumerate(lengths):
            g = f.create_group(f"episode_{k}")
            g.attrs["id"], g.attrs["total_steps"] = k, n
            ep = {
                "actions": rng.uniform(-2, 2, size=(n, 3)).astype(np.float32),
                "rewards": rng.normal(size=n),
                "terminations": np.zeros(n, dtype=bool),
                "truncations": np.zeros(n, dtype=bool),
            }
            (ep["terminations"] if k % 2 else ep["truncations"])[-1] = True
            if dict_obs:
                ep["obs/observation"] = rng.normal(size=(n + 1, 5))
                ep["obs/desired_goal"] = rng.normal(size=(n + 1, 2))
                g["observations/observation"] = ep["obs/observation"]
                g["observations/desired_goal"] = ep["obs/desired_goal"]
            else:
                ep["observations"] = rng.normal(size=(n + 1, 5)).astype(np.float32)
                g["observations"] = ep["observations"]
            for key in ("actions", "rewards", "terminations", "truncations"):
                g[key] = ep[key]
            ep["success"] = np.arange(n + 1) == n
            g["infos/success"] = ep["success"]
            episodes.append(ep)
    box = {"type": "Box", "dtype": "float64", "shape": [5], "low": [-np.inf] * 5, "high": [np.inf] * 5}
    obs_space = (
        {
            "type": "Dict",
            "subspaces": {
                "observation": box,
                "desired_goal": {**box, "shape": [2], "low": [-1e9] * 2, "high": [1e9] * 2},
            },
        }
        if dict_obs
        else box
    )
    metadata = {
        "dataset_id": "test/tiny-v0",
        "total_episodes": len(lengths),
        "total_steps": sum(lengths),
        "data_format": "hdf5",
        "observation_space": json.dumps(obs_space, allow_nan=True),
        "action_space": json.dumps(
            {"type": "Box", "dtype": "float32", "shape": [3], "low": [-2] * 3, "high": [2] * 3}
        ),
        "env_spec": json.dumps({"id": "Pusher-v5", "entry_point": "gymnasium.envs.mujoco:PusherEnv"}),
    }
    (root / "data" / "metadata.json").write_text(json.dumps(metadata))
    return episodes


def test_minari_import_equals_source(tmp_path):
    episodes = write_minari(tmp_path / "tiny-v0", [4, 6, 3])
    import_minari(tmp_path / "tiny-v0", tmp_path / "tiny.zarr", progress=False)
    ds = open_dataset(tmp_path / "tiny.zarr")
    assert ds.episode_lengths.tolist() == [4, 6, 3] and ds.has_next_obs
    for i, src in enumerate(episodes):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["obs"], src["observations"][:-1])
        np.testing.assert_array_equal(got["next_obs"], src["observations"][1:])
        np.testing.assert_array_equal(got["action"], src["actions"])
        np.testing.assert_array_equal(got["reward"], src["rewards"].astype(np.float32))
        np.testing.assert_array_equal(got["terminated"], src["terminations"])
        np.testing.assert_array_equal(got["truncated"], src["truncations"])
        np.testing.assert_array_equal(got["success"], src["success"][1:])
    assert ds.info.env_id == "gym:Pusher-v5"
    assert ds.info.action_low == [-2.0] * 3 and ds.info.action_high == [2.0] * 3
    assert ds.info.obs_keys == ["observations"] and ds.info.source.options["dataset_id"] == "test/tiny-v0"


def test_minari_dict_observations_follow_the_space_order(tmp_path):
    episodes = write_minari(tmp_path / "maze-v0", [3, 2], dict_obs=True)
    import_minari(tmp_path / "maze-v0", tmp_path / "maze.zarr", progress=False)
    ds = open_dataset(tmp_path / "maze.zarr")
    assert ds.info.obs_keys == ["observation", "desired_goal"] and ds.info.obs_key_dims == [5, 2]
    src = episodes[1]
    want = np.concatenate([src["obs/observation"], src["obs/desired_goal"]], axis=1).astype(np.float32)
    np.testing.assert_array_equal(ds.episode(1)["obs"], want[:-1])
    import_minari(tmp_path / "maze-v0", tmp_path / "goal.zarr", obs_keys=["desired_goal"], progress=False)
    assert open_dataset(tmp_path / "goal.zarr").arrays["obs"].shape == (5, 2)


def test_minari_damaged_datasets_fail_clearly(tmp_path):
    root = tmp_path / "tiny-v0"
    write_minari(root, [4, 6, 3])
    with h5py.File(root / "data" / "main_data.hdf5", "a") as f:
        _shorten(f, "episode_1/observations", 6)
    with pytest.raises(SourceError, match="episode_1: observations has 6 rows, expected actions \\+ 1 = 7"):
        import_minari(root, tmp_path / "out.zarr", progress=False)
    with h5py.File(root / "data" / "main_data.hdf5", "a") as f:
        del f["episode_2"]
    with pytest.raises(SourceError, match="metadata says 3 episodes but the file holds 2"):
        import_minari(root, tmp_path / "out.zarr", progress=False)
    with pytest.raises(SourceError, match="not a Minari dataset"):
        import_minari(tmp_path, tmp_path / "out.zarr", progress=False)


# --- LeRobot ---------------------------------------------------------------------------------


def parquet():
    # Imported here so a broken pyarrow fails the LeRobot tests only, not the whole module.
    import pyarrow.parquet as pq

    return pq


def _lerobot_frames(lengths: list[int], seed: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    episodes, index = [], 0
    for ep, n in enumerate(lengths):
        done = np.zeros(n, dtype=bool)
        done[-1] = ep % 2 == 0
        episodes.append(
            {
                "observation.state": rng.normal(size=(n, 6)).astype(np.float32),
                "observation.environment_state": rng.normal(size=(n, 2)).astype(np.float32),
                "action": rng.normal(size=(n, 2)).astype(np.float32),
                "timestamp": (np.arange(n) / 10).astype(np.float32),
                "frame_index": np.arange(n),
                "episode_index": np.full(n, ep),
                "index": np.arange(index, index + n),
                "task_index": np.zeros(n, dtype=np.int64),
                "next.reward": rng.normal(size=n).astype(np.float32),
                "next.done": done,
                "next.success": done.copy(),
            }
        )
        index += n
    return episodes


def _table(frames: list[dict[str, np.ndarray]]) -> pa.Table:
    import pyarrow as pa

    columns = {}
    for key in frames[0]:
        values = np.concatenate([f[key] for f in frames])
        if values.ndim == 2:
            columns[key] = pa.array(list(values), type=pa.list_(pa.from_numpy_dtype(values.dtype)))
        else:
            columns[key] = pa.array(values)
    return pa.table(columns)


def _info(version: str, lengths: list[int], data_path: str) -> dict:
    scalar = {"shape": [1], "names": None}
    return {
        "codebase_version": version,
        "robot_type": "so100",
        "total_episodes": len(lengths),
        "total_frames": sum(lengths),
        "chunks_size": 1000,
        "fps": 10,
        "data_path": data_path,
        "features": {
            "observation.state": {"dtype": "float32", "shape": [6], "names": None},
            "observation.environment_state": {"dtype": "float32", "shape": [2], "names": None},
            "observation.images.top": {"dtype": "video", "shape": [96, 96, 3], "names": None},
            "action": {"dtype": "float32", "shape": [2], "names": None},
            "timestamp": {"dtype": "float32", **scalar},
            "frame_index": {"dtype": "int64", **scalar},
            "episode_index": {"dtype": "int64", **scalar},
            "index": {"dtype": "int64", **scalar},
            "task_index": {"dtype": "int64", **scalar},
            "next.reward": {"dtype": "float32", **scalar},
            "next.done": {"dtype": "bool", **scalar},
            "next.success": {"dtype": "bool", **scalar},
        },
    }


def write_lerobot_v2(root: Path, lengths: list[int]) -> list[dict[str, np.ndarray]]:
    episodes = _lerobot_frames(lengths)
    template = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info("v2.1", lengths, template)))
    lines = [json.dumps({"episode_index": i, "tasks": ["push"], "length": n}) for i, n in enumerate(lengths)]
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    for i, frames in enumerate(episodes):
        path = root / template.format(episode_chunk=0, episode_index=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        parquet().write_table(_table([frames]), path)
    return episodes


def write_lerobot_v3(root: Path, lengths: list[int], per_file: int = 2) -> list[dict[str, np.ndarray]]:
    episodes = _lerobot_frames(lengths)
    template = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info("v3.0", lengths, template)))
    rows = {
        k: []
        for k in (
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        )
    }
    start = 0
    for file_index in range(0, len(episodes), per_file):
        group = episodes[file_index : file_index + per_file]
        path = root / template.format(chunk_index=0, file_index=file_index // per_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        parquet().write_table(_table(group), path, row_group_size=4)  # episodes straddle row groups
        for frames in group:
            n = len(frames["frame_index"])
            for key, value in (
                ("episode_index", int(frames["episode_index"][0])),
                ("length", n),
                ("data/chunk_index", 0),
                ("data/file_index", file_index // per_file),
                ("dataset_from_index", start),
                ("dataset_to_index", start + n),
            ):
                rows[key].append(value)
            start += n
    import pyarrow as pa

    parquet().write_table(pa.table(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return episodes


@pytest.mark.parametrize("writer", [write_lerobot_v2, write_lerobot_v3])
def test_lerobot_import_equals_source(tmp_path, writer):
    lengths = [5, 9, 3, 6, 4]
    episodes = writer(tmp_path / "pusht", lengths)
    keys = ["observation.state", "observation.environment_state"]
    import_lerobot(tmp_path / "pusht", tmp_path / "pusht.zarr", state_keys=keys, progress=False)
    ds = open_dataset(tmp_path / "pusht.zarr")
    assert ds.episode_lengths.tolist() == lengths
    for i, src in enumerate(episodes):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["obs"], np.concatenate([src[k] for k in keys], axis=1))
        np.testing.assert_array_equal(got["action"], src["action"])
        np.testing.assert_array_equal(got["reward"], src["next.reward"])
        np.testing.assert_array_equal(got["terminated"], src["next.done"])
        np.testing.assert_array_equal(got["success"], src["next.success"])
        assert got["truncated"][-1] == (not src["next.done"][-1])
    assert ds.info.obs_keys == keys and ds.info.obs_key_dims == [6, 2]
    assert ds.info.source.options["robot_type"] == "so100"


def test_lerobot_damaged_datasets_fail_clearly(tmp_path):
    root = tmp_path / "v3"
    write_lerobot_v3(root, [5, 9, 3, 6])
    data_file = root / "data" / "chunk-000" / "file-001.parquet"
    table = parquet().read_table(data_file)
    parquet().write_table(table.slice(0, table.num_rows - 2), data_file)  # cut the last episode short
    with pytest.raises(
        SourceError, match="episode 3: 4 frames in the data files but the episode table says 6"
    ):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    data_file.unlink()
    with pytest.raises(
        SourceError, match=r"file-001.parquet: data file listed by the episode table is missing"
    ):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    with pytest.raises(SourceError, match=r"feature 'observation.images.top' is video; only numeric"):
        import_lerobot(root, tmp_path / "out.zarr", state_keys=["observation.images.top"], progress=False)
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(SourceError, match=r"codebase_version 'v1.6' is not supported"):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    v2 = tmp_path / "v2"
    write_lerobot_v2(v2, [4, 4])
    path = v2 / "data" / "chunk-000" / "episode_000001.parquet"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SourceError, match=r"episode_000001.parquet: not a readable parquet file"):
        import_lerobot(v2, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


# --- CLI -------------------------------------------------------------------------------------


def test_cli_import_and_inspect(tmp_path):
    from distrl.cli import app

    runner = CliRunner()
    write_d4rl(tmp_path / "hopper.hdf5", 23)
    out = tmp_path / "hopper.zarr"
    result = runner.invoke(
        app, ["demos", "import", "d4rl", str(tmp_path / "hopper.hdf5"), str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "4 episodes, 23 steps" in result.output
    again = runner.invoke(app, ["demos", "import", "d4rl", str(tmp_path / "hopper.hdf5"), str(out), "-q"])
    assert again.exit_code == 2 and "already exists (use --overwrite" in again.output
    result = runner.invoke(app, ["demos", "inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["episodes"], report["steps"]) == (4, 23)
    assert {k["name"]: k["shape"] for k in report["keys"]}["obs"] == [4]
    ds = open_dataset(out)
    returns = [float(ds.episode(i)["reward"].astype(np.float64).sum()) for i in range(4)]
    assert report["returns"]["mean"] == pytest.approx(np.mean(returns))
    assert report["lengths"] == {"mean": 5.75, "std": pytest.approx(np.std([5, 6, 5, 7])), "min": 5, "max": 7}
    text = runner.invoke(app, ["demos", "inspect", str(out)])
    assert text.exit_code == 0 and "episodes  4" in text.output and "return" in text.output
    bad = runner.invoke(app, ["demos", "inspect", str(tmp_path / "hopper.hdf5")])
    assert bad.exit_code == 2 and "not a Zarr group" in bad.output


def test_open_dataset_errors_are_dataset_errors(tmp_path):
    # SourceError is a DatasetError, so one `except` serves callers of both.
    assert issubclass(SourceError, DatasetError)
