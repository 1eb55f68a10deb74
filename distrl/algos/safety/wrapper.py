"""A KBSE shield around any single-step algorithm: its fields, its policy and its learner.

`algo.shield:` in a config wraps the algorithm's own pieces (see `distrl.algos.make_algorithm`):

- fields: the algorithm's, plus `proposed_action` (what the policy asked for), `intervened` (the
  shield replaced it) and `episode_start` (the obs is an episode's first: the initial states);
  the stored `action` is the executed one, so an off-policy learner learns what really happened;
- policy: the algorithm's policy, then the check against the latest "shield" parameter set;
  acting unshielded until the first barrier arrives;
- learner: the algorithm's learner, plus a reservoir of the transitions it trains on, a barrier
  fit every `fit_every` updates, and the "shield" parameter set published after each fit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from distrl.algos.base import (
    Algorithm,
    ParamSetSpec,
    Policy,
    PolicyStep,
    SpaceSpec,
    TransitionField,
)
from distrl.algos.safety.config import ShieldConfig
from distrl.algos.safety.fitting import RESERVOIR_FIELDS, TransitionReservoir, fit_shield
from distrl.algos.safety.shield import Shield

SHIELD_PARAMS = "shield"
COST_SIGNAL = "cost"
# Horizon of the bound gamma + c T for envs without a time limit.
DEFAULT_HORIZON = 1000


class ShieldError(ValueError):
    """A shield that cannot be used with this env or algorithm; the message says why."""


def check_shieldable(space: SpaceSpec, fields: tuple[TransitionField, ...]) -> None:
    if COST_SIGNAL not in space.signals:
        raise ShieldError(
            "algo.shield needs a per-step 'cost' signal from the env (cost > 0 marks an unsafe state): "
            "use a safe: env id (e.g. safe:point-goal) or an env wrapper declaring distrl_signals = ('cost',)"
        )
    action = next(f for f in fields if f.name == "action")
    if action.shape != (space.action_dim,):
        raise ShieldError(
            f"algo.shield needs a policy that stores one env action per step; this algorithm stores "
            f"action {list(action.shape)} (a chunk or a latent), which the shield cannot check"
        )
    taken = {"proposed_action", "intervened", "episode_start"} & {f.name for f in fields}
    if taken:
        raise ShieldError(f"algo.shield: the algorithm already declares the fields {sorted(taken)}")


def shield_fields(space: SpaceSpec, fields: tuple[TransitionField, ...]) -> tuple[TransitionField, ...]:
    check_shieldable(space, fields)
    return (
        *fields,
        # Where the shield did not intervene the proposal is the action; demo stores load with 0.
        TransitionField("proposed_action", "float32", (space.action_dim,), fill=0),
        TransitionField("intervened", "bool", fill=0),
        TransitionField("episode_start", "bool", fill=0),
    )


def state_dims(space: SpaceSpec, config: ShieldConfig) -> np.ndarray:
    """The observation dims the shield's state is made of (`state_dims`, else all of them)."""
    if config.state_dims is None:
        return np.arange(space.obs_dim)
    dims = np.asarray(config.state_dims, dtype=np.int64)
    if dims.max() >= space.obs_dim:
        raise ShieldError(
            f"algo.shield.state_dims {config.state_dims} out of range for obs_dim {space.obs_dim}"
        )
    return dims


def horizon_of(space: SpaceSpec, config: ShieldConfig) -> int:
    return config.horizon or space.max_episode_steps or DEFAULT_HORIZON


class ShieldedPolicy:
    """The wrapped policy's decision, checked and, where it fails, replaced (see `Shield.filter`)."""

    episode_sums = ("intervened",)  # reported per episode as episode_intervened

    def __init__(self, inner: Policy, space: SpaceSpec, config: ShieldConfig) -> None:
        self.inner = inner
        self.space = space
        self.config = config
        self.param_sets = (*inner.param_sets, SHIELD_PARAMS)
        self.required_params = inner.required_params
        self.dims = state_dims(space, config)
        self.shield = Shield.unfitted(len(self.dims), space.action_dim)
        self._rng = np.random.default_rng(config.seed)
        self._start: np.ndarray | None = None
        self.decisions = 0
        self.interventions = 0

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        return self._shielded(obs, self.inner.act(obs, deterministic=deterministic), warmup=False)

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        return self._shielded(obs, self.inner.warmup(obs, rng), warmup=True)

    def reset(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if self._start is None or len(self._start) != len(mask):
            self._start = np.zeros(len(mask), dtype=bool)
        self._start |= mask
        self.inner.reset(mask)

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        self.inner.observe(reward, ended)

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        if param_set == SHIELD_PARAMS:
            self.shield = Shield.from_tensors(
                tensors, len(self.dims), self.space.action_dim, self.config.tolerance
            )
        else:
            self.inner.load_params(param_set, tensors)

    def _shielded(self, obs: np.ndarray, step: PolicyStep, warmup: bool) -> PolicyStep:
        if "action" in step.extras or step.chunk != 1 or step.env_actions.ndim != 2:
            raise ShieldError(
                "the shield checks one env action per decision; this policy made a chunk or a latent"
            )
        obs = np.asarray(obs, dtype=np.float32).reshape(-1, self.space.obs_dim)
        proposed = np.asarray(step.env_actions, dtype=np.float32)
        result = self.shield.filter(
            obs[:, self.dims], proposed, lambda rows: self._candidates(obs, rows, warmup)
        )
        n = len(obs)
        start = self._start if self._start is not None and len(self._start) == n else np.zeros(n, bool)
        extras = {
            **step.extras,
            "proposed_action": proposed,
            "intervened": result.intervened,
            "episode_start": start.copy(),
        }
        start[:] = False
        self._start = start
        self.decisions += n
        self.interventions += int(result.intervened.sum())
        return PolicyStep(result.executed, extras)

    def _candidates(self, obs: np.ndarray, rows: np.ndarray, warmup: bool) -> np.ndarray:
        """[k, M, A] candidate actions for the failing rows: policy samples, then uniform ones."""
        m, a = self.config.candidates, self.space.action_dim
        k = len(rows)
        n_policy = 0 if warmup else round(m * self.config.policy_candidates)
        out = self._rng.uniform(-1.0, 1.0, (k, m, a)).astype(np.float32)
        if n_policy:
            repeated = np.repeat(obs[rows], n_policy, axis=0)
            samples = np.asarray(self.inner.act(repeated, deterministic=False).env_actions, np.float32)
            out[:, :n_policy] = samples.reshape(k, n_policy, a)
        return out


PENDING_UPDATES = 32


class ShieldedLearner:
    """The wrapped learner's updates, plus the shield's data, fits and parameter set."""

    def __init__(self, inner: Algorithm, space: SpaceSpec, config: ShieldConfig) -> None:
        self.inner = inner
        self.space = space
        self.config = config
        self.horizon = horizon_of(space, config)
        self._reservoir = TransitionReservoir(
            space.obs_dim, space.action_dim, config.buffer_size, config.seed
        )
        # Items kept from recent updates, still on the learner's device: they reach the reservoir
        # every PENDING_UPDATES updates in one host copy, not one copy (a CUDA sync) per update.
        self._pending: list[dict[str, torch.Tensor]] = []
        self.dims = state_dims(space, config)
        self.shield = Shield.unfitted(len(self.dims), space.action_dim)
        self.updates = 0
        self.fits = 0
        self.last_fit: dict[str, float] = {}

    @property
    def reservoir(self) -> TransitionReservoir:
        """The shield's sample of the transitions trained on, up to the latest update."""
        self._flush_pending()
        return self._reservoir

    def _flush_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._reservoir.add(
                {name: torch.cat([p[name] for p in pending]).cpu().numpy() for name in RESERVOIR_FIELDS}
            )

    # -- the inner learner's face
    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def batches_per_update(self) -> int:
        return self.inner.batches_per_update

    @property
    def can_pretrain(self) -> bool:
        return self.inner.can_pretrain

    def pretrain_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return self.inner.pretrain_step(batch)

    def priorities(self) -> torch.Tensor | None:
        return self.inner.priorities()

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        learned = batch
        if self.config.learn_from == "proposed":
            # The shield is part of the env the agent acts in: where it intervened, the agent's
            # action is its proposal, and the outcome is what the replacement did.
            mask = batch["intervened"].reshape(-1, 1)
            learned = {**batch, "action": torch.where(mask, batch["proposed_action"], batch["action"])}
        if self.config.intervention_penalty > 0:
            penalty = self.config.intervention_penalty * batch["intervened"].to(batch["reward"].dtype)
            learned = {**learned, "reward": batch["reward"] - penalty}
        metrics = self.inner.update(learned, demo_batch)
        keep = min(self.config.items_per_update, len(batch["reward"]))
        # A copy, since a slice would keep the whole batch alive until the next flush.
        self._pending.append({name: batch[name][:keep].detach().clone() for name in RESERVOIR_FIELDS})
        if len(self._pending) >= PENDING_UPDATES:
            self._flush_pending()
        self.updates += 1
        if self.updates % self.config.fit_every == 0 and self.reservoir.size >= self.config.min_transitions:
            self.refit()
        return {**metrics, **self.last_fit} if self.updates % self.config.fit_every == 0 else metrics

    def refit(self) -> dict[str, float]:
        """Fit a barrier on the reservoir now; the "shield" set carries it from the next publish."""
        start = time.perf_counter()
        data = self.reservoir.data()
        data = {**data, "obs": data["obs"][:, self.dims], "next_obs": data["next_obs"][:, self.dims]}
        result = fit_shield(data, self.config, self.horizon, seed=self.config.seed + self.fits)
        self.fits += 1
        if result is None:
            self.last_fit = {"shield_fit_s": time.perf_counter() - start, "shield_unsafe_states": 0.0}
            return self.last_fit
        self.shield = result.shield
        fit = result.fit
        self.last_fit = {
            "shield_fit_s": time.perf_counter() - start,
            "shield_lp_s": fit.seconds,
            "shield_gamma": fit.gamma,
            "shield_c": fit.c,
            "shield_bound": fit.bound,
            "shield_slack_max": fit.decrease_slack_max,
            "shield_slack_fraction": fit.decrease_slack_fraction,
            "shield_unsafe_states": float(fit.counts["unsafe"]),
            "shield_dictionary": float(fit.counts["dictionary"]),
        }
        return self.last_fit

    def param_sets(self) -> tuple[ParamSetSpec, ...]:
        return (*self.inner.param_sets(), ParamSetSpec(SHIELD_PARAMS, every_updates=self.config.fit_every))

    def params(self, param_set: str) -> dict[str, np.ndarray]:
        if param_set == SHIELD_PARAMS:
            return self.shield.tensors()
        return self.inner.params(param_set)

    def make_policy(self) -> ShieldedPolicy:
        policy = ShieldedPolicy(self.inner.make_policy(), self.space, self.config)
        policy.load_params(SHIELD_PARAMS, self.shield.tensors())
        return policy

    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "shield": {name: torch.from_numpy(np.array(v)) for name, v in self.shield.tensors().items()},
            "reservoir": {name: torch.from_numpy(np.array(v)) for name, v in self.reservoir.state().items()},
            "counters": {"updates": self.updates, "fits": self.fits},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = sorted({"inner", "shield", "reservoir", "counters"} - set(state))
        if missing:
            raise KeyError(f"shielded learner state is missing {missing}")
        shield = Shield.from_tensors(
            {k: v.numpy() for k, v in state["shield"].items()},
            len(self.dims),
            self.space.action_dim,
            self.config.tolerance,
        )
        self.inner.load_state_dict(state["inner"])
        self.shield = shield
        self.reservoir.load({k: v.numpy() for k, v in state["reservoir"].items()})
        self.updates = int(state["counters"]["updates"])
        self.fits = int(state["counters"]["fits"])
