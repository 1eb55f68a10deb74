"""Learner speed: SAC beside Stable-Baselines3's SAC, XQC beside a straightforward XQC, same run.

    .venv/bin/python benchmarks/learner_speed.py [--quick] [--json PATH] [--threads 1,2]

SAC: both learners use batch 256, 256x2 ReLU MLPs and HalfCheetah sizes (obs 17, action 6), and
both sample their batch from a replay buffer inside the timed loop: SB3's `model.train` samples
its own ReplayBuffer (numpy fancy-indexing, then torch), so ours samples a preallocated tensor
buffer of the same capacity with random indices before every `update`.

XQC: our `xqc` learner at the reference size (critics 4x512, actor 4x256, 2 critics, 101 bins,
UTD 2: one `update` call is 2 critic steps of batch 256, actor and temperature every 3rd critic
step) beside the same update written the straightforward way in this file
(`StraightforwardXQC`): one nn.Sequential per critic and a python loop over them, a deepcopy
target, a python loop for the row normalisation and the Polyak step, plain AdamW. Both sample
from the same kind of tensor replay (with `return_so_far` for the reward scaling) and both are
checked to give finite losses before timing. On CUDA, XQC eager vs `compile: true`.

SAC through the real replay path (`sac/cpu/grpc_replay/...`): our learner's data path as a
run has it, a replay shard in its own process (`distrl serve replay`, filled with the same number
of random transitions, no rate limit) and batches through `ReplayClient.sample` (gRPC, prefetch 4,
the learner's defaults) turned into tensors as the learner does, then `update`. Its baseline is
SB3 at the same thread count, timed in the same rounds. The shard's process does its own work on
another core if there is one: `sac/cpu/grpc_replay/shard_cpu_ms_per_update` says how much.

All learners and thread counts are timed in short interleaved rounds (order reversed every
round; SAC's group and XQC's group separately) and each reports its median round, so load from
other processes hits them alike.

Threads: torch's intra-op thread count is set to the same value for every learner in a round.
Every count in `--threads` is measured; the headline `sac/cpu/updates_per_s` uses the count at
which SB3 ran fastest (SB3's best setting, ours at the same), and `xqc/cpu/updates_per_s` the
count at which the straightforward XQC ran fastest. On a 2-core box with other jobs running, one
thread is often faster than two: OpenMP threads wait at every op's barrier for a core someone
else holds.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distrl.algos import SpaceSpec, make_algorithm
from distrl.algos.xqc import XQCConfig, categorical_loss, categorical_target
from distrl.replay.client import LearnerBatch, ReplayClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, print_table, write_json

OBS_DIM, ACTION_DIM, BATCH = 17, 6, 256
# XQC at the reference size: the config's defaults (critics 4x512, actor 4x256, 2 critics, 101
# bins, UTD 2, policy delay 3); HalfCheetah's 1000-step time limit sets gamma.
XQC_SPEC = SpaceSpec(OBS_DIM, ACTION_DIM, (), 1000)
XQC_CONFIG: dict[str, Any] = {}


@dataclass
class Settings:
    rounds: int
    updates_per_round: int
    warmup: int
    capacity: int
    rlpd_utd: int
    threads: list[int] = field(default_factory=list)
    # XQC's update calls are ~10x slower than SAC's: its own, shorter rounds. The finite-loss
    # check before timing (2 updates per learner) is a warm-up too; `xqc_warmup` comes on top.
    xqc_rounds: int = 2
    xqc_updates_per_round: int = 2
    xqc_warmup: int = 0

    def for_xqc(self) -> Settings:
        return Settings(
            rounds=self.xqc_rounds,
            updates_per_round=self.xqc_updates_per_round,
            warmup=self.xqc_warmup,
            capacity=self.capacity,
            rlpd_utd=self.rlpd_utd,
            threads=self.threads,
        )


# ---- ours


class TensorReplay:
    """A preallocated tensor buffer sampled uniformly: the learner-side cost SB3's timing also pays."""

    def __init__(
        self, capacity: int, device: torch.device, seed: int = 0, return_so_far: bool = False
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.capacity = capacity
        self.device = device
        self.fields = {
            "obs": torch.randn(capacity, OBS_DIM, generator=g),
            "action": torch.rand(capacity, ACTION_DIM, generator=g) * 2 - 1,
            "reward": torch.randn(capacity, generator=g),
            "next_obs": torch.randn(capacity, OBS_DIM, generator=g),
            "terminated": torch.rand(capacity, generator=g) < 0.01,
            "truncated": torch.zeros(capacity, dtype=torch.bool),
        }
        if return_so_far:  # XQC's reward scaling: G_(t-1), stored by the actor
            self.fields["return_so_far"] = torch.randn(capacity, generator=g) * 10.0
        self.fields = {key: value.to(device) for key, value in self.fields.items()}

    def sample(self, size: int) -> dict[str, torch.Tensor]:
        index = torch.randint(0, self.capacity, (size,), device=self.device)
        return {key: value.index_select(0, index) for key, value in self.fields.items()}


def ours_runner(
    config: dict[str, Any], device: str, capacity: int, demo: bool = False
) -> tuple[Callable[[int], None], Any]:
    algo = make_algorithm("sac", SpaceSpec(OBS_DIM, ACTION_DIM), config, device=device)
    replay = TensorReplay(capacity, algo.device, seed=1)
    demos = TensorReplay(capacity, algo.device, seed=2) if demo else None
    utd = algo.config.utd_ratio
    online_size = BATCH // 2 if demo else BATCH

    def run(updates: int) -> None:
        for _ in range(updates):
            demo_batch = None if demos is None else demos.sample(utd * (BATCH - online_size))
            algo.update(replay.sample(utd * online_size), demo_batch)
        if algo.device.type == "cuda":
            torch.cuda.synchronize()

    return run, algo


# ---- ours, through the real replay path


class ShardProcess:
    """`distrl serve replay` in a subprocess, as a run deploys a shard; its CPU time is read from /proc."""

    def __init__(self, capacity: int) -> None:
        argv = [sys.executable, "-m", "distrl.cli", "serve", "replay", "--port", "0",
                "--capacity", str(capacity), "--seed", "0"]  # fmt: skip
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the replay shard did not start: {line!r}")
        self.address = line.removeprefix("listening on ")
        # Updates that sampled from this shard (warm-up included): what its CPU time is shared over.
        self.updates = 0

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the shard process so far (Linux); 0 where /proc has none."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fill_shard(client: ReplayClient, capacity: int) -> None:
    """`capacity` random HalfCheetah-sized transitions, the distribution TensorReplay holds."""
    rng = np.random.default_rng(1)
    chunk = 1024
    with client.writer("bench-fill") as writer:
        for start in range(0, capacity, chunk):
            n = min(chunk, capacity - start)
            writer.insert(
                {
                    "obs": rng.standard_normal((n, OBS_DIM), dtype=np.float32),
                    "action": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
                    "reward": rng.standard_normal(n, dtype=np.float32),
                    "next_obs": rng.standard_normal((n, OBS_DIM), dtype=np.float32),
                    "terminated": rng.random(n) < 0.01,
                    "truncated": np.zeros(n, dtype=bool),
                },
                timeout=30,
            )
        writer.flush(timeout=60)


def batch_tensors(batch: LearnerBatch) -> dict[str, torch.Tensor]:
    """A sampled batch as CPU tensors, as the learner's `_to_device` makes them."""
    out = {
        name: torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr))
        for name, arr in batch.fields.items()
    }
    out["weights"] = torch.from_numpy(batch.weights.astype(np.float32))
    return out


def grpc_runner(shard: ShardProcess, client: ReplayClient) -> Callable[[int], None]:
    algo = make_algorithm("sac", SpaceSpec(OBS_DIM, ACTION_DIM), {}, device="cpu")

    def run(updates: int) -> None:
        for _ in range(updates):
            algo.update(batch_tensors(client.sample(BATCH, timeout=30)))
        shard.updates += updates

    return run


# ---- Stable-Baselines3


def sb3_runner(capacity: int) -> Callable[[int], None]:
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    class SpacesOnly(gym.Env):
        """An env that only carries HalfCheetah's spaces: SB3 needs one to build its networks."""

        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(OBS_DIM, np.float32), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}

    model = SAC(
        "MlpPolicy",
        SpacesOnly(),
        batch_size=BATCH,
        buffer_size=capacity,
        learning_starts=0,
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.set_logger(configure(folder=None, format_strings=[]))
    buffer = model.replay_buffer
    rng = np.random.default_rng(0)
    buffer.observations[:, 0] = rng.standard_normal((capacity, OBS_DIM), dtype=np.float32)
    buffer.next_observations[:, 0] = rng.standard_normal((capacity, OBS_DIM), dtype=np.float32)
    buffer.actions[:, 0] = rng.uniform(-1, 1, (capacity, ACTION_DIM)).astype(np.float32)
    buffer.rewards[:, 0] = rng.standard_normal(capacity, dtype=np.float32)
    buffer.dones[:, 0] = (rng.random(capacity) < 0.01).astype(np.float32)
    buffer.full, buffer.pos = True, 0

    def run(updates: int) -> None:
        model.train(gradient_steps=updates, batch_size=BATCH)

    return run


# ---- XQC: ours and the straightforward implementation


def _plain_bn(features: int, config: XQCConfig) -> nn.BatchNorm1d:
    # The config's momentum is flax's (the running statistics keep this much); torch's is 1 - that.
    return nn.BatchNorm1d(features, momentum=1.0 - config.bn_momentum, eps=config.bn_eps)


def _plain_trunk(in_dim: int, hidden: tuple[int, ...], config: XQCConfig) -> list[nn.Module]:
    """BatchNorm of the input, then [Linear(no bias) -> BatchNorm -> ReLU] per hidden width."""
    layers: list[nn.Module] = [_plain_bn(in_dim, config)]
    width = in_dim
    for size in hidden:
        linear = nn.Linear(width, size, bias=False)
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2.0))
        layers += [linear, _plain_bn(size, config), nn.ReLU()]
        width = size
    return layers


class _PlainActor(nn.Module):
    """obs -> tanh(N(mean, std)): a BatchNorm trunk, mean and log-std heads."""

    def __init__(self, config: XQCConfig) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*_plain_trunk(OBS_DIM, config.actor_hidden, config))
        width = config.actor_hidden[-1]
        self.mean = nn.Linear(width, ACTION_DIM)
        self.log_std = nn.Linear(width, ACTION_DIM)
        nn.init.orthogonal_(self.mean.weight, gain=math.sqrt(2.0))
        nn.init.orthogonal_(self.log_std.weight, gain=1.0)
        nn.init.zeros_(self.mean.bias)
        nn.init.zeros_(self.log_std.bias)
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        mean = self.mean(h)
        std = self.log_std(h).clamp(self.log_std_min, self.log_std_max).exp()
        eps = torch.randn_like(mean)
        u = mean + std * eps
        log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))  # log(1 - tanh(u)^2)
        log_prob = (-0.5 * eps.square() - std.log() - 0.5 * math.log(2.0 * math.pi) - log_det).sum(-1)
        return torch.tanh(u), log_prob


class StraightforwardXQC:
    """XQC's update (distrl/algos/xqc/learning.py) written the plain way, as the baseline.

    The same math and work per step: reward scaling by the running std of the discounted return,
    UTD minibatches, a joint [s; s'] pass through online and target critics with BatchNorm in
    train mode, the C51 target of the lower target critic, cross-entropy, AdamW, unit-norm weight
    rows, Polyak averaging, and every `policy_delay` critic steps an actor and temperature step
    with the critics in eval mode. Written plainly: one nn.Sequential per critic and a python
    loop over them, a deepcopy target, python loops over the parameters for the row
    normalisation and the Polyak step, AdamW without fused/foreach flags.
    """

    def __init__(self, config: XQCConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.gamma = config.resolved_gamma(XQC_SPEC.max_episode_steps)
        self.target_entropy = config.resolved_target_entropy(ACTION_DIM)
        self.critics = [self._make_critic().to(device).train() for _ in range(config.num_critics)]
        self.targets = copy.deepcopy(self.critics)
        for target in self.targets:
            target.requires_grad_(False)
        self.actor = _PlainActor(config).to(device).eval()
        self.log_alpha = torch.tensor(math.log(config.initial_alpha), device=device, requires_grad=True)
        self.support = torch.linspace(config.v_min, config.v_max, config.num_bins, device=device)
        critic_params = [p for critic in self.critics for p in critic.parameters()]
        self.critic_optimizer = torch.optim.AdamW(
            critic_params, lr=config.critic_lr, weight_decay=config.weight_decay
        )
        self.actor_optimizer = torch.optim.AdamW(
            self.actor.parameters(), lr=config.actor_lr, weight_decay=config.weight_decay
        )
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        # Running mean/variance of the discounted return (Chan et al.'s parallel update).
        self.return_count = torch.zeros((), dtype=torch.float64, device=device)
        self.return_mean = torch.zeros((), dtype=torch.float64, device=device)
        self.return_var = torch.ones((), dtype=torch.float64, device=device)
        self.critic_steps = 0
        self.normalize(self.critics)
        self.normalize([self.actor])

    def _make_critic(self) -> nn.Sequential:
        cfg = self.config
        head = nn.Linear(cfg.critic_hidden[-1], cfg.num_bins)
        nn.init.orthogonal_(head.weight, gain=math.sqrt(2.0))
        nn.init.zeros_(head.bias)
        return nn.Sequential(*_plain_trunk(OBS_DIM + ACTION_DIM, cfg.critic_hidden, cfg), head)

    @staticmethod
    @torch.no_grad()
    def normalize(modules: list[nn.Module]) -> None:
        """Every Linear's weight rows to unit L2 norm (biases left alone), one parameter at a time."""
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    layer.weight.div_(layer.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            returns = (self.gamma * batch["return_so_far"] + batch["reward"]).double()
            n = returns.numel()
            total = self.return_count + n
            delta = returns.mean() - self.return_mean
            m2 = (
                self.return_var * self.return_count
                + returns.var(unbiased=False) * n
                + delta.square() * self.return_count * n / total
            )
            self.return_mean = self.return_mean + delta * n / total
            self.return_var = m2 / total
            self.return_count = total
            scale = (1.0 / (self.return_var.sqrt() + 1e-8)).float()
        reward = batch["reward"] * scale
        discount = self.gamma * (~batch["terminated"]).float()
        critic_losses, actor_losses = [], []
        for i in range(cfg.utd_ratio):
            part = slice(i * BATCH, (i + 1) * BATCH)
            obs, next_obs = batch["obs"][part], batch["next_obs"][part]
            critic_losses.append(
                self.critic_step(obs, batch["action"][part], reward[part], next_obs, discount[part])
            )
            self.critic_steps += 1
            with torch.no_grad():
                for target, critic in zip(self.targets, self.critics, strict=True):
                    for target_param, param in zip(target.parameters(), critic.parameters(), strict=True):
                        target_param.lerp_(param, cfg.tau)
            if self.critic_steps % cfg.policy_delay == 0:
                actor_losses.append(self.actor_step(obs))
        out = {"critic_loss": sum(critic_losses) / len(critic_losses)}
        if actor_losses:
            out["actor_loss"] = sum(actor_losses) / len(actor_losses)
        return out

    def critic_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        discount: torch.Tensor,
    ) -> float:
        cfg = self.config
        size = obs.shape[0]
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(next_obs)
            joint = torch.cat((torch.cat((obs, action), -1), torch.cat((next_obs, next_action), -1)))
            target_logits = torch.stack([target(joint)[size:] for target in self.targets])
            target, _ = categorical_target(
                target_logits, self.support, reward, discount, alpha * next_log_prob, cfg.v_min, cfg.v_max
            )
        logits = torch.stack([critic(joint)[:size] for critic in self.critics])
        loss = categorical_loss(logits, target)
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        self.normalize(self.critics)
        return loss.item()

    def actor_step(self, obs: torch.Tensor) -> float:
        self.actor.train()
        for critic in self.critics:
            critic.eval()
            critic.requires_grad_(False)
        alpha = self.log_alpha.exp()
        action, log_prob = self.actor.sample(obs)
        x = torch.cat((obs, action), -1)
        q = torch.stack([(critic(x).softmax(-1) * self.support).sum(-1) for critic in self.critics])
        actor_loss = (alpha.detach() * log_prob - q.amin(0)).mean()
        entropy = -log_prob.detach().mean()
        alpha_loss = alpha * (entropy - self.target_entropy)
        self.actor_optimizer.zero_grad()
        self.alpha_optimizer.zero_grad()
        (actor_loss + alpha_loss).backward()
        self.actor_optimizer.step()
        self.alpha_optimizer.step()
        self.normalize([self.actor])
        self.actor.eval()
        for critic in self.critics:
            critic.train()
            critic.requires_grad_(True)
        return actor_loss.item()


def xqc_learner(kind: str, config: dict[str, Any], device: str) -> Any:
    """Ours (`make_algorithm("xqc", ...)`) or the straightforward one, at `config`."""
    if kind == "ours":
        return make_algorithm("xqc", XQC_SPEC, config, device=device)
    return StraightforwardXQC(XQCConfig.model_validate(config), torch.device(device))


def xqc_runner(learner: Any, capacity: int) -> Callable[[int], None]:
    """`update` calls of `learner`, each on a fresh utd_ratio x 256 batch from a tensor replay."""
    replay = TensorReplay(capacity, learner.device, seed=3, return_so_far=True)
    size = learner.config.utd_ratio * BATCH

    def run(updates: int) -> None:
        for _ in range(updates):
            learner.update(replay.sample(size))
        if learner.device.type == "cuda":
            torch.cuda.synchronize()

    return run


def check_finite_losses(learners: dict[str, Any], capacity: int) -> None:
    """Both learners' critic and actor losses are finite over a few updates (an actor step included)."""
    replay = TensorReplay(capacity, next(iter(learners.values())).device, seed=4, return_so_far=True)
    for name, learner in learners.items():
        cfg = learner.config
        size = cfg.utd_ratio * BATCH
        # Enough calls for at least one actor step (every policy_delay critic steps).
        calls = -(-cfg.policy_delay // cfg.utd_ratio)
        metrics = [learner.update(replay.sample(size)) for _ in range(calls)]
        losses = [m[key] for m in metrics for key in ("critic_loss", "actor_loss") if key in m]
        assert any("actor_loss" in m for m in metrics), f"{name}: no actor step in {calls} updates"
        assert all(math.isfinite(loss) for loss in losses), f"{name}: non-finite losses {losses}"


# ---- timing


def rate(run: Callable[[int], None], updates: int) -> float:
    start = time.perf_counter()
    run(updates)
    return updates / (time.perf_counter() - start)


def interleaved(runners: dict[str, Callable[[int], None]], settings: Settings) -> dict[str, float]:
    """Median updates/s of each runner over alternating rounds (order flipped every round)."""
    for run in runners.values():
        run(settings.warmup)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(settings.rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            rates[name].append(rate(runners[name], settings.updates_per_round))
    return {name: statistics.median(values) for name, values in rates.items()}


def rlpd_config(utd: int, device_flags: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "critic_layernorm": True,
        "num_critics": 10,
        "critic_subset": 2,
        "actor_q": "mean",
        "utd_ratio": utd,
        **(device_flags or {}),
    }


def with_threads(threads: int, run: Callable[[int], None]) -> Callable[[int], None]:
    def run_with_threads(updates: int) -> None:
        torch.set_num_threads(threads)
        run(updates)

    return run_with_threads


def cpu_results(settings: Settings) -> tuple[list[Result], dict[str, Any]]:
    # Every (learner, thread count) pair runs in each round, so all of them see the same load.
    shard = ShardProcess(settings.capacity)
    client = ReplayClient([shard.address])  # the learner's defaults: prefetch 4
    try:
        fill_shard(client, settings.capacity)
        runners: dict[str, Callable[[int], None]] = {}
        for threads in settings.threads:
            torch.set_num_threads(threads)
            runners[f"ours/{threads}"] = with_threads(threads, ours_runner({}, "cpu", settings.capacity)[0])
            runners[f"grpc/{threads}"] = with_threads(threads, grpc_runner(shard, client))
            runners[f"sb3/{threads}"] = with_threads(threads, sb3_runner(settings.capacity))
        # The prefetcher samples ahead between rounds too: the shard's CPU over all of them, per update.
        cpu_before = shard.cpu_seconds()
        measured = interleaved(runners, settings)
        shard_cpu_s = shard.cpu_seconds() - cpu_before
    finally:
        client.close()
        shard.close()
    results: list[Result] = []
    for threads in settings.threads:
        results += [
            Result(
                f"sac/cpu/threads={threads}/updates_per_s",
                measured[f"ours/{threads}"],
                "updates/s",
                f"sb3/cpu/threads={threads}/updates_per_s",
                measured[f"sb3/{threads}"],
            ),
            Result(
                f"sac/cpu/grpc_replay/threads={threads}/updates_per_s",
                measured[f"grpc/{threads}"],
                "updates/s",
                f"sb3/cpu/threads={threads}/updates_per_s",
                measured[f"sb3/{threads}"],
            ),
        ]
    chosen = max(settings.threads, key=lambda t: measured[f"sb3/{t}"])
    headline = Result(
        "sac/cpu/updates_per_s",
        measured[f"ours/{chosen}"],
        "updates/s",
        "sb3/cpu/updates_per_s",
        measured[f"sb3/{chosen}"],
    )
    grpc_headline = Result(
        "sac/cpu/grpc_replay/updates_per_s",
        measured[f"grpc/{chosen}"],
        "updates/s",
        "sb3/cpu/updates_per_s",
        measured[f"sb3/{chosen}"],
    )
    shard_cost = Result(
        "sac/cpu/grpc_replay/shard_cpu_ms_per_update", 1000 * shard_cpu_s / max(1, shard.updates), "ms"
    )

    # RLPD's settings, for information: critic steps/s at UTD, LayerNorm, E=10, 50/50 demo batches.
    torch.set_num_threads(chosen)
    rlpd, algo = ours_runner(rlpd_config(settings.rlpd_utd), "cpu", settings.capacity, demo=True)
    rlpd_settings = Settings(
        rounds=max(1, settings.rounds // 2),
        updates_per_round=max(1, settings.updates_per_round // settings.rlpd_utd),
        warmup=1,
        capacity=settings.capacity,
        rlpd_utd=settings.rlpd_utd,
    )
    calls = interleaved({"rlpd": rlpd}, rlpd_settings)["rlpd"]
    results.append(Result("rlpd/cpu/critic_updates_per_s", calls * algo.config.utd_ratio, "critic updates/s"))
    return [headline, grpc_headline, shard_cost, *results], {"threads_chosen": chosen}


def cuda_results(settings: Settings) -> list[Result]:
    """Eager vs torch.compile vs CUDA graphs on the GPU (plain SAC and RLPD settings), critic steps/s."""
    variants = {
        "eager": {},
        "compile": {"compile": True},
        "cuda_graphs": {"cuda_graphs": True},
        "compile+cuda_graphs": {"compile": True, "cuda_graphs": True},
    }
    results: list[Result] = []
    for label in ("sac", "rlpd"):
        utd = settings.rlpd_utd if label == "rlpd" else 1
        # Warm-up covers compilation and the CUDA-graph capture (3 eager calls, then capture).
        timing = Settings(
            rounds=settings.rounds,
            updates_per_round=max(1, settings.updates_per_round // utd),
            warmup=max(settings.warmup // utd, 5),
            capacity=settings.capacity,
            rlpd_utd=settings.rlpd_utd,
        )
        rates: dict[str, float] = {}
        for variant, flags in variants.items():
            config = rlpd_config(utd, flags) if label == "rlpd" else flags
            run, _ = ours_runner(config, "cuda", settings.capacity, demo=label == "rlpd")
            rates[variant] = interleaved({variant: run}, timing)[variant] * utd
        results += [
            Result(
                f"{label}/cuda/{variant}/critic_updates_per_s",
                value,
                "critic updates/s",
                f"{label}/cuda/eager/critic_updates_per_s",
                rates["eager"],
            )
            for variant, value in rates.items()
        ]
    return results


def xqc_cpu_results(settings: Settings) -> tuple[list[Result], dict[str, Any]]:
    """Ours beside the straightforward XQC at every thread count, interleaved in the same rounds."""
    runners: dict[str, Callable[[int], None]] = {}
    for threads in settings.threads:
        torch.set_num_threads(threads)
        learners = {kind: xqc_learner(kind, XQC_CONFIG, "cpu") for kind in ("ours", "plain")}
        check_finite_losses(learners, settings.capacity)
        for kind, learner in learners.items():
            runners[f"{kind}/{threads}"] = with_threads(threads, xqc_runner(learner, settings.capacity))
    measured = interleaved(runners, settings.for_xqc())
    results = [
        Result(
            f"xqc/cpu/threads={threads}/updates_per_s",
            measured[f"ours/{threads}"],
            "updates/s",
            f"xqc_straightforward/cpu/threads={threads}/updates_per_s",
            measured[f"plain/{threads}"],
        )
        for threads in settings.threads
    ]
    chosen = max(settings.threads, key=lambda t: measured[f"plain/{t}"])
    utd = XQCConfig.model_validate(XQC_CONFIG).utd_ratio
    ours, plain = measured[f"ours/{chosen}"], measured[f"plain/{chosen}"]
    headline = [
        Result("xqc/cpu/updates_per_s", ours, "updates/s", "xqc_straightforward/cpu/updates_per_s", plain),
        Result(
            "xqc/cpu/critic_steps_per_s",
            ours * utd,
            "critic steps/s",
            "xqc_straightforward/cpu/critic_steps_per_s",
            plain * utd,
        ),
    ]
    return [*headline, *results], {"xqc_threads_chosen": chosen}


def xqc_cuda_results(settings: Settings) -> list[Result]:
    """Our XQC update on the GPU, eager vs `compile: true`, interleaved in the same rounds."""
    timing = settings.for_xqc()
    # The finite-loss check compiles (the critic step on the first call, the actor step on the
    # second); a few more warm-up calls let the GPU settle.
    timing.warmup = max(timing.warmup, 3)
    learners = {
        variant: xqc_learner("ours", XQC_CONFIG | flags, "cuda")
        for variant, flags in (("eager", {}), ("compiled", {"compile": True}))
    }
    check_finite_losses(learners, settings.capacity)
    runners = {variant: xqc_runner(learner, settings.capacity) for variant, learner in learners.items()}
    rates = interleaved(runners, timing)
    return [
        Result("xqc/cuda/eager/updates_per_s", rates["eager"], "updates/s"),
        Result(
            "xqc/cuda/compiled/updates_per_s",
            rates["compiled"],
            "updates/s",
            "xqc/cuda/eager/updates_per_s",
            rates["eager"],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI smoke tests")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure, e.g. 1,2")
    args = parser.parse_args(argv)
    try:
        threads = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not threads or min(threads) < 1:
        parser.error("--threads needs at least one positive integer")

    if args.quick:
        settings = Settings(
            rounds=2, updates_per_round=10, warmup=3, capacity=10_000, rlpd_utd=2, threads=threads
        )
    else:
        settings = Settings(
            rounds=21,
            updates_per_round=40,
            warmup=30,
            capacity=100_000,
            rlpd_utd=20,
            threads=threads,
            xqc_rounds=15,
            xqc_updates_per_round=5,
            xqc_warmup=3,
        )

    results, extra = cpu_results(settings)
    xqc_results, xqc_extra = xqc_cpu_results(settings)
    results += xqc_results
    if torch.cuda.is_available():
        results += cuda_results(settings)
        results += xqc_cuda_results(settings)
    print_table(results)
    xqc = XQCConfig.model_validate(XQC_CONFIG)
    config = {
        "obs_dim": OBS_DIM,
        "action_dim": ACTION_DIM,
        "batch_size": BATCH,
        "hidden_sizes": [256, 256],
        "rounds": settings.rounds,
        "updates_per_round": settings.updates_per_round,
        "replay_capacity": settings.capacity,
        "grpc_replay": {"shard": "distrl serve replay, own process", "prefetch": 4, "rate_limit": None},
        "threads_measured": threads,
        "rlpd": rlpd_config(settings.rlpd_utd) | {"demo_fraction": 0.5},
        "xqc": {
            "critic_hidden": list(xqc.critic_hidden),
            "actor_hidden": list(xqc.actor_hidden),
            "num_critics": xqc.num_critics,
            "num_bins": xqc.num_bins,
            "utd_ratio": xqc.utd_ratio,
            "policy_delay": xqc.policy_delay,
            "minibatch_size": BATCH,
            "rounds": settings.xqc_rounds,
            "updates_per_round": settings.xqc_updates_per_round,
            "warmup": settings.xqc_warmup,
            "baseline": "StraightforwardXQC in this file",
        },
        "quick": args.quick,
        **extra,
        **xqc_extra,
    }
    write_json(args.json, "learner_speed", config, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
