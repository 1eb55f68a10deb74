"""The learner: prefetched replay batches in, algorithm updates, versioned weights out.

What it owns: the algorithm (networks, optimizers) on CUDA when present, its
checkpoints. What it sends: policy weights to the parameter server every
`publish_every` updates (version = updates + 1, with the update count in the
metadata), priority updates back to the shard owning each item, its version
with every sample request (shards stamp it on new items), metrics to the
coordinator. What it waits on: replay batches (the rate limiter holds them
back when the learner runs ahead of the actors' data).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from distrl.algos import POLICY_PARAMS, ParamSetSpec, make_algorithm
from distrl.config import ExperimentConfig
from distrl.experiment import env_space, experiment_fields
from distrl.learners import checkpoint as ckpt
from distrl.learners.demos import DemoTable, split_batch
from distrl.params import UPDATES_KEY, ParamsClient
from distrl.replay.client import NO_INCARNATION, LearnerBatch, ReplayClient, ShardInfo
from distrl.telemetry import TelemetryReporter

log = logging.getLogger(__name__)

PRIORITY_EPS = 1e-6
# Per-shard replay metrics (`replay/<i>/...`) go out for the first this many shards only, so a
# large deployment does not flood the coordinator's metric names.
MAX_SHARD_METRICS = 64


class Learner:
    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        replay: list[str],
        params: str | None,
        telemetry: str | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.addresses = (replay, params, telemetry)
        if config.learner.threads:
            torch.set_num_threads(config.learner.threads)
        self.space = env_space(config.env)
        self.fields = experiment_fields(config, self.space)
        self.algo = make_algorithm(config.algo.name, self.space, config.algo.params(), config.learner.device)
        self.param_sets: tuple[ParamSetSpec, ...] = tuple(self.algo.param_sets())
        if POLICY_PARAMS not in {p.name for p in self.param_sets}:
            raise ValueError(f"algorithm {config.algo.name!r} publishes no {POLICY_PARAMS!r} parameter set")
        self.updates = 0
        self.version = 0
        # The newest version published of every parameter set ("policy": `version`).
        self.set_versions: dict[str, int] = {}
        self._republish: set[str] = set()
        # The newest report window that held updates (what the coordinator last heard from us).
        self.last_metrics: dict[str, float] = {}
        self.resumed_from: Path | None = None
        latest = ckpt.load_latest_checkpoint(self.checkpoint_dir)
        if latest is not None:
            self._restore(*latest)
        demos = config.demos
        self.demos = (
            DemoTable(
                demos.path,
                self.fields,
                self.algo.device,
                seed=config.seed,
                env_id=config.env.id,
                allow_env_mismatch=demos.allow_env_mismatch,
            )
            if demos.path is not None
            else None
        )
        if config.pretrain.bc_steps and not self.algo.can_pretrain:
            raise ValueError(f"pretrain.bc_steps: algorithm {config.algo.name!r} has no pretraining on demos")

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> Path:
        payload = {
            "algo": self.algo.state_dict(),
            "updates": self.updates,
            "version": self.version,
            "set_versions": dict(self.set_versions),
            "rng": ckpt.rng_state(),
            "config": self.config.redacted_dump(),
            "algo_name": self.config.algo.name,
            "space": [self.space.obs_dim, self.space.action_dim],
            "signals": list(self.space.signals),
            "max_episode_steps": self.space.max_episode_steps,
        }
        return ckpt.save_checkpoint(
            self.checkpoint_dir, self.updates, payload, self.config.learner.keep_checkpoints
        )

    def _restore(self, path: Path, state: dict) -> None:
        self.algo.load_state_dict(state["algo"])
        self.updates = int(state["updates"])
        self.version = int(state["version"])
        self.set_versions = {str(k): int(v) for k, v in state.get("set_versions", {}).items()}
        ckpt.set_rng_state(state["rng"])
        self.resumed_from = path
        log.info("resumed from %s at %d updates", path, self.updates)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, max_updates: int | None = None) -> None:
        cfg = self.config
        replay_addrs, params_addr, telemetry_addr = self.addresses
        sec = cfg.network.security
        replay = ReplayClient(
            replay_addrs, table=cfg.replay.table.name, security=sec, prefetch=cfg.replay.prefetch
        )
        params = ParamsClient(params_addr, security=sec) if params_addr else None
        reporter = TelemetryReporter(
            telemetry_addr, source="learner/0", security=sec, interval_s=cfg.telemetry.report_every_s
        )
        utd = self.algo.batches_per_update
        mix_demos = self.demos is not None and cfg.demos.placement == "learner"
        online_items, demo_items = split_batch(cfg.learner.batch_size, cfg.demos.ratio if mix_demos else 0.0)
        batch_items, demo_items = online_items * utd, demo_items * utd
        prioritized = cfg.replay.table.sampler == "prioritized"
        warned_priorities = False
        limit = max_updates if max_updates is not None else cfg.train.max_updates
        window = _Window()
        try:
            if self.demos is not None and cfg.demos.placement == "replay":
                # In the background: the rate limiter lets the demos in only as the learner samples.
                threading.Thread(target=self._insert_demos, args=(replay, stop), daemon=True).start()
            if self.updates == 0 and cfg.pretrain.bc_steps:
                reporter.report(self._pretrain(stop), updates=0)
            if params is not None:
                self._publish(params, first=True)
            while not stop.is_set() and (limit is None or self.updates < limit):
                t0 = time.perf_counter()
                try:
                    batch = replay.sample(batch_items, timeout=0.5, learner_version=self.version)
                except TimeoutError:  # no data yet (warm-up, rate limiter): check for stop, wait on
                    window.idle(time.perf_counter() - t0)
                    continue
                t1 = time.perf_counter()
                tensors = self._to_device(batch)
                demo_batch = self.demos.sample(demo_items) if mix_demos and demo_items else None
                metrics = self.algo.update(tensors, demo_batch)
                self.updates += 1
                priorities = self.algo.priorities() if prioritized else None
                if priorities is not None:
                    td = priorities.detach().abs().float().cpu().numpy()
                    replay.update_priorities(batch.shard, batch.keys, td + PRIORITY_EPS)
                elif prioritized and not warned_priorities:
                    warned_priorities = True
                    log.warning(
                        "replay.table.sampler is prioritized but algorithm %r gives no priorities: "
                        "items keep their insert priority (sampling stays uniform)",
                        cfg.algo.name,
                    )
                actor_lag, sample_age = policy_lag(batch, self.version)
                window.add(
                    metrics,
                    wait_s=t1 - t0,
                    step_s=time.perf_counter() - t1,
                    actor_lag=actor_lag,
                    sample_age=sample_age,
                )
                if params is not None:
                    self._publish_due(params)
                if self.updates % cfg.learner.checkpoint_every == 0:
                    self.save()
                if window.elapsed() >= cfg.telemetry.report_every_s:
                    reporter.report(
                        self._keep(window.flush(self._replay_stats(replay))), updates=self.updates
                    )
        finally:
            self.save()
            if params is not None:
                try:
                    self._publish(params, [POLICY_PARAMS])
                except grpc.RpcError:
                    pass
                params.close()
            replay.close()
            reporter.report(self._keep(window.flush({})), updates=self.updates)
            reporter.close(timeout=2.0)

    def _keep(self, metrics: dict[str, float]) -> dict[str, float]:
        if "updates_per_s" in metrics:
            self.last_metrics = metrics
        return metrics

    def _pretrain(self, stop: threading.Event) -> dict[str, float]:
        """Behaviour cloning of the policy on the demos before any RL update."""
        assert self.demos is not None
        steps, batch = self.config.pretrain.bc_steps, self.config.pretrain.bc_batch_size
        metrics: dict[str, float] = {}
        for step in range(steps):
            if stop.is_set():
                break
            metrics = self.algo.pretrain_step(self.demos.sample(batch))
            if step % 1000 == 0:
                log.info("bc step %d/%d: %s", step, steps, metrics)
        log.info("behaviour cloning done after %d steps: %s", steps, metrics)
        return {f"pretrain/{k}": v for k, v in metrics.items()}

    def _insert_demos(self, replay: ReplayClient, stop: threading.Event) -> None:
        """Put the demos into replay once; a restarted learner's resend is recognised by sequence."""
        assert self.demos is not None
        data = self.demos.transitions()
        # No incarnation: every learner life is the same writer, so a restart's resend is a duplicate.
        writer = replay.writer("demos", first_sequence=0, incarnation=NO_INCARNATION)
        chunk = 256
        try:
            start = 0
            while start < self.demos.size and not stop.is_set():
                try:
                    writer.insert({k: v[start : start + chunk] for k, v in data.items()}, timeout=1.0)
                except TimeoutError:
                    continue  # the rate limiter holds inserts until the learner samples
                start += chunk
            writer.flush(timeout=5.0)
            log.info("inserted %d demo transitions into replay", self.demos.size)
        except Exception as exc:  # a background thread must not die silently
            log.warning("inserting demos into replay failed: %s", exc)
        finally:
            try:
                writer.close(timeout=0)
            except TimeoutError:
                pass

    def _publish_due(self, params: ParamsClient) -> None:
        """Publish the parameter sets due at this update; a params outage skips them, never learning."""
        due = [
            p.name
            for p in self.param_sets
            if p.name in self._republish
            or (p.every_updates is None and self.updates % self.config.learner.publish_every == 0)
            or (p.every_updates and self.updates % p.every_updates == 0)
        ]
        if not due:
            return
        try:
            self._publish(params, due)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            # The server may come back empty: sets published once go out again with the next publish.
            self._republish.update(p.name for p in self.param_sets)
            log.warning("publish skipped: parameter server unavailable (%s)", exc.code().name)

    def _publish(self, params: ParamsClient, names: list[str] | None = None, first: bool = False) -> None:
        """Publish the named parameter sets (all of them by default); "policy" as version updates + 1."""
        names = names if names is not None else [p.name for p in self.param_sets]
        for name in names:
            latest = self.version if name == POLICY_PARAMS else self.set_versions.get(name, 0)
            version = self.updates + 1 if name == POLICY_PARAMS else latest + 1
            if first:
                # A restarted learner must not go backwards on a server that outlived it.
                try:
                    version = max(version, params.info(param_set=name).version + 1)
                except grpc.RpcError:
                    pass
            if version <= latest and name not in self._republish:
                continue
            version = max(version, latest + 1)
            published = params.publish(
                self.algo.params(name),
                version=version,
                metadata={UPDATES_KEY: str(self.updates)},
                param_set=name,
            )
            self.set_versions[name] = published
            if name == POLICY_PARAMS:
                self.version = published
            self._republish.discard(name)

    def _to_device(self, batch) -> dict[str, torch.Tensor]:
        """Every field of the sampled batch (the experiment's declared fields) on the algorithm's device."""
        device = self.algo.device
        pin = device.type == "cuda"
        out = {}
        for name, arr in batch.fields.items():
            # Arrays may be read-only views of the received message; torch wants writable memory.
            t = torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr))
            out[name] = t.pin_memory().to(device, non_blocking=True) if pin else t
        out["weights"] = torch.from_numpy(batch.weights.astype(np.float32)).to(device)
        return out

    def _replay_stats(self, replay: ReplayClient) -> dict[str, float]:
        try:
            infos = replay.info()
        except grpc.RpcError:
            return {}
        return replay_metrics(infos, self.config.replay.table.name)


def replay_metrics(infos: list[ShardInfo], table: str) -> dict[str, float]:
    """Totals of `table` over the shards that answered, and `replay/<i>/...` per shard.

    Per shard (the first MAX_SHARD_METRICS): size, capacity, the achieved samples per
    insert and, when the table has a rate limit, its target. The coordinator logs them
    as `learner/replay/<i>/size` etc.; a shard that does not answer reports nothing.
    """
    by_shard = [(info.index, t) for info in infos for t in info.tables if t.name == table]
    tables = [t for _, t in by_shard]
    inserts = sum(t.inserts for t in tables)
    samples = sum(t.samples for t in tables)
    out = {
        "replay_size": float(sum(t.size for t in tables)),
        "replay_capacity": float(sum(t.capacity for t in tables)),
        "samples_per_insert": samples / inserts if inserts else 0.0,
        "replay_live_shards": float(len(tables)),
    }
    for i, t in by_shard:
        if i >= MAX_SHARD_METRICS:
            continue
        out[f"replay/{i}/size"] = float(t.size)
        out[f"replay/{i}/capacity"] = float(t.capacity)
        out[f"replay/{i}/samples_per_insert"] = t.samples_per_insert
        if t.target_samples_per_insert > 0:  # 0: the table has no rate limit
            out[f"replay/{i}/target_samples_per_insert"] = t.target_samples_per_insert
    return out


def policy_lag(batch: LearnerBatch, learner_version: int) -> tuple[np.ndarray, np.ndarray]:
    """(actor lag, sample age) of each item, in policy versions.

    Actor lag: the learner's version when the item was inserted less the version that
    produced it (how far behind the actors act). Sample age: the learner's version now
    less the one at insertion (how long the item waited in replay). They add up to the
    version gap between the learner and the item's policy.
    """
    inserted = batch.learner_version
    return inserted - batch.policy_version, learner_version - inserted


class _Window:
    """Metrics accumulated between two reports. Each metric is averaged over the updates that
    reported it: an actor step every 3rd update, or a shield fit every 1000th, is not diluted by
    the updates without one."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._n = 0
        self._wait = self._step = 0.0
        self._lags = {"actor_lag": _Versions(), "sample_age": _Versions()}

    def add(
        self,
        metrics: dict[str, float],
        wait_s: float,
        step_s: float,
        actor_lag: np.ndarray,
        sample_age: np.ndarray,
    ) -> None:
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._counts[k] = self._counts.get(k, 0) + 1
        self._n += 1
        self._wait += wait_s
        self._step += step_s
        self._lags["actor_lag"].add(actor_lag)
        self._lags["sample_age"].add(sample_age)

    def idle(self, wait_s: float) -> None:
        self._wait += wait_s

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def flush(self, extra: dict[str, float]) -> dict[str, float]:
        elapsed = max(self.elapsed(), 1e-9)
        out = dict(extra)
        if self._n:
            out.update({k: v / self._counts[k] for k, v in self._sums.items()})
            out["updates_per_s"] = self._n / elapsed
            out["data_wait_fraction"] = self._wait / elapsed
            out["data_wait_ms"] = 1000 * self._wait / self._n
            out["update_ms"] = 1000 * self._step / self._n
            for name, versions in self._lags.items():
                out[f"{name}_mean"] = versions.total / max(1, versions.count)
                out[f"{name}_max"] = float(versions.high)
        self.__init__()
        return out


class _Versions:
    """Sum, count and max of per-item version gaps over a report window."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.high = 0

    def add(self, gaps: np.ndarray) -> None:
        if len(gaps):
            self.total += float(gaps.sum())
            self.count += len(gaps)
            self.high = max(self.high, int(gaps.max()))
