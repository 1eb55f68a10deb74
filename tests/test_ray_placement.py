"""A Ray cluster too small for the run: say what is missing, then fail or start fewer actors."""

from __future__ import annotations

import pytest
from run_helpers import rows
from test_ray_launcher import SMOKE, distrl, needs_ray, ray_temp_dir  # noqa: F401  (a fixture)

from distrl.config import load_config
from distrl.runtime.ray_plan import PlacementError, plan_placement


def _smoke(**ray):
    cfg = load_config(SMOKE)  # 2 shards x 1 + params 0.5 + learner 1 + evaluator 0.5 = 4, 2 actors x 1
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update=ray)})


def test_plan_keeps_every_actor_when_the_cluster_fits_the_run():
    plan = plan_placement(_smoke(), free_cpus=6, free_gpus=0)
    assert plan.num_actors == 2 and plan.note is None


def test_plan_starts_the_actors_that_fit_and_says_so():
    plan = plan_placement(_smoke(), free_cpus=5.5, free_gpus=0)
    assert plan.num_actors == 1
    assert (
        "asks for 6 CPUs" in plan.note and "5.5 free" in plan.note and "starting 1 of 2 actors" in plan.note
    )


@pytest.mark.parametrize(
    ("ray", "cpus", "gpus", "message"),
    [
        ({}, 3.5, 0, "not even the shards, parameter server, learner and evaluator fit"),
        ({}, 4.5, 0, "no actor fits"),
        ({"fit_actors": False}, 5, 0, "only 1 of 2 actors fit (ray.fit_actors is false)"),
        ({"learner_gpus": 1.0}, 64, 0, "asks for 1 GPU(s) (ray.learner_gpus) but the Ray cluster has 0 free"),
    ],
)
def test_plan_refuses_a_cluster_that_cannot_hold_the_run(ray, cpus, gpus, message):
    with pytest.raises(PlacementError) as err:
        plan_placement(_smoke(**ray), free_cpus=cpus, free_gpus=gpus)
    assert message in str(err.value)


@pytest.mark.slow
@needs_ray
def test_ray_run_on_too_few_cpus_fails_at_once_with_the_arithmetic(tmp_path, ray_temp_dir):  # noqa: F811
    out = distrl(
        "train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--launcher", "ray",
        f"ray.local.temp_dir={ray_temp_dir}", "ray.local.object_store_mb=100", "ray.local.num_cpus=3",
    )  # fmt: skip
    assert out.returncode != 0
    assert "the Ray cluster has 3 free" in out.stderr and "not even the shards" in out.stderr, out.stderr


@pytest.mark.slow
@needs_ray
def test_ray_run_starts_the_actors_that_fit_and_finishes(tmp_path, ray_temp_dir):  # noqa: F811
    run_dir = tmp_path / "r"
    out = distrl(
        "train", str(SMOKE), "--run-dir", str(run_dir), "--launcher", "ray",
        f"ray.local.temp_dir={ray_temp_dir}", "ray.local.object_store_mb=100", "ray.local.num_cpus=5",
        "train.total_env_steps=1500", timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "starting 1 of 2 actors" in out.stdout + out.stderr
    assert max(r.get("live_actors", 0) for r in rows(run_dir)) == 1
    assert rows(run_dir)[-1]["env_steps"] >= 1500
