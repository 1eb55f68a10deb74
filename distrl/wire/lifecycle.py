"""Running a server process until SIGTERM/SIGINT, the same way for every component."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from distrl.wire.server import RunningServer

# Set by a launcher in its children's environment: they stop when it dies, even by kill -9.
PARENT_ENV = "DISTRL_PARENT_PID"


def watch_parent(stop: threading.Event) -> None:
    """Set `stop` when the launcher that started this process dies."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    parent_pid = int(parent)

    def poll() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                stop.set()

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop` (for component loops that are not gRPC servers)."""

    def handler(_signum, _frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_until_signalled(
    running: RunningServer,
    on_shutdown: Callable[[], None] | None = None,
    grace_s: float = 2.0,
) -> None:
    """Print `listening on HOST:PORT` (first stdout line), block until SIGTERM/SIGINT, stop cleanly.

    `on_shutdown` runs after the server stops accepting calls (e.g. a final checkpoint).
    """
    stop = threading.Event()

    def _handle(signum, _frame):
        stop.set()

    previous = {s: signal.signal(s, _handle) for s in (signal.SIGTERM, signal.SIGINT)}
    watch_parent(stop)
    print(f"listening on {running.address}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
        print("shutting down", file=sys.stderr, flush=True)
        running.stop(grace_s)
        if on_shutdown is not None:
            on_shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
