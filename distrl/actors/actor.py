"""An actor process: steps its envs with the newest policy and streams transitions to replay.

What it owns: `envs_per_actor` envs stepped in lock-step, a CPU copy of the
policy, a weight subscription. What it sends: columnar transition batches
tagged with (actor_id, sequence, policy_version) to the replay shards, and
episode/throughput metrics to the coordinator. What it waits on: nothing but
replay backpressure (a full window of unacked batches).

Its identity (`identity.ActorIdentity`): an index for people and telemetry, and an
incarnation per process start that replay de-duplicates by and its env seeds derive from.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from distrl.actors.identity import ActorIdentity, env_seed
from distrl.actors.param_loading import ParamLoader
from distrl.actors.rollout import Rollout, TransitionBuffer
from distrl.algos import POLICY_PARAMS, Policy, make_policy
from distrl.config import ExperimentConfig
from distrl.envs import make_env
from distrl.experiment import experiment_fields, space_of
from distrl.params import ParamsClient
from distrl.params.names import updates_of
from distrl.replay.client import ReplayClient
from distrl.telemetry import TelemetryReporter


@dataclass
class ActorAddresses:
    replay: list[str]
    params: str | None
    telemetry: str | None = None


class Actor:
    def __init__(
        self, config: ExperimentConfig, identity: ActorIdentity | int, addresses: ActorAddresses
    ) -> None:
        """`identity`: an index alone (a launcher's number) starts a new incarnation of it."""
        self.config = config
        self.identity = identity if isinstance(identity, ActorIdentity) else ActorIdentity.start(identity)
        self.index = self.identity.index
        self.actor_id = self.identity.name
        self.addresses = addresses
        acfg = config.actors
        # Small-batch inference: more threads only fight the learner for the cores.
        torch.set_num_threads(1)
        seed = env_seed(config.seed, self.identity, acfg.envs_per_actor)
        envs = [make_env(config.env, seed=seed + i) for i in range(acfg.envs_per_actor)]
        space = space_of(envs[0])
        self.fields = experiment_fields(config, space)
        self.policy: Policy = make_policy(config.algo.name, space, config.algo.params())
        self.rollout = Rollout(envs, self.policy, self.fields, seed=seed)
        self.policy_version = 0
        self._params = ParamLoader(self.policy, self.actor_id)
        self.param_versions = self._params.loaded  # set name -> version loaded
        self.learner_updates = 0
        self.steps = 0
        # Warm-up is shared: each actor takes its slice of the run's random steps.
        self.random_steps = math.ceil(acfg.warmup_steps / acfg.num_actors)
        self._rng = np.random.default_rng(seed)
        self._buffer = TransitionBuffer(acfg.insert_batch_size)
        self.writer_stats = None  # the replay writer's counters once `run` has returned

    def run(self, stop: threading.Event, max_steps: int | None = None) -> None:
        """Step until `stop` is set (or `max_steps` env steps); flushes what it holds on the way out."""
        sec = self.config.network.security
        replay = ReplayClient(self.addresses.replay, table=self.config.replay.table.name, security=sec)
        writer = replay.writer(
            self.actor_id,
            incarnation=self.identity.incarnation,
            max_in_flight=self.config.actors.max_in_flight,
            compression=self.config.actors.compression,
        )
        params = ParamsClient(self.addresses.params, security=sec) if self.addresses.params else None
        if params is None and self.policy.required_params:
            raise ValueError(
                f"the policy needs the parameter sets {list(self.policy.required_params)} "
                "but the actor has no parameter server address"
            )
        subscriptions = (
            {name: params.subscribe(param_set=name) for name in self.policy.param_sets} if params else {}
        )
        reporter = TelemetryReporter(
            self.addresses.telemetry,
            source=self.identity.source,
            security=sec,
            interval_s=self.config.telemetry.report_every_s,
        )
        window_start, window_steps = time.monotonic(), 0
        flushed = False
        try:
            self._wait_for_required(subscriptions, stop)
            while not stop.is_set() and (max_steps is None or self.steps < max_steps):
                self._maybe_swap(subscriptions, writer, stop, episode_ended=False)
                warmup = self.steps < self.random_steps and self.learner_updates == 0
                out = self.rollout.step(warmup=warmup, rng=self._rng)
                self.steps += out.env_steps
                window_steps += out.env_steps
                self._buffer.add(out.transitions)
                if self._buffer.full():
                    self._send(writer, stop)
                if out.finished:  # so the episode is counted at the step it ended, not at the last report
                    reporter.report({}, env_steps=self.steps)
                for ep in out.finished:
                    reporter.event("episode_return", ep.episode_return)
                    reporter.event("episode_length", ep.length)
                    if ep.success is not None:
                        reporter.event("episode_success", float(ep.success))
                    for name, total in ep.signals.items():
                        reporter.event(f"episode_{name}", total)
                if out.finished:
                    self._maybe_swap(subscriptions, writer, stop, episode_ended=True)
                now = time.monotonic()
                if now - window_start >= self.config.telemetry.report_every_s:
                    reporter.report(
                        {
                            "steps_per_s": window_steps / (now - window_start),
                            "policy_version": self.policy_version,
                            "params_refused": self._params.refusals,
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
            for subscription in subscriptions.values():
                subscription.close()
            self.writer_stats = writer.stats()
            try:
                # After the flush above, waiting again would only double the shutdown time.
                writer.close(timeout=0 if flushed else 10.0)
            except TimeoutError:
                pass  # batches still unacked are dropped; not a reason to exit with an error
            replay.close()
            if params is not None:
                params.close()
            reporter.close(timeout=2.0)
            self.rollout.close()

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

    def _wait_for_required(self, subscriptions: dict, stop: threading.Event) -> None:
        """Before the first step: load every parameter set the policy cannot act without (and,
        when the learner pretrains on demos, the pretrained policy rather than initial weights)."""
        required = list(self.policy.required_params)
        if self.config.pretrain.bc_steps and POLICY_PARAMS in subscriptions and POLICY_PARAMS not in required:
            required.append(POLICY_PARAMS)
        for name in required:
            while not stop.is_set():
                try:
                    latest = subscriptions[name].wait_for_version(
                        self._params.refused.get(name, 0) + 1, timeout=0.5
                    )
                except TimeoutError:
                    continue
                if self._load(name, latest):
                    break

    def _maybe_swap(self, subscriptions: dict, writer, stop: threading.Event, episode_ended: bool) -> None:
        if self.config.actors.weight_sync == "episode" and not episode_ended:
            return
        for name, subscription in subscriptions.items():
            latest = subscription.latest()
            if not self._params.is_new(name, latest):
                continue
            # Transitions already buffered were made by the old parameters: send them under their tag.
            if len(self._buffer):
                self._send(writer, stop)
            self._load(name, latest)

    def _load(self, name: str, latest) -> bool:
        """Load a set's new version; False where the policy refused it (the old one is kept)."""
        if not self._params.load(name, latest):
            return False
        if name == POLICY_PARAMS:
            self.policy_version = latest.version
            self.learner_updates = updates_of(latest.metadata, latest.version)
        return True
