"""The coordinator: receives every component's metrics and drives all the outputs.

What it owns: the run's aggregate (`aggregate.RunAggregate`: counters that
survive restarts, the open window, the last known values), each source's latest
values (`sources.SourceLatest`: Prometheus' labelled series, the dashboard's
per-actor panels), `run_dir/metrics.jsonl` (one row per window with at least one
report), `run_dir/progress.json` (rewritten with every row; pass its contents back
as `resume_from` to continue a run), and the optional outputs: W&B, Prometheus, the web dashboard and the
console display (`console()`, started by whoever owns the terminal).

What it receives: `Telemetry.Report(stream MetricBatch)` calls (any number at
once; ingesting takes one short lock), or `ingest()` in-process.
What it waits on: nothing; a thread closes a window every `report_every_s`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from pydantic import ValidationError

from distrl.config import TelemetryConfig
from distrl.proto.v1 import telemetry_pb2, telemetry_pb2_grpc
from distrl.telemetry.aggregate import MetricsRow, Progress, ReportRefused, RunAggregate, TelemetrySnapshot
from distrl.telemetry.console import ConsoleProgress
from distrl.telemetry.http import read_reader_token
from distrl.telemetry.sinks import METRICS_FILE, JsonlSink, MetricsSink, PrometheusSink, WandbSink
from distrl.telemetry.sources import SourceLatest
from distrl.wire.requests import MalformedRequest, request_parser
from distrl.wire.security import KeepaliveConfig, SecurityConfig
from distrl.wire.server import RunningServer, start_server

log = logging.getLogger(__name__)

SERVICE_NAME = telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name
DEFAULT_PORT = 50053
PROGRESS_FILE = "progress.json"
EVENTS_FILE = "events.jsonl"
MAX_SOURCE_CHARS = 256
MAX_METRICS_PER_BATCH = 100_000
MAX_METRIC_NAME_CHARS = 256
MAX_NOTES = 20


def load_progress(run_dir: Path) -> dict[str, Any] | None:
    """The contents of `run_dir/progress.json`, or None for a new run."""
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); move it away to start the run afresh") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _parse_progress(resume_from: Mapping[str, Any] | None) -> Progress | None:
    if resume_from is None:
        return None
    try:
        return Progress.model_validate(dict(resume_from))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"resume_from (progress.json) is invalid: {problems}") from None


def _batch_problem(batch: telemetry_pb2.MetricBatch) -> str | None:
    if not batch.source:
        return "MetricBatch.source is empty (expected a name like 'actor/3')"
    if len(batch.source) > MAX_SOURCE_CHARS:
        return f"MetricBatch.source is longer than {MAX_SOURCE_CHARS} characters"
    if batch.env_steps < 0 or batch.updates < 0:
        return f"{batch.source}: negative counts (env_steps={batch.env_steps}, updates={batch.updates})"
    if len(batch.metrics) > MAX_METRICS_PER_BATCH:
        return f"{batch.source}: {len(batch.metrics)} metrics in one batch (at most {MAX_METRICS_PER_BATCH})"
    for metric in batch.metrics:
        if len(metric.name) > MAX_METRIC_NAME_CHARS:
            return (
                f"{batch.source}: metric name {metric.name[:40]!r}... is longer than "
                f"{MAX_METRIC_NAME_CHARS} characters"
            )
    return None


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServicer):
    """`distrl.v1.Telemetry`: every batch of a Report stream goes into the coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def register(self, server: grpc.Server) -> None:
        # As `add_TelemetryServicer_to_server`, except that bytes that do not parse as a
        # MetricBatch reach Report, which refuses them by name (not gRPC's UNKNOWN).
        report = grpc.stream_unary_rpc_method_handler(
            self.Report,
            request_deserializer=request_parser(telemetry_pb2.MetricBatch),
            response_serializer=telemetry_pb2.ReportResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Report": report}),)
        )

    async def Report(self, request_iterator, context):
        # On the server's event loop: ingesting a batch is brief (a lock held for one aggregate
        # update), so an open Report stream costs no thread between batches.
        accepted = 0
        async for batch in request_iterator:
            if isinstance(batch, MalformedRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, batch.describe())
            problem = _batch_problem(batch)
            if problem is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            try:
                accepted += self._coordinator.ingest(
                    batch.source,
                    [(m.name, m.value) for m in batch.metrics],
                    env_steps=batch.env_steps,
                    updates=batch.updates,
                )
            except ReportRefused as exc:
                code = (
                    grpc.StatusCode.RESOURCE_EXHAUSTED if exc.exhausted else grpc.StatusCode.INVALID_ARGUMENT
                )
                await context.abort(code, str(exc))
        return telemetry_pb2.ReportResponse(accepted=accepted)


class Coordinator:
    """Aggregates reports into windows and feeds metrics.jsonl, W&B, Prometheus and the dashboard.

    Start serving with `start_server([coordinator.register], coordinator.service_names, ...)`
    (or `start_coordinator_server`); `close()` writes the last window and stops every output.
    """

    service_names: tuple[str, ...] = (SERVICE_NAME,)

    def __init__(
        self,
        run_dir: Path | None,
        config: TelemetryConfig,
        total_env_steps: int | None = None,
        run_config: dict | None = None,
        resume_from: dict | None = None,
        *,
        http_host: str = "127.0.0.1",
    ) -> None:
        progress = _parse_progress(resume_from)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config
        self._lock = threading.Lock()  # the aggregate; held only briefly
        self._flush_lock = threading.Lock()  # rows reach the sinks whole and in order
        self._aggregate = RunAggregate(config.report_every_s, time.monotonic(), total_env_steps, progress)
        self._notes: deque[str] = deque(maxlen=MAX_NOTES)
        # Each source's latest values: Prometheus' labelled series, the dashboard's per-actor panels.
        self.sources = SourceLatest()
        self._sinks: list[tuple[str, MetricsSink]] = []
        self._failed_sinks: set[str] = set()
        self._warned_names = False
        self.prometheus: PrometheusSink | None = None
        self.dashboard = None
        self.wandb: WandbSink | None = None
        self._closed = False
        try:
            self._open_outputs(config, run_config, progress is not None, http_host)
        except BaseException:
            self._close_sinks(1.0)
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._window_loop, name="telemetry-windows", daemon=True)
        self._thread.start()

    def _open_outputs(
        self, config: TelemetryConfig, run_config: dict | None, resume: bool, host: str
    ) -> None:
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._sinks.append(("metrics.jsonl", JsonlSink(self.run_dir / METRICS_FILE)))
        serves_http = config.prometheus_port is not None or config.dashboard_port is not None
        reader_token = None
        if serves_http and config.reader_token_file is not None:
            reader_token = read_reader_token(config.reader_token_file)
        if config.prometheus_port is not None:
            self.prometheus = PrometheusSink(
                config.prometheus_port,
                host,
                run=config.run_name or (self.run_dir.resolve().name if self.run_dir else "distrl"),
                sources=self.sources,
                live_after_s=self._aggregate.live_after_s,
                reader_token=reader_token,
            )
            self._sinks.append(("prometheus", self.prometheus))
        if config.dashboard_port is not None:
            from distrl.telemetry.dashboard import Dashboard, RowHistory

            history = RowHistory()
            if resume and self.run_dir is not None:
                history.load_jsonl(self.run_dir / METRICS_FILE)
            self.dashboard = Dashboard.live(
                self.dashboard_snapshot,
                self.run_dir,
                host,
                config.dashboard_port,
                history,
                reader_token=reader_token,
            )
            self._sinks.append(("dashboard", self.dashboard))
        if config.wandb.enabled:
            self.wandb = WandbSink(
                project=config.wandb.project,
                entity=config.wandb.entity,
                mode=config.wandb.mode,
                run_dir=self.run_dir,
                run_config=run_config,
                resume=resume,
            )
            self._sinks.append(("wandb", self.wandb))

    # -- serving --------------------------------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        TelemetryServicer(self).register(server)

    # -- input ----------------------------------------------------------------------------------

    def ingest(
        self,
        source: str,
        metrics: Mapping[str, float] | Iterable[tuple[str, float]] = (),
        *,
        env_steps: int | None = None,
        updates: int | None = None,
    ) -> int:
        """Take one batch from `source` (cumulative counts); returns the number of values kept."""
        items = metrics.items() if isinstance(metrics, Mapping) else metrics
        pairs = [(str(name), float(value)) for name, value in items]
        with self._lock:
            now = time.monotonic()
            kept = self._aggregate.ingest(source, env_steps, updates, pairs, now)
            self.sources.observe(source, pairs, now, env_steps=env_steps, updates=updates)
            dropped = self._aggregate.dropped_names
        if dropped and not self._warned_names:
            self._warned_names = True
            log.warning("more than %d metric names; new names are ignored", self._aggregate.max_metric_names)
        return kept

    def note(self, message: str) -> None:
        """A line for the console and the dashboard's event timeline (e.g. 'actor-3 restarted'),
        also appended to `run_dir/events.jsonl` so `distrl dashboard RUN_DIR` shows it later."""
        log.info("%s", message)
        with self._lock:
            self._notes.append(f"[{time.strftime('%H:%M:%S')}] {message}")
            now = time.monotonic()
            event = {
                "time": round(time.time(), 3),
                "wall_time": round(self._aggregate.wall_time(now), 3),
                "env_steps": self._aggregate.env_steps.total,
                "message": message,
            }
        if self.run_dir is not None and "events" not in self._failed_sinks:
            try:
                with (self.run_dir / EVENTS_FILE).open("a", encoding="utf-8") as f:
                    f.write(json.dumps(event) + "\n")
            except OSError as exc:
                self._failed_sinks.add("events")
                log.error("cannot write %s: %s", self.run_dir / EVENTS_FILE, exc)

    # -- output ---------------------------------------------------------------------------------

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            return self._aggregate.snapshot(time.monotonic(), tuple(self._notes))

    def dashboard_snapshot(self) -> dict[str, Any]:
        """The snapshot plus each live source's latest values (per-actor throughput, per shard)."""
        with self._lock:
            now = time.monotonic()
            snap = self._aggregate.snapshot(now, tuple(self._notes))
            sources = self.sources.table(now, self._aggregate.live_after_s)
        return {**snap.to_json_dict(), "sources": sources, "live": True}

    def console(self, console=None, live: bool | None = None, log_every_s: float = 10.0) -> ConsoleProgress:
        """A console display of this run; the caller starts and stops it."""
        return ConsoleProgress(self.snapshot, console=console, live=live, log_every_s=log_every_s)

    def flush_window(self) -> MetricsRow | None:
        """Close the open window now: write its row everywhere; None when nothing arrived in it."""
        with self._flush_lock:
            with self._lock:
                now, unix_time = time.monotonic(), time.time()
                row = self._aggregate.close_window(now, unix_time)
                progress = self._aggregate.progress(now, unix_time) if row is not None else None
            if row is None:
                return None
            for name, sink in self._sinks:
                if name in self._failed_sinks:
                    continue
                try:
                    sink.write(row)
                except Exception as exc:  # one broken output must not stop the others or the run
                    self._failed_sinks.add(name)
                    log.error("telemetry output %s failed and is disabled: %s", name, exc)
            if progress is not None and self.run_dir is not None:
                self._write_progress(progress)
            return row

    @property
    def metrics_path(self) -> Path | None:
        return self.run_dir / METRICS_FILE if self.run_dir is not None else None

    @property
    def prometheus_port(self) -> int | None:
        return self.prometheus.port if self.prometheus is not None else None

    @property
    def dashboard_port(self) -> int | None:
        return self.dashboard.port if self.dashboard is not None else None

    def close(self, timeout: float = 10.0) -> None:
        """Write the last window, then stop every output (W&B gets up to `timeout` to finish)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout)
        self.flush_window()
        self._close_sinks(timeout)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------

    def _window_loop(self) -> None:
        window_s = self.config.report_every_s
        next_at = time.monotonic() + window_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += window_s
            if next_at < time.monotonic():  # fell behind (a slow disk): skip, do not burst
                next_at = time.monotonic() + window_s
            try:
                self.flush_window()
            except Exception:
                log.exception("telemetry: closing a window failed")

    def _write_progress(self, progress: Progress) -> None:
        assert self.run_dir is not None
        path = self.run_dir / PROGRESS_FILE
        tmp = path.with_suffix(".json.tmp")
        try:
            tmp.write_text(progress.model_dump_json(indent=1))
            os.replace(tmp, path)  # readers never see half a file
        except OSError as exc:
            if "progress" not in self._failed_sinks:
                self._failed_sinks.add("progress")
                log.error("cannot write %s: %s", path, exc)

    def _close_sinks(self, timeout: float) -> None:
        for name, sink in reversed(self._sinks):
            try:
                sink.close(timeout)
            except Exception as exc:
                log.warning("closing telemetry output %s: %s", name, exc)
        self._sinks.clear()


def start_coordinator_server(
    coordinator: Coordinator,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
) -> RunningServer:
    """Serve `coordinator` over gRPC (plus the health service) on host:port."""
    return start_server(
        [coordinator.register],
        coordinator.service_names,
        host=host,
        port=port,
        security=security,
        keepalive=keepalive,
    )
