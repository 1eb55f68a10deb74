"""Demonstration collection: scripted robosuite controllers and trained runs, real envs, real stores."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from distrl.cli import app
from distrl.data.collect import CollectError, CollectPlan, CollectResult, collect, plan_collection
from distrl.data.format import open_dataset
from distrl.data.scripted import OscPoseActions, ScriptedPolicyError, make_scripted_policy, robosuite_env
from distrl.envs import EnvConfig, make_env

LIFT_EPISODES = 10
STEP_KEYS = {"obs", "action", "reward", "next_obs", "terminated", "truncated", "success"}


def first_successes(ds) -> list[int | None]:
    out = []
    for i in range(ds.episodes):
        flags = ds.episode(i)["success"]
        out.append(int(np.argmax(flags)) if flags.any() else None)
    return out


@pytest.fixture(scope="module")
def lift_all(tmp_path_factory) -> tuple[CollectResult, Path]:
    """The scripted Lift controller on seeds 0..9 at its default episode length, every episode kept."""
    out = tmp_path_factory.mktemp("lift") / "lift.zarr"
    plan = plan_collection("robosuite:Lift", episodes=LIFT_EPISODES, keep_failures=True, seed=0)
    return collect(plan, out, progress=False), out


# --- scripted controllers ------------------------------------------------------------------------


def test_osc_actions_scale_world_deltas_to_the_controller_limits():
    env = make_env(EnvConfig(id="robosuite:Lift"), seed=0)
    try:
        env.reset(seed=0)
        suite = robosuite_env(env)
        to_action = OscPoseActions(suite)
        # OSC_POSE's default output limit is 0.05 m / 0.5 rad per unit of input, base frame = world here.
        action = to_action(np.array([0.025, 0.0, -0.01]), np.array([0.0, 0.0, 0.1]), 1.0)
        np.testing.assert_allclose(action, [0.5, 0.0, -0.2, 0.0, 0.0, 0.2, 1.0], atol=1e-6)
        assert to_action(np.array([1.0, 0, 0]), np.zeros(3), -1.0)[[0, 6]].tolist() == [1.0, -1.0]
        # And the arm really moves that way: +x in the world, y and z held.
        site = suite.robots[0].eef_site_id["right"]
        before = suite.sim.data.site_xpos[site].copy()
        for _ in range(10):
            env.step(to_action(np.array([0.02, 0.0, 0.0]), np.zeros(3), -1.0))
        moved = suite.sim.data.site_xpos[site] - before
        assert moved[0] > 0.03  # OSC lags its goal: about a quarter of each delta lands per step
        assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01
    finally:
        env.close()


def test_scripted_lift_succeeds_at_least_90_percent(lift_all):
    result, out = lift_all
    assert result.attempts == LIFT_EPISODES
    assert result.episodes == LIFT_EPISODES  # --keep-failures: every attempt is written
    print(f"scripted Lift success rate: {result.success_rate:.0%} over {result.attempts} episodes")
    assert result.success_rate is not None and result.success_rate >= 0.9
    ds = open_dataset(out)
    assert ds.episodes == LIFT_EPISODES
    assert set(ds.keys) == STEP_KEYS
    assert ds.info.obs_keys[:3] == ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    assert sum(ds.info.obs_key_dims) == ds.array("obs").shape[1] == 19
    assert ds.array("success").dtype == bool
    per_episode = [bool(ds.episode(i)["success"].any()) for i in range(ds.episodes)]
    assert sum(per_episode) == result.successes
    for i in range(ds.episodes):
        ep = ds.episode(i)
        assert len(ep["action"]) == 80  # the scripted Lift default horizon
        assert ep["truncated"][-1] and not ep["truncated"][:-1].any() and not ep["terminated"].any()
        assert np.all(np.abs(ep["action"]) <= 1.0)
        # Lift's sparse reward is the success flag: the flags line up with their steps.
        np.testing.assert_array_equal(ep["reward"] > 0, ep["success"])
        np.testing.assert_array_equal(ep["next_obs"][:-1], ep["obs"][1:])
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["env"] == {"id": "robosuite:Lift", "max_episode_steps": 80}
    options = attrs["source"]["options"]
    assert attrs["source"]["importer"] == "collect"
    assert options["policy"] == "scripted:Lift"
    assert options["success_rate"] == pytest.approx(result.success_rate)
    assert options["attempts"] == LIFT_EPISODES and options["successes"] == result.successes
    assert options["episode_seeds"] == list(range(LIFT_EPISODES))


@pytest.mark.slow
def test_failures_are_dropped_and_two_workers_write_the_same_episodes(lift_all, tmp_path):
    _, full = lift_all
    reference = open_dataset(full)
    firsts = first_successes(reference)
    assert None not in firsts
    # Cut the episodes where the slowest one succeeds: it and its equals now fail, the rest succeed.
    horizon = max(firsts)
    assert min(firsts) < horizon, f"every episode succeeds at the same step {horizon}: no mix to test"
    succeeding = [i for i, f in enumerate(firsts) if f < horizon]

    plan = plan_collection(
        "robosuite:Lift", episodes=LIFT_EPISODES, max_steps=horizon, max_attempts=LIFT_EPISODES, seed=0
    )
    result = collect(plan, tmp_path / "dropped.zarr", workers=2, progress=False)
    assert result.attempts == LIFT_EPISODES
    assert result.successes == len(succeeding) == result.episodes
    assert not result.complete
    ds = open_dataset(tmp_path / "dropped.zarr")
    assert ds.episodes == len(succeeding)
    for stored, source in enumerate(succeeding):
        ep, ref = ds.episode(stored), reference.episode(source)
        assert ep["success"].any()
        # Same seed, same controller, another process: the same steps as the full-length run.
        for key in ("obs", "action", "success"):
            np.testing.assert_array_equal(ep[key], ref[key][:horizon])
    seeds = dict(zarr.open_group(str(tmp_path / "dropped.zarr"), mode="r").attrs)["source"]["options"]
    assert seeds["episode_seeds"] == succeeding

    kept = plan_collection(
        "robosuite:Lift", episodes=LIFT_EPISODES, max_steps=horizon, keep_failures=True, seed=0
    )
    result = collect(kept, tmp_path / "kept.zarr", progress=False)
    ds = open_dataset(tmp_path / "kept.zarr")
    assert ds.episodes == result.episodes == LIFT_EPISODES
    assert [bool(ds.episode(i)["success"].any()) for i in range(ds.episodes)] == [f < horizon for f in firsts]


@pytest.mark.slow
def test_cli_collect_with_two_workers_and_stop_on_success(tmp_path):
    out = tmp_path / "lift.zarr"
    args = ["demos", "collect", "robosuite:Lift", "--out", str(out), "--episodes", "3", "--seed", "5"]
    result = CliRunner().invoke(app, [*args, "--workers", "2", "--stop-on-success", "-q"])
    assert result.exit_code == 0, result.output
    assert "3 episodes" in result.output and "success rate 100% (3/3)" in result.output
    ds = open_dataset(out)
    assert ds.episodes == 3
    for i in range(3):
        ep = ds.episode(i)
        assert ep["success"][-1] and not ep["success"][:-1].any()  # ends at the first success
        assert ep["truncated"][-1]
    again = CliRunner().invoke(app, [*args, "-q"])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.slow
def test_cli_collect_with_terminate_on_success_marks_the_success_step_terminal(tmp_path):
    out = tmp_path / "lift.zarr"
    args = ["demos", "collect", "robosuite:Lift", "--out", str(out), "--episodes", "2", "--seed", "5"]
    result = CliRunner().invoke(app, [*args, "--terminate-on-success", "-q"])
    assert result.exit_code == 0, result.output
    ds = open_dataset(out)
    assert ds.episodes == 2 and ds.info.env.terminate_on_success is True
    for i in range(2):
        ep = ds.episode(i)
        assert ep["success"][-1] and not ep["success"][:-1].any()
        assert ep["terminated"][-1] and not ep["truncated"].any() and not ep["terminated"][:-1].any()
        assert ep["reward"][-1] == 1.0
    hopper = CliRunner().invoke(app, ["demos", "collect", "gym:Hopper-v5", "--out", str(tmp_path / "h.zarr"),
                                      "--policy", "scripted", "--terminate-on-success"])  # fmt: skip
    assert hopper.exit_code != 0


def test_scripted_pick_place_can_reports_its_success_rate(tmp_path):
    plan = plan_collection("robosuite:PickPlaceCan", episodes=3, keep_failures=True, seed=0)
    result = collect(plan, tmp_path / "can.zarr", progress=False)
    print(f"scripted PickPlaceCan success rate: {result.success_rate:.0%} over {result.attempts} episodes")
    assert result.attempts == 3 and result.success_rate is not None
    assert result.success_rate >= 2 / 3  # measured 40/40 at 200 steps; a regression shows here
    ds = open_dataset(tmp_path / "can.zarr")
    assert ds.array("obs").shape[1] == 23
    assert ds.info.obs_keys[-1] == "Can_quat"
    # Placed means let go: the episode ends with an open, retreated hand and the can in the bin.
    assert sum(bool(ds.episode(i)["success"][-1]) for i in range(3)) == result.successes


# --- trained runs ----------------------------------------------------------------------------------


def make_run_dir(root: Path):
    """A run directory the way `distrl train` leaves one: config.yaml + checkpoints/learner-*.pt."""
    from distrl.algos import SpaceSpec, make_algorithm
    from distrl.config import validate_config
    from distrl.learners import checkpoint as ckpt

    config = validate_config(
        {
            "name": "tiny",
            "env": {"id": "gym:InvertedPendulum-v5"},
            "algo": {"name": "sac", "hidden_sizes": [16]},
        }
    )
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.to_yaml())
    algo = make_algorithm("sac", SpaceSpec(4, 1), config.algo.params(), "cpu")
    payload = {  # Learner.save's payload
        "algo": algo.state_dict(),
        "updates": 7,
        "version": 3,
        "rng": ckpt.rng_state(),
        "config": config.model_dump(mode="json"),
        "algo_name": "sac",
        "space": [4, 1],
    }
    path = ckpt.save_checkpoint(run / "checkpoints", 7, payload)
    return run, path, algo


def test_collect_from_a_run_dir(tmp_path):
    run, checkpoint, algo = make_run_dir(tmp_path)
    plan = plan_collection("gym:InvertedPendulum-v5", episodes=3, policy=str(run), max_steps=12, seed=1)
    result = collect(plan, tmp_path / "pendulum.zarr", progress=False)
    assert result.episodes == result.attempts == 3  # no success signal: every episode is kept
    assert result.success_rate is None
    ds = open_dataset(tmp_path / "pendulum.zarr")
    assert "success" not in ds.keys
    assert ds.episodes == 3
    # The stored actions are the checkpoint's deterministic policy on the stored observations.
    expected = algo.make_policy().act(ds.array("obs"), deterministic=True).env_actions
    np.testing.assert_allclose(ds.array("action"), expected, atol=1e-6)
    options = dict(zarr.open_group(str(tmp_path / "pendulum.zarr"), mode="r").attrs)["source"]["options"]
    assert options["policy"] == str(run.resolve())
    assert options["checkpoint"] == str(checkpoint.resolve())
    assert options["checkpoint_updates"] == 7
    assert options["success_rate"] is None

    noisy = plan_collection(
        "gym:InvertedPendulum-v5", episodes=3, policy=str(run), max_steps=12, seed=1, noise=0.3
    )
    collect(noisy, tmp_path / "noisy.zarr", progress=False)
    ds = open_dataset(tmp_path / "noisy.zarr")
    actions = ds.array("action")
    assert np.all(np.abs(actions) <= 1.0)
    deviation = actions - algo.make_policy().act(ds.array("obs"), deterministic=True).env_actions
    assert 0.1 < float(np.std(deviation)) < 0.5
    # The noise is seeded per attempt: the same plan writes the same episodes.
    collect(noisy, tmp_path / "noisy2.zarr", progress=False)
    np.testing.assert_array_equal(open_dataset(tmp_path / "noisy2.zarr").array("action"), actions)


def test_cli_collect_from_a_run_dir(tmp_path):
    run, _, _ = make_run_dir(tmp_path)
    out = tmp_path / "pendulum.zarr"
    args = ["demos", "collect", "gym:InvertedPendulum-v5", "--policy", str(run), "-n", "2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--max-steps", "5", "--noise", "0.1", "-q"])
    assert result.exit_code == 0, result.output
    assert "2 episodes" in result.output and "success rate" not in result.output
    assert open_dataset(out).episodes == 2


# --- bad input -----------------------------------------------------------------------------------


def test_scripted_policy_for_an_unsupported_task(tmp_path):
    with pytest.raises(CollectError, match=r"no scripted controller for 'gym:Hopper-v5'.*robosuite:Lift"):
        plan_collection("gym:Hopper-v5", episodes=1)
    result = CliRunner().invoke(app, ["demos", "collect", "gym:Hopper-v5", "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2
    assert "no scripted controller" in result.output and "robosuite:PickPlaceCan" in result.output
    assert not (tmp_path / "x.zarr").exists()


def test_unknown_env_id():
    with pytest.raises(
        CollectError, match=r"unknown robosuite env robosuite:Lfit. Did you mean robosuite:Lift\?"
    ):
        plan_collection("robosuite:Lfit", episodes=1)


def test_unknown_env_id_with_a_run_policy(tmp_path):
    run, _, _ = make_run_dir(tmp_path)
    with pytest.raises(CollectError, match=r"trained on gym:InvertedPendulum-v5, not gym:Hoper-v5"):
        plan_collection("gym:Hoper-v5", episodes=1, policy=str(run))
    bad = CollectPlan(env=EnvConfig(id="gym:Hoper-v5"), policy="x", trained=None, episodes=1, max_attempts=1)
    with pytest.raises(CollectError, match=r"unknown Gymnasium id gym:Hoper-v5. Did you mean gym:Hopper-v5"):
        collect(bad, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_missing_or_broken_run_dir(tmp_path):
    with pytest.raises(CollectError, match="no such run directory"):
        plan_collection("gym:InvertedPendulum-v5", episodes=1, policy=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectError, match=r"not a distrl run directory \(no config.yaml\)"):
        plan_collection("gym:InvertedPendulum-v5", episodes=1, policy=str(tmp_path / "empty"))
    run, checkpoint, _ = make_run_dir(tmp_path)
    with pytest.raises(CollectError, match="no such file"):
        plan_collection("gym:InvertedPendulum-v5", episodes=1, policy=str(run), checkpoint=run / "x.pt")
    checkpoint.unlink()
    with pytest.raises(CollectError, match="no readable learner checkpoint"):
        plan_collection("gym:InvertedPendulum-v5", episodes=1, policy=str(run))
    args = ["demos", "collect", "gym:InvertedPendulum-v5", "--policy", str(tmp_path / "nope")]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run, older, _ = make_run_dir(tmp_path)
    newest = run / "checkpoints" / "learner-0000000009.pt"
    newest.write_bytes(older.read_bytes()[:100])  # cut short, as by a full disk
    plan = plan_collection("gym:InvertedPendulum-v5", episodes=1, policy=str(run))
    assert plan.trained is not None and plan.trained.checkpoint == str(older.resolve())
    assert plan.trained.updates == 7
    newest.write_bytes(b"")
    older.write_bytes(b"garbage")
    with pytest.raises(CollectError, match="no readable learner checkpoint"):
        plan_collection("gym:InvertedPendulum-v5", episodes=1, policy=str(run))


def test_bad_options():
    with pytest.raises(CollectError, match="--episodes must be at least 1"):
        plan_collection("robosuite:Lift", episodes=0)
    with pytest.raises(CollectError, match="--noise"):
        plan_collection("robosuite:Lift", episodes=1, noise=float("nan"))
    with pytest.raises(CollectError, match="--checkpoint only applies"):
        plan_collection("robosuite:Lift", episodes=1, checkpoint="x.pt")


def test_scripted_controller_needs_osc_pose():
    config = EnvConfig(id="robosuite:Lift", robosuite={"controller": "OSC_POSITION"})
    env = make_env(config, seed=0)
    try:
        with pytest.raises(ScriptedPolicyError, match="OSC_POSE"):
            make_scripted_policy(config, env)
    finally:
        env.close()
