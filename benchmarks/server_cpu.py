"""A replay shard's CPU per message: this checkout's server as configured by default (uvloop,
cumulative acks that wait up to 2 ms), with acks at once (`--ack-delay-ms 0`), and on asyncio's
loop, beside another checkout's (`--baseline-checkout`, e.g. a worktree of an older commit).

Each server is `distrl serve replay` in its own process (its code from its own checkout);
clients in this process insert HalfCheetah-sized batches of 64 through `ReplayWriter`s
(two writer threads) and then sample batches of 256, for `--seconds` each. The servers
take turns in rotating order each round, so a busy spell on a shared machine does not
fall on one of them, and the medians over the rounds are reported: the server process's
CPU time (user + system, /proc/PID/stat) per insert batch and per sample batch, and the
insert batches/s the two writers reached (the writers send as fast as their window of 8
unacked batches allows, so a slower ack shows there).

    git worktree add /tmp/base <older commit>
    python benchmarks/server_cpu.py [--quick] [--json out.json] [--rounds 9] [--baseline-checkout /tmp/base]
    python benchmarks/server_cpu.py --pool run1.json run2.json run3.json --json pooled.json
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from common import Result, parser, print_table, start_serve, write_json
from replay_throughput import transitions

from distrl.replay.client import ReplayClient

ROOT = Path(__file__).resolve().parent.parent


def start_shard(checkout: Path, loop: str, *args: str) -> tuple[subprocess.Popen, str]:
    """`distrl serve replay` from `checkout`'s code, its server loop `loop` (uvloop | asyncio)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "MUJOCO_GL": "disable",
        "GRPC_VERBOSITY": "ERROR",
        "DISTRL_SERVER_LOOP": loop,
    }
    return start_serve(["replay", "--capacity", "2000000", *args], env, cwd=checkout)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_insert(
    client: ReplayClient, pid: int, batch: dict, seconds: float, tag: str
) -> tuple[float, float]:
    """Server CPU microseconds per insert batch and batches/s, two writer threads streaming for `seconds`."""
    sent = [0, 0]
    stop = time.monotonic() + seconds

    def write(i: int) -> None:
        writer = client.writer(f"{tag}-{i}")
        while time.monotonic() < stop:
            writer.insert(batch)
            sent[i] += 1
        writer.flush(30)

    before, start = cpu_s(pid), time.monotonic()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (cpu_s(pid) - before) / sum(sent) * 1e6, sum(sent) / (time.monotonic() - start)


def measure_sample(client: ReplayClient, pid: int, seconds: float) -> float:
    """Server CPU microseconds per sampled batch of 256."""
    before, batches = cpu_s(pid), 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        client.sample(256, timeout=10)
        batches += 1
    return (cpu_s(pid) - before) / batches * 1e6


def results_of(
    insert: dict[str, list[float]], sample: dict[str, list[float]], insert_rate: dict[str, list[float]]
) -> list[Result]:
    """The medians over the rounds, each server beside its peers."""
    med = {
        kind: {n: float(np.median(v)) for n, v in d.items()}
        for kind, d in (("insert", insert), ("sample", sample), ("insert_rate", insert_rate))
    }
    results = []
    for kind in ("insert", "sample"):
        unit = f"server CPU µs per {kind} batch"
        m = med[kind]
        results.append(
            Result(f"{kind}/default_us", m["default"], unit, "acks at once", m["acks_at_once"], True)
        )
        results.append(
            Result(f"{kind}/uvloop_vs_asyncio_us", m["default"], unit, "asyncio loop", m["asyncio"], True)
        )
        if "baseline" in m:
            results.append(
                Result(
                    f"{kind}/default_vs_baseline_us",
                    m["default"],
                    unit,
                    "baseline checkout",
                    m["baseline"],
                    True,
                )
            )
    unit = "insert batches/s (2 writers)"
    rate = med["insert_rate"]
    results.append(
        Result("insert/default_batches_per_s", rate["default"], unit, "acks at once", rate["acks_at_once"])
    )
    if "baseline" in rate:
        results.append(
            Result(
                "insert/default_vs_baseline_batches_per_s",
                rate["default"],
                unit,
                "baseline checkout",
                rate["baseline"],
            )
        )
    return results


def pooled(paths: list[Path]) -> tuple[dict, list[Result]]:
    """The rounds of earlier runs' JSON files taken together (no new measurement)."""
    keys = ("insert_us_rounds", "sample_us_rounds", "insert_batches_per_s_rounds")
    rounds: dict[str, dict[str, list[float]]] = {key: {} for key in keys}
    for path in paths:
        config = json.loads(path.read_text())["config"]
        for key in keys:
            for name, values in config[key].items():
                rounds[key].setdefault(name, []).extend(values)
    config = {"pooled_from": [str(p) for p in paths], "rounds": len(rounds[keys[0]]["default"]), **rounds}
    return config, results_of(*(rounds[key] for key in keys))


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    p.add_argument("--baseline-checkout", type=Path, help="a checkout whose server is the baseline")
    p.add_argument(
        "--pool", type=Path, nargs="+", help="pool the rounds of these earlier --json results instead"
    )
    args = p.parse_args()
    if args.pool:
        config, results = pooled(args.pool)
        print_table(results, f"replay shard CPU per message, medians of {config['rounds']} pooled rounds")
        write_json(args.json, "server_cpu", config, results)
        return
    rounds, seconds = (2, 1.0) if args.quick else (args.rounds, args.seconds)
    servers = {
        "default": start_shard(ROOT, "uvloop"),
        "acks_at_once": start_shard(ROOT, "uvloop", "--ack-delay-ms", "0"),
        "asyncio": start_shard(ROOT, "asyncio"),
    }
    if args.baseline_checkout is not None:
        servers["baseline"] = start_shard(args.baseline_checkout.resolve(), "asyncio")
    clients = {name: ReplayClient([address]) for name, (_, address) in servers.items()}
    batch = transitions(64, np.random.default_rng(0))
    insert: dict[str, list[float]] = {name: [] for name in servers}
    sample: dict[str, list[float]] = {name: [] for name in servers}
    insert_rate: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for name, client in clients.items():  # something to sample
            writer = client.writer(f"prefill-{name}")
            for _ in range(200):
                writer.insert(batch)
            writer.flush(30)
        names = list(servers)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                pid = servers[name][0].pid
                us, rate = measure_insert(clients[name], pid, batch, seconds, f"r{r}-{name}")
                insert[name].append(us)
                insert_rate[name].append(rate)
                sample[name].append(measure_sample(clients[name], pid, seconds))
            print(f"  round {r + 1}/{rounds}", flush=True)
    finally:
        for client in clients.values():
            client.close()
        for proc, _ in servers.values():
            proc.kill()
    results = results_of(insert, sample, insert_rate)
    print_table(results, f"replay shard CPU per message, medians of {rounds} rounds")
    config = {
        "rounds": rounds,
        "seconds": seconds,
        "baseline_checkout": str(args.baseline_checkout) if args.baseline_checkout else None,
        "insert_us_rounds": insert,
        "insert_batches_per_s_rounds": insert_rate,
        "sample_us_rounds": sample,
    }
    write_json(args.json, "server_cpu", config, results)


if __name__ == "__main__":
    main()
