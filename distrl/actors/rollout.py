"""The rollout core: envs stepped in lock-step by one policy, one decision at a time.

The actor, the evaluator and `demos collect` all step envs through `Rollout`, so a chunked
policy, its stored extras, its warm-up and an actor-side filter behave the same in training,
evaluation and collection. A decision runs the policy once on every env's observation and
executes its action (or its chunk of k actions, open loop) in each env; an env whose episode
ends mid-chunk stops there. The result is one transition per env per decision: the start obs,
the stored action and extras, the rewards (and signals) summed over the executed steps, the obs
after them, terminated if any step terminated, truncated, and the executed step count.
Episode returns, lengths, success and step counters count env steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

from distrl.algos import STEPS_FIELD, Policy, PolicyStep, TransitionField
from distrl.envs import env_spec


class RolloutError(ValueError):
    """A policy step or an env report that does not fit the declared fields; names the problem."""


@dataclass
class EpisodeStats:
    env_index: int
    episode_return: float
    length: int
    success: bool | None
    # Per-episode sums of the env's signals and of the policy's `episode_sums` extras,
    # e.g. {"cost": 3.0, "intervened": 2.0}.
    signals: dict[str, float] = field(default_factory=dict)


@dataclass
class RolloutStep:
    """What one decision produced."""

    transitions: dict[str, np.ndarray]  # one row per env, columns by field name
    env_steps: int  # env steps executed, over all envs
    finished: list[EpisodeStats]
    # Per env step (only with `record_steps`): (env index, the step's obs, executed action,
    # reward, next obs, terminated, truncated, success, signals) for demo stores.
    step_rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class Rollout:
    """Steps `envs` with `policy`; see the module docstring.

    With `auto_reset` (actors) a finished env is reset at once and the policy told through
    `reset(mask)`; without it (evaluation, collection) the caller calls `reset` between episodes.
    `fields` (the algorithm's transition fields) shape and fill the transitions; each produced
    column is cast to its field's dtype and a misshapen one raises RolloutError naming it.
    """

    def __init__(
        self,
        envs: Sequence[gymnasium.Env],
        policy: Policy,
        fields: Sequence[TransitionField] | None = None,
        seed: int | None = None,
        auto_reset: bool = True,
        record_steps: bool = False,
    ) -> None:
        if not envs:
            raise ValueError("Rollout needs at least one env")
        self.envs = list(envs)
        self.policy = policy
        self.fields = {f.name: f for f in fields} if fields is not None else None
        self.auto_reset = auto_reset
        self.record_steps = record_steps
        spec = env_spec(self.envs[0])
        self.action_dim = spec.action_dim
        self.signals = spec.signals
        self.sums = tuple(policy.episode_sums)
        n = len(self.envs)
        self._return = np.zeros(n)
        self._length = np.zeros(n, dtype=np.int64)
        self._success = np.zeros(n, dtype=bool)
        self._has_success = [False] * n
        self._signal_sums = np.zeros((n, len(self.signals)))
        self._extra_sums = np.zeros((n, len(self.sums)))
        self._done = np.zeros(n, dtype=bool)
        self.obs = np.zeros((n, spec.obs_dim), dtype=np.float32)
        self.reset([None if seed is None else seed + i for i in range(n)])

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, seeds: Sequence[int | None] | None = None) -> np.ndarray:
        """Start a fresh episode in every env (seeded when given); returns the observations."""
        seeds = seeds if seeds is not None else [None] * len(self.envs)
        for i, env in enumerate(self.envs):
            self.obs[i] = env.reset(seed=seeds[i])[0]
            self._clear(i)
        self._done[:] = False
        self.policy.reset(np.ones(len(self.envs), dtype=bool))
        return self.obs

    def step(
        self, deterministic: bool = False, warmup: bool = False, rng: np.random.Generator | None = None
    ) -> RolloutStep:
        """One decision in every env: the policy's (or its warm-up) action or chunk, executed."""
        if self._done.any():
            raise RolloutError("an episode ended: call reset() before the next step (auto_reset is off)")
        n = len(self.envs)
        obs = self.obs.copy()
        if warmup:
            decision = self.policy.warmup(obs, rng if rng is not None else np.random.default_rng())
        else:
            decision = self.policy.act(obs, deterministic=deterministic)
        actions = self._chunk(decision, n)
        chunk = actions.shape[1]
        for k, name in enumerate(self.sums):
            if name not in decision.extras:
                raise RolloutError(f"the policy sums {name!r} per episode but its step has no such extra")
            self._extra_sums[:, k] += np.asarray(decision.extras[name], dtype=np.float64).reshape(n)
        reward = np.zeros(n, dtype=np.float64)
        signals = np.zeros((n, len(self.signals)))
        steps = np.zeros(n, dtype=np.int32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        next_obs = obs.copy()
        running = np.ones(n, dtype=bool)
        finished: list[EpisodeStats] = []
        step_rows: list[tuple[int, dict[str, Any]]] = []
        for j in range(chunk):
            for i in np.flatnonzero(running):
                env = self.envs[i]
                o, r, term, trunc, info = env.step(actions[i, j])
                values = self._signal_values(info)
                if self.record_steps:
                    step_rows.append(
                        (int(i), self._row(next_obs[i], actions[i, j], r, o, term, trunc, info, values))
                    )
                next_obs[i] = o
                reward[i] += float(r)
                signals[i] += values
                steps[i] += 1
                self._return[i] += float(r)
                self._length[i] += 1
                self._signal_sums[i] += values
                if "success" in info:
                    self._has_success[i] = True
                    self._success[i] |= bool(info["success"])
                if term or trunc:
                    terminated[i], truncated[i] = bool(term), bool(trunc)
                    running[i] = False
                    finished.append(self._episode(int(i)))
        ended = terminated | truncated
        self.policy.observe(reward, ended)
        self.obs = next_obs.copy()
        if ended.any():
            if self.auto_reset:
                for i in np.flatnonzero(ended):
                    self.obs[i] = self.envs[i].reset()[0]
                    self._clear(int(i))
                self.policy.reset(ended)
            else:
                self._done |= ended
        columns: dict[str, np.ndarray] = {
            "obs": obs,
            "action": np.asarray(decision.stored_action()),
            "reward": reward,
            "next_obs": next_obs,
            "terminated": terminated,
            "truncated": truncated,
            **{name: signals[:, k] for k, name in enumerate(self.signals)},
        }
        if chunk > 1 or (self.fields is not None and STEPS_FIELD in self.fields):
            columns[STEPS_FIELD] = steps
        for name, value in decision.extras.items():
            if name != "action":
                columns[name] = np.asarray(value)
        return RolloutStep(self._shape(columns, n), int(steps.sum()), finished, step_rows)

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -- internals --------------------------------------------------------------------------

    def _chunk(self, decision: PolicyStep, n: int) -> np.ndarray:
        if not isinstance(decision, PolicyStep):
            raise RolloutError(f"the policy returned {type(decision).__name__}, not a PolicyStep")
        actions = np.asarray(decision.env_actions, dtype=np.float32)
        if actions.ndim == 2:
            actions = actions[:, None, :]
        if (
            actions.ndim != 3
            or actions.shape[0] != n
            or actions.shape[2] != self.action_dim
            or not actions.shape[1]
        ):
            raise RolloutError(
                f"the policy's env_actions have shape {np.shape(decision.env_actions)}, expected "
                f"[{n}, {self.action_dim}] or [{n}, k, {self.action_dim}]"
            )
        return actions

    def _signal_values(self, info: dict[str, Any]) -> np.ndarray:
        values = np.zeros(len(self.signals))
        for k, name in enumerate(self.signals):
            if name not in info:
                raise RolloutError(f"the env declares the signal {name!r} but its step info has none")
            values[k] = float(info[name])
        return values

    def _row(self, obs, action, reward, next_obs, term, trunc, info, values) -> dict[str, Any]:
        row = {
            "obs": np.array(obs, dtype=np.float32),
            "action": np.array(action, dtype=np.float32),
            "reward": float(reward),
            "next_obs": np.asarray(next_obs, dtype=np.float32),
            "terminated": bool(term),
            "truncated": bool(trunc) and not term,
        }
        if "success" in info:
            row["success"] = bool(info["success"])
        row.update({name: float(values[k]) for k, name in enumerate(self.signals)})
        return row

    def _episode(self, i: int) -> EpisodeStats:
        return EpisodeStats(
            i,
            float(self._return[i]),
            int(self._length[i]),
            bool(self._success[i]) if self._has_success[i] else None,
            {
                **{name: float(self._signal_sums[i, k]) for k, name in enumerate(self.signals)},
                **{name: float(self._extra_sums[i, k]) for k, name in enumerate(self.sums)},
            },
        )

    def _clear(self, i: int) -> None:
        self._return[i] = 0.0
        self._length[i] = 0
        self._success[i] = False
        self._has_success[i] = False
        self._signal_sums[i] = 0.0
        self._extra_sums[i] = 0.0

    def _shape(self, columns: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Cast produced columns to their declared fields, fill the rest, refuse misfits by name."""
        if self.fields is None:
            return columns
        out = {}
        for name, spec in self.fields.items():
            if name not in columns:
                if spec.fill is None:
                    raise RolloutError(
                        f"transition field {name!r} is declared but nothing produced it (not an env signal, "
                        f"not a policy extra) and it has no fill value"
                    )
                out[name] = spec.empty(n)
                continue
            value = np.asarray(columns[name])
            if value.shape != (n, *spec.shape):
                raise RolloutError(
                    f"transition field {name!r}: produced shape {value.shape}, "
                    f"declared [{n}, *{list(spec.shape)}]"
                )
            out[name] = value.astype(spec.np_dtype, copy=False)
        extra = sorted(set(columns) - set(self.fields))
        if extra:
            raise RolloutError(
                f"the policy or env produced {extra}, which the algorithm's fields do not declare"
            )
        return out


class TransitionBuffer:
    """Accumulates rows of transitions into preallocated columns until a batch is full."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._columns: dict[str, np.ndarray] | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, rows: dict[str, np.ndarray]) -> None:
        k = len(rows["reward"])
        if self._columns is None:
            # Room for one extra step of rows so a batch can always be completed.
            cap = self.batch_size + k
            self._columns = {name: np.empty((cap, *v.shape[1:]), dtype=v.dtype) for name, v in rows.items()}
        if self._n + k > len(self._columns["reward"]):
            grown = max(2 * len(self._columns["reward"]), self._n + k)
            self._columns = {
                name: np.concatenate([col[: self._n], np.empty((grown - self._n, *col.shape[1:]), col.dtype)])
                for name, col in self._columns.items()
            }
        for name, col in self._columns.items():
            col[self._n : self._n + k] = rows[name]
        self._n += k

    def full(self) -> bool:
        return self._n >= self.batch_size

    def take(self) -> dict[str, np.ndarray]:
        """All buffered rows (copies), leaving the buffer empty."""
        if self._columns is None or self._n == 0:
            return {}
        out = {name: col[: self._n].copy() for name, col in self._columns.items()}
        self._n = 0
        return out
