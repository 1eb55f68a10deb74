"""The web dashboard: a page (vendored uPlot, no CDN) and a small JSON + server-sent-events API.

- `GET /`: the page; `GET /static/NAME`: its script, styles and the vendored uPlot.
- `GET /api/runs`: `[{"id", "name", "live"}]`, the runs this dashboard shows.
- `GET /api/metrics?run=ID&since=N`: `{"rows": [...], "next": M, "more": bool}`, rows with
  index >= N (each row is a metrics.jsonl object plus its `index`).
- `GET /api/snapshot?run=ID`: the run now (counters, rates, ETA, last values, live sources,
  per-source values), its events (restarts, scaling) and its evaluation clips.
- `GET /api/stream?run=ID&since=N[&run=ID&since=N...]`: server-sent events, one connection for
  every run shown: `rows` (`{"run", "rows", "next"}`) as windows close, `snapshot` (`{"run", ...}`)
  every two seconds, a comment line as keep-alive.
- `GET /videos/ID/NAME.mp4`: a clip of `RUN_DIR/videos/` (byte ranges served, so it seeks).
- `GET /login?token=T` (or the form of `GET /login`): with a reader token, sets the cookie that
  lets a browser in; every other path then needs it or `Authorization: Bearer T`.

`ID` defaults to the first run. Served by `http.BoundedHTTPServer` (bounded connections, a
deadline to read each request, a reader token when one is given, `/login` for browsers); at
most `max_streams` event streams are open at once (a 503 past that).
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, parse_qs

from distrl.telemetry.aggregate import MetricsRow
from distrl.telemetry.dashboard_runs import DashboardRun, LiveRun, RowHistory, video_path
from distrl.telemetry.http import BoundedHTTPServer, HttpLimits, ReaderHandler

log = logging.getLogger(__name__)

STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
SNAPSHOT_EVERY_S = 2.0
KEEPALIVE_EVERY_S = 15.0
VIDEO_URL = re.compile(r"^/videos/([^/]+)/([^/]+)$")

__all__ = ["Dashboard", "RowHistory"]


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


def _static(name: str) -> bytes:
    return resources.files("distrl.telemetry").joinpath("static", name).read_bytes()


class Dashboard:
    """Serves the page and the data of `runs` on `host:port` (port 0 picks a free one).

    In a coordinator it shows one `LiveRun` (see `Dashboard.live`) and is also a metrics sink
    (`write(row)`); `distrl dashboard RUN_DIR...` shows `FileRun`s.
    """

    def __init__(
        self,
        runs: Sequence[DashboardRun],
        host: str = "127.0.0.1",
        port: int = 0,
        max_streams: int = 32,
        *,
        reader_token: str | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        if not runs:
            raise ValueError("a dashboard needs at least one run")
        self.runs = {run.id: run for run in runs}
        self._first = runs[0]
        self._streams = threading.BoundedSemaphore(max_streams)
        self._closing = threading.Event()
        self._page = _static("index.html")
        handler = _make_handler(self)
        try:
            self._server = BoundedHTTPServer(
                (host, port), handler, limits=limits, reader_token=reader_token, what="the dashboard"
            )
        except OSError as exc:
            raise OSError(f"cannot serve the dashboard on {host}:{port}: {exc}") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = self._server.serve_in_thread("telemetry-dashboard")

    @classmethod
    def live(
        cls,
        snapshot: Callable[[], dict[str, Any]],
        run_dir: Path | None,
        host: str = "127.0.0.1",
        port: int = 0,
        history: RowHistory | None = None,
        *,
        reader_token: str | None = None,
        limits: HttpLimits | None = None,
    ) -> Dashboard:
        """The dashboard of a coordinator's own run (rows arrive through `write`)."""
        name = Path(run_dir).resolve().name if run_dir is not None else "run"
        run = LiveRun(
            "0", name, Path(run_dir) if run_dir is not None else None, history or RowHistory(), snapshot
        )
        return cls([run], host, port, reader_token=reader_token, limits=limits)

    @property
    def history(self) -> RowHistory:
        return self._first.history

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def write(self, row: MetricsRow) -> None:
        self._first.history.append(row.to_json_dict())

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)
        for run in self.runs.values():
            run.close()

    # -- what the handler serves ----------------------------------------------------------------

    def run(self, run_id: str | None) -> DashboardRun | None:
        return self._first if run_id is None else self.runs.get(run_id)

    def runs_json(self) -> bytes:
        return _json_bytes([run.describe() for run in self.runs.values()])

    def snapshot_dict(self, run: DashboardRun) -> dict[str, Any]:
        snap = dict(run.snapshot())
        snap["run"] = run.id
        snap["events"] = run.events()
        snap["videos"] = [v.to_json_dict() for v in run.videos()]
        return snap

    def metrics_json(self, run: DashboardRun, since: int) -> bytes:
        rows, next_index, more = run.history.since(since)
        return _json_bytes({"rows": rows, "next": next_index, "more": more})

    def stream(self, handler: BaseHTTPRequestHandler, cursors: dict[str, int]) -> None:
        """Server-sent events for `cursors` (run id -> next row index) until the client leaves."""
        runs = [self.runs[run_id] for run_id in cursors]
        last_snapshot = last_write = 0.0
        while not self._closing.is_set() and not _client_left(handler):
            sent = False
            for run in runs:
                while True:
                    rows, next_index, more = run.history.since(cursors[run.id])
                    if not rows:
                        break
                    cursors[run.id] = next_index
                    _send_event(handler, "rows", {"run": run.id, "rows": rows, "next": next_index})
                    sent = True
                    if not more:
                        break
            now = time.monotonic()
            if now - last_snapshot >= SNAPSHOT_EVERY_S:
                last_snapshot = now
                for run in runs:
                    _send_event(handler, "snapshot", self.snapshot_dict(run))
                sent = True
            if sent:
                last_write = now
            elif now - last_write >= KEEPALIVE_EVERY_S:
                handler.wfile.write(b": keep-alive\n\n")
                handler.wfile.flush()
                last_write = now
            # Wake on the first run's new rows; the others are checked at least twice a second.
            runs[0].history.wait_past(cursors[runs[0].id], 0.5)


def _client_left(handler: BaseHTTPRequestHandler) -> bool:
    """Whether the peer closed the connection (a readable socket with nothing to read), so a
    stream's slot comes free at once rather than at the next failed write."""
    sock = handler.connection
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _send_event(handler: BaseHTTPRequestHandler, event: str, data: Any) -> None:
    handler.wfile.write(b"event: " + event.encode() + b"\ndata: " + _json_bytes(data) + b"\n\n")
    handler.wfile.flush()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=START-[END]` -> (start, end inclusive) within `size`; None for no or another range."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    if match.group(1):
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else size - 1
    else:  # the last N bytes
        start, end = max(0, size - int(match.group(2))), size - 1
    return start, min(end, size - 1)


class BadRequest(ValueError):
    """A query the dashboard cannot answer; the message goes back with a 400."""


def _make_handler(dashboard: Dashboard) -> type[ReaderHandler]:
    class Handler(ReaderHandler):
        server_version = "distrl-dashboard"

        def serve_get(self, url: ParseResult) -> None:
            query = parse_qs(url.query)
            try:
                self._route(url.path, query)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the browser went away, or stopped reading, mid-response
            except BadRequest as exc:
                self._send(400, _json_bytes({"error": str(exc)}))
            except Exception as exc:
                log.warning("dashboard: %s failed: %s", url.path, exc)
                try:
                    self._send(500, _json_bytes({"error": str(exc)}))
                except OSError:
                    pass

        def _route(self, path: str, query: dict[str, list[str]]) -> None:
            if path in ("/", "/index.html"):
                self._send(200, dashboard._page, "text/html; charset=utf-8")
            elif path.startswith("/static/") and path[len("/static/") :] in STATIC_FILES:
                name = path[len("/static/") :]
                self._send(200, _static(name), STATIC_FILES[name], cache=True)
            elif path == "/api/runs":
                self._send(200, dashboard.runs_json())
            elif path == "/api/snapshot":
                self._send(200, _json_bytes(dashboard.snapshot_dict(self._run(query))))
            elif path == "/api/metrics":
                run = self._run(query)
                self._send(200, dashboard.metrics_json(run, _index(query.get("since", ["0"])[0])))
            elif path == "/api/stream":
                self._stream(query)
            elif (match := VIDEO_URL.match(path)) is not None:
                self._video(*match.groups())
            else:
                self._send(404, _json_bytes({"error": f"no such page: {path}"}))

        def _run(self, query: dict[str, list[str]]) -> DashboardRun:
            run_id = query.get("run", [None])[0]
            run = dashboard.run(run_id)
            if run is None:
                raise BadRequest(f"no run {run_id!r} (runs: {', '.join(dashboard.runs)})")
            return run

        def _stream(self, query: dict[str, list[str]]) -> None:
            ids = query.get("run") or [dashboard._first.id]
            since = query.get("since") or []
            if len(since) not in (0, len(ids)):
                raise BadRequest("give one since= per run= (or none)")
            cursors = {}
            for k, run_id in enumerate(ids):
                if run_id not in dashboard.runs:
                    raise BadRequest(f"no run {run_id!r} (runs: {', '.join(dashboard.runs)})")
                cursors[run_id] = _index(since[k]) if since else 0
            if not dashboard._streams.acquire(blocking=False):
                self._send(503, _json_bytes({"error": "too many open dashboard streams"}))
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Accel-Buffering", "no")  # proxies must not hold events back
                self.end_headers()
                self.wfile.write(b"retry: 2000\n\n")
                dashboard.stream(self, cursors)
            finally:
                dashboard._streams.release()

        def _video(self, run_id: str, name: str) -> None:
            run = dashboard.runs.get(run_id)
            path = video_path(run.run_dir if run is not None else None, name)
            if path is None:
                self._send(404, _json_bytes({"error": f"no clip {name!r} in run {run_id!r}"}))
                return
            data = path.read_bytes()
            span = _parse_range(self.headers.get("Range"), len(data))
            if span is None:
                self._send(200, data, "video/mp4", extra={"Accept-Ranges": "bytes"})
                return
            start, end = span
            if start >= len(data) or start > end:
                self._send(416, b"", "video/mp4", extra={"Content-Range": f"bytes */{len(data)}"})
                return
            extra = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            self._send(206, data[start : end + 1], "video/mp4", extra=extra)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str = "application/json",
            cache: bool = False,
            extra: dict[str, str] | None = None,
        ) -> None:
            headers = {"Cache-Control": "max-age=300" if cache else "no-store", **(extra or {})}
            self.send_body(status, body, content_type, headers)

    return Handler


def _index(raw: str) -> int:
    try:
        return max(0, int(raw))
    except ValueError:
        raise BadRequest(f"since must be an integer, got {raw!r}") from None
