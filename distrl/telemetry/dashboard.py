"""The live web dashboard: one self-contained page and two JSON endpoints.

- `GET /`: the page (`dashboard_page.PAGE`; inline JS and canvas, no CDN).
- `GET /api/metrics?since=N`: `{"rows": [...], "next": M, "more": bool}`, the rows
  with index >= N (each row is a metrics.jsonl object plus its `index`).
- `GET /api/snapshot`: the coordinator's current snapshot.

Served by the standard library's ThreadingHTTPServer on a daemon thread. The
history is bounded: past `max_rows`, the older half is thinned to every other
row, so a week-long run still plots its whole curve in bounded memory.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from distrl.telemetry.aggregate import MetricsRow, TelemetrySnapshot
from distrl.telemetry.dashboard_page import PAGE

log = logging.getLogger(__name__)

MAX_ROWS_PER_RESPONSE = 5000


class RowHistory:
    """The rows so far, each given the next index, thinned when there are too many."""

    def __init__(self, max_rows: int = 20_000) -> None:
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows}")
        self.max_rows = max_rows
        self._rows: list[dict[str, Any]] = []
        self._next = 0
        self._lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append({**row, "index": self._next})
            self._next += 1
            if len(self._rows) > self.max_rows:
                half = len(self._rows) // 2
                self._rows = self._rows[:half:2] + self._rows[half:]

    def since(self, index: int, limit: int = MAX_ROWS_PER_RESPONSE) -> tuple[list[dict[str, Any]], int, bool]:
        """Rows with index >= `index` (at most `limit`), the index to ask for next, and whether more wait."""
        with self._lock:
            # Rows are kept in index order; indices are sparse after thinning.
            lo, hi = 0, len(self._rows)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._rows[mid]["index"] < index:
                    lo = mid + 1
                else:
                    hi = mid
            rows = self._rows[lo : lo + limit]
            more = lo + limit < len(self._rows)
        next_index = rows[-1]["index"] + 1 if rows else index
        return rows, next_index, more

    def __len__(self) -> int:
        return len(self._rows)

    def load_jsonl(self, path: Path) -> None:
        """Prefill from an existing metrics.jsonl (a resumed run); unreadable lines are skipped."""
        if not path.is_file():
            return
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(row, dict):
                    self.append(row)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


class Dashboard:
    """Serves the page and its data on `host:port` (port 0 picks a free one); also a metrics sink."""

    def __init__(
        self,
        snapshot: Callable[[], TelemetrySnapshot],
        host: str = "127.0.0.1",
        port: int = 0,
        history: RowHistory | None = None,
    ) -> None:
        self.history = history or RowHistory()
        self._snapshot = snapshot
        handler = _make_handler(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise OSError(f"cannot serve the dashboard on {host}:{port}: {exc}") from None
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="telemetry-dashboard", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def write(self, row: MetricsRow) -> None:
        self.history.append(row.to_json_dict())

    def close(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def snapshot_json(self) -> bytes:
        return _json_bytes(self._snapshot().to_json_dict())

    def metrics_json(self, since: int) -> bytes:
        rows, next_index, more = self.history.since(since)
        return _json_bytes({"rows": rows, "next": next_index, "more": more})


def _make_handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "distrl-dashboard"

        def do_GET(self) -> None:
            url = urlparse(self.path)
            try:
                if url.path in ("/", "/index.html"):
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                elif url.path == "/api/snapshot":
                    self._send(200, dashboard.snapshot_json(), "application/json")
                elif url.path == "/api/metrics":
                    raw = parse_qs(url.query).get("since", ["0"])[0]
                    try:
                        since = max(0, int(raw))
                    except ValueError:
                        self._send(400, _json_bytes({"error": f"since must be an integer, got {raw!r}"}))
                        return
                    self._send(200, dashboard.metrics_json(since), "application/json")
                else:
                    self._send(404, _json_bytes({"error": f"no such page: {url.path}"}))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away mid-response
            except Exception as exc:
                log.warning("dashboard: %s failed: %s", url.path, exc)
                self._send(500, _json_bytes({"error": str(exc)}))

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per poll would drown the console

    return Handler
