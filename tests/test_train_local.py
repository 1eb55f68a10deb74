"""End-to-end runs of `distrl train` with the local launcher: real processes, gRPC, MuJoCo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import best_within, distrl, evaluations, last, rows, train_to_solve, wait_for

from distrl.learners.checkpoint import latest_checkpoint, load_checkpoint
from distrl.replay.checkpoint import list_checkpoints, read_checkpoint
from distrl.runtime.process import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "sac_smoke.yaml"
ENV = {**os.environ, "MUJOCO_GL": "disable"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    out = distrl("train", str(SMOKE), "--run-dir", str(run_dir), "--no-console", "train.total_env_steps=2000")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reached 2000 env steps" in out.stdout
    return run_dir


def test_run_directory_layout(smoke_run: Path):
    assert (smoke_run / "config.yaml").is_file()
    assert (smoke_run / "metrics.jsonl").is_file()
    for name in ["learner", "actor-0", "actor-1", "evaluator", "params", "replay-0", "replay-1"]:
        assert (smoke_run / "logs" / f"{name}.log").is_file(), name
    assert list((smoke_run / "checkpoints").glob("learner-*.pt"))
    for row in rows(smoke_run):
        assert {"env_steps", "updates", "wall_time"} <= set(row)


def test_data_reaches_both_shards(smoke_run: Path):
    for k in range(2):
        ckpts = list_checkpoints(smoke_run / "replay" / f"shard-{k}")
        assert ckpts, f"shard {k} wrote no checkpoint"
        table = read_checkpoint(ckpts[-1])["default"]
        assert len(table.keys) > 0, f"shard {k} holds no transitions"
        assert set(table.fields) >= {"obs", "action", "reward", "next_obs", "terminated", "truncated"}


def test_weights_reach_actors_and_policy_lag_is_measured(smoke_run: Path):
    assert max(r.get("actor/policy_version", 0) for r in rows(smoke_run)) > 1
    for name in ("actor_lag_mean", "actor_lag_max", "sample_age_mean", "sample_age_max"):
        assert last(smoke_run, f"learner/{name}") is not None, name
    assert last(smoke_run, "learner/replay/0/size") is not None
    # transitions stored in replay carry the version that produced them
    table = read_checkpoint(list_checkpoints(smoke_run / "replay" / "shard-0")[-1])["default"]
    assert table.policy_version.max() > 0
    # ... and the learner version each was stored at, never below it (actor lag >= 0)
    assert (table.learner_version >= table.policy_version).all() and table.learner_version.max() > 1


def test_resume_continues_counters_and_weights(smoke_run: Path):
    before_steps = last(smoke_run, "env_steps")
    before_updates = last(smoke_run, "updates")
    n_rows = len(rows(smoke_run))
    saved = latest_checkpoint(smoke_run / "checkpoints")
    saved_updates = int(load_checkpoint(saved)["updates"])
    assert saved_updates > 0
    log_path = smoke_run / "logs" / "learner.log"
    log_before = len(log_path.read_text())
    out = distrl(
        "train", "--resume", str(smoke_run), "--no-console", f"train.total_env_steps={before_steps + 1500}"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    learner_log = log_path.read_text()[log_before:]
    # The learner's own counter (not the coordinator's sum of its reports) continues from the newest
    # checkpoint: it starts at that checkpoint's count and stops, and checkpoints, above it.
    started = re.findall(r"resumed from \S*?(learner-\d+\.pt), (\d+) updates", learner_log)
    assert started[:1] == [(saved.name, str(saved_updates))], learner_log
    stopped = [int(n) for n in re.findall(r"stopped at (\d+) updates", learner_log)]
    assert stopped[-1] > saved_updates, learner_log
    newest = latest_checkpoint(smoke_run / "checkpoints")
    assert int(load_checkpoint(newest)["updates"]) == stopped[-1]
    new_rows = rows(smoke_run)[n_rows:]
    assert new_rows, "the resumed run wrote no metrics"
    assert min(r["env_steps"] for r in new_rows) >= before_steps
    assert new_rows[-1]["updates"] > before_updates
    assert new_rows[-1]["env_steps"] >= before_steps + 1500


# InvertedPendulum-v5 pays 1 per step the pole stays up, so any episode returns > 0. Measured with
# the eval command's seeds (12345 on): uniform random actions return 4.8 per episode on average and
# 17 at most (200 episodes); untrained SAC [32, 32] policies 4.0-11.2 over 10 episodes (5 inits, 12
# at most in one). Two smoke runs' policies (~2,000 updates, after the resume) returned 40 and 55.
UNTRAINED_RETURN_BOUND = 20.0


def test_eval_command_reports_the_policy(smoke_run: Path):
    out = distrl("eval", str(smoke_run), "--episodes", "10", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["episodes"] == 10 and result["updates"] > 0
    assert result["return_mean"] > UNTRAINED_RETURN_BOUND, result


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_algorithm(path: Path, tmp_path: Path):
    from distrl.algos import SpaceSpec, make_algorithm
    from distrl.algos.diffusion import DiffusionModel, DiffusionSpec, save_model
    from distrl.config import load_config

    config = load_config(path)
    params = config.algo.params()
    if params.get("base_policy"):  # DSRL: a frozen base policy the user pretrains first; a tiny one here
        spec = DiffusionSpec(obs_dim=19, action_dim=7, chunk=params.get("chunk", 4), hidden=16, blocks=1)
        save_model(DiffusionModel(spec), tmp_path / "base")
        config = load_config(path, [f"algo.base_policy={tmp_path / 'base'}"])
    # A cost signal for the safe-exploration configs (sac_lag, a shield); the others ignore it.
    space = SpaceSpec(obs_dim=19, action_dim=7, signals=("cost",), max_episode_steps=100)
    make_algorithm(config.algo.name, space, config.algo.params(), "cpu")


def test_bad_config_key_fails_with_its_path(tmp_path: Path):
    out = distrl("train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "learner.batch_sise=3")
    assert out.returncode == 2
    assert "learner.batch_sise" in out.stderr and "unknown key" in out.stderr
    out = distrl("train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "actors.num_actors=0")
    assert out.returncode == 2 and "actors.num_actors" in out.stderr


def test_an_unknown_env_fails_the_run_at_once_with_the_error_on_the_console(tmp_path: Path):
    start = time.monotonic()
    out = distrl("train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--no-console",
                 "env.id=NoSuchEnv-v0", timeout=60)  # fmt: skip
    assert time.monotonic() - start < 30
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: env: unknown env id 'NoSuchEnv-v0'" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "r" / "logs").exists(), "no component should have started"


def test_a_child_counts_exits_soon_after_start_with_the_same_error(tmp_path: Path):
    def fail_with(message: str) -> ChildProcess:
        child.argv = [sys.executable, "-c", f"raise ValueError({message!r})"]
        child.start()
        assert child.wait(30)
        return child

    child = ChildProcess("x", [], tmp_path / "x.log")
    assert fail_with("boom").count_early_exit(time.monotonic(), 30.0) == 1
    assert child.log_tail(1) == ["ValueError: boom"]  # this incarnation's lines only
    assert fail_with("boom").count_early_exit(time.monotonic(), 30.0) == 2
    assert fail_with("other").count_early_exit(time.monotonic(), 30.0) == 1
    # An exit long after its start (a crash mid-run) starts the count again, as does a kill.
    assert fail_with("other").count_early_exit(time.monotonic() + 60.0, 30.0) == 0
    assert fail_with("other").count_early_exit(time.monotonic(), 30.0) == 1
    child.argv = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    child.start()
    assert child.wait(30) and child.count_early_exit(time.monotonic(), 30.0) == 0


def test_a_component_that_fails_the_same_way_on_start_fails_the_run(tmp_path: Path, monkeypatch):
    # The launcher cannot see this one coming (only the learner builds its algorithm): the learner
    # exits at once with the same error, and after a few tries the run stops with it on the console
    # instead of restarting it with a growing backoff for 15 minutes.
    # Before, this run restarted the learner for about 15 minutes: the timeout is the assertion.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = distrl("train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--no-console",
                 "learner.device=cuda", "train.total_env_steps=100000", "actors.num_actors=1",
                 "replay.num_shards=1", "eval.enabled=false", timeout=240)  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "learner exited with code 1 3 times in a row" in out.stderr
    assert "the same error: ValueError: device 'cuda' asked for CUDA" in out.stderr
    assert "learner.py" in out.stderr  # the end of its log (the traceback), on the console


def _pid_of(run_dir: Path, name: str) -> int | None:
    needle = f"--index {name.split('-')[1]}" if name.startswith("actor-") else name
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(run_dir) in cmd and "serve actor" in cmd and needle in cmd:
            return int(proc.name)
    return None


def test_actor_killed_with_sigkill_is_restarted(tmp_path: Path):
    run_dir = tmp_path / "kill"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distrl.cli",
            "train",
            str(SMOKE),
            "--run-dir",
            str(run_dir),
            "--no-console",
            "train.total_env_steps=100000",
            "actors.restart_backoff_s=0.5",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: (last(run_dir, "env_steps") or 0) > 300, 120, "the run to make progress")
        pid = wait_for(lambda: _pid_of(run_dir, "actor-0"), 30, "actor-0's pid")
        os.kill(pid, signal.SIGKILL)
        log = run_dir / "logs" / "actor-0.log"
        wait_for(lambda: log.read_text().count("--- start") >= 2, 60, "actor-0 to be restarted")
        new_pid = wait_for(lambda: _pid_of(run_dir, "actor-0"), 30, "the restarted actor-0")
        assert new_pid != pid
        steps = last(run_dir, "env_steps")
        updates = last(run_dir, "updates")
        wait_for(lambda: last(run_dir, "env_steps") > steps + 200, 90, "env steps to grow after the restart")
        wait_for(lambda: last(run_dir, "updates") > updates, 60, "updates to grow after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "actor-0 exited" in output
    assert list((run_dir / "checkpoints").glob("learner-*.pt"))


def test_only_evaluations_of_policies_trained_within_the_budget_count():
    run_rows = [
        {"env_steps": 9_000, "updates": 1_000},
        {"env_steps": 10_500, "updates": 1_400, "eval/updates": 1_000, "eval/return_mean": 300.0},
        {"env_steps": 29_000, "updates": 5_000},
        {"env_steps": 30_400, "updates": 5_300},  # in flight past the 30k budget
        {"env_steps": 30_900, "updates": 5_400, "eval/updates": 5_300, "eval/return_mean": 1000.0},
        {"env_steps": 30_950, "eval/return_mean": 990.0},  # an older row: no eval/updates
    ]
    evals = evaluations(run_rows)
    assert evals == [(9_000, 300.0), (30_400, 1000.0), (30_950, 990.0)]
    assert best_within(evals, 30_000) == (9_000, 300.0)
    assert best_within(evals, 31_000) == (30_400, 1000.0)
    with pytest.raises(AssertionError, match="no evaluation within 5000 env steps"):
        best_within(evals, 5_000)


@pytest.mark.slow
def test_sac_solves_inverted_pendulum_through_the_pipeline(tmp_path: Path):
    """2 actors, 2 shards, params server, learner, evaluator: eval return >= 900 within 30k env steps."""
    config = ROOT / "configs" / "sac_inverted_pendulum.yaml"
    best, _, output = train_to_solve(config, tmp_path / "pendulum", budget=30_000)
    assert best >= 900, f"best eval return {best:.1f}; {output}"
    assert "solved" in output
