"""Prometheus: every component's latest metrics as labelled series, their bounds, the Grafana dashboard."""

from __future__ import annotations

import ast
import json
import math
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from distrl.config import TelemetryConfig
from distrl.telemetry import Coordinator
from distrl.telemetry.aggregate import MetricsRow
from distrl.telemetry.sinks import prometheus_name
from distrl.telemetry.sources import MAX_NAMES_PER_SOURCE, MAX_SOURCES, SourceLatest

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana" / "distrl.json"
# Windows are closed by hand (flush_window) so the tests never race the window thread.
PROMETHEUS = TelemetryConfig(console=False, report_every_s=3600.0, prometheus_port=0)
Series = tuple[str, str | None, str | None]  # (name, component, index); no component: run-level


def scrape(coordinator: Coordinator) -> list[Sample]:
    url = f"http://127.0.0.1:{coordinator.prometheus_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def by_series(samples: list[Sample]) -> dict[Series, float]:
    values = {(s.name, s.labels.get("component"), s.labels.get("index")): s.value for s in samples}
    assert len(values) == len(samples), "a series appears twice in one scrape"
    return values


# -- the source table ---------------------------------------------------------------------------


def test_labels_split_component_and_index():
    assert SourceLatest.labels("actor/3") == ("actor", "3")
    assert SourceLatest.labels("eval/0") == ("eval", "0")
    assert SourceLatest.labels("coordinator") == ("coordinator", "0")
    assert SourceLatest.labels("learner/replay/2") == ("learner", "replay/2")


def test_table_keeps_each_sources_latest_values():
    sources = SourceLatest()
    sources.observe("actor/10", [("steps_per_s", 5.0)], now=0.0, env_steps=40)
    sources.observe("actor/2", [("steps_per_s", 1.0), ("episode_return", math.nan)], now=1.0, env_steps=7)
    sources.observe("actor/2", [("steps_per_s", 2.0), ("episode_return", math.inf)], now=2.0)
    # The learner's own prefix is dropped, so both spellings are one name; its counts win.
    pairs = [("learner/replay/0/size", 10.0), ("replay/1/size", 20.0), ("updates", 1.0)]
    sources.observe("learner/0", pairs, now=2.0, env_steps=0, updates=9)
    table = sources.table(now=2.0, live_after_s=15.0)
    assert list(table) == ["actor/2", "actor/10", "learner/0"]  # label order, not text order
    assert table["actor/2"] == {"env_steps": 7.0, "steps_per_s": 2.0}  # non-finite values skipped
    assert table["actor/10"] == {"env_steps": 40.0, "steps_per_s": 5.0}
    # env_steps=0 is "not reported" (the wire sends 0 for unset), so the learner has none.
    assert table["learner/0"] == {"updates": 9.0, "replay/0/size": 10.0, "replay/1/size": 20.0}
    table["actor/2"]["steps_per_s"] = -1.0  # a copy: the caller cannot change the table
    assert sources.table(2.0, 15.0)["actor/2"]["steps_per_s"] == 2.0


def test_a_silent_source_leaves_the_table_after_live_after_s():
    sources = SourceLatest()
    sources.observe("actor/0", [("steps_per_s", 1.0)], now=100.0)
    sources.observe("actor/1", [("steps_per_s", 1.0)], now=100.0)
    sources.observe("actor/1", [("steps_per_s", 2.0)], now=110.0)
    assert set(sources.table(now=115.0, live_after_s=15.0)) == {"actor/0", "actor/1"}
    assert set(sources.table(now=115.1, live_after_s=15.0)) == {"actor/1"}
    assert sources.table(now=126.0, live_after_s=15.0) == {}
    sources.observe("actor/0", [("steps_per_s", 3.0)], now=130.0)  # back: reported again
    assert sources.table(now=130.0, live_after_s=15.0) == {"actor/0": {"steps_per_s": 3.0}}


def test_bounds_evict_the_least_recently_seen_source_and_drop_new_names():
    sources = SourceLatest(max_sources=3, max_names=2)
    for k in range(3):
        sources.observe(f"actor/{k}", [("a", 1.0)], now=float(k))
    sources.observe("actor/0", [("a", 2.0)], now=3.0)  # seen again: actor/1 is now the oldest
    sources.observe("actor/3", [("a", 1.0)], now=4.0)
    assert set(sources.table(4.0, 100.0)) == {"actor/0", "actor/2", "actor/3"}
    assert sources.evicted_sources == 1
    sources.observe("actor/3", [("b", 1.0), ("c", 1.0), ("a", 5.0)], now=5.0, env_steps=3, updates=2)
    # At most two names besides the counts; a known name still updates.
    assert sources.table(5.0, 100.0)["actor/3"] == {"a": 5.0, "b": 1.0, "env_steps": 3.0, "updates": 2.0}
    assert sources.dropped_names == 1
    with pytest.raises(ValueError):
        SourceLatest(max_sources=0)


# -- the scrape ---------------------------------------------------------------------------------


def test_scrape_labels_every_component(tmp_path):
    coordinator = Coordinator(tmp_path / "myrun", PROMETHEUS)
    try:
        coordinator.ingest("actor/0", {"steps_per_s": 100.0, "episode_return": 1.0}, env_steps=500)
        coordinator.ingest("actor/1", {"steps_per_s": 120.0, "episode_return": 3.0}, env_steps=700)
        learner = {
            "critic_loss": 0.5,
            "data_wait_fraction": 0.25,
            "replay/0/size": 1000.0,
            "replay/1/size": 2000.0,
            "replay/0/samples_per_insert": 7.5,
            "bad": math.nan,
        }
        coordinator.ingest("learner/0", learner, updates=40)
        coordinator.flush_window()
        samples = scrape(coordinator)
        # Per-source series are read at scrape time: a newer value shows before the next window.
        coordinator.ingest("actor/0", {"steps_per_s": 90.0}, env_steps=600)
        later = by_series(scrape(coordinator))
    finally:
        coordinator.close()
    assert {s.labels["run"] for s in samples} == {"myrun"}  # the run dir's name
    assert all(set(s.labels) in ({"run"}, {"component", "index", "run"}) for s in samples)
    values = by_series(samples)
    assert values[("distrl_steps_per_s", "actor", "0")] == 100.0
    assert values[("distrl_steps_per_s", "actor", "1")] == 120.0
    assert values[("distrl_episode_return", "actor", "1")] == 3.0
    assert values[("distrl_env_steps", "actor", "1")] == 700.0
    assert values[("distrl_updates", "learner", "0")] == 40.0
    assert values[("distrl_critic_loss", "learner", "0")] == 0.5
    assert values[("distrl_data_wait_fraction", "learner", "0")] == 0.25
    assert values[("distrl_replay_0_size", "learner", "0")] == 1000.0
    assert values[("distrl_replay_1_size", "learner", "0")] == 2000.0
    assert values[("distrl_replay_0_samples_per_insert", "learner", "0")] == 7.5
    assert ("distrl_env_steps", "learner", "0") not in values  # the learner counts no env steps
    assert not any(name == "distrl_bad" for name, _, _ in values)
    # The run-level gauges, now labelled with the run too.
    assert values[("distrl_env_steps", None, None)] == 1200.0
    assert values[("distrl_updates", None, None)] == 40.0
    assert values[("distrl_actor_steps_per_s", None, None)] == 220.0  # rates add up across actors
    assert values[("distrl_actor_episode_return", None, None)] == 2.0
    assert values[("distrl_learner_replay_1_size", None, None)] == 2000.0
    assert values[("distrl_live_actors", None, None)] == 2.0
    assert later[("distrl_steps_per_s", "actor", "0")] == 90.0
    assert later[("distrl_env_steps", "actor", "0")] == 600.0
    assert later[("distrl_env_steps", None, None)] == 1200.0  # run-level: until the next window


def test_a_configured_run_name_labels_the_series(tmp_path):
    config = PROMETHEUS.model_copy(update={"run_name": "seed-3"})
    coordinator = Coordinator(tmp_path / "run", config)
    try:
        coordinator.ingest("actor/0", {"steps_per_s": 1.0}, env_steps=1)
        samples = scrape(coordinator)
    finally:
        coordinator.close()
    assert {s.labels["run"] for s in samples} == {"seed-3"}


def test_a_source_that_stops_reporting_disappears_from_the_scrape(tmp_path):
    coordinator = Coordinator(tmp_path / "run", PROMETHEUS)
    try:
        coordinator.ingest("actor/0", {"steps_per_s": 1.0}, env_steps=10)
        coordinator.ingest("actor/1", {"steps_per_s": 1.0}, env_steps=10)
        coordinator.flush_window()
        live_after_s = coordinator.prometheus.live_after_s
        assert live_after_s == max(15.0, 3 * PROMETHEUS.report_every_s)  # the aggregate's

        def labelled(now: float) -> set[tuple[str, str, str]]:
            return {
                (s.name, s.labels["component"], s.labels["index"])
                for family in coordinator.prometheus.families(now)
                for s in family.samples
                if "component" in s.labels
            }

        now = time.monotonic()
        assert ("distrl_steps_per_s", "actor", "1") in labelled(now)
        assert labelled(now + live_after_s + 1.0) == set()  # both silent since
        before = time.monotonic()  # after actor/1's last report, up to actor/0's next one
        coordinator.ingest("actor/0", {"steps_per_s": 2.0}, env_steps=20)
        assert {index for _, _, index in labelled(before + live_after_s)} == {"0"}
        # The run-level gauges stay: they are the last window's values, not a source's.
        run_level = {f.name for f in coordinator.prometheus.families(now + 3600) if f.samples}
        assert {"distrl_env_steps", "distrl_actor_steps_per_s"} <= run_level
        assert coordinator.sources.table(now + live_after_s + 1.0, live_after_s) == {}
    finally:
        coordinator.close()


def test_bounds_hold_with_2000_sources(tmp_path):
    coordinator = Coordinator(tmp_path / "run", PROMETHEUS)
    try:
        for k in range(2000):
            coordinator.ingest(f"actor/{k}", {"steps_per_s": float(k)}, env_steps=k + 1)
        many = {f"m{i}": float(i) for i in range(MAX_NAMES_PER_SOURCE + 50)}
        coordinator.ingest("learner/0", many, updates=5)
        coordinator.flush_window()
        samples = scrape(coordinator)
    finally:
        coordinator.close()
    assert len(coordinator.sources) == MAX_SOURCES
    assert coordinator.sources.evicted_sources == 2000 + 1 - MAX_SOURCES
    assert coordinator.sources.dropped_names == 50
    labelled = [s for s in samples if "component" in s.labels]
    actors = {s.labels["index"] for s in labelled if s.name == "distrl_steps_per_s"}
    # The newest 1023 actors (the learner took the last place); the oldest were evicted.
    assert actors == {str(k) for k in range(2000 - MAX_SOURCES + 1, 2000)}
    learner = [s for s in labelled if s.labels["component"] == "learner"]
    assert len(learner) == MAX_NAMES_PER_SOURCE + 1  # its names, plus its update count
    assert len(labelled) <= MAX_SOURCES * (MAX_NAMES_PER_SOURCE + 2)


# -- the Grafana dashboard ----------------------------------------------------------------------

# The packages whose code reports metrics (the actors, the learner and the algorithms, the envs'
# signals), and the prefixes their sources' names give the run-level series.
REPORTING = ("actors", "learners", "algos", "envs")
COMPONENTS = ("actor", "learner", "eval")
ROW_KEYS = set(MetricsRow(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, {}).to_json_dict()) - {"time"}


def _sanitised(text: str) -> str:
    return prometheus_name(text).removeprefix("distrl_")


def reported_names() -> tuple[set[str], list[list[str | None]]]:
    """What the reporting code can name a metric: its string literals, and its f-strings as
    templates (None for each field), all sanitised as Prometheus names."""
    literals: set[str] = set()
    templates: list[list[str | None]] = []
    for package in REPORTING:
        for path in sorted((ROOT / "distrl" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    literals.add(_sanitised(node.value))
                elif isinstance(node, ast.JoinedStr):
                    templates.append(
                        [_sanitised(v.value) if isinstance(v, ast.Constant) else None for v in node.values]
                    )
    return literals, templates


def can_emit(name: str, literals: set[str], templates: list[list[str | None]]) -> bool:
    """Whether `distrl_<name>` is a series the code can emit: a run-level row key, or a reported
    name (with its component's prefix at run level), where an f-string's fields are literals or numbers."""
    candidates = [name] + [name.removeprefix(f"{c}_") for c in COMPONENTS if name.startswith(f"{c}_")]
    for candidate in candidates:
        if candidate in ROW_KEYS or candidate in literals:
            return True
        for parts in templates:
            pattern = "".join(re.escape(p) if p is not None else "([A-Za-z0-9_]+)" for p in parts)
            match = re.fullmatch(pattern, candidate)
            if match and all(g.isdigit() or g in literals for g in match.groups()):
                return True
    return False


def examples(literals: set[str], templates: list[list[str | None]]) -> set[str]:
    """Concrete series names, to test a `__name__=~` regex against (f-string fields as 0)."""
    names = ROW_KEYS | literals | {"".join(p if p is not None else "0" for p in t) for t in templates}
    return {f"distrl_{c}_{n}" for c in COMPONENTS for n in names} | {f"distrl_{n}" for n in names}


def metric_references(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, `__name__=~` regexes) an expr selects; label values and regexes are skipped."""
    regexes = set(re.findall(r'__name__\s*=~\s*"([^"]*)"', expr))
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\bdistrl_[A-Za-z0-9_]+", bare)), regexes


def test_grafana_dashboard_is_importable_and_shows_only_emitted_metrics():
    dashboard = json.loads(GRAFANA.read_text())
    (ds_input,) = dashboard["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    (run_var,) = dashboard["templating"]["list"]
    assert run_var["name"] == "run" and run_var["datasource"] == datasource

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    literals, templates = reported_names()
    concrete = examples(literals, templates)
    shown: set[str] = set()
    for panel in panels:
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
            names, regexes = metric_references(target["expr"])
            assert names or regexes, f"{panel['title']}: {target['expr']} names no metric"
            assert '"$run"' in target["expr"], f"{panel['title']}: not filtered by the run variable"
            for name in names:
                assert can_emit(name.removeprefix("distrl_"), literals, templates), (
                    f"{panel['title']}: {name} is not a metric the code reports"
                )
            for regex in regexes:
                assert any(re.fullmatch(regex, n) for n in concrete), (
                    f"{panel['title']}: {regex} matches nothing"
                )
            shown |= names | {n for regex in regexes for n in concrete if re.fullmatch(regex, n)}
    # The web dashboard's panels, by the series they need.
    for needed in (
        "distrl_actor_episode_return",
        "distrl_eval_return_mean",
        "distrl_eval_success_rate",
        "distrl_actor_episode_cost",
        "distrl_learner_critic_loss",
        "distrl_learner_alpha",
        "distrl_learner_q_mean",
        "distrl_env_steps_per_s",
        "distrl_steps_per_s",
        "distrl_replay_0_size",
        "distrl_replay_0_samples_per_insert",
        "distrl_replay_0_target_samples_per_insert",
        "distrl_updates_per_s",
        "distrl_learner_data_wait_fraction",
        "distrl_learner_actor_lag_mean",
        "distrl_learner_sample_age_mean",
        "distrl_live_actors",
    ):
        assert needed in shown, needed


def test_the_emitted_metrics_check_is_not_vacuous():
    literals, templates = reported_names()
    assert can_emit("learner_critic_loss", literals, templates)
    assert can_emit("replay_3_target_samples_per_insert", literals, templates)
    assert can_emit("actor_episode_cost", literals, templates)  # f"episode_{signal}", signal "cost"
    assert not can_emit("learner_critic_lost", literals, templates)
    assert not can_emit("replay_nowhere_size", literals, templates)
    assert metric_references('label_replace(distrl_a{run=~"$run"}, "s", "$1", "__name__", "distrl_b")') == (
        {"distrl_a"},
        set(),
    )
