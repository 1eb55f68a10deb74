"""Running a server process until SIGTERM/SIGINT, the same way for every component."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from distrl.wire.server import RunningServer


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
