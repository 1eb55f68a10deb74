"""Telemetry: components report metrics to the coordinator, which drives every output.

`TelemetryReporter` is what actors, learners and evaluators use (it never blocks
and never fails because the coordinator is down). `Coordinator` aggregates the
reports per window and writes `metrics.jsonl` / `progress.json`, the console
display, W&B, Prometheus and the web dashboard. Attributes load on first use,
so a reporter does not import rich, wandb or prometheus_client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distrl.telemetry.aggregate import MetricsRow, Progress, TelemetrySnapshot
    from distrl.telemetry.console import ConsoleProgress
    from distrl.telemetry.coordinator import Coordinator, load_progress, start_coordinator_server
    from distrl.telemetry.reporter import TelemetryReporter
    from distrl.telemetry.sources import SourceLatest

_EXPORTS = {
    "MetricsRow": "distrl.telemetry.aggregate",
    "Progress": "distrl.telemetry.aggregate",
    "TelemetrySnapshot": "distrl.telemetry.aggregate",
    "ConsoleProgress": "distrl.telemetry.console",
    "Coordinator": "distrl.telemetry.coordinator",
    "load_progress": "distrl.telemetry.coordinator",
    "start_coordinator_server": "distrl.telemetry.coordinator",
    "TelemetryReporter": "distrl.telemetry.reporter",
    "SourceLatest": "distrl.telemetry.sources",
}

__all__ = [
    "ConsoleProgress",
    "Coordinator",
    "MetricsRow",
    "Progress",
    "SourceLatest",
    "TelemetryReporter",
    "TelemetrySnapshot",
    "load_progress",
    "start_coordinator_server",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distrl.telemetry' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
