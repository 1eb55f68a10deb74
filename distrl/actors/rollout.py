"""Lock-step envs and a columnar transition buffer: the actor's I/O-free core."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np

# Per-transition fields every actor sends; the replay table's spec comes from them.
TRANSITION_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


@dataclass
class EpisodeStats:
    env_index: int
    episode_return: float
    length: int
    success: bool | None


class LockstepEnvs:
    """Steps several envs with one batch of actions; resets each env when its episode ends.

    `next_obs` of a finished episode is the true final observation (not the next
    episode's first), and `terminated`/`truncated` are kept apart, so time limits
    never cut the bootstrap.
    """

    def __init__(self, envs: list[gymnasium.Env], seed: int) -> None:
        if not envs:
            raise ValueError("LockstepEnvs needs at least one env")
        self.envs = envs
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
        n = len(envs)
        self._return = np.zeros(n)
        self._length = np.zeros(n, dtype=np.int64)
        self._success = np.zeros(n, dtype=bool)
        self._has_success = [False] * n

    def __len__(self) -> int:
        return len(self.envs)

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[EpisodeStats]]:
        n = len(self.envs)
        next_obs = np.empty_like(self.obs)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.empty(n, dtype=bool)
        truncated = np.empty(n, dtype=bool)
        finished: list[EpisodeStats] = []
        obs_after = self.obs.copy()
        for i, env in enumerate(self.envs):
            o, r, term, trunc, info = env.step(actions[i])
            next_obs[i] = o
            reward[i] = r
            terminated[i] = term
            truncated[i] = trunc
            self._return[i] += r
            self._length[i] += 1
            if "success" in info:
                self._has_success[i] = True
                self._success[i] |= bool(info["success"])
            if term or trunc:
                finished.append(
                    EpisodeStats(
                        i,
                        float(self._return[i]),
                        int(self._length[i]),
                        bool(self._success[i]) if self._has_success[i] else None,
                    )
                )
                self._return[i] = 0.0
                self._length[i] = 0
                self._success[i] = False
                obs_after[i] = env.reset()[0]
            else:
                obs_after[i] = o
        transitions = {
            "obs": self.obs,
            "action": np.asarray(actions, dtype=np.float32),
            "reward": reward,
            "next_obs": next_obs,
            "terminated": terminated,
            "truncated": truncated,
        }
        self.obs = obs_after
        return transitions, finished

    def close(self) -> None:
        for env in self.envs:
            env.close()


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
