"""Running the `distrl` CLI and reading a run directory while a launcher writes it (shared by the
launcher tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def distrl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m distrl.cli ARGS` from the repository root, headless, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "distrl.cli", *args],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "disable"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl so far."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last(run_dir: Path, key: str):
    """The newest value of a metric, or None."""
    values = [r[key] for r in rows(run_dir) if key in r]
    return values[-1] if values else None


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `predicate` until it returns something truthy; fail early if the run `proc` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def train_to_solve(config: Path, run_dir: Path, budget: int) -> tuple[float, int, str]:
    """Run `distrl train CONFIG` headless to its end; returns (best eval return within `budget` env
    steps, the env steps it was reached at, stdout), after checking the run exited cleanly and
    evaluated within the budget."""
    out = distrl("train", str(config), "--run-dir", str(run_dir), "--no-console", timeout=1500)
    assert out.returncode == 0, out.stdout + out.stderr
    evals = evaluations(rows(run_dir))
    best_steps, best = best_within(evals, budget)
    return best, best_steps, out.stdout + f"\nevaluations: {evals}"


def evaluations(run_rows: list[dict]) -> list[tuple[int, float]]:
    """(env steps, mean return) of each evaluation in metrics rows. The env steps are where the run
    was when the learner reached the evaluated policy's update count (`eval/updates`), not when the
    row was written (later, by the evaluation's own time); the row's env steps when it has none."""
    out = []
    for row in run_rows:
        if "eval/return_mean" not in row:
            continue
        steps = row["env_steps"]
        if "eval/updates" in row:
            reached = [r["env_steps"] for r in run_rows if r.get("updates", -1) >= row["eval/updates"]]
            steps = min([steps, *reached])
        out.append((steps, row["eval/return_mean"]))
    return out


def best_within(evals: list[tuple[int, float]], budget: int) -> tuple[int, float]:
    """(env steps, return) of the best evaluation of a policy trained on at most `budget` env steps.
    Evaluations past the budget (a run overshoots it by the steps in flight when it stops) do not count."""
    assert evals, "no evaluation ran"
    within = [e for e in evals if e[0] <= budget]
    assert within, f"no evaluation within {budget} env steps (evaluations: {evals})"
    return max(within, key=lambda e: e[1])


def start_train(config: str, run_dir: Path, *overrides: str, output: bool = True) -> subprocess.Popen:
    """`distrl train CONFIG --run-dir RUN_DIR --no-console OVERRIDES` in the background, headless;
    its stdout and stderr together in `proc.stdout` (or discarded with `output=False`)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distrl.cli",
            "train",
            config,
            "--run-dir",
            str(run_dir),
            "--no-console",
            *overrides,
        ],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "disable"},
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
