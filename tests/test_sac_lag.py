"""SAC-Lagrangian: the cost target by hand, lambda's direction, the penalised actor, errors, state
round trips, the registry, and a short local run on a real env with a cost signal."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from batches import bandit_batch
from batches import random_batch as shared_random_batch
from run_helpers import distrl, rows

from distrl.algos import (
    Algorithm,
    AlgorithmConfigError,
    BatchError,
    Policy,
    SpaceSpec,
    available_algorithms,
    make_algorithm,
    make_policy,
    transition_fields,
)
from distrl.algos.sac.networks import CriticEnsemble, TanhGaussianActor
from distrl.algos.sac_lag import (
    DEFAULT_EPISODE_STEPS,
    SACLagConfig,
    SACLagLearner,
    cost_columns,
    cost_td_target,
    lagrangian_actor_loss,
)

SPEC = SpaceSpec(obs_dim=3, action_dim=2, signals=("cost",), max_episode_steps=100)
SMALL = {"hidden_sizes": (32, 32), "seed": 0}
TESTS = Path(__file__).resolve().parent


# Tiny networks: one torch thread each (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def learner(spec: SpaceSpec = SPEC, **overrides: object) -> SACLagLearner:
    algo = make_algorithm("sac_lag", spec, {**SMALL, **overrides}, device="cpu")
    assert isinstance(algo, SACLagLearner)
    return algo


def random_batch(
    size: int, seed: int = 0, cost: float | None = None, spec: SpaceSpec = SPEC
) -> dict[str, torch.Tensor]:
    """test_sac's batches plus a cost column: uniform in [0, 1), or `cost` everywhere."""
    batch = shared_random_batch(size, seed, spec)
    g = torch.Generator().manual_seed(seed + 1)
    batch["cost"] = torch.rand(size, generator=g) if cost is None else torch.full((size,), cost)
    return batch


def constant_target(critic: CriticEnsemble, value: float) -> None:
    """Make every member output `value` whatever the input: zero last layer, bias = value."""
    with torch.no_grad():
        critic.weights[-1].zero_()
        critic.biases[-1].fill_(value)


# ---- the cost critic's target


def test_cost_td_target_is_the_hand_computation() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, (8,), -5.0, 2.0)
    target = CriticEnsemble(3, 2, (8,), 2)
    next_obs = torch.randn(4, 3)
    cost = torch.tensor([0.0, 1.0, 0.5, 2.0])
    discount = torch.tensor([0.9, 0.0, 0.81, 0.9])

    with torch.no_grad():
        torch.manual_seed(1)
        y_max = cost_td_target(actor, target, next_obs, cost, discount, "max")
        torch.manual_seed(1)
        y_mean = cost_td_target(actor, target, next_obs, cost, discount, "mean")
        torch.manual_seed(1)
        next_action, _ = actor.sample(next_obs)  # the same a' ~ pi(s') the target drew
        q = target(next_obs, next_action)  # [2, 4]
    by_hand_max = [float(cost[b] + discount[b] * max(q[0, b], q[1, b])) for b in range(4)]
    by_hand_mean = [float(cost[b] + discount[b] * (q[0, b] + q[1, b]) / 2) for b in range(4)]
    np.testing.assert_allclose(y_max.numpy(), by_hand_max, rtol=1e-6)
    np.testing.assert_allclose(y_mean.numpy(), by_hand_mean, rtol=1e-6)
    assert float(y_max[1]) == 1.0  # a terminal item is its cost alone


def test_cost_discount_honours_chunk_lengths_and_only_terminated_cuts() -> None:
    batch = {
        "reward": torch.zeros(4),
        "cost": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "terminated": torch.tensor([False, True, False, False]),
        "truncated": torch.tensor([False, False, True, False]),
        "env_steps": torch.tensor([1, 2, 3, 4], dtype=torch.int32),
    }
    cost, discount = cost_columns(batch, 0.9)
    torch.testing.assert_close(cost, batch["cost"])
    torch.testing.assert_close(discount, torch.tensor([0.9, 0.0, 0.9**3, 0.9**4]))
    with pytest.raises(BatchError, match="missing 'cost'"):
        cost_columns({k: v for k, v in batch.items() if k != "cost"}, 0.9)
    cost, _ = cost_columns({k: v for k, v in batch.items() if k != "cost"}, 0.9, missing_is_zero=True)
    torch.testing.assert_close(cost, torch.zeros(4))


def test_learner_cost_target_uses_cost_gamma_steps_and_terminated() -> None:
    """With target cost critics fixed at 5, y_c = c + cost_gamma^k (1 - terminated) 5, exactly."""
    algo = learner(gamma=0.99, cost_gamma=0.5)
    constant_target(algo.target_cost_critic, 5.0)
    batch = random_batch(4)
    batch["cost"] = torch.tensor([1.0, 0.0, 2.0, 0.5])
    batch["terminated"] = torch.tensor([False, True, False, False])
    batch["env_steps"] = torch.tensor([1, 1, 2, 3], dtype=torch.int32)
    metrics = algo.update(batch)
    by_hand = [1.0 + 0.5 * 5, 0.0, 2.0 + 0.25 * 5, 0.5 + 0.125 * 5]
    assert metrics["cost_target_q_mean"] == pytest.approx(np.mean(by_hand), rel=1e-6)


def test_demo_batch_without_cost_counts_as_zero_cost() -> None:
    algo = learner(utd_ratio=2, bc_weight=0.1)
    batch = random_batch(8, cost=1.0)
    batch["terminated"] = torch.ones(8, dtype=torch.bool)
    demo = {k: v for k, v in random_batch(4, seed=1).items() if k != "cost"}
    demo["terminated"] = torch.ones(4, dtype=torch.bool)
    metrics = algo.update(batch, demo)
    # Terminal items: y_c = c, 4 online items of cost 1 and 2 demo items of cost 0 per minibatch.
    assert metrics["cost_target_q_mean"] == pytest.approx(4 / 6)
    assert {"q_mean/demo", "bc_loss", "bc_kept", "cost_q_pi", "lagrangian_loss"} <= set(metrics)


# ---- the multiplier


def test_lagrangian_rises_above_the_budget_and_falls_back_to_zero_below() -> None:
    # cost_gamma 0.5 makes Q_c quick to learn: toward 2 for a cost of 1 every step (~1.1 after 100
    # updates, the Polyak targets lag), 0 without costs; the budget 25 (1 - 0.5^100) / 50 = 0.5.
    algo = learner(cost_gamma=0.5, critic_lr=3e-3, lagrangian_lr=0.05)
    assert algo.cost_budget == pytest.approx(0.5)
    trace = []
    for i in range(100):
        metrics = algo.update(random_batch(64, seed=i, cost=1.0))
        trace.append(metrics["lagrangian"])
    assert metrics["cost_q_pi"] > 0.9 > algo.cost_budget
    assert trace[-1] > 2.0, trace[::10]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(trace[20:]))  # rising steadily
    peak = trace[-1]
    for i in range(250):
        metrics = algo.update(random_batch(64, seed=1000 + i, cost=0.0))
        trace.append(metrics["lagrangian"])
    assert metrics["cost_q_pi"] < algo.cost_budget
    assert trace[-1] == 0.0 and min(trace) >= 0.0, (peak, trace[-250::25])


def test_lagrangian_stays_at_zero_without_costs() -> None:
    algo = learner(lagrangian_lr=0.05)
    for i in range(30):
        assert algo.update(random_batch(32, seed=i, cost=0.0))["lagrangian"] == 0.0


def test_lagrangian_is_clamped_to_its_maximum_and_fixed_with_zero_lr() -> None:
    algo = learner(cost_limit=0.0, lagrangian_lr=0.5, lagrangian_max=1.0)
    for i in range(20):
        metrics = algo.update(random_batch(32, seed=i, cost=1.0))
    assert metrics["lagrangian"] == 1.0
    fixed = learner(lagrangian_lr=0.0, initial_lagrangian=3.0)
    for i in range(5):
        assert fixed.update(random_batch(32, seed=i, cost=1.0))["lagrangian"] == 3.0


def test_penalised_actor_loss_is_the_hand_computation() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, (8,), -5.0, 2.0)
    critic, cost_critic = CriticEnsemble(3, 2, (8,), 2), CriticEnsemble(3, 2, (8,), 2)
    obs, alpha, lam = torch.randn(5, 3), torch.tensor(0.2), torch.tensor(4.0)
    torch.manual_seed(1)
    loss, _, q_cost = lagrangian_actor_loss(actor, critic, cost_critic, obs, alpha, lam)
    torch.manual_seed(1)
    action, by_hand_log_prob = actor.sample(obs)
    q_r = critic(obs, action).amin(0)
    q_c = cost_critic(obs, action).amax(0)
    by_hand = (alpha * by_hand_log_prob - q_r + lam * q_c).mean() / (1 + lam)
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(q_cost, q_c)
    torch.manual_seed(1)
    raw, _, _ = lagrangian_actor_loss(actor, critic, cost_critic, obs, alpha, lam, normalize=False)
    torch.testing.assert_close(raw, by_hand * (1 + lam))


def test_a_large_lagrangian_moves_the_policy_off_costly_actions() -> None:
    """One-step bandit: reward -|a - (0.5, -0.3)|^2, cost max(a_0, 0). Unconstrained, a_0 goes to 0.5;
    with lambda fixed at 10 (the penalty outweighs the reward's pull) it stays at or below 0."""
    spec = SpaceSpec(obs_dim=2, action_dim=2, signals=("cost",), max_episode_steps=1)
    best = torch.tensor([0.5, -0.3])
    fast = {"actor_lr": 3e-3, "critic_lr": 3e-3, "alpha_lr": 3e-3, "lagrangian_lr": 0.0}
    free = learner(spec, **fast, initial_lagrangian=0.0)
    constrained = learner(spec, **fast, initial_lagrangian=10.0)
    torch.manual_seed(0)
    for _ in range(300):
        batch = bandit_batch(best)
        batch["cost"] = batch["action"][:, 0].clamp_min(0.0)
        free.update(batch)
        constrained.update(batch)
    obs = torch.randn(256, 2).numpy()
    a_free = free.make_policy().act(obs, deterministic=True).env_actions
    a_safe = constrained.make_policy().act(obs, deterministic=True).env_actions
    cost_free = np.maximum(free.make_policy().act(obs).env_actions[:, 0], 0).mean()
    cost_safe = np.maximum(constrained.make_policy().act(obs).env_actions[:, 0], 0).mean()
    assert a_free[:, 0].mean() > 0.35
    assert a_safe[:, 0].mean() < 0.0
    assert cost_safe < 0.1 * cost_free  # measured: ~0.01 against ~0.45
    # The unconstrained dim still follows the reward in both.
    assert abs(a_free[:, 1].mean() + 0.3) < 0.15 and abs(a_safe[:, 1].mean() + 0.3) < 0.2


# ---- errors, state, registry


def test_missing_cost_signal_is_refused_with_a_hint() -> None:
    spec = SpaceSpec(3, 2)
    for build in (
        lambda: make_algorithm("sac_lag", spec, SMALL, device="cpu"),
        lambda: make_policy("sac_lag", spec, SMALL),
        lambda: transition_fields("sac_lag", spec, SMALL),
    ):
        with pytest.raises(ValueError, match=r"'cost' signal.*safe:.*distrl_signals"):
            build()


def test_config_errors_name_the_key() -> None:
    cases = {
        "unknown key 'costlimit'": {"costlimit": 10},
        "cost_limit": {"cost_limit": -1.0},
        "lagrangian_lr": {"lagrangian_lr": -0.1},
        "initial_lagrangian": {"initial_lagrangian": 200.0},
        "lagrangian_max": {"lagrangian_max": 0.0},
        "cost_gamma": {"cost_gamma": 1.5},
        "compile": {"compile": True},
        "cuda_graphs": {"cuda_graphs": True},
        "cost_q": {"cost_q": "min"},
    }
    for needle, raw in cases.items():
        with pytest.raises(AlgorithmConfigError, match=needle):
            make_algorithm("sac_lag", SPEC, raw, device="cpu")
    # Every SAC option is accepted and kept.
    config = SACLagConfig(utd_ratio=2, critic_layernorm=True, num_critics=4, actor_q="mean")
    assert config.utd_ratio == 2 and config.cost_limit == 25.0 and config.initial_lagrangian == 0.0


def test_budget_formula_and_its_defaults() -> None:
    config = SACLagConfig(gamma=0.99, cost_limit=25.0)
    assert config.cost_budget(100) == pytest.approx(25.0 * (1 - 0.99**100) / (0.01 * 100))
    no_limit = 25.0 * (1 - 0.99**DEFAULT_EPISODE_STEPS) / (0.01 * DEFAULT_EPISODE_STEPS)
    assert config.cost_budget(None) == pytest.approx(no_limit)
    assert SACLagConfig(gamma=1.0).cost_budget(100) == 25.0
    assert SACLagConfig(cost_gamma=0.5).cost_budget(10) == pytest.approx(25.0 * (1 - 0.5**10) / 5.0)
    assert learner(SpaceSpec(3, 2, ("cost",))).cost_budget == pytest.approx(no_limit)


def test_state_dict_round_trip_continues_identically(tmp_path: Path) -> None:
    overrides = {"lagrangian_lr": 0.05, "cost_limit": 0.0, "critic_layernorm": True}
    algo = learner(**overrides)
    for i in range(6):
        algo.update(random_batch(16, seed=i, cost=1.0))
    assert algo.lagrangian_value() > 0.0
    state = algo.state_dict()
    assert {"cost_critic", "target_cost_critic", "cost_critic_optimizer"} <= set(state)
    assert {"lagrangian", "lagrangian_optimizer"} <= set(state)
    torch.save(state, tmp_path / "sac_lag.pt")
    restored = learner(**overrides, seed=123)
    restored.load_state_dict(torch.load(tmp_path / "sac_lag.pt", weights_only=True))
    assert restored.lagrangian_value() == algo.lagrangian_value()
    obs, action = torch.randn(5, 3), torch.rand(5, 2)
    torch.testing.assert_close(restored.cost_critic(obs, action), algo.cost_critic(obs, action))
    torch.testing.assert_close(restored.target_cost_critic(obs, action), algo.target_cost_critic(obs, action))
    for _ in range(3):  # Same RNG, same batches: the same future, Adam moments included.
        seed = int(torch.randint(1000, ()).item())
        torch.manual_seed(seed)
        a = algo.update(random_batch(16, seed=seed, cost=1.0))
        torch.manual_seed(seed)
        b = restored.update(random_batch(16, seed=seed, cost=1.0))
        assert a == b
    for p, q in zip(algo.cost_critic.parameters(), restored.cost_critic.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    missing = {k: v for k, v in state.items() if k != "lagrangian"}
    with pytest.raises(KeyError, match="lagrangian"):
        learner(**overrides).load_state_dict(missing)


def test_registry_builds_learner_policy_and_fields() -> None:
    assert "sac_lag" in available_algorithms()
    algo = make_algorithm("sac_lag", SPEC, {"hidden_sizes": [16], "cost_limit": 10.0}, device="cpu")
    assert isinstance(algo, Algorithm)
    fields = {f.name: f for f in transition_fields("sac_lag", SPEC, {})}
    assert set(fields) == {"obs", "action", "reward", "next_obs", "terminated", "truncated", "cost"}
    assert fields["cost"].dtype == "float32" and fields["cost"].fill == 0.0
    policy = make_policy("sac_lag", SPEC, {"hidden_sizes": [16]})
    assert isinstance(policy, Policy)
    policy.load_params("policy", algo.params("policy"))
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        policy.act(obs, deterministic=True).env_actions,
        algo.make_policy().act(obs, deterministic=True).env_actions,
    )
    metrics = algo.update(random_batch(32))
    assert {"critic_loss", "actor_loss", "alpha", "cost_q", "cost_critic_loss"} <= set(metrics)
    assert {"lagrangian", "cost_budget", "cost_q_pi"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["cost_budget"] == pytest.approx(10.0 * (1 - 0.99**100) / (0.01 * 100))


# ---- through real envs


@pytest.mark.slow
def test_local_run_on_a_costly_pendulum_trains_the_multiplier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distrl train` with sac_lag on InvertedPendulum-v5 with cost = action[0]^2 per step: every
    process runs, the cost reaches replay and the learner reports its multiplier."""
    config = yaml.safe_load((TESTS.parent / "configs" / "sac_smoke.yaml").read_text())
    config["name"] = "sac-lag-smoke"
    config["env"]["wrappers"] = ["probe_algorithm:CostFromAction"]
    # A tiny limit: random actions spend ~0.33 a step, so lambda must rise.
    config["algo"] = {"name": "sac_lag", "hidden_sizes": [32, 32], "cost_limit": 1.0, "lagrangian_lr": 0.05}
    config["eval"] = {"enabled": False}
    path = tmp_path / "sac_lag.yaml"
    path.write_text(yaml.safe_dump(config))
    # The subprocesses import the wrapper from tests/.
    pythonpath = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    run_dir = tmp_path / "run"
    out = distrl("train", str(path), "--run-dir", str(run_dir), "--no-console", "train.total_env_steps=1500")
    assert out.returncode == 0, out.stdout + out.stderr
    lagrangians = [r[k] for r in rows(run_dir) for k in r if k.endswith("lagrangian")]
    assert lagrangians and max(lagrangians) > 0.0, rows(run_dir)[-1]
    assert any(k.endswith("cost_budget") for r in rows(run_dir) for k in r)
