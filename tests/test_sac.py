"""SAC and the algorithm registry: losses by hand, bootstrap rules, RLPD options, state round trips."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from batches import bandit_batch
from batches import random_batch as shared_random_batch

from distrl.algos import (
    Algorithm,
    AlgorithmConfigError,
    BatchError,
    Policy,
    SpaceSpec,
    algorithm_config,
    available_algorithms,
    make_algorithm,
    make_policy,
)
from distrl.algos.sac import CriticEnsemble, SACLearner, TanhGaussianActor, bc_loss, soft_q_target
from distrl.algos.sac.learning import bc_loss_per_item, demo_bc_term, polyak_update

SPEC = SpaceSpec(obs_dim=5, action_dim=3)


# Tiny networks: one torch thread each (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"hidden_sizes": (32, 32), "seed": 0}


def learner(**overrides: object) -> SACLearner:
    algo = make_algorithm("sac", SPEC, {**SMALL, **overrides}, device="cpu")
    assert isinstance(algo, SACLearner)
    return algo


def random_batch(size: int, seed: int = 0, spec: SpaceSpec = SPEC) -> dict[str, torch.Tensor]:
    return shared_random_batch(size, seed, spec)


def member_q(critic: CriticEnsemble, member: int, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """One ensemble member evaluated as a plain MLP with F.linear: the hand computation."""
    h = torch.cat((obs, action), dim=-1)
    num_layers = len(critic.weights)
    for layer in range(num_layers):
        h = F.linear(h, critic.weights[layer][member].T, critic.biases[layer][member, 0])
        if layer < num_layers - 1:
            if critic.layernorm:
                h = F.layer_norm(h, h.shape[-1:])
                h = h * critic.norm_scales[layer][member, 0] + critic.norm_shifts[layer][member, 0]
            h = F.relu(h)
    return h.squeeze(-1)


def hand_sample(
    actor: TanhGaussianActor, obs: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tanh-Gaussian sample and log-probability through torch.distributions."""
    mean, log_std = actor(obs)
    base = torch.distributions.Normal(mean, log_std.exp())
    u = mean + log_std.exp() * eps
    action = torch.tanh(u)
    log_prob = base.log_prob(u).sum(-1) - torch.log(1 - action.square()).sum(-1)
    return action, log_prob


def hand_target(algo: SACLearner, batch: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """y = r + gamma (1 - terminated) (min_e Q'_e(s', a') - alpha log pi(a'|s')), RNG replayed from seed."""
    torch.manual_seed(seed)
    eps = torch.randn(batch["obs"].shape[0], SPEC.action_dim)
    with torch.no_grad():
        next_action, next_log_prob = hand_sample(algo.actor, batch["next_obs"], eps)
        next_q = (
            torch.stack(
                [
                    member_q(algo.target_critic, e, batch["next_obs"], next_action)
                    for e in range(algo.config.num_critics)
                ]
            )
            .min(0)
            .values
        )
        alpha = algo.log_alpha.exp()
        not_done = 1.0 - batch["terminated"].float()
        return batch["reward"] + algo.config.gamma * not_done * (next_q - alpha * next_log_prob)


def hand_q(algo: SACLearner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(
            [member_q(algo.critic, e, batch["obs"], batch["action"]) for e in range(algo.config.num_critics)]
        )


# ---- registry and config


def test_registry_builds_sac_that_satisfies_the_protocols() -> None:
    assert "sac" in available_algorithms()
    algo = make_algorithm("sac", SPEC, SMALL, device="auto")
    assert isinstance(algo, Algorithm)
    assert algo.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(make_policy("sac", SPEC, SMALL), Policy)


def test_config_defaults_match_cleanrl_and_sb3() -> None:
    config = algorithm_config("sac", {})
    assert (config.gamma, config.tau, config.actor_lr, config.critic_lr, config.alpha_lr) == (
        0.99,
        0.005,
        3e-4,
        3e-4,
        3e-4,
    )
    assert config.hidden_sizes == (256, 256) and config.initial_alpha == 1.0 and config.autotune_alpha
    assert config.resolved_target_entropy(6) == -6.0
    assert (config.num_critics, config.critic_subset, config.utd_ratio, config.critic_layernorm) == (
        2,
        2,
        1,
        False,
    )


def test_config_errors_name_the_key() -> None:
    with pytest.raises(AlgorithmConfigError, match="unknown key 'gama'"):
        algorithm_config("sac", {"gama": 0.9})
    with pytest.raises(AlgorithmConfigError, match="gamma"):
        algorithm_config("sac", {"gamma": 1.5})
    with pytest.raises(AlgorithmConfigError, match="critic_subset"):
        algorithm_config("sac", {"num_critics": 3, "critic_subset": 4})
    with pytest.raises(AlgorithmConfigError, match="unknown algorithm 'sacc'"):
        make_algorithm("sacc", SPEC, {})
    with pytest.raises(ValueError, match="obs_dim"):
        SpaceSpec(obs_dim=0, action_dim=2)


def test_cuda_graphs_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        make_algorithm("sac", SPEC, {**SMALL, "cuda_graphs": True}, device="cpu")


def test_bad_batches_get_clear_errors() -> None:
    algo = learner()
    batch = random_batch(8)
    with pytest.raises(BatchError, match=r"missing \['terminated'\]"):
        algo.update({k: v for k, v in batch.items() if k != "terminated"})
    with pytest.raises(BatchError, match=r"'obs'.*expected \(8, 5\)"):
        algo.update({**batch, "obs": torch.zeros(8, 4)})
    with pytest.raises(BatchError, match="float64"):
        algo.update({**batch, "reward": batch["reward"].double()})
    with pytest.raises(BatchError, match="not divisible by utd_ratio 3"):
        learner(utd_ratio=3).update(batch)


# ---- networks and losses against hand computations


def test_shapes_and_log_prob_match_torch_distributions() -> None:
    algo = learner(num_critics=4, critic_subset=2)
    obs = torch.randn(7, SPEC.obs_dim)
    torch.manual_seed(3)
    action, log_prob = algo.actor.sample(obs)
    torch.manual_seed(3)
    eps = torch.randn(7, SPEC.action_dim)
    hand_action, hand_log_prob = hand_sample(algo.actor, obs, eps)
    assert action.shape == (7, 3) and log_prob.shape == (7,)
    assert action.abs().max() < 1
    torch.testing.assert_close(action, hand_action)
    torch.testing.assert_close(log_prob, hand_log_prob, rtol=1e-4, atol=1e-4)
    # log_prob of given actions agrees with the sampler's.
    torch.testing.assert_close(algo.actor.log_prob(obs, action, 1e-6), log_prob, rtol=1e-3, atol=1e-3)
    q = algo.critic(obs, action)
    assert q.shape == (4, 7)
    torch.testing.assert_close(q[2], member_q(algo.critic, 2, obs, action))


def test_log_std_stays_inside_the_documented_bounds() -> None:
    actor = TanhGaussianActor(2, 2, (8,), -5.0, 2.0)
    with torch.no_grad():
        actor.head.bias.copy_(torch.tensor([0.0, 0.0, 1e4, -1e4]))
    _, log_std = actor(torch.zeros(1, 2))
    assert log_std[0].tolist() == pytest.approx([2.0, -5.0])


def test_critic_target_and_loss_are_what_the_hand_computation_gives() -> None:
    algo = learner()
    batch = random_batch(16)
    y = hand_target(algo, batch, seed=11)
    q_before = hand_q(algo, batch)
    torch.manual_seed(11)
    metrics = algo.update(batch)
    # The update used exactly this target: its TD errors and loss are reproduced by hand.
    torch.testing.assert_close(algo.priorities(), (q_before - y).abs().mean(0))
    hand_loss = (q_before - y).square().mean(-1).sum().item()
    assert metrics["critic_loss"] == pytest.approx(hand_loss, rel=1e-5)
    assert metrics["target_q_mean"] == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-6)
    assert all(isinstance(v, float) for v in metrics.values())
    assert {"critic_loss", "actor_loss", "alpha", "alpha_loss", "q_mean", "entropy"} <= set(metrics)


def test_importance_weights_scale_the_critic_loss() -> None:
    algo = learner()
    batch = random_batch(16)
    weights = torch.linspace(0.1, 2.0, 16)
    y = hand_target(algo, batch, seed=5)
    q = hand_q(algo, batch)
    torch.manual_seed(5)
    metrics = algo.update({**batch, "weights": weights})
    assert metrics["critic_loss"] == pytest.approx(
        (weights * (q - y).square()).mean(-1).sum().item(), rel=1e-5
    )


def test_terminated_cuts_the_bootstrap_and_truncated_does_not() -> None:
    batch = random_batch(16)
    ends = torch.ones(16, dtype=torch.bool)
    # Terminated: y = r exactly, whatever the networks say.
    algo = learner()
    q = hand_q(algo, batch)
    terminated = {**batch, "terminated": ends, "truncated": ~ends}
    algo.update(terminated)
    torch.testing.assert_close(algo.priorities(), (q - batch["reward"]).abs().mean(0))
    # Truncated only: the same transitions bootstrap from s' (float flags work too).
    algo = learner()
    q = hand_q(algo, batch)
    truncated = {**batch, "terminated": torch.zeros(16), "truncated": ends.float()}
    y = hand_target(algo, truncated, seed=2)
    torch.manual_seed(2)
    algo.update(truncated)
    torch.testing.assert_close(algo.priorities(), (q - y).abs().mean(0))
    assert not torch.allclose(y, batch["reward"])


def test_polyak_moves_targets_by_tau() -> None:
    algo = learner(tau=0.1)
    old_target = [p.clone() for p in algo.target_critic.parameters()]
    algo.update(random_batch(16))
    for target, online, old in zip(
        algo.target_critic.parameters(), algo.critic.parameters(), old_target, strict=True
    ):
        torch.testing.assert_close(target, 0.9 * old + 0.1 * online)
    assert not torch.allclose(next(iter(algo.target_critic.parameters())), old_target[0])
    # The helper alone, on plain tensors.
    target, online = [torch.zeros(3)], [torch.ones(3)]
    polyak_update(target, online, 0.25)
    torch.testing.assert_close(target[0], torch.full((3,), 0.25))


@pytest.mark.parametrize("target_entropy, direction", [(50.0, 1), (-50.0, -1)])
def test_temperature_moves_toward_the_target_entropy(target_entropy: float, direction: int) -> None:
    algo = learner(target_entropy=target_entropy, alpha_lr=1e-2)
    alphas = [algo.update(random_batch(32, seed=i))["alpha"] for i in range(5)]
    # The reported alpha is the value the step used; the parameter has moved on since.
    final = algo.log_alpha.exp().item()
    assert alphas[0] == pytest.approx(1.0)
    assert (final - 1.0) * direction > 0.03
    assert all((b - a) * direction > 0 for a, b in itertools.pairwise(alphas))


def test_fixed_temperature_stays_put() -> None:
    algo = learner(autotune_alpha=False, initial_alpha=0.2)
    for i in range(3):
        metrics = algo.update(random_batch(16, seed=i))
    assert metrics["alpha"] == pytest.approx(0.2) and metrics["alpha_loss"] == 0.0


def test_update_intervals_delay_the_actor_and_the_targets() -> None:
    algo = learner(actor_update_interval=2, target_update_interval=2)
    actor_before = [p.clone() for p in algo.actor.parameters()]
    target_before = [p.clone() for p in algo.target_critic.parameters()]
    first = algo.update(random_batch(16, seed=0))
    assert "actor_loss" not in first and algo.num_actor_updates == 0
    for p, q in zip(algo.actor.parameters(), actor_before, strict=True):
        torch.testing.assert_close(p, q)
    for p, q in zip(algo.target_critic.parameters(), target_before, strict=True):
        torch.testing.assert_close(p, q)
    second = algo.update(random_batch(16, seed=1))
    assert "actor_loss" in second and algo.num_actor_updates == 1
    assert not torch.allclose(next(iter(algo.target_critic.parameters())), target_before[0])


# ---- RLPD options


def test_ensemble_subset_min_uses_a_random_subset_of_members() -> None:
    algo = learner(num_critics=6, critic_subset=2, critic_layernorm=True)
    assert algo.critic.weights[1].shape == (6, 32, 32)
    obs, action = torch.randn(9, SPEC.obs_dim), torch.rand(9, SPEC.action_dim)
    full = algo.target_critic(obs, action)
    assert full.shape == (6, 9)
    torch.testing.assert_close(full[4], member_q(algo.target_critic, 4, obs, action))  # LayerNorm by hand
    seen = set()
    for _ in range(30):
        members = algo._members()
        assert members is not None and members.shape == (2,) and len(set(members.tolist())) == 2
        seen.update(members.tolist())
        torch.testing.assert_close(algo.target_critic(obs, action, members=members), full[members])
    assert seen == set(range(6))
    # The backup is the min over the chosen subset only.
    batch = random_batch(9)
    members = torch.tensor([1, 4])
    torch.manual_seed(0)
    y = soft_q_target(
        algo.actor,
        algo.target_critic,
        batch["next_obs"],
        batch["reward"],
        torch.ones(9),
        torch.tensor(0.0),
        members,
    )
    torch.manual_seed(0)
    next_action, _ = algo.actor.sample(batch["next_obs"])
    expected = batch["reward"] + algo.target_critic(batch["next_obs"], next_action)[members].min(0).values
    torch.testing.assert_close(y, expected)
    assert learner(num_critics=2)._members() is None


def test_backup_without_entropy_learns_the_plain_return() -> None:
    batch = random_batch(16)
    targets = {}
    for backup_entropy in (True, False):
        algo = learner(backup_entropy=backup_entropy, initial_alpha=5.0)
        (minibatch,), _ = algo._minibatches(batch, None)
        torch.manual_seed(0)
        plain = soft_q_target(
            algo.actor, algo.target_critic, minibatch.next_obs, minibatch.reward, minibatch.discount,
            torch.tensor(0.0),
        )  # fmt: skip
        torch.manual_seed(0)
        metrics, _ = algo._critic_step(*minibatch.tensors())
        targets[backup_entropy] = (metrics[3].item(), plain.mean().item())
    assert targets[False][0] == pytest.approx(targets[False][1], rel=1e-5)
    assert abs(targets[True][0] - targets[True][1]) > 0.5  # alpha 5 moves the soft target


def test_utd_splits_the_batch_into_consecutive_critic_minibatches() -> None:
    batch = random_batch(24)
    split = learner(utd_ratio=3)
    by_hand = learner(utd_ratio=1)
    torch.manual_seed(7)
    metrics = split.update(batch)
    assert (split.num_critic_updates, split.num_actor_updates, split.num_updates) == (3, 1, 1)
    assert split.priorities().shape == (24,)
    assert "actor_loss" in metrics

    # The same as three critic steps on consecutive thirds, then one actor step on the last third.
    torch.manual_seed(7)
    for i in range(3):
        part = {k: v[8 * i : 8 * (i + 1)] for k, v in batch.items()}
        (minibatch,), _ = by_hand._minibatches(part, None)
        by_hand._critic_step(*minibatch.tensors())
        polyak_update(by_hand._target_params, by_hand._critic_params, by_hand.config.tau)
    by_hand._actor_step(minibatch.obs)
    for a, b in zip(
        split.state_dict()["actor"].values(), by_hand.state_dict()["actor"].values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    for a, b in zip(split.critic.parameters(), by_hand.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_actor_on_all_minibatches_sees_the_whole_batch() -> None:
    batch = random_batch(16)
    seen: list[int] = []
    algo = learner(utd_ratio=2, actor_batch="all")
    step = algo._actor_step_fn
    algo._actor_step_fn = lambda obs: (seen.append(obs.shape[0]), step(obs))[1]
    algo.update(batch)
    assert seen == [16]


def test_demo_batch_is_mixed_into_every_minibatch() -> None:
    online, demo = random_batch(8, seed=1), random_batch(4, seed=2)
    mixed = learner(utd_ratio=2)
    reference = learner(utd_ratio=2)
    torch.manual_seed(3)
    metrics = mixed.update(online, demo_batch=demo)
    # Each minibatch = 4 online + 2 demo items, in that order.
    glued = {k: torch.cat((online[k][:4], demo[k][:2], online[k][4:], demo[k][2:])) for k in online}
    glued["is_demo"] = torch.tensor([0, 0, 0, 0, 1, 1] * 2, dtype=torch.bool)
    torch.manual_seed(3)
    ref_metrics = reference.update(glued)
    for a, b in zip(mixed.critic.parameters(), reference.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    for key in ("critic_loss", "q_mean/online", "q_mean/demo", "td_error/online", "td_error/demo"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5)
    # TD errors come back for the online items only (the replay owns those), in order.
    assert mixed.priorities().shape == (8,)
    torch.testing.assert_close(mixed.priorities(), reference.priorities()[[0, 1, 2, 3, 6, 7, 8, 9]])


def test_per_source_q_means_are_hand_computed() -> None:
    algo = learner()
    online, demo = random_batch(6, seed=1), random_batch(2, seed=2)
    q_online = hand_q(algo, online).mean(0).mean().item()
    q_demo = hand_q(algo, demo).mean(0).mean().item()
    metrics = algo.update(online, demo_batch=demo)
    assert metrics["q_mean/online"] == pytest.approx(q_online, rel=1e-5, abs=1e-6)
    assert metrics["q_mean/demo"] == pytest.approx(q_demo, rel=1e-5, abs=1e-6)


def test_behaviour_cloning_fits_demo_actions() -> None:
    algo = learner(actor_lr=3e-3)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(256, SPEC.obs_dim, generator=g)
    demo_action = torch.tanh(obs[:, :3] * 0.8)
    demo_action[:5] = 1.0  # saturated demo actions must not produce inf through atanh
    assert torch.isfinite(bc_loss(algo.actor, obs, demo_action))
    first = algo.pretrain_step({"obs": obs, "action": demo_action})
    for _ in range(150):
        last = algo.pretrain_step({"obs": obs, "action": demo_action})
    assert last["bc_loss"] < first["bc_loss"] - 1.0
    assert last["bc_action_mse"] < 0.2 * first["bc_action_mse"]


def test_behaviour_cloning_learns_a_saturated_switch_beside_tight_dims() -> None:
    # Like a gripper command: one dim is exactly -1 or +1 by state, the others are smooth and
    # almost noise-free. The deterministic action must get the switch right, not just the likelihood.
    algo = learner(actor_lr=1e-3)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(512, SPEC.obs_dim, generator=g)
    demo_action = torch.tanh(obs[:, :3] * 0.3)
    demo_action[:, 2] = torch.where(obs[:, 3] > 0, 1.0, -1.0)
    for _ in range(600):
        metrics = algo.pretrain_step({"obs": obs, "action": demo_action})
    with torch.no_grad():
        switch = algo.actor.deterministic(obs)[:, 2]
    clear = obs[:, 3].abs() > 0.3  # away from the step, which a small MLP blurs
    # With the likelihood alone (the loss before) this stayed at chance, 0.5, and the MSE at 0.41.
    assert (torch.sign(switch[clear]) == demo_action[clear, 2]).float().mean() > 0.9
    assert metrics["bc_action_mse"] < 0.25


def test_q_filter_clones_only_the_demo_actions_the_critic_prefers() -> None:
    actor = learner().actor
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(64, SPEC.obs_dim, generator=g)
    demo_action = torch.rand(64, SPEC.action_dim, generator=g) * 2 - 1
    demo_mask = (torch.arange(64) >= 16).float()  # the first 16 items are online data
    goal = torch.rand(64, SPEC.action_dim, generator=g) * 2 - 1

    def critic(o: torch.Tensor, a: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        return -(a - goal).square().sum(-1).expand(2, -1)  # two members, best at `goal`

    with torch.no_grad():
        better = (demo_action - goal).square().sum(-1) < (actor.deterministic(obs) - goal).square().sum(-1)
    expected_keep = demo_mask * better.float()
    per_item = bc_loss_per_item(actor, obs, demo_action)
    loss, kept = demo_bc_term(actor, critic, obs, demo_action, demo_mask, q_filter=True)
    assert 0 < expected_keep.sum() < demo_mask.sum()  # the filter has something to decide
    assert kept.item() == pytest.approx((expected_keep.sum() / demo_mask.sum()).item())
    assert loss.item() == pytest.approx(
        ((per_item * expected_keep).sum() / expected_keep.sum()).item(), rel=1e-5
    )
    loss.backward()
    unfiltered, all_kept = demo_bc_term(actor, critic, obs, demo_action, demo_mask, q_filter=False)
    assert all_kept.item() == 1.0
    assert unfiltered.item() == pytest.approx(per_item[16:].mean().item(), rel=1e-5)
    nothing, none_kept = demo_bc_term(actor, critic, obs, demo_action, torch.zeros(64), q_filter=False)
    assert nothing.item() == 0.0 and none_kept.item() == 0.0


def test_actor_bc_weight_pulls_the_policy_to_the_demos_during_rl() -> None:
    demo = random_batch(64, seed=4)
    demo["action"] = torch.tanh(demo["obs"][:, :3])
    plain, cloning = learner(actor_lr=3e-3), learner(actor_lr=3e-3, bc_weight=2.0, bc_q_filter=False)
    for i in range(150):
        online = random_batch(64, seed=100 + i)
        plain_metrics = plain.update(online, demo)
        metrics = cloning.update(online, demo)
    assert "bc_loss" not in plain_metrics and metrics["bc_kept"] == 1.0
    with torch.no_grad():
        mse_plain = (plain.actor.deterministic(demo["obs"]) - demo["action"]).square().mean()
        mse_cloning = (cloning.actor.deterministic(demo["obs"]) - demo["action"]).square().mean()
    assert mse_cloning < 0.3 * mse_plain
    # Without demos in the batch the term is zero and the metrics keep their names.
    assert cloning.update(random_batch(64, seed=7))["bc_kept"] == 0.0


def test_actor_bc_term_reads_demos_marked_in_a_replay_batch() -> None:
    # demos.placement: replay -- the demos arrive inside the online batch, marked by is_demo.
    batch = random_batch(16)
    batch["is_demo"] = torch.arange(16) >= 8
    algo = learner(bc_weight=1.0, bc_q_filter=False)
    with torch.no_grad():
        expected = bc_loss_per_item(algo.actor, batch["obs"][8:], batch["action"][8:]).mean()
    metrics = algo.update(batch)
    assert metrics["bc_kept"] == 1.0
    assert metrics["bc_loss"] == pytest.approx(expected.item(), rel=1e-5)


# ---- state and policy round trips


def test_state_dict_round_trip_restores_outputs_optimizer_and_future(tmp_path) -> None:
    algo = learner(num_critics=3, critic_subset=2, critic_layernorm=True)
    for i in range(4):
        algo.update(random_batch(16, seed=i))
    path = tmp_path / "sac.pt"
    torch.save(algo.state_dict(), path)
    restored = learner(num_critics=3, critic_subset=2, critic_layernorm=True, seed=123)
    restored.load_state_dict(torch.load(path, weights_only=True))

    obs, action = torch.randn(5, SPEC.obs_dim), torch.rand(5, SPEC.action_dim)
    torch.testing.assert_close(restored.actor(obs), algo.actor(obs))
    torch.testing.assert_close(restored.critic(obs, action), algo.critic(obs, action))
    torch.testing.assert_close(restored.target_critic(obs, action), algo.target_critic(obs, action))
    assert restored.log_alpha.item() == algo.log_alpha.item()
    assert restored.num_updates == 4 and restored.num_critic_updates == 4
    for mine, theirs in zip(
        algo.critic_optimizer.state.values(), restored.critic_optimizer.state.values(), strict=True
    ):
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key])
    # Same RNG, same batch: the next update is identical too (Adam moments and step counts restored).
    torch.manual_seed(9)
    a = algo.update(random_batch(16, seed=99))
    torch.manual_seed(9)
    b = restored.update(random_batch(16, seed=99))
    assert a == b
    for p, q in zip(algo.actor.parameters(), restored.actor.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_load_state_dict_does_not_share_optimizer_tensors() -> None:
    algo = learner()
    algo.update(random_batch(16))
    twin = learner()
    twin.load_state_dict(algo.state_dict())
    before = [s["exp_avg"].clone() for s in twin.critic_optimizer.state.values()]
    algo.update(random_batch(16, seed=1))
    after = [s["exp_avg"] for s in twin.critic_optimizer.state.values()]
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_policy_params_give_actors_the_learners_actions() -> None:
    algo = learner()
    for i in range(3):
        algo.update(random_batch(16, seed=i))
    state = algo.params("policy")
    assert all(v.dtype == np.float32 for v in state.values())
    policy = make_policy("sac", SPEC, SMALL | {"seed": 42})
    policy.load_params("policy", state)
    obs = np.random.default_rng(0).standard_normal((6, SPEC.obs_dim)).astype(np.float32)
    with torch.no_grad():
        expected = algo.actor.deterministic(torch.from_numpy(obs)).numpy()
    np.testing.assert_array_equal(policy.act(obs, deterministic=True).env_actions, expected)
    np.testing.assert_array_equal(algo.make_policy().act(obs, deterministic=True).env_actions, expected)
    stochastic = policy.act(obs).env_actions
    assert stochastic.shape == (6, 3) and stochastic.dtype == np.float32 and np.abs(stochastic).max() < 1
    assert policy.act(obs[0].astype(np.float64), deterministic=True).env_actions.shape == (1, 3)
    # params() is a copy: further updates leave an already published state alone.
    snapshot = {k: v.copy() for k, v in state.items()}
    algo.update(random_batch(16, seed=5))
    for key, value in state.items():
        np.testing.assert_array_equal(value, snapshot[key])


def test_policy_refuses_bad_states_and_observations() -> None:
    policy = make_policy("sac", SPEC, SMALL)
    state = learner().params("policy")
    with pytest.raises(ValueError, match=r"missing \['head\.bias'\]"):
        policy.load_params("policy", {k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(ValueError, match=r"'head\.weight' has shape"):
        policy.load_params("policy", {**state, "head.weight": np.zeros((2, 2), np.float32)})
    bad = state["head.bias"].copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        policy.load_params("policy", {**state, "head.bias": bad})
    with pytest.raises(ValueError, match="obs has shape"):
        policy.act(np.zeros((2, 4), np.float32))


# ---- learning sanity


def test_learns_the_best_action_of_a_one_step_bandit() -> None:
    """Reward -|a - a*|^2, every step terminal: the deterministic action must approach a*."""
    spec = SpaceSpec(obs_dim=2, action_dim=2)
    best = torch.tensor([0.5, -0.3])
    config = {"hidden_sizes": (32, 32), "seed": 0, "actor_lr": 3e-3, "critic_lr": 3e-3, "alpha_lr": 3e-3}
    algo = make_algorithm("sac", spec, config, device="cpu")
    torch.manual_seed(0)
    obs = torch.randn(4, spec.obs_dim)
    before = np.abs(algo.make_policy().act(obs.numpy(), deterministic=True).env_actions - best.numpy()).max()
    for _ in range(300):
        algo.update(bandit_batch(best))
    after = np.abs(algo.make_policy().act(obs.numpy(), deterministic=True).env_actions - best.numpy()).max()
    # The entropy bonus (alpha is still ~0.4 here) keeps the mean a little off a*.
    assert after < 0.15 < before


def test_behaviour_cloning_batch_errors_name_the_problem() -> None:
    algo = learner()
    with pytest.raises(BatchError, match="missing 'action'"):
        algo.pretrain_step({"obs": torch.zeros(4, SPEC.obs_dim)})
    with pytest.raises(BatchError, match="expected \\[B, 5\\] and \\[B, 3\\]"):
        algo.bc_loss({"obs": torch.zeros(4, SPEC.obs_dim), "action": torch.zeros(4, 2)})


@pytest.mark.slow
def test_compiled_update_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile=True` (the CUDA speed flag) runs the same math: checked here on the CPU.

    Inductor draws its own random numbers unless told to fall back to eager's generator.
    """
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    eager = learner(utd_ratio=2)
    compiled = learner(utd_ratio=2, compile=True)
    online, demo = random_batch(16, seed=1), random_batch(8, seed=2)
    for i in range(3):
        torch.manual_seed(i)
        expected = eager.update(online, demo)
        torch.manual_seed(i)
        got = compiled.update(online, demo)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
    for a, b in zip(eager.critic.parameters(), compiled.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
