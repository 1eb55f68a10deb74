"""The dashboard's and Prometheus' HTTP servers: the reader token, /login, the read deadline and
the connection bound, on real servers over loopback sockets."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest
from prometheus_client import generate_latest

from distrl.config import TelemetryConfig
from distrl.telemetry import Coordinator
from distrl.telemetry.aggregate import MetricsRow
from distrl.telemetry.dashboard import Dashboard
from distrl.telemetry.dashboard_runs import FileRun, LiveRun, RowHistory
from distrl.telemetry.http import READER_COOKIE, HttpLimits
from distrl.telemetry.sinks import PrometheusSink
from tests.run_helpers import ROOT

TOKEN = "reader-0123456789abcdef"
QUICK = HttpLimits(request_timeout_s=1.0, max_connections=3)


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET", body=None):
    """(status, headers, body) of one request; redirects are not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed `sock` (reading whatever it sent), or None if it did not."""
    start = time.monotonic()
    while (left := start + within - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
    return None


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "seed0"
    run.mkdir()
    with (run / "metrics.jsonl").open("w") as f:
        for k in range(3):
            f.write(json.dumps({"env_steps": 10 * k, "time": time.time()}) + "\n")
    return run


@pytest.fixture
def dashboard(run_dir):
    server = Dashboard([FileRun("0", run_dir)], "127.0.0.1", 0, reader_token=TOKEN, limits=QUICK)
    try:
        yield server
    finally:
        server.close()


def test_dashboard_asks_for_the_reader_token(dashboard):
    port = dashboard.port
    status, headers, body = get(port, "/api/runs")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert b"/login?token=" in body and b"Authorization: Bearer" in body
    status, _, body = get(port, "/", {"Accept": "text/html"})  # a browser gets the login form
    assert status == 401 and b"<form method='post' action='login'>" in body
    _, _, body = get(port, "/api/snapshot", {"Accept": "text/html"})
    assert b"action='../login'" in body  # the form posts to /login from any depth
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        assert get(port, "/api/runs", {"Authorization": wrong})[0] == 401, wrong
    status, _, body = get(port, "/api/runs", bearer(TOKEN))
    assert status == 200 and json.loads(body)[0]["id"] == "0"
    status, _, body = get(port, "/", bearer(TOKEN))
    assert status == 200 and b"static/dashboard.js" in body


def test_login_sets_a_cookie_that_opens_the_page(dashboard):
    port = dashboard.port
    status, headers, _ = get(port, "/login?token=wrong")
    assert status == 401 and headers["Set-Cookie"] is None
    status, _, body = get(port, "/login")
    assert status == 200 and b"type='password'" in body
    status, headers, _ = get(port, f"/login?token={TOKEN}")
    assert status == 303 and headers["Location"] == "./"  # the token leaves the address bar
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    name_value = cookie.split(";")[0]
    assert name_value.startswith(f"{READER_COOKIE}=")
    status, _, body = get(port, "/api/runs", {"Cookie": f"theme=dark; {name_value}"})
    assert status == 200 and json.loads(body)[0]["id"] == "0"
    assert get(port, "/api/runs", {"Cookie": f"{READER_COOKIE}=0123abcd"})[0] == 401
    assert get(port, "/api/runs", {"Cookie": f"{READER_COOKIE}={TOKEN}"})[0] == 401  # not the token
    # The form posts the token: the same cookie.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, headers, _ = get(port, "/login", form, "POST", f"token={TOKEN}")
    assert status == 303 and headers["Set-Cookie"].split(";")[0] == name_value
    assert get(port, "/login", form, "POST", "token=nope")[0] == 401
    # The event stream takes the cookie too (EventSource sends it, never a header).
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/stream?run=0", headers={"Cookie": name_value})
        response = conn.getresponse()
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        assert response.readline() == b"retry: 2000\n"
    finally:
        conn.close()


def test_without_a_reader_token_everything_is_open(run_dir):
    server = Dashboard([FileRun("0", run_dir)], "127.0.0.1", 0)
    try:
        assert get(server.port, "/api/runs")[0] == 200
        status, headers, _ = get(server.port, "/login?token=anything")
        assert status == 303 and headers["Set-Cookie"] is None
    finally:
        server.close()


def test_metrics_need_the_token_and_keep_their_output(tmp_path):
    row = MetricsRow(
        index=0, env_steps=321, updates=17, wall_time=1.0, unix_time=1.7e9, env_steps_per_s=3.0,
        updates_per_s=1.0, live_actors=1, metrics={"actor/episode_return": 12.5},
    )  # fmt: skip
    open_sink = PrometheusSink(0, run="r")
    closed_sink = PrometheusSink(0, run="r", reader_token=TOKEN)
    try:
        for sink in (open_sink, closed_sink):
            sink.write(row)
        status, headers, body = get(open_sink.port, "/metrics")
        assert status == 200 and body == generate_latest(open_sink.registry)
        assert b'distrl_actor_episode_return{run="r"} 12.5' in body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        status, headers, _ = get(closed_sink.port, "/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert get(closed_sink.port, "/metrics", bearer("wrong"))[0] == 401
        status, _, authed = get(closed_sink.port, "/metrics", bearer(TOKEN))
        assert status == 200 and authed == body  # the same exposition behind the check
        # What Prometheus asks for: gzip and OpenMetrics, as prometheus_client served them.
        status, headers, packed = get(
            closed_sink.port,
            "/metrics",
            {**bearer(TOKEN), "Accept-Encoding": "gzip", "Accept": "application/openmetrics-text"},
        )
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert gzip.decompress(packed).endswith(b"# EOF\n")
    finally:
        open_sink.close()
        closed_sink.close()


def test_config_reader_token_file_protects_both_servers(tmp_path):
    token_file = tmp_path / "reader-token"
    token_file.write_text(f"  {TOKEN}\n")
    config = TelemetryConfig(
        console=False,
        report_every_s=3600.0,
        prometheus_port=0,
        dashboard_port=0,
        reader_token_file=token_file,
    )
    coordinator = Coordinator(tmp_path / "run", config)
    try:
        for port, path in ((coordinator.prometheus_port, "/metrics"), (coordinator.dashboard_port, "/")):
            assert get(port, path)[0] == 401
            assert get(port, path, bearer(TOKEN))[0] == 200  # the file's whitespace is stripped
    finally:
        coordinator.close()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"reader token file {empty} is empty"):
        TelemetryConfig(reader_token_file=empty)
    with pytest.raises(ValueError, match="cannot read the reader token file"):
        TelemetryConfig(reader_token_file=tmp_path / "missing")


# -- connections that hold a thread --------------------------------------------------------------


def test_a_slowloris_is_dropped_at_the_deadline(dashboard):
    with socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) as half:
        half.sendall(b"GET /api/ru")  # half a request line, then nothing
        elapsed = closed_by_server(half, 5.0)
        assert elapsed is not None and 0.7 < elapsed < 3.0, elapsed
    # Trickling a byte at a time does not extend the deadline.
    with socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) as trickle:
        start = time.monotonic()
        closed = False
        for byte in b"GET /api/runs HTTP/1.0\r\nX-Padding: " + b"a" * 100:
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(trickle, 0.2) is not None:
                closed = True
                break
        assert closed and time.monotonic() - start < 3.0, time.monotonic() - start


def test_connections_past_the_bound_are_refused_fast_and_idle_ones_expire(dashboard):
    port = dashboard.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(QUICK.max_connections)]
    try:
        time.sleep(0.2)  # the server has accepted every one
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /api/runs HTTP/1.0\r\n\r\n")
            try:
                answer = extra.recv(4096)
            except ConnectionResetError:
                answer = b""
        assert time.monotonic() - start < 0.5  # refused at once, not after an idle one expires
        assert answer == b"" or answer.startswith(b"HTTP/1.0 503"), answer
        for sock in idle:
            assert closed_by_server(sock, 3.0) is not None
        status, _, body = get(port, "/api/runs", bearer(TOKEN))
        assert status == 200 and json.loads(body)[0]["id"] == "0"
    finally:
        for sock in idle:
            sock.close()


def test_a_healthy_stream_outlives_the_timeout_and_a_stalled_one_is_dropped(tmp_path):
    history = RowHistory()
    pad = "x" * 2000
    for k in range(6000):  # ~12 MB of rows: more than the socket buffers hold
        history.append({"env_steps": k, "pad": pad})
    run = LiveRun("0", "big", None, history, lambda: {"env_steps": 0})
    server = Dashboard([run], "127.0.0.1", 0, max_streams=1, limits=QUICK)
    try:
        # A reader that keeps reading gets snapshots for longer than the 1 s request timeout.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"/api/stream?run=0&since={len(history)}")
        response = conn.getresponse()
        assert response.status == 200
        start, snapshots = time.monotonic(), 0
        while snapshots < 3:  # one now, then one every two seconds
            snapshots += response.readline() == b"event: snapshot\n"
        assert time.monotonic() - start > 3.0
        response.close()
        conn.close()
        time.sleep(1.0)  # the server notices within half a second that the reader left
        # A reader that stops reading frees its stream slot once a write has waited the timeout.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"GET /api/stream?run=0&since=0 HTTP/1.0\r\n\r\n")
        time.sleep(0.2)  # the server has taken the slot and filled the buffers
        deadline, seen = time.monotonic() + 8.0, []
        while (not seen or seen[-1] == 503) and time.monotonic() < deadline:
            probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            probe.request("GET", f"/api/stream?run=0&since={len(history)}")
            answer = probe.getresponse()
            seen.append(answer.status)
            answer.close()
            probe.close()
            time.sleep(0.3)
        assert seen[0] == 503 and seen[-1] == 200, seen  # held while stalled, then dropped
        stalled.close()
    finally:
        server.close()


# -- the commands ---------------------------------------------------------------------------------


def test_dashboard_command_reads_the_token_file_from_its_env(tmp_path, run_dir):
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {**os.environ, "MUJOCO_GL": "disable"}
    bad = subprocess.run(
        [sys.executable, "-m", "distrl.cli", "dashboard", str(run_dir), "--reader-token-file", str(empty)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and f"reader token file {empty} is empty" in bad.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distrl.cli", "dashboard", str(run_dir), "--port", "0"],
        cwd=ROOT,
        env={**env, "DISTRL_READER_TOKEN_FILE": str(token_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        assert get(port, "/api/runs")[0] == 401
        assert get(port, "/api/runs", bearer(TOKEN))[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_coordinator_command_takes_a_reader_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "distrl.cli", "serve", "coordinator", "--run-dir", str(tmp_path / "run"),
            "--port", "0", "--dashboard-port", "0", "--prometheus-port", "0", "--no-console",
            "--reader-token-file", str(token_file),
        ],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "disable"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        ports = {}
        while len(ports) < 2:
            line = proc.stderr.readline()
            assert line, "the coordinator exited before serving"
            what, _, url = line.partition(" on http://")
            if url:
                ports[what] = int(url.strip().rstrip("/").rsplit(":", 1)[1])
        for what, path in (("dashboard", "/api/runs"), ("prometheus", "/metrics")):
            assert get(ports[what], path)[0] == 401, what
            assert get(ports[what], path, bearer(TOKEN))[0] == 200, what
    finally:
        proc.terminate()
        proc.wait(20)
