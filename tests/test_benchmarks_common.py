"""benchmarks/common.py: a ratio against a constant target is labelled as one, in the JSON and the
table; and learning_curve.py's side-by-side mode gives both systems CPUs of the same count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import learning_curve  # noqa: E402
from common import Result, print_table, write_json  # noqa: E402


def test_a_target_baseline_is_labelled_as_a_target_not_a_peer(tmp_path: Path, capsys):
    rows = [
        Result(
            "sample/batches_per_s",
            1500.0,
            "batches/s",
            "target: 1000 batches/s",
            1000.0,
            baseline_kind="target",
        ),
        Result("insert/transitions_per_s", 900.0, "transitions/s", "raw gRPC", 1000.0),
        Result("decision_ms", 2.0, "ms"),
    ]
    doc = write_json(tmp_path / "r.json", "bench", {}, rows)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == doc
    kinds = {r["name"]: r["baseline_kind"] for r in saved["results"]}
    assert kinds == {
        "sample/batches_per_s": "target",
        "insert/transitions_per_s": "measured",
        "decision_ms": None,
    }
    assert saved["results"][0]["ratio"] == pytest.approx(1.5)

    print_table(rows)
    table = capsys.readouterr().out
    assert "1.50x of target" in table
    assert "0.90x" in table and "0.90x of target" not in table
    # A target named without the word still reads as one.
    print_table([Result("x", 2.0, "u", "1 per s", 1.0, baseline_kind="target")])
    assert "target: 1 per s" in capsys.readouterr().out


def test_side_by_side_gives_both_systems_as_many_cpus():
    assert learning_curve.split_cpus({0, 1}) == ({0}, {1})
    assert learning_curve.split_cpus({0, 1, 2, 3, 5}) == ({0, 1}, {2, 3})
    with pytest.raises(SystemExit, match="at least 2 CPUs"):
        learning_curve.split_cpus({3})


def test_server_cpu_pools_the_rounds_of_earlier_runs(tmp_path: Path):
    import server_cpu

    def run(path: Path, default: list[float], baseline: list[float]) -> Path:
        others = {"acks_at_once": [300.0] * len(default), "asyncio": [250.0] * len(default)}
        rounds = {"default": default, **others, "baseline": baseline}
        config = {
            "insert_us_rounds": rounds,
            "sample_us_rounds": rounds,
            "insert_batches_per_s_rounds": rounds,
        }
        path.write_text(json.dumps({"config": config}))
        return path

    a = run(tmp_path / "a.json", [100.0, 300.0], [200.0, 200.0])
    b = run(tmp_path / "b.json", [150.0], [210.0])
    config, results = server_cpu.pooled([a, b])
    assert config["rounds"] == 3 and config["insert_us_rounds"]["default"] == [100.0, 300.0, 150.0]
    by_name = {r.name: r for r in results}
    row = by_name["insert/default_vs_baseline_us"]
    assert (row.value, row.baseline_value) == (150.0, 200.0) and row.ratio == pytest.approx(200 / 150)
    assert by_name["insert/default_us"].baseline_value == 300.0
