"""Demonstrations in learning: the learner's demo table, BC pretraining, demos inserted into replay."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import distrl

from distrl.algos import SpaceSpec, base_fields
from distrl.data.format import DatasetError, DatasetInfo, DemoWriter
from distrl.envs import EnvConfig, make_env
from distrl.learners.demos import DemoTable, check_demo_store, split_batch
from distrl.replay.checkpoint import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "sac_smoke.yaml"


def pendulum_demos(path: Path, episodes: int = 4, steps: int = 150) -> Path:
    """A linear controller that balances InvertedPendulum-v5, recorded as a demo store."""
    env = make_env("gym:InvertedPendulum-v5", seed=0)
    writer = DemoWriter(path)
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        rows: dict[str, list] = {
            k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")
        }
        for t in range(steps):
            # gains for the env's [-3, 3] force, expressed in the [-1, 1] action space
            action = np.clip(np.array([0.5 * obs[0] + 10 * obs[1] + 0.5 * obs[2] + obs[3]]) / 3.0, -1, 1)
            nxt, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
            for key, value in zip(
                rows, (obs, action, reward, nxt, terminated, truncated or t == steps - 1), strict=True
            ):
                rows[key].append(value)
            obs = nxt
            if terminated:
                break
        writer.append_episode(
            {
                "obs": np.array(rows["obs"], np.float32),
                "action": np.array(rows["action"], np.float32),
                "reward": np.array(rows["reward"], np.float32),
                "next_obs": np.array(rows["next_obs"], np.float32),
                "terminated": np.array(rows["terminated"], bool),
                "truncated": np.array(rows["truncated"], bool),
            }
        )
    writer.close()
    env.close()
    return path


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    return pendulum_demos(tmp_path_factory.mktemp("demos") / "pendulum.zarr")


def test_split_batch():
    assert split_batch(256, 0.5) == (128, 128)
    assert split_batch(256, 0.0) == (256, 0)
    assert split_batch(10, 0.25) == (8, 2)


def test_demo_table_samples_on_device(demos: Path):
    table = DemoTable(demos, base_fields(SpaceSpec(4, 1)), torch.device("cpu"))
    assert table.size == 4 * 150 and table.episodes == 4
    batch = table.sample(64)
    assert batch["obs"].shape == (64, 4) and batch["obs"].dtype == torch.float32
    assert batch["terminated"].dtype == torch.bool
    assert torch.all(batch["reward"] == 1.0)


def test_demo_table_rejects_demos_of_another_env(demos: Path):
    with pytest.raises(ValueError, match=r"'obs' has per-step shape \(4,\).*need \(17,\).*another env"):
        DemoTable(demos, base_fields(SpaceSpec(17, 6)), torch.device("cpu"))


def random_demos(path: Path, env_id: str | None, obs_dim: int, action_dim: int, steps: int = 20) -> Path:
    """One episode of random transitions, labelled with `env_id` (None: no env recorded)."""
    rng = np.random.default_rng(0)
    info = DatasetInfo(env=EnvConfig(id=env_id) if env_id else None)
    with DemoWriter(path, info) as writer:
        writer.append_episode(
            {
                "obs": rng.normal(size=(steps, obs_dim)).astype(np.float32),
                "action": rng.uniform(-1, 1, (steps, action_dim)).astype(np.float32),
                "reward": np.zeros(steps, np.float32),
                "next_obs": rng.normal(size=(steps, obs_dim)).astype(np.float32),
                "terminated": np.zeros(steps, bool),
                "truncated": np.arange(steps) == steps - 1,
            }
        )
    return path


def test_demos_of_another_env_with_the_same_sizes_are_refused_unless_allowed(tmp_path: Path):
    # gym HalfCheetah and dmc cheetah-run are both 17/6: only the recorded env id tells them apart.
    store = random_demos(tmp_path / "cheetah.zarr", "dmc:cheetah-run", 17, 6)
    fields = base_fields(SpaceSpec(17, 6))
    cpu = torch.device("cpu")
    with pytest.raises(
        DatasetError, match=r"recorded on env 'dmc:cheetah-run'.*'gym:HalfCheetah-v5'.*allow_env_mismatch"
    ):
        DemoTable(store, fields, cpu, env_id="gym:HalfCheetah-v5")
    with pytest.raises(DatasetError, match="recorded on env 'dmc:cheetah-run'"):
        check_demo_store(store, fields, "gym:HalfCheetah-v5")
    assert DemoTable(store, fields, cpu, env_id="dmc:cheetah-run").size == 20
    assert DemoTable(store, fields, cpu, env_id="gym:HalfCheetah-v5", allow_env_mismatch=True).size == 20
    check_demo_store(store, fields, "gym:HalfCheetah-v5", allow_env_mismatch=True)
    # A store that records no env cannot be checked: its sizes still are.
    unlabelled = random_demos(tmp_path / "unlabelled.zarr", None, 17, 6)
    check_demo_store(unlabelled, fields, "gym:HalfCheetah-v5")
    with pytest.raises(ValueError, match=r"'obs' has per-step shape \(17,\).*need \(4,\)"):
        check_demo_store(unlabelled, base_fields(SpaceSpec(4, 1)), "gym:InvertedPendulum-v5")


def test_train_refuses_demos_of_another_env_or_size_at_once(tmp_path: Path):
    # InvertedPendulum v4 and v5 have the same sizes; the smoke run is on v5.
    v4 = random_demos(tmp_path / "v4.zarr", "gym:InvertedPendulum-v4", 4, 1)
    out = _train(tmp_path / "r1", f"demos.path={v4}", timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "recorded on env 'gym:InvertedPendulum-v4'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r1" / "logs").exists(), "no component should have started"
    # Demos that do not fit the env fail the run before any component starts, not in the learner's log.
    big = random_demos(tmp_path / "big.zarr", None, 17, 6)
    out = _train(tmp_path / "r2", f"demos.path={big}", timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "demos.path" in out.stderr and "'obs' has per-step shape (17,)" in out.stderr
    # With the override the v4 demos are used (the run trains).
    out = _train(tmp_path / "r3", f"demos.path={v4}", "demos.allow_env_mismatch=true")
    assert out.returncode == 0, out.stdout + out.stderr


def _train(run_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = ("--run-dir", str(run_dir), "--no-console", "train.total_env_steps=1200", "eval.enabled=false")
    return distrl("train", str(SMOKE), *args, *overrides, timeout=timeout)


def test_learner_mixes_demos_and_pretrains_with_bc(demos: Path, tmp_path: Path):
    run_dir = tmp_path / "mixed"
    out = _train(
        run_dir, f"demos.path={demos}", "pretrain.bc_steps=200", "pretrain.bc_batch_size=64",
        "algo.bc_weight=1.0", "eval.enabled=true", "eval.every_updates=100000", "eval.episodes=1",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert "learner/pretrain/bc_loss" in keys
    assert {"learner/bc_loss", "learner/bc_kept"} <= keys  # the actor's BC term on the demo items
    # The behaviour-cloned policy is evaluated at once, long before eval.every_updates: the first
    # policy the evaluator sees (here, with 200 quick BC steps, maybe a few RL updates later).
    first_evals = [r["eval/updates"] for r in rows if "eval/return_mean" in r]
    assert len(first_evals) == 1 and first_evals[0] < 1000
    # online and demo transitions are told apart
    assert {"learner/q_mean/demo", "learner/q_mean/online", "learner/td_error/demo"} <= keys


def test_demos_can_be_inserted_into_replay(demos: Path, tmp_path: Path):
    run_dir = tmp_path / "in-replay"
    out = _train(run_dir, f"demos.path={demos}", "demos.placement=replay")
    assert out.returncode == 0, out.stdout + out.stderr
    stored = 0
    for k in range(2):
        table = read_checkpoint(list_checkpoints(run_dir / "replay" / f"shard-{k}")[-1])["default"]
        if "demos" in table.last_sequence:
            stored += 1
    assert stored == 1


def test_bc_pretraining_needs_demos(tmp_path: Path):
    out = _train(tmp_path / "r", "pretrain.bc_steps=10")
    assert out.returncode == 2 and "demos.path" in out.stderr


# --- the whole path on robosuite Lift ------------------------------------------------------------

ROBOMIMIC_LIFT_ENV_ARGS = {
    "env_name": "Lift",
    "type": 1,
    "env_kwargs": {
        "robots": ["Panda"],
        "controller_configs": {"type": "OSC_POSE"},
        "reward_shaping": False,
        "control_freq": 20,
        "has_renderer": False,
        "has_offscreen_renderer": False,
        "use_camera_obs": False,
        "ignore_done": True,
    },
}


def write_robomimic_lift(collected: Path, out: Path) -> None:
    """Scripted Lift episodes rewritten as a robomimic low-dim file (robomimic's key names)."""
    import h5py

    from distrl.data.format import open_dataset

    ds = open_dataset(collected)
    # robomimic's "object" key is robosuite's object-state: Lift's cube_pos, cube_quat, gripper_to_cube_pos.
    bounds = np.cumsum([0, *ds.info.obs_key_dims])
    parts = dict(zip(ds.info.obs_keys, itertools.pairwise(bounds), strict=True))
    robot = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    with h5py.File(out, "w") as f:
        for i in range(ds.episodes):
            ep = ds.episode(i)
            g = f.create_group(f"data/demo_{i}")
            g.attrs["num_samples"] = len(ep["action"])
            for group, values in (("obs", ep["obs"]), ("next_obs", ep["next_obs"])):
                for key in robot:
                    g[f"{group}/{key}"] = values[:, slice(*parts[key])].astype(np.float64)
                g[f"{group}/object"] = values[:, parts["cube_pos"][0] :].astype(np.float64)
            g["actions"] = ep["action"].astype(np.float64)
            g["rewards"] = ep["reward"].astype(np.float64)
            g["dones"] = ep["terminated"].astype(np.int64)
        f["data"].attrs["total"] = ds.steps
        f["data"].attrs["env_args"] = json.dumps(ROBOMIMIC_LIFT_ENV_ARGS)


@pytest.mark.slow
def test_a_robomimic_file_imports_inspects_and_trains_sac_with_demos_on_lift(tmp_path: Path):
    collected, src, store = tmp_path / "scripted.zarr", tmp_path / "lift.hdf5", tmp_path / "lift.zarr"
    done = distrl("demos", "collect", "robosuite:Lift", "--episodes", "4", "--terminate-on-success",
                   "--out", str(collected), "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    write_robomimic_lift(collected, src)

    done = distrl("demos", "import", "robomimic", str(src), str(store))
    assert done.returncode == 0, done.stderr
    done = distrl("demos", "inspect", str(store), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["episodes"] == 4 and summary["env_id"] == "robosuite:Lift"

    run_dir = tmp_path / "run"
    done = distrl(
        "train", str(ROOT / "configs" / "rlpd_lift.yaml"), "--run-dir", str(run_dir), "--no-console",
        f"demos.path={store}", "train.total_env_steps=500", "pretrain.bc_steps=300",
        "algo.num_critics=2", "algo.utd_ratio=1", "replay.table.samples_per_insert=128",
        "actors.warmup_steps=200", "replay.table.min_size_to_sample=200",
        "eval.enabled=false",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"learner/pretrain/bc_loss", "learner/q_mean/demo", "learner/bc_kept"} <= keys
    assert max(r["env_steps"] for r in rows) >= 500
    done = distrl("eval", str(run_dir), "--episodes", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["episodes"] == 2 and result["updates"] > 0 and result["success_rate"] is not None
