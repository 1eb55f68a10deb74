"""The dashboard's server without a browser: the event stream, file runs, clips, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distrl.telemetry.dashboard import Dashboard, _parse_range
from distrl.telemetry.dashboard_runs import EventLog, FileRun, RowHistory, list_videos, unique_names
from tests.run_helpers import ROOT


def _write_rows(path: Path, start: int, count: int) -> None:
    with path.open("a") as f:
        for k in range(start, start + count):
            f.write(
                json.dumps({"env_steps": 10 * k, "time": time.time(), "actor/episode_return": float(k)})
                + "\n"
            )


def _events(url: str, count: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
    """The first `count` server-sent events of `url` as (event name, data). A stream the client
    left holds its slot until the server notices (within half a second), so a 503 is retried."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return _read_events(url, count, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _read_events(url: str, count: int, timeout: float) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    name = None
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[len("data: ") :])))
                if len(out) >= count:
                    return out
    return out


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "seed0"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  total_env_steps: 1000\n")
    _write_rows(run / "metrics.jsonl", 0, 5)
    return run


def test_file_run_follows_a_growing_metrics_file(run_dir):
    run = FileRun("0", run_dir)
    try:
        assert len(run.history) == 5
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write('{"env_steps": 50, "time": 1')  # half a line: waits for its end
        assert run.poll() == 0
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(', "actor/episode_return": 5.0}\nnot json\n')
        assert run.poll() == 1
        snap = run.snapshot()
        assert snap["env_steps"] == 50 and snap["total_env_steps"] == 1000 and snap["fraction_done"] == 0.05
        assert snap["last"]["actor/episode_return"] == 5.0
        assert not snap["live"] and snap["eta_s"] is None  # its last row is from 1970
    finally:
        run.close()
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl"):
        FileRun("1", run_dir.parent)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        FileRun("1", run_dir / "missing")


def test_stream_pushes_rows_and_snapshots_of_several_runs(tmp_path, run_dir):
    other = tmp_path / "seed1"
    other.mkdir()
    _write_rows(other / "metrics.jsonl", 0, 3)
    runs = [FileRun("0", run_dir), FileRun("1", other)]
    server = Dashboard(runs, "127.0.0.1", 0, max_streams=1)
    base = f"http://127.0.0.1:{server.port}"
    try:
        events = _events(f"{base}/api/stream?run=0&since=2&run=1&since=0", 4)
        rows = {data["run"]: data for name, data in events if name == "rows"}
        assert [r["env_steps"] for r in rows["0"]["rows"]] == [20, 30, 40]
        assert [r["env_steps"] for r in rows["1"]["rows"]] == [0, 10, 20]
        snaps = [data for name, data in events if name == "snapshot"]
        assert {s["run"] for s in snaps} == {"0", "1"} and snaps[0]["events"] == []
        # New rows reach an open stream (the file is followed).
        _write_rows(run_dir / "metrics.jsonl", 5, 2)
        later = [d for n, d in _events(f"{base}/api/stream?run=0&since=5", 3) if n == "rows"]
        assert [r["env_steps"] for r in later[0]["rows"]] == [50, 60]
        for bad in ("run=7", "run=0&run=1&since=1", "run=0&since=x"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}/api/stream?{bad}", timeout=5)
            assert err.value.code == 400
        # One stream at a time here: a second is refused while the first is open.
        _events(f"{base}/api/stream?run=0", 1)  # waits for the slot to come free
        time.sleep(1.0)  # the server notices within half a second that the client left
        with urllib.request.urlopen(f"{base}/api/stream?run=0", timeout=5) as held:
            held.readline()
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}/api/stream?run=1", timeout=5)
            assert err.value.code == 503
    finally:
        server.close()


def test_clips_are_listed_and_served_with_byte_ranges(run_dir):
    videos = run_dir / "videos"
    videos.mkdir()
    (videos / "eval_000000001000.mp4").write_bytes(b"a" * 100)
    (videos / "eval_000000002000.mp4").write_bytes(bytes(range(200)))
    (videos / "eval_000000003000.mp4.tmp").write_bytes(b"partial")  # a writer's unfinished file
    assert [v.name for v in list_videos(run_dir)] == ["eval_000000001000.mp4", "eval_000000002000.mp4"]
    server = Dashboard([FileRun("0", run_dir)], "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        snap = json.loads(urllib.request.urlopen(f"{base}/api/snapshot?run=0", timeout=5).read())
        assert snap["videos"][-1]["name"] == "eval_000000002000.mp4"
        whole = urllib.request.urlopen(f"{base}/videos/0/eval_000000002000.mp4", timeout=5)
        assert whole.read() == bytes(range(200)) and whole.headers["Content-Type"] == "video/mp4"
        request = urllib.request.Request(
            f"{base}/videos/0/eval_000000002000.mp4", headers={"Range": "bytes=10-19"}
        )
        part = urllib.request.urlopen(request, timeout=5)
        assert part.status == 206 and part.read() == bytes(range(10, 20))
        assert part.headers["Content-Range"] == "bytes 10-19/200"
        for bad in ("/videos/0/..%2Fconfig.yaml", "/videos/0/eval_000000003000.mp4.tmp", "/videos/9/x.mp4"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + bad, timeout=5)
            assert err.value.code == 404
    finally:
        server.close()
    assert _parse_range("bytes=-50", 200) == (150, 199) and _parse_range("items=1-2", 200) is None


def test_history_bounds_under_a_long_stream():
    history = RowHistory(max_rows=1000)
    for k in range(200_000):
        history.append({"env_steps": k})
    assert len(history) <= 1000
    rows, _, _ = history.since(0, limit=10_000)
    assert rows[0]["env_steps"] == 0 and rows[-1]["env_steps"] == 199_999
    recent = [r["env_steps"] for r in rows[-400:]]
    assert recent == list(range(199_600, 200_000))  # the newest rows are kept whole


def test_unique_names_for_runs_with_the_same_folder_name(tmp_path):
    dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]
    assert unique_names(dirs) == ["a/run", "b/run", "c"]


def test_dashboard_cli_serves_run_dirs_and_rejects_missing_ones(tmp_path, run_dir):
    bad = subprocess.run(
        [sys.executable, "-m", "distrl.cli", "dashboard", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no such run directory" in bad.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distrl.cli", "dashboard", str(run_dir), str(run_dir), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "disable"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"listening on 127.0.0.1:{port}"
        runs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5).read())
        assert [r["id"] for r in runs] == ["0", "1"] and runs[0]["live"] is True  # rows just written
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_the_event_log_follows_events_jsonl_by_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(tmp_path, limit=3)
    assert log.read() == []  # no file yet
    path.write_text('{"time": 1, "message": "a"}\nnot json\n{"time": 2, "message": "b"}\n{"time": 3, "mes')
    assert [e["message"] for e in log.read()] == ["a", "b"]  # the unfinished line waits
    with path.open("a") as f:
        f.write('sage": "c"}\n{"time": 4, "message": "d"}\n{"time": 5}\n')
    assert [e["message"] for e in log.read()] == ["b", "c", "d"]  # newest 3; no message: skipped
    offset = log._offset
    assert log.read() and log._offset == offset  # nothing new: nothing read
    path.write_text('{"time": 9, "message": "fresh"}\n')  # a fresh run in the same directory
    assert [e["message"] for e in log.read()] == ["fresh"]
    assert EventLog(None).read() == []
