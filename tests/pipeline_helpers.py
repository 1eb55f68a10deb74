"""One experiment's components in this process: a replay shard and a parameter server on
loopback, one actor and the learner in threads (shared by the contract and shield tests)."""

from __future__ import annotations

import threading
from pathlib import Path

from distrl.actors.actor import Actor, ActorAddresses
from distrl.config import validate_config
from distrl.experiment import replay_table_config
from distrl.learners.learner import Learner
from distrl.params import ParamsClient
from distrl.params.server import start_params_server
from distrl.replay.config import ReplayShardConfig
from distrl.replay.server import serve_replay_shard


def run_pipeline(raw: dict, run_dir: Path, updates: int) -> tuple[Learner, Actor, list[str]]:
    """Shard + params server on loopback, one actor and the learner in threads, until `updates`."""
    config = validate_config(raw)
    shard, running = serve_replay_shard(ReplayShardConfig(tables=[replay_table_config(config)]))
    params = start_params_server()
    stop = threading.Event()
    try:
        actor = Actor(config, 0, ActorAddresses([running.address], params.address))
        learner = Learner(config, run_dir, [running.address], params.address)
        actor_thread = threading.Thread(target=actor.run, args=(stop,), daemon=True)
        actor_thread.start()
        learner.run(threading.Event(), max_updates=updates)
        stop.set()
        actor_thread.join(30)
        assert not actor_thread.is_alive(), "the actor did not stop"
        with ParamsClient(params.address) as client:
            sets = client.info().sets
        return learner, actor, sets
    finally:
        stop.set()
        params.stop(0)
        running.stop(0)
        shard.close(final_checkpoint=False)
