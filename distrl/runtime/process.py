"""Child processes of a launcher: start, read the address a server prints, log, stop, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from distrl.wire.lifecycle import PARENT_ENV
from distrl.wire.retry import Backoff

LISTENING = "listening on "
# The line `start()` writes to the log before each incarnation's output.
START_MARK = "--- start "
LOG_TAIL_BYTES = 64 << 10


class ComponentFailed(RuntimeError):
    """A component that did not start, or died where it cannot be restarted."""


@dataclass
class ChildProcess:
    """One supervised component: its command line, process, log file and restart state."""

    name: str
    argv: list[str]
    log_path: Path
    server: bool = False
    restartable: bool = False
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    address: str | None = None
    restarts: int = 0
    # The n-th restart waits `restart_backoff.delay(n)`; the count never resets.
    restart_backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))
    next_restart_at: float | None = None
    started_at: float | None = None  # time.monotonic() of the newest start
    # Exits in a row soon after starting with the same last log line (see `count_early_exit`).
    early_exits: int = 0
    early_error: str | None = None
    _log: object = None

    def start(self, timeout_s: float = 120.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - owned by the reader thread
        log.write(f"{START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(self.argv)}\n".encode())
        self.started_at = time.monotonic()
        env = {**os.environ, **self.env, PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if self.server else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            # Own session: a terminal's Ctrl-C reaches only the launcher, which stops children in order.
            start_new_session=True,
        )
        if self.server:
            self.address = self._read_address(log, timeout_s)
        else:
            log.close()

    def _read_address(self, log, timeout_s: float) -> str:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        found: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                if not found and line.startswith(LISTENING):
                    found.append(line[len(LISTENING) :].strip())
                    ready.set()
                log.write(raw)
            ready.set()
            log.close()

        threading.Thread(target=pump, name=f"log-{self.name}", daemon=True).start()
        if not ready.wait(timeout_s) or not found:
            self.kill()
            raise ComponentFailed(f"{self.name} did not start listening; see {self.log_path}")
        return found[0]

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last `lines` non-empty lines the newest incarnation wrote to its log (read from
        the file's last 64 KiB, so a long run's log is not read whole)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        start = text.rfind(START_MARK)
        current = text[start:].splitlines()[1:] if start >= 0 else text.splitlines()
        return [line for line in current if line.strip()][-lines:]

    def count_early_exit(self, now: float, early_s: float) -> int:
        """Record an exit; returns how many exits in a row came within `early_s` of their start
        with the same last log line (a traceback's last line is its error). Only a process that
        exited with an error by itself counts: one killed by a signal (kill -9, OOM) did not fail."""
        code = self.returncode()
        error = next(iter(self.log_tail(1)), "")
        if code is not None and code > 0 and self.started_at is not None and now - self.started_at <= early_s:
            self.early_exits = self.early_exits + 1 if error == self.early_error else 1
            self.early_error = error
        else:
            self.early_exits, self.early_error = 0, None
        return self.early_exits

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        self.terminate()
        if not self.wait(timeout_s):
            self.kill()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()


def distrl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "distrl.cli", *args]
