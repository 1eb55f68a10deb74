"""Telemetry: reporters -> coordinator over real gRPC, the window math, every output."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from distrl.config import TelemetryConfig, WandbConfig
from distrl.proto.v1 import telemetry_pb2, telemetry_pb2_grpc
from distrl.telemetry import Coordinator, TelemetryReporter, load_progress, start_coordinator_server
from distrl.telemetry.aggregate import MAX_SOURCES, Progress, RunAggregate, TelemetrySnapshot, reduction_for
from distrl.telemetry.console import ConsoleProgress, format_line, render_panel
from distrl.telemetry.dashboard import RowHistory
from distrl.telemetry.sinks import prometheus_name, resolve_wandb_mode, wandb_logged_in
from distrl.wire import SecurityConfig, check_health, open_channel

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "distrl.cli"]
# Windows are closed by hand (flush_window) so the tests never race the window thread.
MANUAL = TelemetryConfig(console=False, report_every_s=3600.0)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """A coordinator (manual windows) served on a loopback port."""
    coordinator = Coordinator(tmp_path / "run", MANUAL, total_env_steps=10_000)
    running = start_coordinator_server(coordinator, port=0)
    yield coordinator, running
    running.stop(0.5)
    coordinator.close()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the math -----------------------------------------------------------------------------------


def test_reductions_by_name():
    assert reduction_for("actor/steps_per_s").value == "sum_of_latest"
    assert reduction_for("learner/staleness_max").value == "max"
    assert reduction_for("learner/critic_loss").value == "mean"


def test_aggregate_sums_sources_survives_restarts_and_reduces_windows():
    agg = RunAggregate(window_s=1.0, now=0.0, total_env_steps=1000)
    agg.ingest("actor/0", 100, None, [("steps_per_s", 50.0), ("episode_return", 1.0)], now=0.5)
    agg.ingest("actor/1", 40, None, [("steps_per_s", 20.0), ("episode_return", 3.0)], now=0.6)
    agg.ingest("actor/1", 60, None, [("steps_per_s", 30.0), ("episode_return", 8.0)], now=0.7)
    agg.ingest("learner/0", 0, 7, [("critic_loss", 2.0), ("staleness_max", 4.0)], now=0.8)
    agg.ingest("learner/0", 0, 9, [("critic_loss", 4.0), ("staleness_max", 2.0)], now=0.9)
    row = agg.close_window(now=1.0, unix_time=123.0)
    assert row is not None
    assert (row.env_steps, row.updates) == (160, 9)
    assert row.metrics["actor/steps_per_s"] == 80.0  # each actor's latest, summed
    assert row.metrics["actor/episode_return"] == pytest.approx(4.0)  # every value in the window
    assert row.metrics["learner/critic_loss"] == 3.0
    assert row.metrics["learner/staleness_max"] == 4.0
    assert row.live_actors == 2
    assert "learner/0" not in agg.env_steps.sources  # a learner never counted env steps

    # actor/0 restarts and counts from 0 again: its 100 steps are kept.
    agg.ingest("actor/0", 25, None, [], now=1.5)
    assert agg.env_steps.total == 185
    agg.ingest("actor/0", 0, None, [], now=1.6)  # and restarts once more before stepping
    agg.ingest("actor/0", 10, None, [], now=1.7)
    assert agg.env_steps.total == 100 + 25 + 10 + 60
    # Empty windows write no row; metrics keep their last value for the display.
    assert agg.close_window(now=2.0, unix_time=124.0) is not None
    assert agg.close_window(now=3.0, unix_time=125.0) is None
    snap = agg.snapshot(now=3.0)
    assert snap.last["actor/episode_return"] == pytest.approx(4.0)
    assert snap.env_steps_per_s > 0
    # Non-finite values never reach a row.
    assert (
        agg.ingest("actor/0", 10, None, [("x", float("nan")), ("y", float("inf")), ("z", 1.0)], now=3.1) == 1
    )


def test_aggregate_resumes_from_progress():
    agg = RunAggregate(window_s=1.0, now=0.0)
    agg.ingest("actor/0", 500, None, [], now=0.1)
    agg.ingest("learner/0", 0, 40, [], now=0.1)
    agg.close_window(now=1.0, unix_time=0.0)
    saved = json.loads(agg.progress(now=12.5).model_dump_json())  # through JSON, like the file

    resumed = RunAggregate(window_s=1.0, now=100.0, progress=Progress.model_validate(saved))
    assert (resumed.env_steps.total, resumed.updates.total) == (500, 40)
    assert resumed.wall_time(now=101.0) == pytest.approx(13.5)
    resumed.ingest("actor/0", 30, None, [], now=100.5)  # a fresh actor process: a restart
    resumed.ingest("learner/0", 0, 45, [], now=100.5)  # the learner resumed its own counter
    assert (resumed.env_steps.total, resumed.updates.total) == (530, 45)
    assert resumed.close_window(now=101.0, unix_time=0.0).index == 1


def test_learner_updates_follow_its_restored_checkpoint():
    # The learner crash-restarts from a checkpoint older than its last report: updates are
    # what the checkpoint restored, not the two incarnations added up (1030).
    agg = RunAggregate(window_s=1.0, now=0.0)
    agg.ingest("learner/0", 0, 520, [], now=0.1)
    agg.ingest("learner/0", 0, 0, [], now=0.2)  # a heartbeat of the new process: no count yet
    agg.ingest("learner/0", 0, 500, [], now=0.3)
    agg.ingest("learner/0", 0, 510, [], now=0.4)
    assert agg.updates.total == 510
    # An actor's env steps still restart from 0 and add up.
    agg.ingest("actor/0", 300, None, [], now=0.5)
    agg.ingest("actor/0", 20, None, [], now=0.6)
    assert agg.env_steps.total == 320

    # A resumed run (progress.json) follows the checkpoint too, even an older one.
    saved = json.loads(agg.progress(now=1.0).model_dump_json())
    resumed = RunAggregate(window_s=1.0, now=10.0, progress=Progress.model_validate(saved))
    assert (resumed.env_steps.total, resumed.updates.total) == (320, 510)
    resumed.ingest("learner/0", 0, 500, [], now=10.5)
    resumed.ingest("actor/0", 5, None, [], now=10.5)
    assert (resumed.env_steps.total, resumed.updates.total) == (325, 500)
    # A progress.json written before this rule, with the double count in it, is repaired.
    old = Progress(updates=1030, updates_by_source={"learner/0": (520, 510)})
    assert RunAggregate(window_s=1.0, now=0.0, progress=old).updates.total == 510


# -- the reporter -------------------------------------------------------------------------------


def test_local_reporter_keeps_last_values_and_rejects_bad_input(caplog):
    reporter = TelemetryReporter(None, "actor/0")
    reporter.report({"a": 1.0, "b": 2}, env_steps=10)
    reporter.event("episode_return", 3.5)
    with caplog.at_level(logging.WARNING, logger="distrl.telemetry.reporter"):
        reporter.report({"a": float("nan")})
        reporter.report({"a": float("inf")})
    assert reporter.last == {"a": 1.0, "b": 2.0, "episode_return": 3.5}
    assert reporter.env_steps == 10
    assert sum("non-finite" in r.message for r in caplog.records) == 1
    with pytest.raises(TypeError, match=r"'a'.*not a number"):
        reporter.report({"a": "fast"})
    with pytest.raises(ValueError, match="env_steps"):
        reporter.report({}, env_steps=-1)
    with pytest.raises(ValueError, match="source"):
        TelemetryReporter(None, "")
    reporter.close()


def test_many_reporters_sum_counts_and_average_events(served):
    coordinator, running = served
    n_actors, steps = 8, 20

    def actor(i: int) -> None:
        with TelemetryReporter(running.address, f"actor/{i}", interval_s=0.05) as reporter:
            for k in range(1, steps + 1):
                reporter.report({"steps_per_s": 100.0 + i}, env_steps=k * 10)
                reporter.event("episode_return", float(i))
                time.sleep(0.005)

    threads = [threading.Thread(target=actor, args=(i,)) for i in range(n_actors)]
    for t in threads:
        t.start()
    with TelemetryReporter(running.address, "learner/0", interval_s=0.05) as learner:
        for u in range(1, 51):
            learner.report({"critic_loss": float(u % 2)}, updates=u)
    for t in threads:
        t.join()

    row = coordinator.flush_window()
    assert row is not None
    assert row.env_steps == n_actors * steps * 10
    assert row.updates == 50
    assert row.metrics["actor/steps_per_s"] == sum(100.0 + i for i in range(n_actors))
    assert row.metrics["actor/episode_return"] == pytest.approx(sum(range(n_actors)) / n_actors)
    assert 0.0 < row.metrics["learner/critic_loss"] < 1.0
    assert row.live_actors == n_actors

    # actor/0 restarts (same name, counting from 0 again): the run keeps its earlier steps.
    with TelemetryReporter(running.address, "actor/0", interval_s=0.05) as restarted:
        restarted.report({}, env_steps=30)
    assert coordinator.snapshot().env_steps == n_actors * steps * 10 + 30


def test_reporter_with_coordinator_down_buffers_then_delivers(tmp_path):
    port = free_port()
    reporter = TelemetryReporter(f"127.0.0.1:{port}", "actor/0", interval_s=0.05)
    done = threading.Event()

    def report_while_down() -> None:
        for k in range(1, 101):
            reporter.report({"steps_per_s": 5.0}, env_steps=k)
            reporter.event("episode_return", float(k))
        done.set()

    worker = threading.Thread(target=report_while_down)
    worker.start()
    worker.join(10.0)
    assert done.is_set(), "report()/event() blocked while the coordinator was down"
    time.sleep(0.3)  # a few failed sends, so the buffer has been merged back at least once
    assert reporter.sent_batches == 0

    coordinator = Coordinator(tmp_path / "run", MANUAL)
    running = start_coordinator_server(coordinator, port=port)
    try:
        wait_for(
            lambda: coordinator.snapshot().env_steps == 100, what="delivery after the coordinator started"
        )
        reporter.close(timeout=2.0)
        row = coordinator.flush_window()
        assert row.metrics["actor/episode_return"] == pytest.approx(50.5)  # all 100 events, none lost
    finally:
        reporter.close()
        running.stop(0.5)
        coordinator.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_reporter_close_returns_when_the_coordinator_hangs():
    # A socket that accepts connections but never answers: sends wait for their deadline.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        reporter = TelemetryReporter(f"127.0.0.1:{silent.getsockname()[1]}", "actor/0", interval_s=0.05)
        sender = reporter._thread
        reporter.report({"x": 1.0}, env_steps=5)
        time.sleep(0.2)  # a send is now in flight
        closer = threading.Thread(target=reporter.close, kwargs={"timeout": 0.3})
        closer.start()
        closer.join(10.0)
        assert not closer.is_alive()
        sender.join(10.0)
        assert not sender.is_alive()
        assert reporter.sent_batches == 0


def test_coordinator_refuses_malformed_batches_and_checks_tokens(tmp_path):
    coordinator = Coordinator(None, MANUAL)
    running = start_coordinator_server(coordinator, port=0, security=SecurityConfig(token="s3cret"))
    try:
        channel = open_channel(running.address, SecurityConfig(token="s3cret"))
        stub = telemetry_pb2_grpc.TelemetryStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Report(iter([telemetry_pb2.MetricBatch(source="")]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "source" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Report(iter([telemetry_pb2.MetricBatch(source="actor/0", env_steps=-3)]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ok = telemetry_pb2.MetricBatch(source="actor/0", env_steps=3)
        ok.metrics.add(name="a", value=1.0)
        ok.metrics.add(name="b", value=float("nan"))
        assert stub.Report(iter([ok, ok]), timeout=5).accepted == 2
        channel.close()

        wrong = open_channel(running.address, SecurityConfig(token="nope"))
        with pytest.raises(grpc.RpcError) as err:
            telemetry_pb2_grpc.TelemetryStub(wrong).Report(iter([ok]), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong.close()

        with TelemetryReporter(running.address, "actor/1", SecurityConfig(token="s3cret"), 0.05) as reporter:
            reporter.report({}, env_steps=7)
        assert coordinator.snapshot().env_steps == 10
    finally:
        running.stop(0.5)
        coordinator.close()


# -- files and resume ---------------------------------------------------------------------------


def test_metrics_jsonl_grows_and_a_resumed_run_continues(tmp_path):
    run_dir = tmp_path / "run"
    first = Coordinator(run_dir, MANUAL, total_env_steps=1000)
    first.ingest("actor/0", {"episode_return": 5.0}, env_steps=100)
    first.ingest("learner/0", {"critic_loss": 0.5}, updates=10)
    first.flush_window()
    first.ingest("actor/0", {"episode_return": 7.0}, env_steps=250)
    assert first.flush_window() is not None
    assert first.flush_window() is None  # nothing new: no row
    time.sleep(0.05)
    first.close()

    rows = read_rows(run_dir / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert {"env_steps", "updates", "wall_time", "env_steps_per_s", "updates_per_s"} <= row.keys()
    assert [r["env_steps"] for r in rows] == [100, 250]
    assert rows[0]["learner/critic_loss"] == 0.5 and rows[1]["actor/episode_return"] == 7.0
    progress = load_progress(run_dir)
    assert (progress["env_steps"], progress["updates"], progress["rows"]) == (250, 10, 2)
    assert progress["wall_time"] >= rows[-1]["wall_time"] > 0

    second = Coordinator(run_dir, MANUAL, total_env_steps=1000, resume_from=progress)
    assert second.snapshot().env_steps == 250
    second.ingest("actor/0", {"episode_return": 9.0}, env_steps=40)  # a fresh actor process
    second.ingest("learner/0", {}, updates=12)  # the learner resumed its counter
    row = second.flush_window()
    second.close()
    assert (row.env_steps, row.updates) == (290, 12)
    assert row.wall_time > progress["wall_time"]
    rows = read_rows(run_dir / "metrics.jsonl")
    assert len(rows) == 3 and rows[-1]["env_steps"] == 290


def test_bad_progress_is_reported_clearly(tmp_path):
    with pytest.raises(ValueError, match="env_steps"):
        Coordinator(None, MANUAL, resume_from={"env_steps": -5})
    (tmp_path / "progress.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"progress\.json"):
        load_progress(tmp_path)
    assert load_progress(tmp_path / "missing") is None


def test_window_thread_writes_rows_on_its_own(tmp_path):
    config = TelemetryConfig(console=False, report_every_s=0.05)
    coordinator = Coordinator(tmp_path, config)
    try:
        for k in range(1, 4):
            coordinator.ingest("actor/0", {"episode_return": float(k)}, env_steps=k)
            wait_for(lambda k=k: coordinator.snapshot().rows >= k, what=f"row {k}")
    finally:
        coordinator.close()
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["env_steps"] for r in rows] == [1, 2, 3]
    assert all(b["wall_time"] > a["wall_time"] for a, b in itertools.pairwise(rows))


# -- outputs ------------------------------------------------------------------------------------


def test_prometheus_endpoint_serves_gauges(tmp_path):
    config = MANUAL.model_copy(update={"prometheus_port": 0})
    coordinator = Coordinator(tmp_path, config)
    try:
        coordinator.ingest("actor/3", {"episode_return": 12.5, "steps_per_s": 40.0}, env_steps=321)
        coordinator.ingest("learner/0", {"critic_loss": 0.25}, updates=17)
        coordinator.flush_window()
        url = f"http://127.0.0.1:{coordinator.prometheus_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        coordinator.close()
    # The run-level series (labelled with the run dir's name); tests/test_prometheus_labels.py has the rest.
    run_label = f'{{run="{tmp_path.name}"}}'
    values = {
        line.split()[0].removesuffix(run_label): float(line.split()[1])
        for line in body.splitlines()
        if line.startswith("distrl_") and line.split()[0].endswith(run_label)
    }
    assert values["distrl_env_steps"] == 321
    assert values["distrl_updates"] == 17
    assert values["distrl_actor_episode_return"] == 12.5
    assert values["distrl_actor_steps_per_s"] == 40.0
    assert values["distrl_learner_critic_loss"] == 0.25
    assert prometheus_name("eval/return-mean.x") == "distrl_eval_return_mean_x"


def test_dashboard_serves_page_rows_and_snapshot(tmp_path):
    config = MANUAL.model_copy(update={"dashboard_port": 0})
    coordinator = Coordinator(tmp_path, config, total_env_steps=1000)
    base = f"http://127.0.0.1:{coordinator.dashboard_port}"

    def get_json(path: str):
        return json.loads(urllib.request.urlopen(base + path, timeout=5).read())

    try:
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        assert "static/uPlot.iife.min.js" in page and "static/dashboard.js" in page
        for name in ("dashboard.js", "uPlot.iife.min.js", "uPlot.min.css", "dashboard.css"):
            body = urllib.request.urlopen(f"{base}/static/{name}", timeout=5).read().decode()
            assert len(body) > 500
            assert "https://" not in body.replace("https://github.com/leeoniya/uPlot", "")  # no CDN
        assert "https://" not in page and "http://" not in page  # the page works offline
        assert get_json("/api/runs") == [{"id": "0", "name": tmp_path.name, "live": True}]
        assert get_json("/api/metrics") == {"rows": [], "next": 0, "more": False}
        for k in range(1, 4):
            coordinator.ingest("actor/0", {"episode_return": float(k)}, env_steps=100 * k)
            coordinator.flush_window()
        first = get_json("/api/metrics")
        assert [r["env_steps"] for r in first["rows"]] == [100, 200, 300]
        assert first["rows"][0]["actor/episode_return"] == 1.0
        later = get_json(f"/api/metrics?since={first['rows'][1]['index']}")
        assert [r["env_steps"] for r in later["rows"]] == [200, 300]
        assert get_json(f"/api/metrics?since={first['next']}")["rows"] == []
        snap = get_json("/api/snapshot")
        assert snap["env_steps"] == 300 and snap["total_env_steps"] == 1000
        assert snap["last"]["actor/episode_return"] == 3.0
        for bad, code in (("/api/metrics?since=abc", 400), ("/nope", 404)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + bad, timeout=5)
            assert err.value.code == code
    finally:
        coordinator.close()


def test_dashboard_history_is_bounded_and_resumes_from_jsonl(tmp_path):
    history = RowHistory(max_rows=100)
    for k in range(1000):
        history.append({"env_steps": k})
    assert len(history) <= 100
    rows, _, _ = history.since(0, limit=10_000)
    assert rows[0]["env_steps"] == 0 and rows[-1]["env_steps"] == 999  # the whole span, thinned
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"env_steps": 1}\n{"env_steps": 2}\n{"env_st')  # last line cut by a crash
    resumed = RowHistory()
    resumed.load_jsonl(path)
    assert [r["env_steps"] for r in resumed.since(0)[0]] == [1, 2]


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file (LevelDB log format: 32 KiB blocks of framed chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, partial, records = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            records.append(partial + chunk)
    return records


def test_wandb_offline_run_has_history(tmp_path, monkeypatch):
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = MANUAL.model_copy(update={"wandb": WandbConfig(enabled=True, project="distrl-test")})
    run_dir = tmp_path / "run"
    coordinator = Coordinator(run_dir, config, run_config={"seed": 3})
    for k in range(1, 4):
        coordinator.ingest("actor/0", {"episode_return": 10.0 * k}, env_steps=100 * k)
        coordinator.flush_window()
    coordinator.close(timeout=60.0)
    assert coordinator.wandb is not None and coordinator.wandb.mode == "offline"

    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list(run_dir.rglob("*"))

    def history() -> list[tuple[int, float]]:
        found = []
        for raw in _wandb_records(runs[0]):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                items = {
                    item.key or "/".join(item.nested_key): item.value_json for item in record.history.item
                }
                found.append((record.history.step.num, json.loads(items["actor/episode_return"])))
        return found

    # wandb's own service process writes the file; on a busy machine it may lag behind finish().
    deadline = time.monotonic() + 60
    while len(history()) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert history() == [(100, 10.0), (200, 20.0), (300, 30.0)]


def test_wandb_mode_resolution(tmp_path):
    assert resolve_wandb_mode("online", {}) == "online"
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert wandb_logged_in({"NETRC": str(netrc)})
    assert resolve_wandb_mode("auto", {"NETRC": str(tmp_path / "none")}) == "offline"


def test_a_failing_wandb_turns_itself_off(tmp_path, monkeypatch, caplog):
    # wandb.init failing (e.g. the server is unreachable) must not stop the run.
    import wandb

    def broken_init(**_kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    config = MANUAL.model_copy(update={"wandb": WandbConfig(enabled=True, mode="online")})
    with caplog.at_level(logging.WARNING, logger="distrl.telemetry.sinks"):
        coordinator = Coordinator(tmp_path, config)
        wait_for(lambda: not coordinator.wandb.enabled, what="the W&B sink to turn off")
        coordinator.ingest("actor/0", {"episode_return": 1.0}, env_steps=1)
        assert coordinator.flush_window() is not None
        coordinator.close()
    assert sum("W&B logging disabled" in r.message for r in caplog.records) == 1
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 1


# -- console ------------------------------------------------------------------------------------


def _snapshot(**last: float) -> TelemetrySnapshot:
    return TelemetrySnapshot(
        env_steps=2500,
        updates=300,
        wall_time=75.0,
        env_steps_per_s=50.0,
        updates_per_s=6.0,
        live_actors=4,
        live_sources=("actor/0",),
        total_env_steps=10_000,
        rows=3,
        last=dict(last),
        notes=("[12:00:00] actor-2 restarted (1)",),
    )


def _rendered(snapshot: TelemetrySnapshot) -> str:
    out = Console(file=io.StringIO(), width=120, color_system=None)
    out.print(render_panel(snapshot))
    return out.file.getvalue()


def test_console_shows_progress_and_tolerates_missing_metrics():
    full = _snapshot(
        **{
            "actor/episode_return": 123.45,
            "eval/return_mean": 456.7,
            "eval/success_rate": 0.8,
            "learner/replay_size": 2500.0,
            "learner/replay_capacity": 10_000.0,
            "learner/actor_lag_mean": 1.5,
            "learner/actor_lag_max": 4.0,
        }
    )
    text = _rendered(full)
    for expected in ("2,500 / 10,000", "25.0%", "ETA 2m30s", "123.45", "456.70", "80.0%", "restarted"):
        assert expected in text, expected
    line = format_line(full)
    assert "env_steps 2,500/10,000 (25.0%, ETA 2m30s)" in line and "replay 2,500 (25.0%)" in line
    empty = _snapshot()
    assert "-" in _rendered(empty) and "return -" in format_line(empty)


def test_console_plain_mode_logs_lines(tmp_path):
    coordinator = Coordinator(None, MANUAL, total_env_steps=100)
    coordinator.ingest("actor/0", {"episode_return": 2.0}, env_steps=10)
    coordinator.note("actor-0 restarted (1)")
    out = io.StringIO()
    display = coordinator.console(Console(file=out, width=200), log_every_s=0.05)
    assert not display.live  # not a terminal: plain lines
    display.start()
    wait_for(lambda: "env_steps 10/100" in out.getvalue(), what="a console line")
    display.stop()
    coordinator.close()
    assert out.getvalue().count("actor-0 restarted") == 1


def test_live_console_starts_and_stops():
    out = io.StringIO()
    display = ConsoleProgress(
        lambda: _snapshot(), Console(file=out, width=120, force_terminal=True), live=True
    )
    display.start()
    time.sleep(0.1)
    display.stop()
    assert "2,500" in out.getvalue()


# -- the command line ---------------------------------------------------------------------------


def test_serve_coordinator_command(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": "disable", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*CLI, "serve", "coordinator", "--port", "0", "--run-dir", str(run_dir), "--no-console"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line + proc.stderr.read()
        address = line.split()[-1]
        channel = open_channel(address)
        assert check_health(channel) == "SERVING"
        assert check_health(channel, "distrl.v1.Telemetry") == "SERVING"
        channel.close()
        with TelemetryReporter(address, "actor/0", interval_s=0.05) as reporter:
            reporter.report({"episode_return": 4.0}, env_steps=42)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = read_rows(run_dir / "metrics.jsonl")
    assert rows[-1]["env_steps"] == 42 and rows[-1]["actor/episode_return"] == 4.0
    assert load_progress(run_dir)["env_steps"] == 42


# -- what a reporter cannot do -------------------------------------------------------------------


def test_huge_values_stay_finite_and_metrics_jsonl_keeps_writing(served):
    coordinator, running = served
    stub = telemetry_pb2_grpc.TelemetryStub(open_channel(running.address))
    batches = []
    for steps in (10, 20):  # two finite values whose sum is not
        batches.append(telemetry_pb2.MetricBatch(source="actor/0", env_steps=steps))
        batches[-1].metrics.add(name="episode_return", value=1.7e308)
    assert stub.Report(iter(batches), timeout=5).accepted == 2
    assert coordinator.flush_window() is not None
    coordinator.ingest("actor/0", {"episode_return": 2.0}, env_steps=30)
    assert coordinator.flush_window() is not None
    rows = read_rows(coordinator.metrics_path)
    assert len(rows) == 2  # the second row was written: the file was not given up on
    assert math.isfinite(rows[0]["actor/episode_return"]) and rows[0]["actor/episode_return"] > 1e200
    assert rows[1]["actor/episode_return"] == 2.0


def test_a_reporter_cannot_claim_env_steps_long_names_or_endless_sources(served):
    coordinator, running = served
    stub = telemetry_pb2_grpc.TelemetryStub(open_channel(running.address))
    stub.Report(iter([telemetry_pb2.MetricBatch(source="actor/0", env_steps=100)]), timeout=5)
    # 10^15 env steps would "reach" total_env_steps and end the run.
    with pytest.raises(grpc.RpcError) as err:
        stub.Report(iter([telemetry_pb2.MetricBatch(source="actor/0", env_steps=10**15)]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "grew by more than" in err.value.details()
    assert coordinator.snapshot().env_steps == 100
    long_name = telemetry_pb2.MetricBatch(source="actor/0", env_steps=101)
    long_name.metrics.add(name="x" * 100_000, value=1.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.Report(iter([long_name]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "longer than" in err.value.details()
    for i in range(1, MAX_SOURCES):
        coordinator.ingest(f"actor/{i}", {}, env_steps=1)
    with pytest.raises(grpc.RpcError) as err:
        stub.Report(iter([telemetry_pb2.MetricBatch(source="actor/one-too-many", env_steps=1)]), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Sources already known still report.
    assert stub.Report(iter([telemetry_pb2.MetricBatch(source="actor/0", env_steps=150)]), timeout=5)
    assert coordinator.snapshot().env_steps == 150 + MAX_SOURCES - 1
