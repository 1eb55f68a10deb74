"""The console progress display.

On a terminal: one `rich` panel redrawn about twice a second. Otherwise (a log
file, a pod's stdout): one plain line every `log_every_s`. Both read the
coordinator's snapshot and show '-' for anything not reported yet. Rates and
the ETA are the snapshot's smoothed ones (over about a minute), so they move
steadily; metrics.jsonl keeps the 10 s rates.

Metric names it looks for (what components should report under):
`actor/episode_return`, `eval/return_mean`, `eval/success_rate` (or
`actor/episode_success`), `learner/replay_size`, `learner/replay_capacity`,
`learner/actor_lag_mean`, `learner/actor_lag_max` (policy lag: the learner's
version when an item was inserted less the version that produced it),
`learner/sample_age_mean`, `learner/sample_age_max` (the learner's version at
sampling less the one at insertion).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from distrl.telemetry.aggregate import TelemetrySnapshot

EPISODE_RETURN = "actor/episode_return"
EVAL_RETURN = "eval/return_mean"
SUCCESS = ("eval/success_rate", "actor/episode_success")
REPLAY_SIZE = "learner/replay_size"
REPLAY_CAPACITY = "learner/replay_capacity"
ACTOR_LAG_MEAN = "learner/actor_lag_mean"
ACTOR_LAG_MAX = "learner/actor_lag_max"
SAMPLE_AGE_MEAN = "learner/sample_age_mean"
SAMPLE_AGE_MAX = "learner/sample_age_max"


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def _success(snap: TelemetrySnapshot) -> float | None:
    return next((snap.last[name] for name in SUCCESS if name in snap.last), None)


def _replay_fill(snap: TelemetrySnapshot) -> tuple[float | None, float | None, float | None]:
    size, capacity = snap.last.get(REPLAY_SIZE), snap.last.get(REPLAY_CAPACITY)
    fraction = size / capacity if size is not None and capacity else None
    return size, capacity, fraction


def _versions(snap: TelemetrySnapshot, mean: str, high: str, sep: str = "/") -> str:
    """A mean and max of version gaps (`-` until reported)."""
    return f"{_num(snap.last.get(mean), 2)}{sep}{_num(snap.last.get(high), 0)}"


def format_line(snap: TelemetrySnapshot) -> str:
    """One plain log line (for when stdout is not a terminal)."""
    total = f"/{snap.total_env_steps:,}" if snap.total_env_steps else ""
    done = f" ({_percent(snap.fraction_done)}, ETA {_duration(snap.eta_s)})" if snap.total_env_steps else ""
    size, _, fill = _replay_fill(snap)
    parts = [
        f"[{_duration(snap.wall_time)}] env_steps {snap.env_steps:,}{total}{done}",
        f"{_num(snap.steady_env_steps_per_s)} steps/s",
        f"updates {snap.updates:,} ({_num(snap.steady_updates_per_s)}/s)",
        f"return {_num(snap.last.get(EPISODE_RETURN))}",
        f"eval {_num(snap.last.get(EVAL_RETURN))} (success {_percent(_success(snap))})",
        f"replay {_num(size)} ({_percent(fill)})",
        f"policy lag {_versions(snap, ACTOR_LAG_MEAN, ACTOR_LAG_MAX)}",
        f"sample age {_versions(snap, SAMPLE_AGE_MEAN, SAMPLE_AGE_MAX)}",
        f"actors {snap.live_actors}",
    ]
    return " | ".join(parts)


def render_panel(snap: TelemetrySnapshot) -> Panel:
    """The live panel (for a terminal)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    steps = Text(f"{snap.env_steps:,}")
    if snap.total_env_steps:
        bar = ProgressBar(
            total=snap.total_env_steps, completed=min(snap.env_steps, snap.total_env_steps), width=30
        )
        steps = Table.grid(padding=(0, 1))
        steps.add_row(
            f"{snap.env_steps:,} / {snap.total_env_steps:,}",
            bar,
            f"{_percent(snap.fraction_done)}  ETA {_duration(snap.eta_s)}",
        )
    grid.add_row("env steps", steps)
    grid.add_row("env steps/s", _num(snap.steady_env_steps_per_s))
    grid.add_row("updates", f"{snap.updates:,}  ({_num(snap.steady_updates_per_s)}/s)")
    grid.add_row("episode return", _num(snap.last.get(EPISODE_RETURN), 2))
    grid.add_row("eval return", f"{_num(snap.last.get(EVAL_RETURN), 2)}  success {_percent(_success(snap))}")
    size, capacity, fill = _replay_fill(snap)
    grid.add_row("replay", f"{_num(size)} / {_num(capacity)}  ({_percent(fill)})")
    # In policy versions: how far behind the actors act, and how long items wait in replay.
    grid.add_row("policy lag", "mean " + _versions(snap, ACTOR_LAG_MEAN, ACTOR_LAG_MAX, "  max "))
    grid.add_row("sample age", "mean " + _versions(snap, SAMPLE_AGE_MEAN, SAMPLE_AGE_MAX, "  max "))
    grid.add_row("actors", f"{snap.live_actors} live")
    body: RenderableType = grid
    if snap.notes:
        body = Group(grid, Text(""), *(Text(note, style="yellow") for note in snap.notes[-5:]))
    return Panel(body, title="distrl", subtitle=f"wall time {_duration(snap.wall_time)}", expand=False)


class ConsoleProgress:
    """Shows the run's progress until `stop()`; `live=None` picks the panel on a terminal."""

    def __init__(
        self,
        snapshot: Callable[[], TelemetrySnapshot],
        console: Console | None = None,
        log_every_s: float = 10.0,
        refresh_per_second: float = 2.0,
        live: bool | None = None,
    ) -> None:
        self._snapshot = snapshot
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.log_every_s = log_every_s
        self.refresh_per_second = refresh_per_second
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._printed_notes: list[str] = []

    def start(self) -> None:
        if self._thread is not None or self._live is not None:
            return
        if self.live:
            from rich.live import Live

            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=self.refresh_per_second,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._log_loop, name="telemetry-console", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop and show the final state once more."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._thread is not None:
            self._stop.set()
            self._thread.join(5.0)
            self._thread = None
            self._log_once()

    def __enter__(self) -> ConsoleProgress:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _render(self) -> RenderableType:
        try:
            return render_panel(self._snapshot())
        except Exception as exc:  # a display bug must never take the run down
            return Text(f"telemetry display error: {type(exc).__name__}: {exc}", style="red")

    def _log_loop(self) -> None:
        while not self._stop.wait(self.log_every_s):
            self._log_once()

    def _log_once(self) -> None:
        try:
            snap = self._snapshot()
            for note in snap.notes:
                if note not in self._printed_notes:
                    self._printed_notes = [*self._printed_notes[-63:], note]
                    self.console.print(note, markup=False, highlight=False, soft_wrap=True)
            self.console.print(format_line(snap), markup=False, highlight=False, soft_wrap=True)
        except Exception as exc:
            self.console.print(f"telemetry display error: {type(exc).__name__}: {exc}", markup=False)
