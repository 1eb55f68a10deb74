"""The learner's half of KBSE: keep exploration transitions, fit a barrier, build the actors' shield.

`TransitionReservoir` keeps a uniform sample (reservoir sampling) of the online transitions the
learner trains on; `fit_shield` draws a CME dictionary from it (every unsafe-ending transition
first, up to a quarter of the dictionary), standardises z = (x, a), sets kernel lengthscales by
the median heuristic, fits the barrier LP and returns the `Shield` the actors check against.

The LP asks each dictionary state x_k for one action a*_k whose expected next barrier does not
rise by more than c. a*_k is chosen among `action_candidates` actions (the explored one and
uniform ones) as the one with the lowest robust estimate E^[V(x') | x_k, a] + eps sigma ||.||
of a value V: first a proxy, V(x) = max_u k(x, u) over the unsafe states (how close x is to
them), then the barrier of the previous solve, `fit_iterations` solves in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distrl.algos.safety.barrier import BarrierFit, fit_barrier
from distrl.algos.safety.cme import ConditionalMeanEmbedding
from distrl.algos.safety.config import ShieldConfig
from distrl.algos.safety.kernels import Standardizer, median_lengthscale, rbf
from distrl.algos.safety.shield import Shield

RESERVOIR_FIELDS = ("obs", "action", "next_obs", "cost", "episode_start")


class TransitionReservoir:
    """A uniform sample of at most `capacity` of the transitions offered so far (Vitter's R)."""

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.seen = 0
        self.size = 0
        self._rng = np.random.default_rng(seed)
        self.columns = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, action_dim), np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "cost": np.zeros(capacity, np.float32),
            "episode_start": np.zeros(capacity, bool),
        }

    def add(self, items: dict[str, np.ndarray]) -> None:
        """Offer `items` in order: Algorithm R, vectorised (item i of the batch, the t-th offered,
        replaces a uniform slot in [0, t] when that slot is below capacity; a later item wins a
        slot drawn twice, as in the sequential algorithm)."""
        n = len(items["cost"])
        if n == 0:
            return
        fill = min(n, self.capacity - self.size)
        slots = np.empty(n, np.int64)
        slots[:fill] = np.arange(self.size, self.size + fill)
        if n > fill:
            offered = self.seen + np.arange(fill, n)  # items offered before each later one
            slots[fill:] = self._rng.integers(0, offered + 1)
        kept = np.flatnonzero(slots < self.capacity)
        # The last item per slot: unique over the reversed order finds each slot's last writer.
        unique_slots, first_reversed = np.unique(slots[kept][::-1], return_index=True)
        writers = kept[::-1][first_reversed]
        for name, column in self.columns.items():
            column[unique_slots] = np.asarray(items[name])[writers]
        self.size += fill
        self.seen += n

    def data(self) -> dict[str, np.ndarray]:
        return {name: column[: self.size] for name, column in self.columns.items()}

    def state(self) -> dict[str, np.ndarray]:
        return {**self.data(), "seen": np.array([self.seen], np.int64)}

    def load(self, state: dict[str, np.ndarray]) -> None:
        size = min(len(state["cost"]), self.capacity)
        for name, column in self.columns.items():
            column[:size] = np.asarray(state[name])[:size]
        self.size = size
        self.seen = int(np.asarray(state["seen"]).reshape(-1)[0])


@dataclass(frozen=True)
class ShieldFitResult:
    shield: Shield
    fit: BarrierFit


def fit_shield(
    data: dict[str, np.ndarray], config: ShieldConfig, horizon: int, seed: int = 0
) -> ShieldFitResult | None:
    """Fit a shield on transitions (columns as `RESERVOIR_FIELDS`); None while no step was unsafe
    (there is nothing to keep away from yet)."""
    rng = np.random.default_rng(seed)
    obs, action, next_obs = data["obs"], data["action"], data["next_obs"]
    unsafe_step = np.asarray(data["cost"]) > 0
    if not unsafe_step.any():
        return None
    obs_dim, action_dim = obs.shape[1], action.shape[1]
    # The dictionary: unsafe-ending transitions first (up to a quarter), the rest uniform.
    bad, good = np.flatnonzero(unsafe_step), np.flatnonzero(~unsafe_step)
    m = min(config.dictionary_size, len(obs))
    n_bad = min(len(bad), max(1, m // 4))
    pick = np.concatenate(
        [rng.choice(bad, n_bad, replace=False), rng.choice(good, min(len(good), m - n_bad), replace=False)]
    )
    z = np.concatenate([obs[pick], action[pick]], axis=1).astype(np.float64)
    z, first = np.unique(z, axis=0, return_index=True)  # replay samples repeat items
    pick = pick[first]
    standardizer = Standardizer.fit(z)
    x_std = Standardizer(standardizer.mean[:obs_dim], standardizer.std[:obs_dim])
    z_scaled = standardizer(z)
    z_len = config.lengthscale_scale * median_lengthscale(z_scaled, seed=seed)
    states, next_states = x_std(obs[pick]), x_std(next_obs[pick])
    x_len = config.lengthscale_scale * median_lengthscale(np.concatenate([states, next_states]), seed=seed)
    cme = ConditionalMeanEmbedding(z_scaled, z_len, config.regularization)

    unsafe_states = x_std(next_obs[bad])
    if len(unsafe_states) > config.max_unsafe:
        unsafe_states = unsafe_states[rng.choice(len(unsafe_states), config.max_unsafe, replace=False)]
    starts = np.flatnonzero(np.asarray(data["episode_start"], dtype=bool))
    if len(starts) > config.max_initial:
        starts = rng.choice(starts, config.max_initial, replace=False)
    initial = x_std(obs[starts])
    # Centers: half on unsafe states (where B must climb), the rest on the dictionary's states.
    n_unsafe_centers = min(len(unsafe_states), config.centers // 2)
    pool = np.concatenate([states, next_states])
    n_rest = min(len(pool), config.centers - n_unsafe_centers)
    centers = np.concatenate(
        [
            unsafe_states[rng.choice(len(unsafe_states), n_unsafe_centers, replace=False)],
            pool[rng.choice(len(pool), n_rest, replace=False)],
        ]
    )
    # Candidate actions per dictionary state: the explored one, then uniform ones.
    k = config.action_candidates
    d = len(pick)
    candidates = np.concatenate(
        [action[pick][:, None, :], rng.uniform(-1.0, 1.0, (d, k - 1, action_dim))], axis=1
    )
    z_candidates = standardizer(
        np.concatenate([np.repeat(obs[pick], k, axis=0), candidates.reshape(d * k, action_dim)], axis=1)
    )
    kernel_candidates = cme.kernel(z_candidates)
    sigma_candidates = cme.error_scale(z_candidates)
    values = rbf(next_states, unsafe_states, x_len).max(axis=1)  # the proxy V
    scale = 1.0
    fit = None
    for _ in range(config.fit_iterations):
        robust = kernel_candidates @ cme.solve(values) + config.margin * sigma_candidates * scale
        best = robust.reshape(d, k).argmin(axis=1)
        fit = fit_barrier(
            cme,
            next_states,
            positive=pool,
            decrease_states=states,
            decrease_inputs=z_candidates.reshape(d, k, -1)[np.arange(d), best],
            initial=initial,
            unsafe=unsafe_states,
            centers=centers,
            lengthscale=x_len,
            horizon=horizon,
            margin=config.margin,
            slack_weight=config.slack_weight,
            min_c=config.min_c,
        )
        values, scale = fit.barrier(next_states), max(fit.norm_l1, 1e-6)
    shield = Shield(
        obs_dim,
        action_dim,
        fitted=True,
        standardizer=standardizer,
        dictionary=z_scaled,
        g=cme.solve(fit.barrier(next_states)),
        centers=fit.barrier.centers,
        alpha=fit.barrier.alpha,
        z_lengthscale=z_len,
        x_lengthscale=x_len,
        c=fit.c,
        gamma=fit.gamma,
        horizon=horizon,
        tolerance=config.tolerance,
    )
    return ShieldFitResult(shield, fit)
