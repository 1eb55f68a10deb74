"""The runs a dashboard shows: their bounded row history, snapshot, events and clips.

A `LiveRun` is fed by the coordinator it lives in (`write(row)` per window, its
`snapshot()` straight from the aggregate). A `FileRun` follows another run's
directory: it tails `metrics.jsonl` (finished or still growing), and reads
`progress.json` and `videos/` when asked and `events.jsonl` by offset. Both keep their rows in
a `RowHistory`, whose memory is bounded however long the run is.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
PROGRESS_FILE = "progress.json"
VIDEOS_DIR = "videos"
MAX_ROWS_PER_RESPONSE = 5000
MAX_EVENTS = 200
MAX_VIDEOS_LISTED = 20
# A file run whose last row is older than this is shown as finished (or stopped).
FILE_RUN_LIVE_S = 30.0
VIDEO_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.mp4$")


class RowHistory:
    """The rows so far, each given the next index; past `max_rows` the older half is thinned to
    every other row, so a week-long run still plots its whole curve in bounded memory."""

    def __init__(self, max_rows: int = 20_000) -> None:
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows}")
        self.max_rows = max_rows
        self._rows: list[dict[str, Any]] = []
        self._next = 0
        self._changed = threading.Condition()

    def append(self, row: dict[str, Any]) -> None:
        with self._changed:
            self._rows.append({**row, "index": self._next})
            self._next += 1
            if len(self._rows) > self.max_rows:
                half = len(self._rows) // 2
                self._rows = self._rows[:half:2] + self._rows[half:]
            self._changed.notify_all()

    def since(self, index: int, limit: int = MAX_ROWS_PER_RESPONSE) -> tuple[list[dict[str, Any]], int, bool]:
        """Rows with index >= `index` (at most `limit`), the index to ask for next, and whether more wait."""
        with self._changed:
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

    def wait_past(self, index: int, timeout: float) -> bool:
        """Block until a row with index >= `index` exists (True) or `timeout` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._next > index, timeout)

    @property
    def next_index(self) -> int:
        return self._next

    def __len__(self) -> int:
        return len(self._rows)

    def load_jsonl(self, path: Path) -> None:
        """Prefill from an existing metrics.jsonl (a resumed run); unreadable lines are skipped."""
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    self.append_line(line)

    def append_line(self, line: str) -> bool:
        try:
            row = json.loads(line)
        except ValueError:
            return False  # a line cut short by a crash
        if not isinstance(row, dict):
            return False
        self.append(row)
        return True


@dataclass(frozen=True)
class Video:
    name: str
    size: int
    mtime: float

    def to_json_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "time": round(self.mtime, 3)}


def list_videos(run_dir: Path | None) -> list[Video]:
    """The run's clips (`RUN_DIR/videos/*.mp4`), oldest first, at most the newest 20."""
    if run_dir is None:
        return []
    folder = run_dir / VIDEOS_DIR
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    videos = []
    for path in entries:
        if not VIDEO_NAME.match(path.name):
            continue  # also skips the .tmp files a writer renames into place
        try:
            stat = path.stat()
        except OSError:
            continue
        videos.append(Video(path.name, stat.st_size, stat.st_mtime))
    videos.sort(key=lambda v: (v.name, v.mtime))
    return videos[-MAX_VIDEOS_LISTED:]


def video_path(run_dir: Path | None, name: str) -> Path | None:
    """The file behind a clip name, or None (unknown run dir, a name with a path in it, missing)."""
    if run_dir is None or not VIDEO_NAME.match(name):
        return None
    path = run_dir / VIDEOS_DIR / name
    return path if path.is_file() else None


class EventLog:
    """The newest `limit` events of `RUN_DIR/events.jsonl` (restarts, scaling, notes), followed
    by offset: each call reads only what the file gained, so a snapshot every 2 s of a long run
    costs the new lines, not the whole file again."""

    def __init__(self, run_dir: Path | None, limit: int = MAX_EVENTS) -> None:
        self.path = run_dir / EVENTS_FILE if run_dir is not None else None
        self._events: deque[dict[str, Any]] = deque(maxlen=limit)
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        with self._lock:
            try:
                size = self.path.stat().st_size
                if size < self._offset:  # replaced (a fresh run in the same directory): start over
                    self._events.clear()
                    self._offset, self._partial = 0, b""
                if size > self._offset:
                    with self.path.open("rb") as f:
                        f.seek(self._offset)
                        data = f.read(size - self._offset)
                    self._offset += len(data)
                    lines = (self._partial + data).split(b"\n")
                    self._partial = lines.pop()  # an unfinished last line waits for its end
                    for line in lines:
                        self._add(line)
            except OSError:
                pass
            return list(self._events)

    def _add(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict) and isinstance(event.get("message"), str):
            self._events.append(event)


class DashboardRun:
    """One run on the dashboard: an id for URLs, a name for people, rows, a snapshot."""

    def __init__(self, run_id: str, name: str, run_dir: Path | None, history: RowHistory) -> None:
        self.id = run_id
        self.name = name
        self.run_dir = run_dir
        self.history = history
        self._events = EventLog(run_dir)

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def events(self) -> list[dict[str, Any]]:
        return self._events.read()

    def videos(self) -> list[Video]:
        return list_videos(self.run_dir)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "live": self.is_live()}

    def is_live(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LiveRun(DashboardRun):
    """The run of the coordinator that serves the dashboard."""

    def __init__(
        self,
        run_id: str,
        name: str,
        run_dir: Path | None,
        history: RowHistory,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        super().__init__(run_id, name, run_dir, history)
        self._snapshot = snapshot

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot()

    def is_live(self) -> bool:
        return True


class FileRun(DashboardRun):
    """Another run's directory, followed by tailing its metrics.jsonl once a second."""

    def __init__(self, run_id: str, run_dir: Path, name: str | None = None, max_rows: int = 20_000) -> None:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such run directory")
        if not (run_dir / METRICS_FILE).is_file():
            raise FileNotFoundError(f"{run_dir}: no {METRICS_FILE} (is this a run directory?)")
        super().__init__(run_id, name or run_dir.resolve().name, run_dir, RowHistory(max_rows))
        # A run keeps its budget (a resume with a new one shows after the dashboard restarts).
        self._total_env_steps = _read_total_env_steps(run_dir)
        self._offset = 0
        self._partial = ""
        self._last_row: dict[str, Any] = {}
        self._last_values: dict[str, float] = {}
        self._last_growth = 0.0
        self._stop = threading.Event()
        self.poll()
        self._thread = threading.Thread(target=self._follow, name=f"dashboard-tail-{run_id}", daemon=True)
        self._thread.start()

    def poll(self) -> int:
        """Read what metrics.jsonl gained since the last call; returns the rows added."""
        assert self.run_dir is not None
        path = self.run_dir / METRICS_FILE
        try:
            size = path.stat().st_size
            if size < self._offset:  # replaced by a fresh run: start over
                self._offset, self._partial = 0, ""
            if size == self._offset:
                return 0
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except OSError:
            return 0
        self._offset += len(data)
        self._last_growth = time.time()
        text = self._partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for its end
        added = 0
        for line in lines:
            if line.strip() and self.history.append_line(line):
                added += 1
        if added:
            rows, _, _ = self.history.since(self.history.next_index - 1)
            if rows:
                self._last_row = rows[-1]
                for key, value in self._last_row.items():
                    if isinstance(value, int | float) and key not in ("index", "time"):
                        self._last_values[key] = value
        return added

    def is_live(self) -> bool:
        last_time = self._last_row.get("time")
        return isinstance(last_time, int | float) and time.time() - last_time < FILE_RUN_LIVE_S

    def snapshot(self) -> dict[str, Any]:
        row = self._last_row
        total = self._total_env_steps
        env_steps = int(row.get("env_steps", 0))
        rate = float(row.get("env_steps_per_s", 0.0))
        live = self.is_live()
        return {
            "env_steps": env_steps,
            "updates": int(row.get("updates", 0)),
            "wall_time": float(row.get("wall_time", 0.0)),
            "env_steps_per_s": rate if live else 0.0,
            "updates_per_s": float(row.get("updates_per_s", 0.0)) if live else 0.0,
            "live_actors": int(row.get("live_actors", 0)) if live else 0,
            "live_sources": [],
            "total_env_steps": total,
            "fraction_done": min(1.0, env_steps / total) if total else None,
            "eta_s": max(0.0, total - env_steps) / rate if total and live and rate > 0 else None,
            "rows": self.history.next_index,
            "last": dict(self._last_values),
            "notes": [],
            "live": live,
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _follow(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()


def _read_total_env_steps(run_dir: Path | None) -> int | None:
    if run_dir is None:
        return None
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        total = config.get("train", {}).get("total_env_steps")
    except (OSError, AttributeError, yaml.YAMLError):  # a missing or broken file only hides the total
        return None
    return int(total) if isinstance(total, int) and total > 0 else None


def unique_names(dirs: list[Path]) -> list[str]:
    """Display names for run dirs: the folder name, or `parent/name` where two names collide."""
    names = [Path(d).resolve().name for d in dirs]
    out = []
    for d, name in zip(dirs, names, strict=True):
        if names.count(name) > 1:
            resolved = Path(d).resolve()
            name = f"{resolved.parent.name}/{resolved.name}"
        out.append(name)
    return out
