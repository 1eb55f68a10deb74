"""What the distributed machinery costs: env steps/s arriving in replay vs a plain loop.

    .venv/bin/python benchmarks/pipeline_throughput.py [--quick] [--json PATH] [--env gym:HalfCheetah-v5]

For a random policy and for the (untrained) SAC policy, N actor processes (`distrl serve
actor`, N = 1 and 2) step the env and stream transitions to one replay shard (`distrl serve
replay`) on loopback, with a parameter server pushing the SAC weights. The figure is the
rate at which transitions arrive in the shard (its insert counter over a steady window).
The baseline is the same env and the same policy stepped in a plain single-process loop in
this process, measured in the same run: ratio = ours / plain loop. For 2 actors the ratio
shows the scaling over one plain loop (2.0 would be perfect; the machine has 2 cores and the
shard shares them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, parser, print_table, start_serve, write_json

from distrl.algos import SpaceSpec, make_algorithm, make_policy
from distrl.envs import EnvConfig, env_spec, make_env
from distrl.params import ParamsClient
from distrl.replay.client import ReplayClient

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}


def plain_loop(env_id: str, policy_kind: str, seconds: float, seed: int = 0) -> float:
    """Steps/s of the env (and policy) alone: no buffers, no gRPC, no processes."""
    import torch

    torch.set_num_threads(1)
    env = make_env(EnvConfig(id=env_id), seed=seed)
    spec = env_spec(env)
    policy = (
        make_policy("sac", SpaceSpec(spec.obs_dim, spec.action_dim), {}) if policy_kind == "sac" else None
    )
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(200):
            if policy is None:
                action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
            else:
                action = policy.act(obs[None].astype(np.float32)).env_actions[0]
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
        steps += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            env.close()
            return steps / elapsed


def system_rate(env_id: str, policy_kind: str, actors: int, seconds: float, workdir: Path) -> float:
    """Transitions/s arriving in one replay shard from `actors` actor processes."""
    shard, replay_addr = start_serve(["replay", "--capacity", "2000000"], ENV)
    params, params_addr = start_serve(["params"], ENV)
    procs: list[subprocess.Popen] = []
    client = ReplayClient([replay_addr])
    try:
        cfg = {
            "env": {"id": env_id},
            "actors": {
                "num_actors": actors,
                # random: never leave warm-up; sac: act with the policy from the first step
                "warmup_steps": 10**12 if policy_kind == "random" else 0,
                "insert_batch_size": 64,
            },
            "telemetry": {"console": False},
        }
        path = workdir / f"pipeline-{policy_kind}-{actors}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        if policy_kind == "sac":
            probe = make_env(EnvConfig(id=env_id))
            spec = env_spec(probe)
            probe.close()
            algo = make_algorithm("sac", SpaceSpec(spec.obs_dim, spec.action_dim), {}, "cpu")
            with ParamsClient(params_addr) as pc:
                pc.publish(algo.params("policy"), version=1, metadata={"updates": "1"})
        for i in range(actors):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distrl.cli",
                        "serve",
                        "actor",
                        "--config",
                        str(path),
                        "--replay",
                        replay_addr,
                        "--params",
                        params_addr,
                        "--index",
                        str(i),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=ENV,
                )
            )

        def inserts() -> int:
            return sum(t.inserts for info in client.info() for t in info.tables)

        deadline = time.monotonic() + 120
        while inserts() == 0:  # actors import torch, build envs, connect
            if time.monotonic() > deadline:
                raise RuntimeError("no transitions arrived within 120 s")
            time.sleep(0.2)
        time.sleep(min(2.0, seconds / 2))  # let every actor reach its steady state
        n0, t0 = inserts(), time.perf_counter()
        time.sleep(seconds)
        n1, t1 = inserts(), time.perf_counter()
        return (n1 - n0) / (t1 - t0)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        client.close()
        for p in (shard, params):
            p.terminate()
            p.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--env", default="gym:HalfCheetah-v5")
    p.add_argument("--actors", default="1,2", help="actor counts to measure")
    args = p.parse_args(argv)
    seconds = 3.0 if args.quick else 10.0
    counts = [int(a) for a in args.actors.split(",")]
    name = args.env.split(":", 1)[1]
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("random", "sac"):
            baseline = plain_loop(args.env, kind, seconds)
            for n in counts:
                rate = system_rate(args.env, kind, n, seconds, Path(tmp))
                results.append(
                    Result(f"{name}/actors={n}/{kind}", rate, "steps/s", f"plain_loop/{kind}", baseline)
                )
            print_table(results)
            print()
    print_table(results, title=f"pipeline throughput ({args.env}, {seconds:.0f} s windows)")
    write_json(
        args.json, "pipeline_throughput", {"env": args.env, "seconds": seconds, "actors": counts}, results
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
