"""KBSE: the conditional mean embedding, the barrier LP, the actor-side check and the shield
around SAC on the point-mass task, through a real actor, replay shard, parameter server and learner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import probe_algorithm as probe
import pytest
import torch
from pipeline_helpers import run_pipeline

from distrl.algos import (
    AlgorithmConfigError,
    SpaceSpec,
    make_algorithm,
    make_policy,
    transition_fields,
    unregister_algorithm,
)
from distrl.algos.safety import (
    SHIELD_PARAMS,
    ConditionalMeanEmbedding,
    Shield,
    ShieldConfig,
    ShieldedLearner,
    ShieldedPolicy,
    ShieldError,
    TransitionReservoir,
    fit_barrier,
    fit_shield,
)
from distrl.algos.safety.kernels import Standardizer, median_lengthscale, rbf
from distrl.envs import make_env, unsafe_states
from distrl.envs.safety import HAZARD_CENTRE, HAZARD_RADIUS, POINT_GOAL, POINT_START, POINT_START_JITTER

POINT = SpaceSpec(2, 2, ("cost",), 100)


def point_data(n: int, seed: int = 0, noise: float = 0.7) -> dict[str, np.ndarray]:
    """Transitions of safe:point-goal under a goal-seeking controller with Gaussian noise."""
    env = make_env("safe:point-goal", seed=seed)
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("obs", "action", "next_obs", "cost", "episode_start")}
    obs, _ = env.reset()
    start = True
    for _ in range(n):
        action = np.clip((np.asarray(POINT_GOAL) - obs) * 5 + rng.normal(0, noise, 2), -1, 1)
        nxt, _, terminated, truncated, info = env.step(action)
        for key, value in zip(cols, (obs, action, nxt, info["cost"], start), strict=True):
            cols[key].append(value)
        obs, start = nxt, False
        if terminated or truncated:
            obs, _ = env.reset()
            start = True
    return {k: np.asarray(v, dtype=bool if k == "episode_start" else np.float32) for k, v in cols.items()}


# ---- the CME


def test_cme_matches_monte_carlo_on_a_linear_gaussian_system() -> None:
    """x' = A x + B a + N(0, S): E[f(x') | x, a] by the CME vs a Monte Carlo average of f."""
    rng = np.random.default_rng(0)
    a_mat = np.array([[0.9, 0.2], [-0.1, 0.8]])
    b_mat = np.array([[0.5, 0.0], [0.1, 0.4]])
    noise = 0.1

    def step(x, a, r):
        return x @ a_mat.T + a @ b_mat.T + noise * r.standard_normal(x.shape)

    def f(x):  # a smooth test function of the next state
        return np.sin(2 * x[:, 0]) + np.exp(-np.sum(x**2, axis=1))

    m = 2000
    x, a = rng.uniform(-1, 1, (m, 2)), rng.uniform(-1, 1, (m, 2))
    z = np.concatenate([x, a], axis=1)
    cme = ConditionalMeanEmbedding(z, lengthscale=0.7, regularization=1e-3)
    values = f(step(x, a, rng))
    queries = rng.uniform(-0.8, 0.8, (20, 4))
    estimate = cme.expectation(queries, values)
    monte_carlo = np.array(
        [
            f(step(np.repeat(q[None, :2], 20_000, 0), np.repeat(q[None, 2:], 20_000, 0), rng)).mean()
            for q in queries
        ]
    )
    error = np.abs(estimate - monte_carlo)
    assert error.max() < 0.1, error
    assert error.mean() < 0.04, error
    # ... against f's own spread over the queries (what a constant guess would miss by): ~0.5.
    assert error.mean() < 0.1 * np.abs(monte_carlo - monte_carlo.mean()).mean()
    # The error factor is small inside the data and near 1 far outside it.
    assert cme.error_scale(queries).max() < 0.35
    assert cme.error_scale(np.full((1, 4), 10.0))[0] > 0.99
    # beta(z) is what expectation() applies: the same numbers through the explicit weights.
    np.testing.assert_allclose(cme.weights(queries) @ values, estimate, rtol=1e-6, atol=1e-8)


def test_kernels_median_heuristic_and_standardizer() -> None:
    x = np.array([[0.0], [1.0], [3.0]])
    assert median_lengthscale(x) == pytest.approx(2.0)  # distances 1, 2, 3
    assert median_lengthscale(np.zeros((5, 2))) == 1.0
    np.testing.assert_allclose(rbf(x, x, 1.0)[0, 1], np.exp(-0.5))
    s = Standardizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(s(np.array([[2.0, 5.0]])), [[0.0, 0.0]])


# ---- the barrier LP


def test_fitted_barrier_meets_its_constraints_on_the_fit_data() -> None:
    rng = np.random.default_rng(1)
    data = point_data(3000)
    std = Standardizer.fit(np.concatenate([data["obs"], data["action"]], axis=1))
    xs = Standardizer(std.mean[:2], std.std[:2])
    pick = rng.choice(len(data["obs"]), 400, replace=False)
    z = std(np.concatenate([data["obs"][pick], data["action"][pick]], axis=1))
    cme = ConditionalMeanEmbedding(z, 0.6, 1e-3)
    states, next_states = xs(data["obs"][pick]), xs(data["next_obs"][pick])
    unsafe = xs(data["next_obs"][data["cost"] > 0][:150])
    initial = xs(data["obs"][data["episode_start"]][:60])
    # The decrease condition on a designated action: here, the explored one's mirror image.
    decrease_inputs = std(np.concatenate([data["obs"][pick], -data["action"][pick]], axis=1))
    pool = np.concatenate([states, next_states])
    centers = np.concatenate([unsafe[:60], pool[rng.choice(len(pool), 90, replace=False)]])
    margin, horizon = 0.01, 100
    fit = fit_barrier(
        cme, next_states, pool, states, decrease_inputs, initial, unsafe, centers, 0.4, horizon,
        margin=margin, slack_weight=0.05, min_c=0.0,
    )  # fmt: skip
    assert fit.status == 0, fit.message
    b = fit.barrier
    tol = 1e-6
    assert b(pool).min() >= -tol
    assert b(initial).max() <= fit.gamma + tol
    assert fit.unsafe_slack_max <= tol and b(unsafe).min() >= 1 - tol
    expected = cme.expectation(decrease_inputs, b(next_states))
    robust = expected + margin * cme.error_scale(decrease_inputs) * np.abs(b.alpha).sum()
    excess = robust - (b(states) + fit.c)
    assert excess.max() <= fit.decrease_slack_max + 1e-5
    assert fit.decrease_slack_fraction <= 0.05  # slack only on outliers at slack_weight 1/20
    assert fit.bound == pytest.approx(min(1.0, fit.gamma + fit.c * horizon))
    assert fit.counts == {
        "dictionary": 400, "centers": 150, "decrease": 400, "initial": 60, "unsafe": 150, "positive": 800,
    }  # fmt: skip


def test_fit_barrier_needs_unsafe_states() -> None:
    cme = ConditionalMeanEmbedding(np.zeros((3, 2)) + np.arange(3)[:, None], 1.0, 1e-3)
    with pytest.raises(ValueError, match="unsafe"):
        fit_barrier(cme, np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((0, 1)), np.zeros((0, 2)),
                    np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((2, 1)), 1.0, 10)  # fmt: skip


@pytest.fixture(scope="module")
def fitted() -> tuple[Shield, dict[str, np.ndarray]]:
    data = point_data(5000)
    result = fit_shield(data, ShieldConfig(), horizon=100)
    assert result is not None and result.fit.status == 0
    return result.shield, data


def test_the_point_mass_shield_blocks_the_hazard_and_lets_a_detour_through(fitted) -> None:
    shield, _ = fitted
    toward, across = np.array([[1.0, 1.0]]), np.array([[1.0, -1.0]])
    near = np.array([[-0.35, -0.35]])  # 0.19 from the hazard's edge, on the straight line to the goal
    assert not shield.passes(near, toward)[0]
    assert shield.passes(near, across)[0]
    assert shield.barrier(np.array([list(HAZARD_CENTRE)]))[0] >= 1.0
    assert shield.barrier(np.array([list(POINT_START)]))[0] <= shield.gamma + 1e-3


def test_shield_never_executes_a_failing_action_when_a_passing_candidate_exists(fitted) -> None:
    shield, data = fitted
    rng = np.random.default_rng(5)
    obs = data["obs"][rng.choice(len(data["obs"]), 300)]
    proposed = rng.uniform(-1, 1, (300, 2)).astype(np.float32)
    pool = rng.uniform(-1, 1, (300, 12, 2)).astype(np.float32)
    result = shield.filter(obs, proposed, lambda rows: pool[rows])
    passes_proposed = shield.passes(obs, proposed)
    np.testing.assert_array_equal(result.intervened, ~passes_proposed)
    assert result.intervened.any() and (~result.intervened).any(), "the test lost its point"
    for i in range(300):
        if passes_proposed[i]:
            np.testing.assert_array_equal(result.executed[i], proposed[i])
            continue
        ok = shield.passes(np.repeat(obs[i : i + 1], 12, 0), pool[i])
        if ok.any():
            assert shield.passes(obs[i : i + 1], result.executed[i : i + 1])[0]
            best = np.argmin(np.where(ok, ((pool[i] - proposed[i]) ** 2).sum(1), np.inf))
            np.testing.assert_array_equal(result.executed[i], pool[i, best])
        else:  # nothing passes: the lowest expected barrier
            e = shield.expected_next(np.repeat(obs[i : i + 1], 12, 0), pool[i])
            np.testing.assert_array_equal(result.executed[i], pool[i, np.argmin(e)])
            assert not result.passing[i]


def test_shield_tensors_round_trip_and_bad_ones_are_refused_whole(fitted) -> None:
    shield, data = fitted
    tensors = shield.tensors()
    assert all(t.dtype == np.float32 for t in tensors.values())
    again = Shield.from_tensors(tensors, 2, 2)
    x, a = data["obs"][:50], data["action"][:50]
    np.testing.assert_allclose(again.expected_next(x, a), shield.expected_next(x, a), atol=1e-4)
    np.testing.assert_allclose(again.barrier(x), shield.barrier(x), atol=1e-4)
    assert not Shield.from_tensors(Shield.unfitted(2, 2).tensors(), 2, 2).fitted
    bad = dict(tensors, g=np.full_like(tensors["g"], np.nan))
    with pytest.raises(ValueError, match="'g' must hold finite"):
        Shield.from_tensors(bad, 2, 2)
    with pytest.raises(ValueError, match="'centers' has shape"):
        Shield.from_tensors(dict(tensors, centers=tensors["centers"][:, :1]), 2, 2)
    with pytest.raises(ValueError, match="missing \\['alpha'\\]"):
        Shield.from_tensors({k: v for k, v in tensors.items() if k != "alpha"}, 2, 2)
    policy = make_policy("sac", POINT, {"shield": {}})
    policy.load_params(SHIELD_PARAMS, tensors)
    with pytest.raises(ValueError):
        policy.load_params(SHIELD_PARAMS, bad)
    assert policy.shield.fitted, "a refused set must leave the loaded shield in place"


def test_reservoir_keeps_a_uniform_sample_and_restores() -> None:
    reservoir = TransitionReservoir(1, 1, capacity=500, seed=0)
    for start in range(0, 10_000, 100):
        ids = np.arange(start, start + 100, dtype=np.float32)
        reservoir.add(
            {"obs": ids[:, None], "action": ids[:, None], "next_obs": ids[:, None], "cost": ids,
             "episode_start": np.zeros(100, bool)}
        )  # fmt: skip
    kept = reservoir.data()["cost"]
    assert reservoir.size == 500 and reservoir.seen == 10_000
    assert len(np.unique(kept)) == 500
    assert 4000 < kept.mean() < 6000  # uniform over 0..9999, not the newest
    again = TransitionReservoir(1, 1, capacity=500)
    again.load(reservoir.state())
    np.testing.assert_array_equal(again.data()["cost"], kept)
    assert again.seen == 10_000


# ---- the shield around an algorithm


def test_registry_wraps_any_single_step_algorithm_and_refuses_what_it_cannot_check() -> None:
    names = [f.name for f in transition_fields("sac", POINT, {"shield": {}})]
    assert names[-3:] == ["proposed_action", "intervened", "episode_start"]
    assert isinstance(make_policy("xqc", POINT, {"shield": {}}), ShieldedPolicy)
    lagrangian = make_algorithm("sac_lag", POINT, {"hidden_sizes": [16], "shield": {}}, "cpu")
    assert isinstance(lagrangian, ShieldedLearner)
    assert "lagrangian" in lagrangian.update(
        {
            "obs": torch.zeros(8, 2), "action": torch.zeros(8, 2), "reward": torch.zeros(8),
            "next_obs": torch.zeros(8, 2), "terminated": torch.zeros(8, dtype=torch.bool),
            "cost": torch.ones(8), "episode_start": torch.zeros(8, dtype=torch.bool),
            "proposed_action": torch.ones(8, 2), "intervened": torch.zeros(8, dtype=torch.bool),
        }
    )  # fmt: skip
    with pytest.raises(ShieldError, match="'cost' signal"):
        make_policy("sac", SpaceSpec(2, 2), {"shield": {}})
    with pytest.raises(AlgorithmConfigError, match=r"unknown key 'shield\.fit_evry'"):
        make_policy("sac", POINT, {"shield": {"fit_evry": 3}})
    with pytest.raises(AlgorithmConfigError, match=r"shield\.candidates"):
        transition_fields("sac", POINT, {"shield": {"candidates": 0}})
    with pytest.raises(ShieldError, match="chunk or a latent"):
        transition_fields("dsrl", POINT, {"shield": {}, "base_policy": "unused"})


def test_shielded_policy_marks_episode_starts_and_stores_proposed_and_executed(fitted) -> None:
    shield, _ = fitted
    policy = make_policy("sac", POINT, {"shield": {"candidates": 8}})
    learner = make_algorithm("sac", POINT, {}, "cpu")
    policy.load_params("policy", learner.params("policy"))
    policy.load_params(SHIELD_PARAMS, shield.tensors())
    policy.reset(np.ones(3, bool))
    obs = np.array([[-0.35, -0.35], [-0.7, -0.7], [0.6, 0.6]], np.float32)
    first = policy.act(obs)
    np.testing.assert_array_equal(first.extras["episode_start"], [True, True, True])
    second = policy.act(obs)
    np.testing.assert_array_equal(second.extras["episode_start"], [False, False, False])
    policy.reset(np.array([False, True, False]))
    np.testing.assert_array_equal(policy.act(obs).extras["episode_start"], [False, True, False])
    for step in (first, second):
        proposed, executed = step.extras["proposed_action"], step.env_actions
        changed = np.any(proposed != executed, axis=1)
        np.testing.assert_array_equal(changed, step.extras["intervened"])
        assert shield.passes(obs, executed)[step.extras["intervened"]].all()


@pytest.mark.parametrize("learn_from", ["proposed", "executed"])
def test_the_wrapped_learner_trains_on_the_proposal_where_the_shield_intervened(learn_from: str) -> None:
    probe.register()  # a test-only learner that keeps the batches it is given
    try:
        learner = make_algorithm(probe.NAME, POINT, {"shield": {"learn_from": learn_from}}, "cpu")
        intervened = torch.tensor([True, False, True, False])
        batch = {
            "obs": torch.zeros(4, 2), "action": torch.zeros(4, 2), "proposed_action": torch.ones(4, 2),
            "intervened": intervened, "reward": torch.zeros(4), "next_obs": torch.zeros(4, 2),
            "terminated": torch.zeros(4, dtype=torch.bool), "cost": torch.zeros(4),
            "episode_start": torch.zeros(4, dtype=torch.bool),
        }  # fmt: skip
        learner.update(batch)
        trained = learner.inner.batches[-1]["action"]
        expected = intervened.float()[:, None].expand(4, 2) if learn_from == "proposed" else torch.zeros(4, 2)
        np.testing.assert_array_equal(trained, expected.numpy())
        # The shield's own data is what happened: the executed actions.
        np.testing.assert_array_equal(learner.reservoir.data()["action"], np.zeros((4, 2), np.float32))
    finally:
        unregister_algorithm(probe.NAME)


def test_shielded_learner_fits_publishes_and_checkpoints() -> None:
    data = point_data(2500)
    cfg = {
        "hidden_sizes": [32, 32],
        "shield": {"fit_every": 5, "min_transitions": 200, "items_per_update": 128},
    }
    learner = make_algorithm("sac", POINT, cfg, "cpu")
    assert isinstance(learner, ShieldedLearner)
    assert [p.name for p in learner.param_sets()] == ["policy", SHIELD_PARAMS]
    rng = np.random.default_rng(0)
    metrics = {}
    for _ in range(10):
        idx = rng.choice(len(data["obs"]), 128)
        batch = {k: torch.as_tensor(v[idx]) for k, v in data.items()}
        batch.update(
            reward=torch.zeros(128), terminated=torch.zeros(128, dtype=torch.bool),
            truncated=torch.zeros(128, dtype=torch.bool), intervened=torch.zeros(128, dtype=torch.bool),
            proposed_action=batch["action"],
        )  # fmt: skip
        metrics = learner.update(batch)
    assert learner.fits == 2 and learner.shield.fitted
    assert {"shield_bound", "shield_c", "shield_gamma", "shield_fit_s", "critic_loss"} <= set(metrics)
    assert metrics["shield_c"] >= ShieldConfig().min_c - 1e-9
    policy = learner.make_policy()
    assert policy.shield.fitted
    again = make_algorithm("sac", POINT, cfg, "cpu")
    again.load_state_dict(learner.state_dict())
    assert again.updates == 10 and again.fits == 2 and again.reservoir.size == learner.reservoir.size
    x = data["obs"][:20]
    np.testing.assert_allclose(
        again.shield.barrier(x), Shield.from_tensors(learner.shield.tensors(), 2, 2).barrier(x)
    )


def test_shield_on_the_point_mass_through_the_pipeline(tmp_path: Path) -> None:
    raw = {
        "name": "kbse",
        "seed": 0,
        "env": {"id": "safe:point-goal"},
        "algo": {
            "name": "sac",
            "hidden_sizes": [32, 32],
            "shield": {"fit_every": 100, "min_transitions": 300, "items_per_update": 64},
        },
        "actors": {"num_actors": 1, "warmup_steps": 600, "insert_batch_size": 16},
        "replay": {
            "table": {
                "capacity": 50_000,
                "samples_per_insert": 8.0,
                "min_size_to_sample": 300,
                "error_buffer": 2000,
            },
            "checkpoint_every_s": None,
        },
        "learner": {"batch_size": 64, "device": "cpu", "publish_every": 10, "checkpoint_every": 10_000},
        "train": {"max_updates": 400},
        "eval": {"enabled": False},
        "telemetry": {"console": False},
    }
    learner, actor, sets = run_pipeline(raw, tmp_path, 400)
    assert sorted(sets) == ["policy", SHIELD_PARAMS]
    shielded = learner.algo
    assert isinstance(shielded, ShieldedLearner) and shielded.fits == 4 and shielded.shield.fitted
    assert actor.param_versions[SHIELD_PARAMS] >= 2 and actor.policy.shield.fitted
    assert actor.policy.interventions > 0, "the actors never intervened"
    # What the learner trained on: costs label exactly the unsafe next states, and the episode
    # starts it saw are the task's initial states.
    data = shielded.reservoir.data()
    env = make_env("safe:point-goal")
    np.testing.assert_array_equal(data["cost"] > 0, unsafe_states(env, data["next_obs"]))
    starts = data["obs"][data["episode_start"]]
    assert len(starts) > 0
    assert np.abs(starts - np.asarray(POINT_START)).max() <= POINT_START_JITTER + 1e-6
    assert np.linalg.norm(np.asarray(HAZARD_CENTRE) - np.asarray(POINT_START)) > HAZARD_RADIUS


def test_state_dims_make_the_shield_a_function_of_those_observation_dims() -> None:
    data = point_data(2500)
    cfg = {"hidden_sizes": [16], "shield": {"state_dims": [1], "fit_every": 5, "min_transitions": 200,
                                            "items_per_update": 128}}  # fmt: skip
    learner = make_algorithm("sac", POINT, cfg, "cpu")
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.choice(len(data["obs"]), 128)
        batch = {k: torch.as_tensor(v[idx]) for k, v in data.items()}
        batch.update(
            reward=torch.zeros(128), terminated=torch.zeros(128, dtype=torch.bool),
            intervened=torch.zeros(128, dtype=torch.bool), proposed_action=batch["action"],
        )  # fmt: skip
        learner.update(batch)
    assert learner.shield.fitted and learner.shield.centers.shape[1] == 1
    assert learner.shield.dictionary.shape[1] == 1 + 2  # (y, action)
    policy = learner.make_policy()
    step = policy.act(np.array([[-0.3, -0.3], [0.5, -0.3]], np.float32))
    assert step.env_actions.shape == (2, 2)
    y = np.array([[-0.3]])  # the shield's state: y alone
    np.testing.assert_allclose(policy.shield.barrier(y), learner.shield.barrier(y), atol=1e-4)
    with pytest.raises(ShieldError, match="out of range"):
        make_policy("sac", POINT, {"shield": {"state_dims": [2]}})
    for bad in ([], [-1], [0, 0]):
        with pytest.raises(AlgorithmConfigError, match="state_dims"):
            make_policy("sac", POINT, {"shield": {"state_dims": bad}})


def test_bounds_met_within_the_lp_tolerance_are_accepted_and_clipped(fitted) -> None:
    """HiGHS returned gamma = -4.9e-10 in a HalfCheetah run; the actors refused the set and died."""
    shield, _ = fitted
    tensors = shield.tensors()
    scalars = tensors["scalars"].copy()
    scalars[3] = -4.9e-10
    loaded = Shield.from_tensors({**tensors, "scalars": scalars}, 2, 2)
    assert loaded.gamma == 0.0
    scalars[3] = -0.01
    with pytest.raises(ValueError, match="0 <= gamma <= 1"):
        Shield.from_tensors({**tensors, "scalars": scalars}, 2, 2)
