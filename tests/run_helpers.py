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
    """Run `distrl train CONFIG` headless to its end; returns (best eval return, the env steps it was
    reached at, stdout), after checking the run exited cleanly, evaluated, and stayed in budget."""
    out = distrl("train", str(config), "--run-dir", str(run_dir), "--no-console", timeout=1500)
    assert out.returncode == 0, out.stdout + out.stderr
    evals = [(r["env_steps"], r["eval/return_mean"]) for r in rows(run_dir) if "eval/return_mean" in r]
    assert evals, "no evaluation ran"
    best_steps, best = max(evals, key=lambda e: e[1])
    assert best_steps <= budget + 2_000, (
        f"best at {best_steps} env steps (evaluations: {evals})"
    )  # + in flight
    return best, best_steps, out.stdout + f"\nevaluations: {evals}"
