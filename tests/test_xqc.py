"""XQC and XQCfD: the categorical projection, the unit-norm invariant, BatchNorm semantics,
reward scaling across checkpoints, the policy's stream statistics, the stationary prior policy,
and (slow) XQC solving InvertedPendulum through the whole pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import train_to_solve

from distrl.algos import AlgorithmConfigError, SpaceSpec, make_algorithm, make_policy, transition_fields
from distrl.algos.xqc import RETURN_FIELD, ReturnScale, XQCConfig, categorical_projection, categorical_target

ROOT = Path(__file__).resolve().parents[1]
SPEC = SpaceSpec(obs_dim=5, action_dim=2, max_episode_steps=1000)
SMALL = {"critic_hidden": [32, 32], "actor_hidden": [16, 16], "seed": 0}


def random_batch(size: int, seed: int = 0, spec: SpaceSpec = SPEC) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(size, spec.obs_dim, generator=g),
        "action": torch.rand(size, spec.action_dim, generator=g) * 2 - 1,
        "reward": torch.randn(size, generator=g),
        "next_obs": torch.randn(size, spec.obs_dim, generator=g),
        "terminated": torch.rand(size, generator=g) < 0.1,
        "truncated": torch.zeros(size, dtype=torch.bool),
        RETURN_FIELD: torch.randn(size, generator=g) * 3,
    }


def learner(**overrides):
    return make_algorithm("xqc", SPEC, {**SMALL, **overrides}, "cpu")


# ---- the categorical target


def test_projection_matches_a_hand_computation_with_mass_at_both_edges() -> None:
    # Support {-1, 0, 1} (delta 1). Atoms at -1 (edge), 0.25 (between 0 and 1), 1 (edge).
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    atoms = torch.tensor([[-1.0, 0.25, 1.0]])
    out = categorical_projection(probs, atoms, -1.0, 1.0)
    # -1 -> all 0.2 on bin 0; 0.25 -> 0.75 * 0.5 on bin 1, 0.25 * 0.5 on bin 2; 1 -> all 0.3 on bin 2.
    torch.testing.assert_close(out, torch.tensor([[0.2, 0.375, 0.125 + 0.3]]))
    # Atoms beyond the support (clipped by the caller) keep their mass at the edges.
    atoms = torch.tensor([[-1.0, -1.0, 1.0]])
    torch.testing.assert_close(
        categorical_projection(probs, atoms, -1.0, 1.0), torch.tensor([[0.7, 0.0, 0.3]])
    )
    # Mass is conserved for random atoms on the reference support.
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 101, generator=g), -1)
    atoms = (torch.rand(64, 101, generator=g) * 10 - 5).clamp(-5, 5)
    torch.testing.assert_close(categorical_projection(probs, atoms, -5.0, 5.0).sum(-1), torch.ones(64))


def test_target_clips_bootstraps_from_the_lower_critic_and_cuts_at_termination() -> None:
    support = torch.linspace(-1.0, 1.0, 3)
    # Two target critics: member 0 puts its mass on +1 (Q=1), member 1 on -1 (Q=-1): the lower wins.
    logits = torch.tensor([[[-9.0, -9.0, 9.0]], [[9.0, -9.0, -9.0]]])
    reward, discount, entropy = torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([0.0])
    target, clipped = categorical_target(logits, support, reward, discount, entropy, -1.0, 1.0)
    # Atoms r + 0.5 z = {0, 0.5, 1}; almost all mass sits on z = -1 -> atom 0 -> bin 1.
    assert target[0, 1] > 0.99 and clipped == pytest.approx(1 / 3)
    # Terminated (discount 0): every atom is r = 0.5 -> half on bin 1, half on bin 2.
    target, _ = categorical_target(logits, support, reward, torch.tensor([0.0]), entropy, -1.0, 1.0)
    torch.testing.assert_close(target, torch.tensor([[0.0, 0.5, 0.5]]))


# ---- the networks


def _row_norms(module: torch.nn.Module) -> list[torch.Tensor]:
    norms = []
    for name, p in module.named_parameters():
        stationary = any(k in name for k in ("std_factor", "random_weights", "mean_weights"))
        if p.dim() >= 2 and "bias" not in name and not stationary:
            norms.append(p.detach().norm(dim=-1))
    return norms


def test_weight_rows_keep_unit_norm_after_every_step() -> None:
    algo = learner()
    for norms in (_row_norms(algo.critic), _row_norms(algo.actor)):
        assert norms and all(torch.allclose(n, torch.ones_like(n), atol=1e-5) for n in norms)
    for i in range(4):  # policy_delay 3: the actor steps inside these updates too
        algo.update(random_batch(32, seed=i))
        for norms in (_row_norms(algo.critic), _row_norms(algo.actor)):
            assert all(torch.allclose(n, torch.ones_like(n), atol=1e-5) for n in norms)
    assert algo.num_actor_updates >= 2
    off = learner(weight_norm=False)
    for i in range(4):
        off.update(random_batch(32, seed=i))
    assert any(not torch.allclose(n, torch.ones_like(n), atol=1e-3) for n in _row_norms(off.critic))


def test_the_critic_normalises_over_the_joint_batch_in_train_mode_only() -> None:
    algo = learner()
    critic = algo.critic
    b = random_batch(16)
    obs, act = b["obs"], b["action"]
    other = torch.randn(16, SPEC.obs_dim) * 5 + 3
    joint = lambda second: critic(torch.cat((obs, second)), torch.cat((act, act)))[:, :16]  # noqa: E731
    critic.train()
    with torch.no_grad():
        # Batch statistics over the joint batch: the (s', a') half changes the (s, a) half's output.
        assert not torch.allclose(joint(b["next_obs"]), joint(other))
        critic.eval()
        # Running statistics in eval mode: each item on its own.
        torch.testing.assert_close(joint(b["next_obs"]), joint(other))
    critic.train()


def test_the_actor_step_leaves_the_critics_running_statistics_alone() -> None:
    algo = learner(policy_delay=1)
    algo.update(random_batch(32, seed=0))
    before = {k: v.clone() for k, v in algo.critic.state_dict().items() if "running" in k}
    algo._actor_step(random_batch(32, seed=1)["obs"])
    after = {k: v for k, v in algo.critic.state_dict().items() if "running" in k}
    for k in before:
        torch.testing.assert_close(before[k], after[k])
    assert algo.critic.training and not algo.actor.training


def test_defaults_follow_the_reference() -> None:
    config = XQCConfig()
    assert config.resolved_gamma(1000) == pytest.approx(0.995)
    assert config.resolved_gamma(100) == pytest.approx(0.95)
    assert config.resolved_gamma(None) == 0.99
    assert XQCConfig(gamma=0.9).resolved_gamma(1000) == 0.9
    algo = make_algorithm("xqc", SPEC, {"seed": 0}, "cpu")
    assert algo.target_entropy == -1.0 and algo.log_alpha.exp().item() == pytest.approx(0.01)
    assert algo.batches_per_update == 2 and algo.config.num_bins == 101
    assert [w.shape[1] for w in algo.critic.weights] == [512] * 4
    with pytest.raises(AlgorithmConfigError, match="v_min"):
        make_algorithm("xqc", SPEC, {"v_min": 1.0, "v_max": 0.0})


def test_learning_rates_decay_linearly_to_the_end_value() -> None:
    algo = learner(lr_decay_steps=8, utd_ratio=2)
    for i in range(6):
        algo.update(random_batch(32, seed=i))
    assert algo.critic_optimizer.param_groups[0]["lr"] == pytest.approx(3e-5)
    algo = learner(lr_decay_steps=8, utd_ratio=2)
    algo.update(random_batch(32))  # critic steps 0 and 1
    assert algo.critic_optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 + (3e-5 - 3e-4) / 8)


# ---- reward scaling


def test_return_scale_matches_numpy_and_survives_a_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = [rng.normal(2.0, 3.0, size=n) for n in (5, 17, 40)]
    scale = ReturnScale(torch.device("cpu"))
    for v in values:
        scale.update(torch.as_tensor(v))
    everything = np.concatenate(values)
    assert scale.var.item() == pytest.approx(everything.var(), rel=1e-9)
    algo = learner()
    for i in range(3):
        algo.update(random_batch(32, seed=i))
    path = tmp_path / "state.pt"
    torch.save(algo.state_dict(), path)
    restored = learner()
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.returns.count.item() == algo.returns.count.item() == 96
    torch.testing.assert_close(restored.returns.scale(), algo.returns.scale())
    a, b = algo.update(random_batch(32, seed=9)), restored.update(random_batch(32, seed=9))
    assert a["reward_scale"] == b["reward_scale"]


def test_demo_items_do_not_move_the_return_statistics() -> None:
    algo = learner()
    online = random_batch(16, seed=0)
    algo.update(online, demo_batch=random_batch(16, seed=1))
    expected = ReturnScale(torch.device("cpu"))
    expected.update(algo.gamma * online[RETURN_FIELD] + online["reward"])
    torch.testing.assert_close(algo.returns.var, expected.var)


def test_the_policy_keeps_each_envs_discounted_return_for_the_learner() -> None:
    algo = learner()
    policy = make_policy("xqc", SPEC, SMALL)
    policy.load_params("policy", algo.params("policy"))
    obs = np.zeros((2, SPEC.obs_dim), np.float32)
    policy.reset(np.ones(2, bool))
    np.testing.assert_array_equal(policy.act(obs).extras[RETURN_FIELD], [0.0, 0.0])
    policy.observe(np.array([1.0, 2.0]), np.array([False, False]))
    policy.observe(np.array([1.0, 2.0]), np.array([False, True]))
    gamma = algo.gamma
    np.testing.assert_allclose(
        policy.warmup(obs, np.random.default_rng(0)).extras[RETURN_FIELD], [1 + gamma, 0.0]
    )
    assert RETURN_FIELD in {f.name for f in transition_fields("xqc", SPEC, {})}
    assert RETURN_FIELD not in {f.name for f in transition_fields("xqc", SPEC, {"reward_scaling": False})}
    # The actor publishes BatchNorm running statistics too: the policy acts like the learner's actor.
    algo.update(random_batch(64, seed=3))
    policy.load_params("policy", algo.params("policy"))
    x = torch.randn(4, SPEC.obs_dim)
    np.testing.assert_allclose(
        policy.act(x.numpy(), deterministic=True).env_actions,
        algo.actor.deterministic(x).detach().numpy(),
        atol=1e-6,
    )


# ---- XQCfD


def test_the_stationary_prior_policy_is_confident_on_demos_and_broad_far_from_them() -> None:
    """After behaviour cloning, the entropy on demo states is far below the entropy at states far
    from every demo, where the stationary head stays near its prior std."""
    spec = SpaceSpec(obs_dim=4, action_dim=2)
    algo = make_algorithm("xqcfd", spec, {"critic_hidden": [32], "actor_hidden": [64, 64], "seed": 0}, "cpu")
    g = torch.Generator().manual_seed(0)
    demo_obs = torch.randn(512, 4, generator=g) * 0.5
    demo_action = torch.tanh(demo_obs[:, :2] - 0.5 * demo_obs[:, 2:])
    for _ in range(2500):
        idx = torch.randint(0, 512, (128,), generator=g)
        metrics = algo.pretrain_step({"obs": demo_obs[idx], "action": demo_action[idx]})
    assert metrics["bc_action_mse"] < 0.01
    # States between the demos (drawn like them, never seen) get the demos' actions, confidently...
    held_out = torch.randn(512, 4, generator=g) * 0.5
    expected = torch.tanh(held_out[:, :2] - 0.5 * held_out[:, 2:])
    far = torch.randn(512, 4, generator=g) * 0.5 + 8.0
    with torch.no_grad():
        assert (algo.actor.deterministic(held_out) - expected).square().mean() < 0.01
        _, std_demo = algo.actor(held_out)
        _, std_far = algo.actor(far)
    # Gaussian entropy up to a constant: the sum of log stds.
    entropy_demo, entropy_far = std_demo.log().sum(-1).mean().item(), std_far.log().sum(-1).mean().item()
    # ...while states far from every demo keep the prior's broad std.
    assert entropy_far - entropy_demo > 4.0
    prior = algo.config.prior_std * math.tanh(1.0)  # the head's std where training has not reached
    assert 0.9 * prior < std_far.mean().item() <= prior + 1e-3


def test_critic_pretraining_on_demos_moves_the_critic_only_when_asked() -> None:
    batch = random_batch(32)
    for flag in (False, True):
        algo = learner(pretrain_critic=flag)
        before = [p.clone() for p in algo.critic.parameters()]
        algo.pretrain_step(batch)
        moved = any(not torch.equal(a, b) for a, b in zip(before, algo.critic.parameters(), strict=True))
        assert moved == flag
        assert algo.returns.count.item() == 0  # demos carry no stream position


def test_xqcfd_is_xqc_with_the_stationary_policy_by_default() -> None:
    algo = make_algorithm("xqcfd", SPEC, SMALL, "cpu")
    assert type(algo.actor.head).__name__ == "StationaryHead"
    algo.update(random_batch(32), demo_batch=random_batch(32, seed=1))
    assert math.isfinite(algo.update(random_batch(32, seed=2))["critic_loss"])


# ---- learning through the pipeline


@pytest.mark.slow
def test_xqc_solves_inverted_pendulum_through_the_pipeline(tmp_path: Path) -> None:
    """2 actors, 2 shards, params server, learner, evaluator: eval return >= 900 within 30k env steps."""
    config = ROOT / "configs" / "xqc_inverted_pendulum.yaml"
    best, _, output = train_to_solve(config, tmp_path / "pendulum", budget=30_000)
    assert best >= 900, f"best eval return {best:.1f}; {output}"


def test_without_backup_entropy_the_target_ignores_the_temperature() -> None:
    losses = {}
    for backup in (True, False):
        for alpha in (0.01, 10.0):
            algo = learner(backup_entropy=backup, initial_alpha=alpha)
            torch.manual_seed(0)
            losses[backup, alpha] = algo.update(random_batch(32))["critic_loss"]
    assert losses[False, 0.01] == pytest.approx(losses[False, 10.0])
    assert losses[True, 0.01] != pytest.approx(losses[True, 10.0])


def test_a_frozen_actor_norm_keeps_its_statistics_through_actor_steps() -> None:
    for frozen in (False, True):
        algo = learner(freeze_actor_norm=frozen, policy_delay=1)
        before = {k: v.clone() for k, v in algo.actor.state_dict().items() if "running" in k}
        algo.update(random_batch(32))
        after = algo.actor.state_dict()
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        assert unchanged == frozen


def test_the_demo_bc_term_clones_demo_items_only() -> None:
    algo = learner(bc_weight=1.0, bc_q_filter=False, policy_delay=1)
    metrics = algo.update(random_batch(32), demo_batch=random_batch(32, seed=1))
    assert metrics["bc_kept"] == 1.0 and metrics["bc_loss"] != 0.0
    assert learner(bc_weight=1.0, policy_delay=1).update(random_batch(32))["bc_kept"] == 0.0
    # Cloning pulls the policy's mode toward the demo actions.
    algo = learner(bc_weight=10.0, bc_q_filter=False, policy_delay=1, actor_lr=1e-3)
    demo = random_batch(32, seed=1)
    demo["action"] = torch.full_like(demo["action"], 0.5)
    before = (algo.actor.deterministic(demo["obs"]) - 0.5).abs().mean().item()
    for i in range(30):
        algo.update(random_batch(32, seed=2 + i), demo_batch=demo)
    after = (algo.actor.deterministic(demo["obs"]) - 0.5).abs().mean().item()
    assert after < 0.5 * before
