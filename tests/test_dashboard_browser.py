"""The dashboard in a real browser: Debian's chromium driven by playwright, against a real run.

`.ci/run` installs chromium with apt when it is missing; elsewhere these tests skip with the
command to run. Screenshots land in the test's temp dir (and, with DISTRL_SCREENSHOT_DIR set,
there too: that is how the README's picture is made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from distrl.telemetry.dashboard import Dashboard
from distrl.telemetry.dashboard_runs import FileRun
from tests.run_helpers import rows, start_train, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium"),
]
BROWSER_MAX_ROWS = 10_000  # MAX_ROWS in static/dashboard.js
READER_TOKEN = "browser-reader-token"  # the dashboards here ask for it; the page logs in first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless chromium page that records JavaScript errors."""

    def __init__(self, screenshots: Path) -> None:
        self._pw = playwright_api.sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        self.page = self._browser.new_page(viewport={"width": 1500, "height": 1300})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on(
            "console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None
        )
        self.screenshots = screenshots

    def stats(self) -> dict:
        return self.page.evaluate("window.distrlDashboard.stats()")

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if predicate(stats):
                return stats
            self.page.wait_for_timeout(250)
        raise AssertionError(f"timed out waiting for {what}; page stats: {json.dumps(self.stats())[:2000]}")

    def log_in(self, base: str) -> None:
        """Open `base` (a 401 with the login form), then log in with the token in the URL."""
        refused = self.page.goto(base)
        assert refused is not None and refused.status == 401
        assert self.page.locator("input[name=token]").count() == 1
        self.page.goto(f"{base}login?token={READER_TOKEN}")
        assert self.page.url == base  # redirected: the token left the address bar
        self.errors.clear()  # chromium logs the 401 as a console error

    def screenshot(self, name: str) -> Path:
        path = self.screenshots / name
        self.page.screenshot(path=str(path), full_page=True)
        extra = os.environ.get("DISTRL_SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / name)
        return path

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    try:
        yield b
    finally:
        b.close()


def _hover_value(browser: Browser, panel: str) -> str:
    """Move the mouse over the middle of a chart; returns its first series' legend value."""
    over = browser.page.locator(f'.card[data-panel="{panel}"] .u-over')
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    assert box is not None, f"panel {panel} has no chart"
    value = (
        browser.page.locator(f'.card[data-panel="{panel}"] .u-legend .u-series').nth(1).locator(".u-value")
    )
    text = ""
    for k in range(10):  # a live chart may redraw between the move and the read: move again
        browser.page.mouse.move(box["x"] + box["width"] * (0.6 + 0.01 * k), box["y"] + box["height"] / 2)
        text = value.inner_text()
        if text not in ("", "-", "--"):
            break
        browser.page.wait_for_timeout(200)
    return text


def test_dashboard_live_during_a_real_run(tmp_path, browser):
    run_dir, port = tmp_path / "run", _free_port()
    token_file = tmp_path / "reader-token"
    token_file.write_text(READER_TOKEN + "\n")
    proc = start_train(
        "configs/sac_point.yaml", run_dir, f"telemetry.dashboard_port={port}", "telemetry.report_every_s=1",
        f"telemetry.reader_token_file={token_file}",
        "train.total_env_steps=200000", "eval.every_updates=200", "eval.episodes=2", output=False,
    )  # fmt: skip
    try:
        wait_for(lambda: len(rows(run_dir)) >= 2, 180, "the first metric rows", proc)
        browser.log_in(f"http://127.0.0.1:{port}/")
        first = browser.wait(lambda s: s["cards"]["steps"]["points"] >= 2, 60, "points on the steps/s chart")
        # Live push: more points arrive without reloading the page.
        browser.wait(
            lambda s: s["cards"]["steps"]["points"] > first["cards"]["steps"]["points"] + 2,
            60,
            "new points pushed to the page",
        )
        stats = browser.wait(
            lambda s: s["cards"]["return"]["points"] > 0 and s["cards"]["losses"]["visible"],
            120,
            "episode returns and learner losses",
        )
        assert stats["cards"]["per-actor"]["points"] == 2  # two actors, each its own bar
        assert stats["cards"]["lag"]["visible"] and stats["cards"]["replay"]["visible"]
        assert _hover_value(browser, "steps") not in ("", "-", "--")
        header = browser.page.locator("#stats").inner_text()
        assert "env steps" in header and "200.0k" in header
        if os.environ.get("DISTRL_SCREENSHOT_DIR"):  # the README's picture: a run with some history
            wait_for(
                lambda: (rows(run_dir) or [{}])[-1].get("env_steps", 0) >= 30_000, 900, "30k steps", proc
            )
            browser.page.wait_for_timeout(3000)
        browser.screenshot("dashboard.png")
        assert not browser.errors, browser.errors
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_run(run_dir: Path, rows_count: int, scale: float, events: bool = False) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"train:\n  total_env_steps: {rows_count * 100}\n")
    with (run_dir / "metrics.jsonl").open("w") as f:
        for k in range(rows_count):
            row = {
                "env_steps": 100 * (k + 1),
                "updates": 50 * (k + 1),
                "wall_time": float(k),
                "time": 1.7e9 + k,
                "env_steps_per_s": 1000.0 + (k % 7),
                "updates_per_s": 500.0,
                "live_actors": 2,
                "actor/episode_return": scale * k / rows_count,
                "learner/critic_loss": 1.0 / (1 + k),
                "learner/alpha": 0.1,
                "learner/replay/0/size": float(min(k * 50, 10_000)),
                "learner/replay/1/size": float(min(k * 48, 10_000)),
            }
            if k % 10 == 0:
                row["eval/return_mean"] = scale * k / rows_count
                row["eval/success_rate"] = min(1.0, k / rows_count)
            f.write(json.dumps(row) + "\n")
    if events:
        (run_dir / "events.jsonl").write_text(
            json.dumps(
                {"time": 1.7e9 + 5, "wall_time": 5.0, "env_steps": 600, "message": "actor-1 restarted (1)"}
            )
            + "\n"
        )


def test_dashboard_compares_runs_and_bounds_history(tmp_path, browser):
    long_run, short_run = tmp_path / "seed0", tmp_path / "seed1"
    _write_run(long_run, 50_000, 100.0, events=True)  # a long synthetic stream
    _write_run(short_run, 300, 60.0)
    runs = [FileRun("0", long_run, "seed0", max_rows=20_000), FileRun("1", short_run, "seed1")]
    server = Dashboard(runs, "127.0.0.1", 0, reader_token=READER_TOKEN)
    try:
        assert len(runs[0].history) <= 20_000  # the server's bound
        browser.log_in(server.url)
        stats = browser.wait(
            lambda s: all(r["rows"] > 0 for r in s["runs"]) and s["cards"]["return"]["series"] == 2,
            60,
            "both runs plotted on one chart",
        )
        assert max(r["rows"] for r in stats["runs"]) <= BROWSER_MAX_ROWS  # the page's bound
        assert stats["cards"]["replay"]["series"] == 4  # 2 shards x 2 runs
        assert stats["cards"]["success"]["visible"] and stats["cards"]["alpha"]["visible"]
        assert "actor-1 restarted" in browser.page.locator("#events").inner_text()
        assert _hover_value(browser, "return") not in ("", "-", "--")
        # Toggle a run off and back on: the chart follows.
        browser.page.locator('.run-chip[data-run="1"]').click()
        browser.wait(lambda s: s["cards"]["return"]["series"] == 1, 10, "one run after the toggle")
        browser.page.locator('.run-chip[data-run="1"]').click()
        browser.wait(lambda s: s["cards"]["return"]["series"] == 2, 10, "two runs again")
        # Log scale, smoothing and the wall-time axis redraw without errors.
        browser.page.locator('.card[data-panel="losses"] h3 button').click()
        browser.page.locator("#smoothing").fill("0.9")
        browser.page.locator("#xaxis").select_option("wall_time")
        browser.wait(lambda s: s["cards"]["losses"]["series"] == 2, 10, "the log-scale losses chart")
        browser.screenshot("dashboard-compare.png")
        assert not browser.errors, browser.errors
    finally:
        server.close()
