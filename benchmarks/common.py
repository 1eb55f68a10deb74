"""What every benchmark shares: the machine description, results, the table and the JSON file.

JSON format (DESIGN.md "Benchmarks"): {"benchmark", "machine": {cpu, cores, gpu, torch,
python}, "config", "results": [{"name", "value", "unit", "baseline", "baseline_kind",
"baseline_value", "ratio"}]}, where ratio = value / baseline_value oriented so higher is better
for us. `baseline_kind` says what the ratio is against: "measured", a peer measured in the same
run on the same machine, or "target", a constant goal (a number we aim for, not a competitor's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    # When lower is better for `value` (e.g. seconds), the ratio is inverted.
    lower_is_better: bool = False
    # "target": the baseline value is a constant goal, not a peer measured in this run.
    baseline_kind: Literal["measured", "target"] = "measured"

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value or not self.value:
            return None
        if (self.value < 0) != (self.baseline_value < 0):
            return None  # a ratio of opposite signs says nothing
        r = self.value / self.baseline_value
        # Both negative (e.g. returns): the less negative is better, so invert like a cost.
        return 1.0 / r if self.lower_is_better != (self.value < 0) else r

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_kind": self.baseline_kind if self.baseline is not None else None,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
        }


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_version, gpu = None, None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch_version,
        "python": platform.python_version(),
    }


def print_table(results: list[Result], title: str | None = None) -> None:
    if title:
        print(title)
    rows = [(r.name, _fmt(r.value), r.unit, _baseline(r), _fmt(r.baseline_value), _ratio(r)) for r in results]
    header = ("name", "value", "unit", "baseline", "baseline value", "ratio")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def write_json(path: Path | None, benchmark: str, config: dict[str, Any], results: list[Result]) -> dict:
    doc = {
        "benchmark": benchmark,
        "machine": machine_info(),
        "config": config,
        "results": [r.as_json() for r in results],
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")
    return doc


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run for CI smoke tests")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    return p


@dataclass
class TrainRun:
    """`distrl train` in a subprocess; a thread notes when it exits (what runs beside it may go on)."""

    proc: subprocess.Popen
    run_dir: Path
    start: float
    end: float | None = None
    waiter: threading.Thread | None = None

    def wait(self) -> float:
        """The run's wall time, once it has exited."""
        assert self.waiter is not None
        self.waiter.join()
        if self.proc.returncode != 0:
            raise SystemExit(f"distrl train exited with {self.proc.returncode}; see {self.run_dir / 'logs'}")
        assert self.end is not None
        return self.end - self.start


def start_train(
    config: Path, run_dir: Path, overrides: list[str], cpus: Collection[int] | None = None
) -> TrainRun:
    """Start `distrl train CONFIG --run-dir RUN_DIR --no-console OVERRIDES...`, headless, stdout dropped;
    with `cpus`, the run and every process it starts are pinned to those CPUs."""
    argv = [
        sys.executable, "-m", "distrl.cli", "train", str(config), "--run-dir", str(run_dir), "--no-console",
        *overrides,
    ]  # fmt: skip
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env={**os.environ, "MUJOCO_GL": "disable"}, stdout=subprocess.DEVNULL, preexec_fn=pin
    )
    run = TrainRun(proc, run_dir, start)

    def wait() -> None:
        proc.wait()
        run.end = time.perf_counter()

    run.waiter = threading.Thread(target=wait, daemon=True)
    run.waiter.start()
    return run


def start_serve(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """`distrl serve ARGS --port 0` in a subprocess (stderr dropped, run in `cwd`); returns it and its
    address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "distrl.cli", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"distrl serve {' '.join(args)} did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _baseline(result: Result) -> str:
    if result.baseline is None:
        return "-"
    if result.baseline_kind == "target" and not result.baseline.startswith("target"):
        return f"target: {result.baseline}"
    return result.baseline


def _ratio(result: Result) -> str:
    r = result.ratio
    if r is None:
        return "-"
    return f"{r:.2f}x of target" if result.baseline_kind == "target" else f"{r:.2f}x"
