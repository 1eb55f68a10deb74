"""Reading a run directory while a launcher writes it (shared by the launcher tests)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


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
