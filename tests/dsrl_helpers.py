"""Small real data for the DSRL tests: InvertedPendulum demos from a scripted controller, and a
diffusion policy pretrained on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distrl.data import DatasetInfo, DemoWriter
from distrl.envs import make_env
from distrl.envs.config import EnvConfig

PENDULUM = EnvConfig(id="gym:InvertedPendulum-v5")
# A balancing controller: force from cart position, pole angle and their velocities.
GAINS = np.array([1.0, 10.0, 1.0, 1.0])


def pendulum_demos(path: Path, episodes: int, good: float, seed: int = 0, max_steps: int = 200) -> Path:
    """Demos where every 4-step block is the controller (probability `good`) or its mirror image,
    which pushes the pole over: a diffusion policy cloned on them picks a bad block about as often
    as a good one, and which one it picks depends on its latent noise."""
    env = make_env(PENDULUM, seed=seed)
    rng = np.random.default_rng(seed)
    with DemoWriter(path, DatasetInfo(env=PENDULUM)) as writer:
        for e in range(episodes):
            obs, _ = env.reset(seed=seed + e)
            rows: dict[str, list] = {
                k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")
            }
            sign = 1.0
            for t in range(max_steps):
                if t % 4 == 0:
                    sign = 1.0 if rng.random() < good else -1.0
                action = np.clip([sign * float(GAINS @ obs)], -1.0, 1.0).astype(np.float32)
                nxt, reward, term, trunc, _ = env.step(action)
                trunc = bool(trunc or t == max_steps - 1)
                for key, value in zip(rows, (obs, action, reward, nxt, term, trunc), strict=True):
                    rows[key].append(value)
                obs = nxt
                if term or trunc:
                    break
            writer.append_episode({k: np.asarray(v) for k, v in rows.items()})
    env.close()
    return path
