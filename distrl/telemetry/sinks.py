"""Where each window's row goes: metrics.jsonl, Weights & Biases, Prometheus.

Every sink has `write(row)` (called on the coordinator's window thread, so it
must be quick) and `close(timeout)`. The coordinator catches a sink's exception,
logs it once and carries on, so a broken output never stops the run.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import ParseResult, urlparse

from distrl.telemetry.aggregate import LIVE_AFTER_S, MetricsRow
from distrl.telemetry.clips import VIDEO_DIR, NewClips
from distrl.telemetry.http import BoundedHTTPServer, HttpLimits, ReaderHandler
from distrl.telemetry.sources import SourceLatest

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"
VIDEO_KEY = "eval/video"


class MetricsSink(Protocol):
    def write(self, row: MetricsRow) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


class JsonlSink:
    """Appends one JSON object per window to `path` (kept across resumes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, row: MetricsRow) -> None:
        # allow_nan=False: every line stays valid JSON for other tools.
        self._file.write(json.dumps(row.to_json_dict(), allow_nan=False) + "\n")
        self._file.flush()

    def close(self, timeout: float = 5.0) -> None:
        self._file.close()


# -- Weights & Biases -------------------------------------------------------------------------------


def wandb_logged_in(env: dict[str, str] | None = None) -> bool:
    """Whether W&B can log online: an API key in the environment or in ~/.netrc."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        auth = netrc.netrc(env.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(
    mode: Literal["auto", "online", "offline"], env: dict[str, str] | None = None
) -> Literal["online", "offline", "disabled"]:
    """`auto`: the user's WANDB_MODE if set, else online when logged in, offline otherwise."""
    if mode != "auto":
        return mode
    env = dict(os.environ) if env is None else env
    chosen = env.get("WANDB_MODE", "").lower()
    if chosen in ("online", "offline", "disabled"):
        return chosen  # type: ignore[return-value]
    if chosen == "dryrun":
        return "offline"
    return "online" if wandb_logged_in(env) else "offline"


class WandbSink:
    """Logs rows to W&B from a background thread; training never waits on wandb.

    Rows wait in a bounded queue (dropped, with one warning, when it is full). The
    first wandb exception (e.g. the server is unreachable) is logged once and the
    sink turns itself off. A resumed run continues the same W&B run (its id is kept
    in `run_dir/wandb_run_id`). Each evaluation clip that appears in `run_dir/videos`
    goes with the next row as `eval/video` (the newest, when several appeared).
    """

    def __init__(
        self,
        project: str,
        entity: str | None = None,
        mode: Literal["auto", "online", "offline"] = "auto",
        run_dir: Path | None = None,
        run_config: dict[str, Any] | None = None,
        resume: bool = False,
        max_queue: int = 10_000,
    ) -> None:
        self.mode = resolve_wandb_mode(mode)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._init_kwargs = self._init_args(project, entity, run_config, resume)
        self._queue: queue.Queue[MetricsRow | None] = queue.Queue(maxsize=max_queue)
        self._disabled = threading.Event()
        self._warned_full = False
        self.run_path: str | None = None
        self._clips = NewClips(self.run_dir / VIDEO_DIR) if self.run_dir is not None else None
        self._thread = threading.Thread(target=self._run, name="telemetry-wandb", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return not self._disabled.is_set()

    def write(self, row: MetricsRow) -> None:
        if self._disabled.is_set():
            return
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            if not self._warned_full:
                self._warned_full = True
                log.warning("W&B is falling behind; dropping metric rows")

    def close(self, timeout: float = 10.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            self._disabled.set()  # the thread stops at its next row
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("W&B did not finish within %.0fs; some rows may not be synced", timeout)

    def _init_args(
        self, project: str, entity: str | None, run_config: dict[str, Any] | None, resume: bool
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "project": project,
            "entity": entity,
            "mode": self.mode,
            "config": run_config or {},
            # Several runs may live in one process (tests, notebooks).
            "reinit": "create_new",
        }
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(self.run_dir)
            kwargs["name"] = self.run_dir.resolve().name
            id_file = self.run_dir / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
            if not run_id:
                run_id = uuid.uuid4().hex[:12]
                id_file.write_text(run_id + "\n")
            kwargs["id"] = run_id
            kwargs["resume"] = "allow"
        return kwargs

    def _run(self) -> None:
        run = None
        try:
            import wandb

            # console="off": wandb must not wrap this process's stdout (the live console uses it).
            run = wandb.init(**self._init_kwargs, settings=wandb.Settings(console="off"))
            self.run_path = getattr(run, "path", None)
            log.info("W&B run %s (%s)", self.run_path, self.mode)
            last_step = 0
            while not self._disabled.is_set():
                row = self._queue.get()
                if row is None:
                    break
                last_step = max(last_step, row.env_steps)  # W&B steps never go back
                values: dict[str, Any] = row.to_json_dict()
                clip = self._new_clip(wandb)
                if clip is not None:
                    values[VIDEO_KEY] = clip
                run.log(values, step=last_step)
        except Exception as exc:  # any wandb failure turns the sink off, never the run
            self._disabled.set()
            log.warning("W&B logging disabled: %s: %s", type(exc).__name__, exc)
        finally:
            if run is not None:
                try:
                    run.finish()
                except Exception as exc:
                    log.warning("W&B finish failed: %s", exc)
            self._disabled.set()

    def _new_clip(self, wandb: Any) -> Any:
        """The newest clip that appeared since the last row, as a wandb.Video, or None."""
        if self._clips is None:
            return None
        try:
            new = self._clips.take()
            return wandb.Video(str(new[-1]), format="mp4") if new else None
        except Exception as exc:  # a clip W&B cannot take costs the videos, not the metrics
            self._clips = None
            log.warning("W&B evaluation videos disabled: %s: %s", type(exc).__name__, exc)
            return None


# -- Prometheus -------------------------------------------------------------------------------------


def prometheus_name(name: str) -> str:
    """`actor/episode_return` -> `distrl_actor_episode_return`."""
    return "distrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


class PrometheusSink:
    """Serves `/metrics` on `port`: the run's gauges and every live source's latest values.

    Run-level series carry the label `run` and hold the last window's value of each metric
    (`distrl_env_steps{run="R"}`, `distrl_actor_episode_return{run="R"}`). Per-source series add
    `component` and `index` (`distrl_episode_return{component="actor",index="3",run="R"}`, the
    name as the source reported it) and are read from `sources` at scrape time, so nothing is
    stored twice and a source silent for `live_after_s` disappears. A scrape is bounded by the
    run's metric names plus `sources`' bounds (sources x names per source).

    The sink is its own prometheus_client collector: one family per name holds both kinds of
    series, since the same name (e.g. `env_steps`) may be both a run total and a source's count.
    Its server is the dashboard's (`http.BoundedHTTPServer`: bounded connections, a read
    deadline, `reader_token` checked when given) running prometheus_client's own exposition.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        run: str = "distrl",
        sources: SourceLatest | None = None,
        live_after_s: float = LIVE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        reader_token: str | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.run = run
        self.sources = sources
        self.live_after_s = live_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._run_values: dict[str, float] = {"env_steps": 0.0, "updates": 0.0}
        # A private registry: several coordinators (tests) never collide on metric names.
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        try:
            self._server = BoundedHTTPServer(
                (host, port),
                _metrics_handler(self.registry),
                limits=limits,
                reader_token=reader_token,
                what="Prometheus /metrics",
            )
        except OSError as exc:
            raise OSError(f"cannot serve Prometheus metrics on {host}:{port}: {exc}") from None
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = self._server.serve_in_thread("telemetry-prometheus")

    def write(self, row: MetricsRow) -> None:
        values = {name: float(value) for name, value in row.to_json_dict().items() if name != "time"}
        with self._lock:
            self._run_values.update(values)

    def close(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    # -- the collector --------------------------------------------------------------------------

    def describe(self) -> list:
        # The names change from scrape to scrape: nothing for the registry to check up front.
        return []

    def collect(self) -> list:
        return self.families(self._clock())

    def families(self, now: float) -> list:
        """Every metric family a scrape at `now` (the clock `sources` is observed with) returns."""
        from prometheus_client.core import GaugeMetricFamily

        families: dict[str, GaugeMetricFamily] = {}
        seen: set[tuple[str, ...]] = set()  # two names may sanitise to one: keep the first

        def add(name: str, labels: dict[str, str], value: float) -> None:
            key = prometheus_name(name)
            series = (key, *labels.values())
            if series in seen:
                return
            seen.add(series)
            family = families.get(key)
            if family is None:
                family = families[key] = GaugeMetricFamily(key, f"distrl metric {name}")
            family.add_sample(key, labels, value)

        with self._lock:
            run_values = list(self._run_values.items())
        for name, value in run_values:
            add(name, {"run": self.run}, value)
        if self.sources is not None:
            for source, values in self.sources.table(now, self.live_after_s).items():
                component, index = self.sources.labels(source)
                labels = {"component": component, "index": index, "run": self.run}
                for name, value in values.items():
                    add(name, labels, value)
        return list(families.values())


def _metrics_handler(registry: Any) -> type[ReaderHandler]:
    """Serves prometheus_client's WSGI app (text or OpenMetrics, gzip, `name[]` filters) on every
    path, as its `start_http_server` did, behind `ReaderHandler`'s checks."""
    from prometheus_client import make_wsgi_app

    app = make_wsgi_app(registry)

    class MetricsHandler(ReaderHandler):
        server_version = "distrl-prometheus"

        def serve_get(self, url: ParseResult) -> None:
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": url.path,
                "QUERY_STRING": url.query,
                "HTTP_ACCEPT": self.headers.get("Accept"),
                "HTTP_ACCEPT_ENCODING": self.headers.get("Accept-Encoding"),
            }
            answer: dict[str, Any] = {}

            def start_response(status: str, headers: list[tuple[str, str]]) -> None:
                answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

            body = b"".join(app(environ, start_response))
            headers = answer["headers"]
            content_type = headers.pop("Content-Type", "text/plain; charset=utf-8")
            try:
                self.send_body(answer["status"], body, content_type, headers)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the scraper went away

    return MetricsHandler
