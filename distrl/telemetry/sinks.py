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
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from distrl.telemetry.aggregate import MetricsRow

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"


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
    in `run_dir/wandb_run_id`).
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
                run.log(row.to_json_dict(), step=last_step)
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


# -- Prometheus -------------------------------------------------------------------------------------


def prometheus_name(name: str) -> str:
    """`actor/episode_return` -> `distrl_actor_episode_return`."""
    return "distrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


class PrometheusSink:
    """Serves `/metrics` on `port` with one gauge per metric (its last window's value)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        # A private registry: several coordinators (tests) never collide on gauge names.
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauges: dict[str, Any] = {}
        self._lock = threading.Lock()
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve Prometheus metrics on {host}:{port}: {exc}") from None
        self.host = host
        self.port = int(self._server.server_port)
        for name in ("env_steps", "updates"):
            self._gauge(name).set(0)

    def write(self, row: MetricsRow) -> None:
        for name, value in row.to_json_dict().items():
            if name != "time":
                self._gauge(name).set(value)

    def close(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _gauge(self, name: str):
        from prometheus_client import Gauge

        key = prometheus_name(name)
        with self._lock:
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = self._gauges[key] = Gauge(key, f"distrl metric {name}", registry=self.registry)
            return gauge
