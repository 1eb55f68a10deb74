"""What a run asks of a Ray cluster, checked before anything is placed.

Ray queues an actor it cannot place without a word, so a run on a cluster that is too small
used to sit with its actors `starting` forever. `plan_placement` compares the CPUs and GPUs
every component asks for (`ray.*_cpus`, `ray.learner_gpus`) with what the cluster has free:
the shards, parameter server, learner and evaluator must fit, or the run fails at once with
the arithmetic; actors that do not all fit are cut to the number that does (with
`ray.fit_actors`, the default) and the run says so, or the run fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distrl.config import ExperimentConfig

# Free resources are compared with a little slack: Ray reports fractional CPUs as floats.
EPS = 1e-6


class PlacementError(RuntimeError):
    """The cluster cannot hold the run; the message says what is missing."""


@dataclass(frozen=True)
class PlacementPlan:
    num_actors: int
    note: str | None  # said on the console when the plan differs from the config


def _fixed_needs(cfg: ExperimentConfig) -> list[tuple[str, float]]:
    r, shards = cfg.ray, cfg.replay.num_shards
    needs = [
        (f"{shards} replay shard(s) x {r.replay_cpus:g}", shards * r.replay_cpus),
        (f"params server {r.params_cpus:g}", r.params_cpus),
        (f"learner {r.learner_cpus:g}", r.learner_cpus),
    ]
    if cfg.eval.enabled:
        needs.append((f"evaluator {r.evaluator_cpus:g}", r.evaluator_cpus))
    return needs


def plan_placement(cfg: ExperimentConfig, free_cpus: float, free_gpus: float) -> PlacementPlan:
    """How many actors to start on a cluster with `free_cpus` / `free_gpus`; raises PlacementError
    when the components other than actors (or a single actor) do not fit."""
    r = cfg.ray
    if r.learner_gpus > free_gpus + EPS:
        raise PlacementError(
            f"the learner asks for {r.learner_gpus:g} GPU(s) (ray.learner_gpus) but the Ray cluster has "
            f"{free_gpus:g} free; add a GPU node or set ray.learner_gpus=0 for a CPU learner"
        )
    fixed = _fixed_needs(cfg)
    fixed_cpus = sum(cpus for _, cpus in fixed)
    wanted = cfg.actors.num_actors
    actors_cpus = wanted * r.actor_cpus
    if fixed_cpus + actors_cpus <= free_cpus + EPS:
        return PlacementPlan(wanted, None)
    breakdown = ", ".join(text for text, _ in fixed)
    summary = (
        f"the run asks for {fixed_cpus + actors_cpus:g} CPUs ({breakdown}, {wanted} actor(s) x "
        f"{r.actor_cpus:g}) and the Ray cluster has {free_cpus:g} free"
    )
    if fixed_cpus > free_cpus + EPS:
        raise PlacementError(
            f"{summary}: not even the shards, parameter server, learner and evaluator fit. Add nodes, "
            "or lower ray.replay_cpus / ray.params_cpus / ray.learner_cpus / ray.evaluator_cpus"
        )
    fit = wanted if r.actor_cpus <= 0 else math.floor((free_cpus - fixed_cpus + EPS) / r.actor_cpus)
    if fit < 1 or not r.fit_actors:
        what = "no actor fits" if fit < 1 else f"only {fit} of {wanted} actors fit (ray.fit_actors is false)"
        raise PlacementError(f"{summary}: {what}. Add nodes, or lower ray.actor_cpus or actors.num_actors")
    return PlacementPlan(
        fit,
        f"{summary}: starting {fit} of {wanted} actors; add nodes or lower ray.actor_cpus to run them all "
        "(distrl scale RUN_DIR --actors N adds actors later)",
    )
