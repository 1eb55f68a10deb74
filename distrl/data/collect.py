"""Demonstration collection: roll a scripted controller or a trained policy out and stream the
episodes into a Zarr store (`distrl demos collect ENV_ID --episodes N --out OUT.zarr`).

Every episode is an *attempt* with its own index `i`: the env resets with seed `seed + i` and
action noise draws from a generator seeded with `(seed, i)`. Attempts are committed to the
store in index order (results that finish early wait for the ones before them), so the
store holds the first `episodes` kept attempts whatever the number of worker processes:
`--workers 4` writes the same episodes as `--workers 1`, only sooner.

An attempt is a success when the env reported `info["success"]` on any of its steps. Failed
attempts are dropped unless `keep_failures`; envs without a success signal keep every
attempt. Collection stops once `episodes` are kept or `max_attempts` attempts are done.
`stop_on_success` ends an episode at its first success as a time limit would (truncated);
`terminate_on_success` builds the env with `env.terminate_on_success`, so it ends there as
terminal, the way a run with that option sees its own episodes end.

Workers are processes from the spawn context; each builds its own env and policy from a
`CollectPlan` (plain data: the env config and, for a trained policy, its weights as numpy
arrays) and sends finished episodes back as numpy arrays. The parent is the only writer. It
commits each episode as it arrives (`DemoWriter` without buffering) and then rewrites the
collection's statistics in the store's `source` attribute, so a crash leaves a readable store
whose attributes describe what it holds.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import zarr

from distrl.algos.base import Policy, PolicyStep, SpaceSpec
from distrl.data.format import DatasetError, DatasetInfo, DatasetSource, DemoWriter, remove_store
from distrl.envs.config import EnvConfig

SCRIPTED = "scripted"
# What the local launcher writes beside a run's checkpoints (distrl.runtime.local.CONFIG_FILE;
# data/ does not import runtime/).
RUN_CONFIG_FILE = "config.yaml"
# Default attempt budget per wanted episode when failures are dropped.
ATTEMPTS_PER_EPISODE = 3
# Episode lengths for scripted controllers when none is given: a few times what the
# controller needs (Lift succeeds in ~35 steps, PickPlaceCan in ~110-130).
SCRIPTED_MAX_STEPS = {"Lift": 80, "PickPlaceCan": 200}
# How long the parent waits for a worker to stop after being told to.
_JOIN_TIMEOUT_S = 10.0


class CollectError(DatasetError):
    """Collection cannot start or continue; the message names the problem."""


# --- what to collect -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedPolicy:
    """A trained distrl policy, loaded from a run directory: what a worker needs to act."""

    run_dir: str
    checkpoint: str
    updates: int
    algo: str
    algo_params: dict[str, Any]
    space: SpaceSpec
    # Every parameter set the learner publishes (`Algorithm.params`): plain float32 arrays,
    # cheap to send to spawned workers.
    params: dict[str, dict[str, np.ndarray]]
    env: EnvConfig


@dataclass(frozen=True)
class CollectPlan:
    """Everything a worker needs, as plain picklable data."""

    env: EnvConfig
    policy: str  # "scripted:<Task>" or the run directory
    trained: TrainedPolicy | None
    episodes: int
    max_attempts: int
    seed: int = 0
    noise: float = 0.0
    keep_failures: bool = False
    stop_on_success: bool = False


@dataclass
class CollectResult:
    path: Path
    episodes: int  # kept and written
    wanted: int
    steps: int
    attempts: int
    successes: int | None  # None: the env has no success signal
    seconds: float
    interrupted: bool = False
    episode_seeds: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        if self.successes is None or self.attempts == 0:
            return None
        return self.successes / self.attempts

    @property
    def complete(self) -> bool:
        return self.episodes >= self.wanted


def load_trained_policy(run_dir: str | Path, checkpoint: str | Path | None = None) -> TrainedPolicy:
    """Read a run's config and a learner checkpoint (default: the newest) into a TrainedPolicy."""
    from distrl.algos import AlgorithmConfigError, make_algorithm
    from distrl.config import ConfigError, load_config
    from distrl.learners import checkpoint as ckpt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CollectError(f"--policy {run_dir}: no such run directory (give 'scripted' or a run directory)")
    config_path = run_dir / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise CollectError(f"--policy {run_dir}: not a distrl run directory (no {RUN_CONFIG_FILE})")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise CollectError(f"--policy {run_dir}: {exc}") from None
    if checkpoint is None:
        # The newest readable one: a truncated newest file falls back to the one before (with a warning).
        latest = ckpt.load_latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise CollectError(
                f"--policy {run_dir}: no readable learner checkpoint in {run_dir / 'checkpoints'}"
            )
        path, state = latest
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise CollectError(f"--checkpoint {path}: no such file")
        state = None
    try:
        if state is None:
            state = ckpt.load_checkpoint(path)
        space = ckpt.checkpoint_space(state)
        algo_name = str(state.get("algo_name", config.algo.name))
        algo = make_algorithm(algo_name, space, config.algo.params(), "cpu")
        algo.load_state_dict(state["algo"])
        params = {
            p.name: {k: np.asarray(v) for k, v in algo.params(p.name).items()} for p in algo.param_sets()
        }
    except (RuntimeError, KeyError, ValueError, AlgorithmConfigError) as exc:
        raise CollectError(f"{path}: not a usable learner checkpoint for {config_path}: {exc}") from None
    return TrainedPolicy(
        run_dir=str(run_dir.resolve()),
        checkpoint=str(path.resolve()),
        updates=int(state.get("updates", 0)),
        algo=algo_name,
        algo_params=config.algo.params(),
        space=space,
        params=params,
        env=config.env,
    )


def plan_collection(
    env_id: str,
    *,
    episodes: int,
    policy: str = SCRIPTED,
    checkpoint: str | Path | None = None,
    max_steps: int | None = None,
    max_attempts: int | None = None,
    seed: int = 0,
    noise: float = 0.0,
    keep_failures: bool = False,
    stop_on_success: bool = False,
    terminate_on_success: bool = False,
) -> CollectPlan:
    """Check the options and resolve the env config and the policy (a run's weights are loaded here)."""
    from distrl.data.scripted import ScriptedPolicyError, scripted_task

    if episodes < 1:
        raise CollectError(f"--episodes must be at least 1, got {episodes}")
    if max_attempts is not None and max_attempts < 1:
        raise CollectError(f"--max-attempts must be at least 1, got {max_attempts}")
    if max_steps is not None and max_steps < 1:
        raise CollectError(f"--max-steps must be at least 1, got {max_steps}")
    if not 0.0 <= noise < float("inf"):
        raise CollectError(f"--noise must be a standard deviation >= 0, got {noise}")
    if seed < 0:
        raise CollectError(f"--seed must be >= 0, got {seed}")
    try:
        env = EnvConfig(id=env_id)
    except ValueError as exc:
        raise CollectError(f"env id {env_id!r}: {exc}") from None
    trained = None
    if policy == SCRIPTED:
        if checkpoint is not None:
            raise CollectError("--checkpoint only applies to --policy RUN_DIR")
        try:
            task = scripted_task(env).task
        except ScriptedPolicyError as exc:
            _check_env_exists(env)  # a misspelt id deserves make_env's "did you mean"
            raise CollectError(str(exc)) from None
        label = f"{SCRIPTED}:{task}"
        max_steps = max_steps or SCRIPTED_MAX_STEPS.get(task)
    else:
        trained = load_trained_policy(policy, checkpoint)
        if trained.env.id != env.id:
            raise CollectError(
                f"--policy {policy}: the run was trained on {trained.env.id}, not {env.id}; "
                f"collect with ENV_ID {trained.env.id}"
            )
        env = trained.env  # the run's own options (robot, controller, reward shaping, ...)
        label = trained.run_dir
    changes: dict[str, Any] = {}
    if max_steps is not None:
        changes["max_episode_steps"] = max_steps
    if terminate_on_success:
        changes["terminate_on_success"] = True
    if changes:
        try:
            env = EnvConfig.model_validate({**env.model_dump(exclude_unset=True), **changes})
        except ValueError as exc:
            raise CollectError(f"env {env.id}: {exc}") from None
    if max_attempts is None:
        max_attempts = episodes if keep_failures else ATTEMPTS_PER_EPISODE * episodes
    return CollectPlan(
        env=env,
        policy=label,
        trained=trained,
        episodes=episodes,
        max_attempts=max_attempts,
        seed=seed,
        noise=noise,
        keep_failures=keep_failures,
        stop_on_success=stop_on_success,
    )


def _check_env_exists(env: EnvConfig) -> None:
    from distrl.envs import make_env

    try:
        make_env(env).close()
    except ValueError as exc:
        raise CollectError(str(exc)) from None


# --- one process's rollouts ------------------------------------------------------------------


class _ScriptedDecisions:
    """A scripted controller as a rollout policy: one env, poses read from the simulator."""

    param_sets: tuple[str, ...] = ()
    required_params: tuple[str, ...] = ()
    episode_sums: tuple[str, ...] = ()

    def __init__(self, scripted: Any) -> None:
        self._scripted = scripted

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        return PolicyStep(np.asarray(self._scripted.act(obs[0]), dtype=np.float32)[None])

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        return self.act(obs)

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        pass

    def reset(self, mask: np.ndarray) -> None:
        if mask[0]:
            self._scripted.reset()  # after the env's reset: it reads the new object pose

    def load_params(self, param_set: str, tensors: Any) -> None:
        raise ValueError("a scripted controller loads no parameters")


class _NoisyDecisions:
    """Gaussian noise on another policy's (deterministic) env actions, clipped to [-1, 1]."""

    def __init__(self, policy: Policy, noise: float) -> None:
        self._policy = policy
        self.noise = noise
        self.rng = np.random.default_rng()
        self.param_sets = policy.param_sets
        self.required_params = policy.required_params
        self.episode_sums = policy.episode_sums

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        step = self._policy.act(obs, deterministic=deterministic)
        if self.noise <= 0:
            return step
        actions = np.asarray(step.env_actions, dtype=np.float32)
        noisy = np.clip(actions + self.rng.normal(0.0, self.noise, actions.shape), -1.0, 1.0)
        return PolicyStep(noisy.astype(np.float32), step.extras)

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        return self._policy.warmup(obs, rng)

    def reset(self, mask: np.ndarray) -> None:
        self._policy.reset(mask)

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        self._policy.observe(reward, ended)

    def load_params(self, param_set: str, tensors: Any) -> None:
        self._policy.load_params(param_set, tensors)


class _TruncateOnSuccess(gymnasium.Wrapper):
    """Ends an episode at its first success as a time limit would (`stop_on_success`)."""

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, bool(truncated) or bool(info.get("success", False)), info


def _trained_policy(trained: TrainedPolicy) -> Policy:
    from distrl.algos import make_policy

    policy = make_policy(trained.algo, trained.space, trained.algo_params)
    for name, tensors in trained.params.items():
        policy.load_params(name, tensors)
    return policy


@dataclass
class Attempt:
    """One finished episode as numpy arrays (the per-step keys of a dataset episode)."""

    index: int
    seed: int
    success: bool | None
    episode: dict[str, np.ndarray]


class _Rollouts:
    """An env and a policy in one process, running attempts by index through the rollout core."""

    def __init__(self, plan: CollectPlan, env: gymnasium.Env | None = None) -> None:
        from distrl.actors.rollout import Rollout
        from distrl.envs import env_spec, make_env

        self.plan = plan
        env = env if env is not None else make_env(plan.env, seed=plan.seed)
        self.env = env
        self.spec = env_spec(env)
        if plan.trained is None:
            from distrl.data.scripted import make_scripted_policy

            base: Policy = _ScriptedDecisions(make_scripted_policy(plan.env, env))
        else:
            base = _trained_policy(plan.trained)
        self.policy = _NoisyDecisions(base, plan.noise)
        if plan.stop_on_success:
            env = _TruncateOnSuccess(env)
        self.rollout = Rollout([env], self.policy, auto_reset=False, record_steps=True)

    def run(self, index: int, should_stop: Callable[[], bool] = lambda: False) -> Attempt | None:
        """Attempt `index`; None if `should_stop` turned true before it ended."""
        plan = self.plan
        seed = plan.seed + index
        self.policy.rng = np.random.default_rng([plan.seed, index])
        self.rollout.reset([seed])
        rows: list[dict[str, Any]] = []
        while True:
            if should_stop():
                return None
            out = self.rollout.step(deterministic=True)
            rows += [row for _, row in out.step_rows]
            if out.finished:
                break
        n = len(rows)
        episode = {
            "obs": np.asarray([r["obs"] for r in rows], dtype=np.float32),
            "action": np.asarray([r["action"] for r in rows], dtype=np.float32),
            "reward": np.asarray([r["reward"] for r in rows], dtype=np.float32),
            "next_obs": np.asarray([r["next_obs"] for r in rows], dtype=np.float32),
            "terminated": np.zeros(n, dtype=bool),
            "truncated": np.zeros(n, dtype=bool),
        }
        terminated = bool(rows[-1]["terminated"])
        episode["terminated"][-1] = terminated
        episode["truncated"][-1] = not terminated
        for name in self.spec.signals:
            episode[name] = np.asarray([r[name] for r in rows], dtype=np.float32)
        flags = [bool(r.get("success", False)) for r in rows]
        has_success = self.spec.has_success
        if has_success:
            episode["success"] = np.asarray(flags, dtype=bool)
        return Attempt(index, seed, any(flags) if has_success else None, episode)

    def close(self) -> None:
        self.rollout.close()


# --- many processes ----------------------------------------------------------------------------


@dataclass
class _WorkerFailed:
    worker: int
    message: str


def _worker_main(
    plan: CollectPlan,
    worker: int,
    next_index: Any,  # a multiprocessing Value('q') shared by all workers
    stop: Any,  # a multiprocessing Event
    results: Any,  # a multiprocessing Queue
) -> None:
    """A worker process: claim attempt indices until none are left or the parent says stop."""
    try:
        import torch

        torch.set_num_threads(1)  # K workers on K cores: one thread each
        rollouts = _Rollouts(plan)
        try:
            while not stop.is_set():
                with next_index.get_lock():
                    index = int(next_index.value)
                    next_index.value += 1
                if index >= plan.max_attempts:
                    break
                attempt = rollouts.run(index, stop.is_set)
                if attempt is None:
                    break
                results.put(attempt)
        finally:
            rollouts.close()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        pass
    except BaseException:
        results.put(_WorkerFailed(worker, traceback.format_exc()))


class _WorkerPool:
    """K spawned workers and the queue their attempts arrive on."""

    def __init__(self, plan: CollectPlan, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self._next_index = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(plan, i, self._next_index, self._stop, self._results),
                name=f"distrl-collect-{i}",
                daemon=True,
            )
            for i in range(workers)
        ]
        for proc in self._procs:
            proc.start()

    def attempts(self) -> Iterator[Attempt]:
        """Attempts as they finish, in any order; ends when every worker has exited."""
        while True:
            try:
                item = self._results.get(timeout=0.2)
            except queue.Empty:
                dead = [p for p in self._procs if p.exitcode not in (None, 0)]
                if dead:
                    raise CollectError(
                        f"collection worker {dead[0].name} died (exit code {dead[0].exitcode})"
                    ) from None
                if all(p.exitcode == 0 for p in self._procs):
                    # A worker's last put may still be in the pipe: drain before ending.
                    try:
                        item = self._results.get(timeout=0.5)
                    except queue.Empty:
                        return
                else:
                    continue
            if isinstance(item, _WorkerFailed):
                raise CollectError(f"collection worker {item.worker} failed:\n{item.message}")
            yield item

    def close(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        # Keep draining: a worker blocked on a full pipe could not exit otherwise.
        while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:
            try:
                self._results.get(timeout=0.1)
            except queue.Empty:
                pass
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=1.0)
        self._results.close()
        self._results.cancel_join_thread()


# --- the parent: order, filter, write ----------------------------------------------------------


def _obs_layout(env: gymnasium.Env, obs_keys: list[str] | None, obs_dim: int) -> tuple[list[str], list[int]]:
    """Names and flat sizes of the parts of the observation (one part 'obs' when unnamed)."""
    if obs_keys:
        dims: list[int] | None = None
        # robosuite and dm_control envs keep (key, slice, ...) per part of the flat observation.
        layout = getattr(env.unwrapped, "_layout", None)
        if layout:
            dims = [int(where.stop - where.start) for _, where, *_ in layout]
        elif isinstance(env.unwrapped.observation_space, gymnasium.spaces.Dict):
            space = env.unwrapped.observation_space
            dims = [int(gymnasium.spaces.flatdim(space[k])) for k in obs_keys]
        if dims is not None and len(dims) == len(obs_keys) and sum(dims) == obs_dim:
            return list(obs_keys), dims
    return ["obs"], [obs_dim]


class _Progress:
    """A rich progress bar on stderr: kept episodes, attempts, successes and the success rate."""

    def __init__(self, description: str, total: int, enabled: bool) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("episodes  {task.fields[attempts]} attempts  {task.fields[successes]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(description, total=total, attempts=0, successes="")
        self._bar.start()

    def update(self, kept: int, attempts: int, successes: int | None) -> None:
        if self._bar is None:
            return
        rate = (
            "" if successes is None or not attempts else f"{successes} successes ({successes / attempts:.0%})"
        )
        self._bar.update(self._task, completed=kept, attempts=attempts, successes=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def collect(
    plan: CollectPlan,
    out: str | Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> CollectResult:
    """Run `plan` and write the kept episodes to `out` (see the module doc).

    Raises CollectError when nothing could be kept or a worker fails; on a worker failure the
    store keeps the episodes committed before it. Ctrl-C stops early and keeps what is written.
    """
    if workers < 1:
        raise CollectError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CollectError(f"{out}: already exists (use --overwrite to replace it)")
    start = time.perf_counter()
    workers = min(workers, plan.max_attempts)
    # One env in the parent: it checks the env and the policy before any store or process
    # exists, gives the observation layout, and runs the attempts itself when workers == 1.
    try:
        local = _Rollouts(plan)
    except ValueError as exc:  # unknown ids, bad options, unsupported scripted setups
        raise CollectError(str(exc)) from None
    try:
        info = _dataset_info(plan, local, workers)
    except BaseException:
        local.close()
        raise
    spec = local.spec
    result = CollectResult(
        path=out,
        episodes=0,
        wanted=plan.episodes,
        steps=0,
        attempts=0,
        successes=0 if spec.has_success else None,
        seconds=0.0,
    )
    pool = _WorkerPool(plan, workers) if workers > 1 else None
    if pool is not None:
        local.close()
    bar = _Progress(f"collect {plan.env.id}", plan.episodes, progress)
    writer: DemoWriter | None = None
    try:
        writer = DemoWriter(out, info, overwrite=overwrite)
        arrivals = pool.attempts() if pool is not None else _in_order(local, plan.max_attempts)
        try:
            _commit_in_order(arrivals, plan, writer, result, bar)
        except KeyboardInterrupt:
            result.interrupted = True
        writer.close()
    except BaseException as exc:
        if writer is not None:
            writer.close()
            if result.episodes == 0:
                remove_store(out)
            elif isinstance(exc, CollectError):
                raise CollectError(
                    f"{exc}\n({out} keeps the {result.episodes} episodes written before)"
                ) from None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
        else:
            local.close()
    result.seconds = time.perf_counter() - start
    if result.episodes == 0:
        remove_store(out)
        if result.interrupted:
            raise CollectError("interrupted before any episode was kept; nothing written")
        raise CollectError(
            f"no episode kept in {result.attempts} attempts (success rate 0%); nothing written. "
            f"Try a larger --max-attempts or --max-steps, or --keep-failures"
        )
    return result


def _dataset_info(plan: CollectPlan, rollouts: _Rollouts, workers: int) -> DatasetInfo:
    """The store's attributes; checks the env has a time limit and fits the trained policy."""
    spec = rollouts.spec
    if spec.max_episode_steps is None:
        raise CollectError(f"{plan.env.id} has no time limit; give --max-steps")
    trained = plan.trained
    if trained is not None and (trained.space.obs_dim, trained.space.action_dim) != (
        spec.obs_dim,
        spec.action_dim,
    ):
        raise CollectError(
            f"the checkpoint's policy takes {trained.space.obs_dim} observation values and gives "
            f"{trained.space.action_dim} action values, but {plan.env.id} has {spec.obs_dim} and "
            f"{spec.action_dim}"
        )
    obs_keys, obs_dims = _obs_layout(rollouts.env, spec.obs_keys, spec.obs_dim)
    options: dict[str, Any] = {
        "policy": plan.policy,
        "checkpoint": trained.checkpoint if trained else None,
        "checkpoint_updates": trained.updates if trained else None,
        "seed": plan.seed,
        "noise": plan.noise,
        "keep_failures": plan.keep_failures,
        "stop_on_success": plan.stop_on_success,
        "max_attempts": plan.max_attempts,
        "workers": workers,
    }
    return DatasetInfo(
        env=plan.env,
        obs_keys=obs_keys,
        obs_key_dims=obs_dims,
        action_low=[-1.0] * spec.action_dim,
        action_high=[1.0] * spec.action_dim,
        source=DatasetSource("collect", trained.checkpoint if trained else None, options),
    )


def _in_order(rollouts: _Rollouts, max_attempts: int) -> Iterator[Attempt]:
    for index in range(max_attempts):
        attempt = rollouts.run(index)
        assert attempt is not None  # nothing stops a single process's rollout early
        yield attempt


def _commit_in_order(
    arrivals: Iterator[Attempt], plan: CollectPlan, writer: DemoWriter, result: CollectResult, bar: _Progress
) -> None:
    """Take attempts in index order, keep the wanted ones, write each and record the statistics."""
    waiting: dict[int, Attempt] = {}
    next_index = 0
    for arrived in arrivals:
        waiting[arrived.index] = arrived
        while next_index in waiting:
            attempt = waiting.pop(next_index)
            next_index += 1
            result.attempts += 1
            if attempt.success and result.successes is not None:
                result.successes += 1
            if attempt.success is not False or plan.keep_failures:
                writer.append_episode(attempt.episode)
                result.episodes += 1
                result.steps += len(attempt.episode["action"])
                result.episode_seeds.append(attempt.seed)
            _record_stats(writer.path, result)
            bar.update(result.episodes, result.attempts, result.successes)
            if result.episodes >= plan.episodes or result.attempts >= plan.max_attempts:
                return


def _record_stats(path: Path, result: CollectResult) -> None:
    # A fresh handle each time: the writer's own group handle never writes root attributes
    # after its first commit, so this cannot be overwritten by stale metadata.
    root = zarr.open_group(str(path), mode="r+")
    source = dict(root.attrs["source"])
    source["options"] = {
        **source.get("options", {}),
        "attempts": result.attempts,
        "successes": result.successes,
        "success_rate": result.success_rate,
        "episode_seeds": list(result.episode_seeds),
    }
    root.attrs["source"] = source
