"""DSRL and its diffusion base policy: determinism, chunks through replay and the demo table, the
losses by hand, the pretraining command, the pipeline, and a learning test on a weak base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dsrl_helpers import PENDULUM, pendulum_demos
from replay_helpers import shard
from run_helpers import distrl

from distrl.actors.evaluator import evaluate
from distrl.actors.rollout import Rollout
from distrl.algos import AlgorithmConfigError, SpaceSpec, make_algorithm, transition_fields
from distrl.algos.diffusion import (
    SPEC_TENSOR,
    DiffusionModel,
    DiffusionModelError,
    DiffusionPolicy,
    DiffusionSpec,
    load_model,
    save_model,
)
from distrl.algos.dsrl import (
    BASE_PARAMS,
    DSRLConfig,
    actor_loss,
    build_learner,
    critic_loss,
    distill_loss,
    td_target,
)
from distrl.data import open_dataset
from distrl.data.chunks import chunk_episodes, chunk_transitions
from distrl.envs import make_env
from distrl.learners.demos import DemoTable
from distrl.learners.diffusion_pretrain import pretrain_diffusion
from distrl.replay.client import ReplayClient

SPACE = SpaceSpec(obs_dim=4, action_dim=1, max_episode_steps=1000)
SMALL = {"hidden": 32, "blocks": 2, "time_dim": 16}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small diffusion policy cloned on mixed pendulum demos (what `distrl pretrain diffusion` writes)."""
    tmp = tmp_path_factory.mktemp("dsrl")
    demos = pendulum_demos(tmp / "demos.zarr", episodes=10, good=0.5)
    pretrain_diffusion(demos, tmp / "base", SMALL, {"steps": 300}, eval_episodes=0, progress=False)
    return tmp / "base"


def learner(base: DiffusionModel, **overrides):
    config = DSRLConfig(
        **{"hidden_sizes": (32, 32), "utd_ratio": 2, "noise_critic_steps": 2, "seed": 0, **overrides}
    )
    return build_learner(SPACE, config, base, torch.device("cpu"))


def random_batch(config: DSRLConfig, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for f in transition_fields("dsrl", SPACE, config):
        if f.dtype == "bool":
            out[f.name] = torch.rand((n, *f.shape), generator=g) < 0.1
        elif f.dtype == "int32":
            out[f.name] = torch.randint(1, config.chunk + 1, (n, *f.shape), generator=g, dtype=torch.int32)
        else:
            out[f.name] = torch.rand((n, *f.shape), generator=g) * 2 - 1
    return out


# ---- the diffusion policy


def test_ddim_gives_the_same_chunk_for_the_same_noise_in_the_learner_and_in_another_process(
    base_dir: Path, tmp_path: Path
) -> None:
    base = load_model(base_dir)
    algo = learner(base)
    obs = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first, second = algo.chunk_of(obs, w), algo.chunk_of(obs, w)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    other_w = algo.chunk_of(obs, -w)
    assert not torch.allclose(first, other_w), "the chunk must depend on the noise"

    # An actor process: its own interpreter, the base arriving as a parameter set.
    np.savez(tmp_path / "inputs.npz", obs=obs.numpy(), w=w.numpy(), **algo.params(BASE_PARAMS))
    script = (
        "import sys, numpy as np\n"
        "from distrl.algos import SpaceSpec, make_policy\n"
        "d = dict(np.load(sys.argv[1]))\n"
        "obs, w = d.pop('obs'), d.pop('w')\n"
        "p = make_policy('dsrl', SpaceSpec(4, 1), {'hidden_sizes': [32, 32]})\n"
        "p.load_params('base', d)\n"
        "np.save(sys.argv[2], p.chunk(obs, w))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")], check=True
    )
    actor_chunk = np.load(tmp_path / "out.npy")
    assert actor_chunk.shape == (6, 4, 1)
    np.testing.assert_allclose(actor_chunk.reshape(6, -1), first.numpy(), atol=1e-5)


def test_weights_round_trip_and_bad_weights_are_refused(tmp_path: Path) -> None:
    for network in ("mlp", "unet"):
        model = DiffusionModel(DiffusionSpec(obs_dim=3, action_dim=2, network=network, **SMALL))
        model.set_obs_stats(np.arange(3.0), np.ones(3) * 2)
        save_model(model, tmp_path / network)
        again = load_model(tmp_path / network)
        obs, w = torch.randn(2, 3), torch.randn(2, 4, 2)
        with torch.no_grad():
            torch.testing.assert_close(model.denoise(obs, w), again.denoise(obs, w))
    tensors = model.tensors()
    with pytest.raises(DiffusionModelError, match="spec_json"):
        DiffusionModel.from_tensors({k: v for k, v in tensors.items() if k != SPEC_TENSOR})
    bad = dict(tensors)
    bad["obs_mean"] = np.full(3, np.nan, dtype=np.float32)
    with pytest.raises(DiffusionModelError, match="obs_mean"):
        DiffusionModel.from_tensors(bad)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "policy.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DiffusionModelError, match="not a readable safetensors"):
        load_model(tmp_path / "junk")
    with pytest.raises(DiffusionModelError, match="distrl pretrain diffusion"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="divisible"):
        DiffusionSpec(obs_dim=3, action_dim=2, chunk=3, network="unet")


def test_pretrain_command_trains_checkpoints_and_evaluates(tmp_path: Path) -> None:
    demos = pendulum_demos(tmp_path / "demos.zarr", episodes=4, good=1.0, max_steps=60)
    out = distrl("pretrain", "diffusion", "--demos", str(demos), "--out", str(tmp_path / "base"),
                 "--eval-episodes", "2", "--checkpoint-every", "50", "-q",
                 "steps=120", "hidden=32", "blocks=1", "batch_size=64")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ms per decision" in out.stdout and "plain policy" in out.stdout
    summary = json.loads((tmp_path / "base" / "pretrain.json").read_text())
    assert summary["steps"] == 120 and summary["chunks"] == open_dataset(demos).steps
    assert summary["eval_episodes"] == 2 and summary["eval_return_mean"] > 0
    assert summary["spec"]["hidden"] == 32 and summary["decision_ms"] > 0
    # A clean demo set is learnt: the loss falls well below the unit variance of the noise.
    assert summary["losses"][-1][1] < 0.5 * summary["losses"][0][1]
    assert load_model(tmp_path / "base").spec.chunk == 4

    out = distrl("pretrain", "diffusion", "--demos", str(demos), "--out", str(tmp_path / "x"), "widht=3")
    assert out.returncode == 2 and "unknown setting 'widht'" in out.stderr
    out = distrl(
        "pretrain", "diffusion", "--demos", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "x")
    )
    assert out.returncode == 2 and "error:" in out.stderr


# ---- chunks of demos and through replay


def test_demo_episodes_become_chunks_with_summed_rewards_and_edge_padding(tmp_path: Path) -> None:
    demos = pendulum_demos(tmp_path / "d.zarr", episodes=2, good=1.0, max_steps=7)
    dataset = open_dataset(demos)
    chunks = chunk_episodes(dataset, 4)
    first = dataset.episode(0)
    assert chunks["action"].shape == (dataset.steps, 4, 1)
    np.testing.assert_allclose(chunks["action"][0, :, 0], first["action"][:4, 0])
    np.testing.assert_allclose(chunks["reward"][0], first["reward"][:4].sum(), rtol=1e-6)
    np.testing.assert_allclose(chunks["next_obs"][0], first["next_obs"][3])
    # The last chunk of the 7-step episode: 1 step, padded by repeating the last action.
    np.testing.assert_allclose(chunks["action"][6, :, 0], np.repeat(first["action"][6, 0], 4))
    assert chunks["env_steps"][6] == 1 and bool(chunks["truncated"][6])
    assert list(chunks["env_steps"][:7]) == [4, 4, 4, 4, 3, 2, 1]
    assert len(chunk_transitions(dataset, 4)["obs"]) == dataset.steps  # next_obs stored: all usable

    config = DSRLConfig(chunk=4)
    fields = transition_fields("dsrl", SPACE, config)
    table = DemoTable(demos, fields, torch.device("cpu"))
    assert table.size == dataset.steps
    assert tuple(table.sample(8)["action"].shape) == (8, 4, 1)
    with pytest.raises(ValueError, match="action"):
        DemoTable(demos, transition_fields("dsrl", SPACE, DSRLConfig(variant="sac")), torch.device("cpu"))


def test_an_executed_chunk_round_trips_through_replay(base_dir: Path) -> None:
    config = DSRLConfig(hidden_sizes=(32, 32), seed=0)
    algo = build_learner(SPACE, config, load_model(base_dir), torch.device("cpu"))
    fields = transition_fields("dsrl", SPACE, config)
    envs = [make_env(PENDULUM, seed=s) for s in range(3)]
    rollout = Rollout(envs, algo.make_policy(), fields=fields, record_steps=True)
    rollout.reset([0, 1, 2])
    executed: dict[bytes, np.ndarray] = {}  # decision's start obs -> the actions the env ran
    spec = {f.name: {"dtype": f.dtype, "shape": list(f.shape)} for f in fields}
    with shard(capacity=1000, spec=spec, seed=0) as (_, running), ReplayClient([running.address]) as client:
        with client.writer("actor-0") as writer:
            for _ in range(8):
                step = rollout.step(rng=np.random.default_rng(0))
                per_env: dict[int, list] = {}
                for i, row in step.step_rows:
                    per_env.setdefault(i, []).append(row["action"])
                for i, obs in enumerate(step.transitions["obs"]):
                    executed[np.asarray(obs, np.float32).tobytes()] = np.asarray(per_env[i], np.float32)
                writer.insert(step.transitions)
            writer.flush(10)
        batch = client.sample(64, timeout=10).fields
    rollout.close()
    assert batch["action"].shape[1:] == (4, 1)
    for obs, action, steps in zip(batch["obs"], batch["action"], batch["env_steps"], strict=True):
        ran = executed[np.asarray(obs, np.float32).tobytes()]
        assert len(ran) == steps, "env_steps must count the steps the env ran"
        # The stored chunk is the decision's: its first env_steps actions are exactly what ran.
        np.testing.assert_array_equal(action[:steps], ran)


# ---- the update


def test_losses_match_a_hand_computation() -> None:
    reward = torch.tensor([1.0, 0.0])
    discount = torch.tensor([0.9, 0.0])
    next_q = torch.tensor([[2.0, 5.0], [3.0, 1.0]])  # [E, B]
    next_log_prob = torch.tensor([0.5, -1.0])
    alpha = torch.tensor(0.2)
    y = td_target(reward, discount, next_q, next_log_prob, alpha)
    # min_e: [2, 1]; minus alpha log pi: [1.9, 1.2]; r + discount * that: [2.71, 0]
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 1.9, 0.0]))
    q = torch.tensor([[2.0, 0.5], [3.0, -0.5]])
    expected = 0.5 * (((2 - 2.71) ** 2 + 0.5**2) / 2 + ((3 - 2.71) ** 2 + 0.5**2) / 2)
    torch.testing.assert_close(critic_loss(q, y), torch.tensor(expected))
    torch.testing.assert_close(
        critic_loss(q, y, torch.tensor([2.0, 0.0])), torch.tensor(0.5 * (2 * 0.71**2 / 2 + 2 * 0.29**2 / 2))
    )
    log_prob = torch.tensor([0.1, 0.3])
    torch.testing.assert_close(
        actor_loss(alpha, log_prob, q), torch.tensor(((0.02 - 2.0) + (0.06 + 0.5)) / 2)
    )
    torch.testing.assert_close(distill_loss(q, q + 1.0), torch.tensor(0.5 * 2.0))


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_an_update_has_the_right_shapes_and_only_changes_what_it_trains(base_dir: Path, variant: str) -> None:
    algo = learner(load_model(base_dir), variant=variant)
    base_before = {k: v.clone() for k, v in algo.base.state_dict().items()}
    actor_before = [p.clone() for p in algo.actor.parameters()]
    batch = random_batch(algo.config, 64)
    metrics = algo.update(batch)
    expected = {"critic_loss", "q_mean", "target_mean", "actor_loss", "alpha", "entropy", "latent_abs"}
    assert expected <= set(metrics) and all(np.isfinite(v) for v in metrics.values())
    assert ("distill_loss" in metrics) == (variant == "na")
    assert algo.priorities().shape == (64,)
    assert all(torch.equal(base_before[k], v) for k, v in algo.base.state_dict().items()), (
        "the base must stay frozen"
    )
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, algo.actor.parameters(), strict=True))
    assert [s.name for s in algo.param_sets()] == ["policy", "base"]
    assert algo.param_sets()[1].every_updates == 0
    step = algo.make_policy().act(np.zeros((2, 4), dtype=np.float32))
    assert step.env_actions.shape == (2, 4, 1) and np.abs(step.env_actions).max() <= 1.0
    assert ("action" in step.extras) == (variant == "sac")
    if variant == "sac":
        assert step.extras["action"].shape == (2, 4) and np.abs(step.extras["action"]).max() <= 1.5
    restored = learner(load_model(base_dir), variant=variant)
    restored.load_state_dict(algo.state_dict())
    torch.testing.assert_close(restored.actor.state_dict(), algo.actor.state_dict())


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_the_learners_critic_loss_matches_a_hand_computation(base_dir: Path, variant: str) -> None:
    algo = learner(load_model(base_dir), variant=variant, utd_ratio=1, initial_alpha=0.3)
    batch = random_batch(algo.config, 3, seed=5)
    obs, next_obs = batch["obs"], batch["next_obs"]
    action = batch["action"].reshape(3, -1)
    with torch.no_grad():
        torch.manual_seed(11)
        next_w, next_log_prob = algo.actor.sample(next_obs)  # the update's first random draw
        next_x = next_w if variant == "sac" else algo.base.denoise(next_obs, next_w).reshape(3, -1)
        next_q = algo.target_critic(next_obs, next_x)
        discount = 0.99 ** batch["env_steps"].float() * (~batch["terminated"]).float()
        y = batch["reward"] + discount * (next_q.min(0).values - 0.3 * next_log_prob)
        q = algo.critic(obs, action)
        expected = 0.5 * sum(((q[e] - y) ** 2).mean() for e in range(2))
    torch.manual_seed(11)
    metrics = algo.update(batch)
    assert metrics["critic_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["target_mean"] == pytest.approx(float(y.mean()), rel=1e-5)


def test_without_backup_entropy_the_target_ignores_the_temperature(base_dir: Path) -> None:
    losses = {}
    for backup in (True, False):
        for alpha in (0.01, 10.0):
            algo = learner(load_model(base_dir), backup_entropy=backup, initial_alpha=alpha, utd_ratio=1)
            torch.manual_seed(0)
            losses[backup, alpha] = algo.update(random_batch(algo.config, 32))["critic_loss"]
    assert losses[False, 0.01] == pytest.approx(losses[False, 10.0])
    assert losses[True, 0.01] != pytest.approx(losses[True, 10.0])


def test_the_distillation_loss_falls_on_a_fixed_batch(base_dir: Path) -> None:
    algo = learner(load_model(base_dir))
    obs = torch.randn(128, 4, generator=torch.Generator().manual_seed(0))
    w = torch.randn(128, 4, generator=torch.Generator().manual_seed(1)).clamp(-1.5, 1.5)
    before = float(algo.distill_loss(obs, w))
    for _ in range(150):
        algo._distill_step(obs)
    after = float(algo.distill_loss(obs, w))
    assert after < 0.3 * before, (before, after)


def test_bad_configs_and_bases_are_refused_with_a_clear_error(base_dir: Path) -> None:
    with pytest.raises(AlgorithmConfigError, match="unknown key 'latnt_bound'"):
        make_algorithm("dsrl", SPACE, {"latnt_bound": 2})
    with pytest.raises(DiffusionModelError, match=r"algo\.base_policy"):
        make_algorithm("dsrl", SPACE, {"hidden_sizes": [8]})
    with pytest.raises(DiffusionModelError, match="chunk 4"):
        make_algorithm("dsrl", SPACE, {"base_policy": str(base_dir), "chunk": 2, "hidden_sizes": [8]})
    with pytest.raises(DiffusionModelError, match="obs_dim 4"):
        make_algorithm("dsrl", SpaceSpec(5, 1), {"base_policy": str(base_dir), "hidden_sizes": [8]})
    policy = make_algorithm("dsrl", SPACE, {"base_policy": str(base_dir), "hidden_sizes": [8]}).make_policy()
    fresh = type(policy)(SPACE, policy.config)
    with pytest.raises(RuntimeError, match="no base diffusion policy yet"):
        fresh.act(np.zeros(4, dtype=np.float32))
    with pytest.raises(DiffusionModelError, match="spec_json"):
        fresh.load_params("base", {"obs_mean": np.zeros(4, np.float32)})


# ---- end to end


@pytest.mark.slow
def test_dsrl_runs_through_the_pipeline_with_the_base_sent_once(base_dir: Path, tmp_path: Path) -> None:
    from test_algorithm_contract import run_pipeline

    raw = {
        "name": "dsrl-pipeline",
        "seed": 0,
        "env": {"id": PENDULUM.id},
        "algo": {
            "name": "dsrl",
            "base_policy": str(base_dir),
            "hidden_sizes": [32, 32],
            "utd_ratio": 2,
            "noise_critic_steps": 1,
        },
        "actors": {"num_actors": 1, "envs_per_actor": 2, "warmup_steps": 100, "insert_batch_size": 8},
        "replay": {
            "table": {
                "capacity": 10_000,
                "samples_per_insert": 8.0,
                "min_size_to_sample": 32,
                "error_buffer": 256,
            },
            "checkpoint_every_s": None,
        },
        "learner": {"batch_size": 32, "device": "cpu", "publish_every": 5, "checkpoint_every": 10_000},
        # Demo chunks in every learner batch (DSRL-NA's Q_A learns from them too).
        "demos": {"path": str(base_dir.parent / "demos.zarr"), "ratio": 0.25, "placement": "learner"},
        "train": {"max_updates": 40},
        "eval": {"enabled": False},
        "telemetry": {"console": False},
    }
    learner_, actor, sets = run_pipeline(raw, tmp_path, 40)
    assert learner_.updates == 40 and learner_.demos is not None
    assert tuple(learner_.demos.sample(2)["action"].shape) == (2, 4, 1)
    assert sorted(sets) == ["base", "policy"]
    assert actor.param_versions["base"] == 1, "the frozen base is sent once"
    assert actor.param_versions["policy"] >= 2


@pytest.mark.slow
def test_dsrl_improves_a_weak_base_policy(tmp_path: Path) -> None:
    """A base cloned on demos that push the pole the wrong way half the time falls within a few
    dozen steps; DSRL-NA, acting only through the base's latent noise, keeps it up longer."""
    torch.set_num_threads(1)
    demos = pendulum_demos(tmp_path / "demos.zarr", episodes=20, good=0.5)
    summary = pretrain_diffusion(demos, tmp_path / "base", {"hidden": 64, "blocks": 2}, {"steps": 1500},
                                 eval_episodes=0, progress=False)  # fmt: skip
    base = load_model(tmp_path / "base")
    base_return = evaluate(DiffusionPolicy(base, seed=0), PENDULUM, 10, seed=100).return_mean

    config = DSRLConfig(hidden_sizes=(64, 64), utd_ratio=2, noise_critic_steps=2, initial_alpha=0.01, seed=0)
    algo = build_learner(SPACE, config, base, torch.device("cpu"))
    fields = transition_fields("dsrl", SPACE, config)
    policy = algo.make_policy()
    rollout = Rollout([make_env(PENDULUM, seed=s) for s in range(2)], policy, fields=fields)
    rollout.reset([0, 1])
    rng, columns, env_steps = np.random.default_rng(0), {f.name: [] for f in fields}, 0
    while env_steps < 6_000:
        step = rollout.step(warmup=env_steps < 400, rng=rng)
        env_steps += step.env_steps
        for name in columns:
            columns[name].append(step.transitions[name])
        if env_steps >= 256:
            data = {name: np.concatenate(parts) for name, parts in columns.items()}
            idx = rng.integers(0, len(data["obs"]), 256 * config.utd_ratio)
            algo.update({name: torch.as_tensor(col[idx]) for name, col in data.items()})
            policy.load_params("policy", algo.params("policy"))
    rollout.close()
    steered = evaluate(algo.make_policy(), PENDULUM, 10, seed=100).return_mean
    print(f"InvertedPendulum: weak base {base_return:.1f}, DSRL-NA {steered:.1f} after {env_steps} env steps")
    assert steered >= max(2 * base_return, base_return + 10), (
        f"base {base_return:.1f}, DSRL {steered:.1f} after {env_steps} env steps "
        f"(pretraining took {summary.seconds:.0f} s)"
    )
