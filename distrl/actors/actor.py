"""An actor process: steps its envs with the newest policy and streams transitions to replay.

What it owns: `envs_per_actor` envs stepped in lock-step, a CPU copy of the
policy, a weight subscription. What it sends: columnar transition batches
tagged with (actor_id, sequence, policy_version) to the replay shards, and
episode/throughput metrics to the coordinator. What it waits on: nothing but
replay backpressure (a full window of unacked batches).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from distrl.actors.rollout import LockstepEnvs, TransitionBuffer
from distrl.algos import SpaceSpec, make_policy
from distrl.config import ExperimentConfig
from distrl.envs import env_spec, make_env
from distrl.params import ParamsClient
from distrl.replay.client import ReplayClient
from distrl.telemetry import TelemetryReporter

# Metadata key the learner sets on every published version.
UPDATES_KEY = "updates"


@dataclass
class ActorAddresses:
    replay: list[str]
    params: str | None
    telemetry: str | None = None


def actor_seed(config: ExperimentConfig, index: int) -> int:
    """Distinct, reproducible env seeds per actor and per env within it."""
    return config.seed * 100_003 + index * 1_009


class Actor:
    def __init__(self, config: ExperimentConfig, index: int, addresses: ActorAddresses) -> None:
        self.config = config
        self.index = index
        self.actor_id = f"actor-{index}"
        self.addresses = addresses
        acfg = config.actors
        # Small-batch inference: more threads only fight the learner for the cores.
        torch.set_num_threads(1)
        seed = actor_seed(config, index)
        self.envs = LockstepEnvs(
            [make_env(config.env, seed=seed + i) for i in range(acfg.envs_per_actor)], seed=seed
        )
        self.spec = env_spec(self.envs.envs[0])
        space = SpaceSpec(self.spec.obs_dim, self.spec.action_dim)
        self.policy = make_policy(config.algo.name, space, config.algo.params())
        self.policy_version = 0
        self.learner_updates = 0
        self.steps = 0
        # Warm-up is shared: each actor takes its slice of the run's random steps.
        self.random_steps = math.ceil(acfg.warmup_steps / acfg.num_actors)
        self._rng = np.random.default_rng(seed)
        self._buffer = TransitionBuffer(acfg.insert_batch_size)
        self._pending_version: int | None = None

    def run(self, stop: threading.Event, max_steps: int | None = None) -> None:
        """Step until `stop` is set (or `max_steps` env steps); flushes what it holds on the way out."""
        sec = self.config.network.security
        replay = ReplayClient(self.addresses.replay, table=self.config.replay.table.name, security=sec)
        writer = replay.writer(self.actor_id, max_in_flight=self.config.actors.max_in_flight)
        params = ParamsClient(self.addresses.params, security=sec) if self.addresses.params else None
        subscription = params.subscribe() if params else None
        reporter = TelemetryReporter(
            self.addresses.telemetry,
            source=f"actor/{self.index}",
            security=sec,
            interval_s=self.config.telemetry.report_every_s,
        )
        window_start, window_steps = time.monotonic(), 0
        flushed = False
        try:
            while not stop.is_set() and (max_steps is None or self.steps < max_steps):
                if subscription is not None:
                    self._maybe_swap(subscription, writer, stop, episode_ended=False)
                actions = self._actions()
                rows, finished = self.envs.step(actions)
                self.steps += len(self.envs)
                window_steps += len(self.envs)
                self._buffer.add(rows)
                if self._buffer.full():
                    self._send(writer, stop)
                if finished:  # so the episode is counted at the step it ended, not at the last report
                    reporter.report({}, env_steps=self.steps)
                for ep in finished:
                    reporter.event("episode_return", ep.episode_return)
                    reporter.event("episode_length", ep.length)
                    if ep.success is not None:
                        reporter.event("episode_success", float(ep.success))
                if finished and subscription is not None:
                    self._maybe_swap(subscription, writer, stop, episode_ended=True)
                now = time.monotonic()
                if now - window_start >= self.config.telemetry.report_every_s:
                    reporter.report(
                        {
                            "steps_per_s": window_steps / (now - window_start),
                            "policy_version": self.policy_version,
                        },
                        env_steps=self.steps,
                    )
                    window_start, window_steps = now, 0
            if len(self._buffer):
                self._send(writer, stop)
            try:
                writer.flush(timeout=10.0)
            except TimeoutError:
                pass  # unacked batches are lost with this actor; replay keeps everything acked
            flushed = True
            reporter.report({}, env_steps=self.steps)
        finally:
            if subscription is not None:
                subscription.close()
            try:
                # After the flush above, waiting again would only double the shutdown time.
                writer.close(timeout=0 if flushed else 10.0)
            except TimeoutError:
                pass  # batches still unacked are dropped; not a reason to exit with an error
            replay.close()
            if params is not None:
                params.close()
            reporter.close(timeout=2.0)
            self.envs.close()

    def _send(self, writer, stop: threading.Event | None) -> None:
        """Hand the buffered rows to the writer, waiting out replay backpressure unless stopping."""
        batch = self._buffer.take()
        while True:
            try:
                writer.insert(batch, policy_version=self.policy_version, timeout=1.0)
                return
            except TimeoutError:
                if stop is not None and stop.is_set():
                    return

    def _actions(self) -> np.ndarray:
        if self.steps < self.random_steps and self.learner_updates == 0:
            return self._rng.uniform(-1.0, 1.0, size=(len(self.envs), self.spec.action_dim)).astype(
                np.float32
            )
        return self.policy.act(self.envs.obs, deterministic=False)

    def _maybe_swap(self, subscription, writer, stop: threading.Event, episode_ended: bool) -> None:
        latest = subscription.latest()
        if latest is None or latest.version <= self.policy_version:
            return
        if self.config.actors.weight_sync == "episode" and not episode_ended:
            return
        # Transitions already buffered were made by the old weights: send them under its tag.
        if len(self._buffer):
            self._send(writer, stop)
        self.policy.load_policy_state(latest.tensors)
        self.policy_version = latest.version
        self.learner_updates = int(latest.metadata.get(UPDATES_KEY, latest.version))
