"""An actor (and the evaluator's loader) survives a published parameter set its policy refuses:
it keeps acting with the version it holds, counts and logs the refusal once, and takes the
next version that fits. Before, the refusal's ValueError ended the actor, and its restart met
the same version again."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from distrl.actors.actor import Actor, ActorAddresses
from distrl.actors.param_loading import ParamLoader
from distrl.algos import POLICY_PARAMS, SpaceSpec, make_algorithm, make_policy
from distrl.config import validate_config
from distrl.envs import make_env
from distrl.experiment import replay_table_config, space_of
from distrl.params import ParamsClient
from distrl.params.server import start_params_server
from distrl.replay.config import ReplayShardConfig
from distrl.replay.server import serve_replay_shard

CONFIG = {
    "env": {"id": "gym:InvertedPendulum-v5"},
    "algo": {"name": "sac", "hidden_sizes": [16, 16]},
    "actors": {"num_actors": 1, "warmup_steps": 0, "insert_batch_size": 16},
    "replay": {"table": {"capacity": 10_000}},
    "telemetry": {"console": False},
}


def _good_and_bad(space: SpaceSpec) -> tuple[dict, dict]:
    good = make_algorithm("sac", space, {"hidden_sizes": [16, 16]}, "cpu").params(POLICY_PARAMS)
    name = next(iter(good))
    bad = {**good, name: np.zeros((3, 3), dtype=np.float32)}  # a tensor of the wrong shape
    return good, bad


def _wait(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_an_actor_keeps_acting_through_a_version_its_policy_refuses(caplog):
    config = validate_config(CONFIG)
    shard, running = serve_replay_shard(ReplayShardConfig(tables=[replay_table_config(config)]))
    params = start_params_server()
    stop = threading.Event()
    errors: list[BaseException] = []
    try:
        actor = Actor(config, 0, ActorAddresses([running.address], params.address))
        good, bad = _good_and_bad(space_of(make_env(config.env)))

        def run() -> None:
            try:
                actor.run(stop)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        with ParamsClient(params.address) as client, caplog.at_level(logging.WARNING):
            client.publish(good, metadata={"updates": "10"})
            thread.start()
            _wait(lambda: actor.policy_version == 1)
            client.publish(bad, metadata={"updates": "20"})
            _wait(lambda: actor._params.refusals == 1 or not thread.is_alive())
            steps = actor.steps
            _wait(lambda: actor.steps > steps + 100 or not thread.is_alive())  # still stepping
            assert thread.is_alive() and not errors, errors
            assert actor.policy_version == 1 and actor.learner_updates == 10
            client.publish(good, metadata={"updates": "30"})
            _wait(lambda: actor.policy_version == 3)
        assert actor._params.refusals == 1  # logged and counted once, not on every step
        refusals = [r for r in caplog.records if "refused version 2" in r.getMessage()]
        assert len(refusals) == 1 and "keeping version 1" in refusals[0].getMessage()
        assert "parameter set 'policy'" in refusals[0].getMessage()
    finally:
        stop.set()
        params.stop(0)
        running.stop(0)
        shard.close(final_checkpoint=False)
    assert not errors, errors


def test_a_refused_first_version_leaves_the_loader_waiting_for_one_that_fits():
    space = SpaceSpec(4, 1)
    policy = make_policy("sac", space, {"hidden_sizes": [16, 16]})
    good, bad = _good_and_bad(space)
    loader = ParamLoader(policy, "evaluator")

    class Version:
        def __init__(self, version: int, tensors: dict) -> None:
            self.version, self.tensors = version, tensors

    first = Version(1, bad)
    assert loader.is_new(POLICY_PARAMS, first) and not loader.load(POLICY_PARAMS, first)
    assert loader.refused == {POLICY_PARAMS: 1} and loader.loaded == {}
    assert not loader.is_new(POLICY_PARAMS, first)  # not tried again
    assert loader.load(POLICY_PARAMS, Version(2, good))
    assert loader.loaded == {POLICY_PARAMS: 2} and loader.refusals == 1
    with pytest.raises(ValueError):  # the policy itself still refuses the bad set whole
        policy.load_params(POLICY_PARAMS, bad)
