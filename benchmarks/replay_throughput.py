"""Replay throughput through gRPC, beside the raw gRPC ceiling measured in the same run.

K shard servers run in subprocesses on loopback. Each also serves a raw
bytes-streaming service, so the baseline moves messages of the same size
between the same two processes with no replay work at all:

- insert/*: HalfCheetah-sized transitions (obs 17, action 6, reward, next_obs,
  terminated, truncated) in batches of 64 through `ReplayWriter`s (packed rows
  on acked bidi streams), vs. raw bytes client->server on a bidi stream with a
  one-byte ack per message (the Insert RPC's shape);
- sample/*: batches of 256 through `ReplayClient.sample` with prefetch and its
  credit window (`--sample-window`), vs. raw bytes server->client on a server
  stream. Messages on both sides are the size of one packed SampleBatch.

The raw streams are unbounded: the replay client's credit (which bounds how far
sampling runs ahead of the learner) is part of what is measured.

Rounds alternate raw and replay measurements and the medians are reported, since
other work on a shared machine slows single rounds. The */cpu_us_per_batch rows
give each process's CPU time per message beside the raw stream's: where the
time goes.

    python benchmarks/replay_throughput.py [--quick] [--json out.json] [--shards K] [--sample-window N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

# gRPC's info logs (GOAWAY when a server stops) would clutter the table; children inherit this.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import Result, parser, print_table, write_json  # noqa: E402  (benchmarks/common.py)

from distrl.replay.client import ReplayClient, home_shard  # noqa: E402
from distrl.replay.config import ReplayShardConfig, TableConfig  # noqa: E402
from distrl.replay.messages import encode_sample_batch, pack_transition_batch  # noqa: E402
from distrl.replay.rows import RowLayout  # noqa: E402

OBS, ACT = 17, 6
RAW_SERVICE = "distrl.bench.RawBytes"
_ident = None  # identity (de)serializers: the raw service moves bytes untouched


def transitions(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "obs": rng.standard_normal((n, OBS), dtype=np.float32),
        "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "reward": rng.standard_normal(n, dtype=np.float32),
        "next_obs": rng.standard_normal((n, OBS), dtype=np.float32),
        "terminated": np.zeros(n, dtype=bool),
        "truncated": np.zeros(n, dtype=bool),
    }


# -- the server subprocess --------------------------------------------------------------------------


def _raw_handlers(server: grpc.aio.Server) -> None:
    # Async like the replay servicer, on the same grpc.aio server.
    async def down(request: bytes, context):
        size, count = (int(x) for x in request.decode().split())
        payload = os.urandom(size)
        for _ in range(count):
            if context.done():
                return
            yield payload

    async def up(request_iterator, context):
        async for _ in request_iterator:
            yield b"k"

    handler = grpc.method_handlers_generic_handler(
        RAW_SERVICE,
        {
            "Down": grpc.unary_stream_rpc_method_handler(down),
            "Up": grpc.stream_stream_rpc_method_handler(up),
        },
    )
    server.add_generic_rpc_handlers((handler,))


def serve(capacity: int) -> None:
    from distrl.replay.server import serve_replay_shard

    config = ReplayShardConfig(tables=[TableConfig(capacity=capacity)], seed=0)
    shard, running = serve_replay_shard(config, extra_register=[_raw_handlers])
    print(f"listening on {running.address}", flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    running.stop(0)
    shard.close(final_checkpoint=False)


# -- measurements -----------------------------------------------------------------------------------


@dataclass
class Rate:
    items: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.items / self.seconds


def raw_up(addresses: list[str], payload: bytes, seconds: float, streams: int) -> Rate:
    """Messages/s client->server on `streams` bidi streams (stream i to addresses[i]), one tiny ack each."""
    channels = {a: grpc.insecure_channel(a) for a in set(addresses)}
    calls = [channels[a].stream_stream(f"/{RAW_SERVICE}/Up") for a in addresses]
    counts = [0] * streams
    stop = time.perf_counter() + seconds

    def one(i: int) -> None:
        window = threading.Semaphore(8)  # the same unacked window as a writer

        def requests():
            while time.perf_counter() < stop:
                window.acquire()
                yield payload

        for _ in calls[i](requests()):
            window.release()
            counts[i] += 1

    start = time.perf_counter()
    _run_threads(one, streams)
    elapsed = time.perf_counter() - start
    for channel in channels.values():
        channel.close()
    return Rate(sum(counts), elapsed)


def raw_down(addresses: list[str], size: int, seconds: float) -> Rate:
    """Messages/s server->client, one server stream per address, consumed concurrently."""
    counts = [0] * len(addresses)
    stop = time.perf_counter() + seconds

    def one(i: int) -> None:
        channel = grpc.insecure_channel(addresses[i])
        call = channel.unary_stream(f"/{RAW_SERVICE}/Down")
        stream = call(f"{size} {10**9}".encode())
        for _ in stream:
            counts[i] += 1
            if time.perf_counter() >= stop:
                break
        stream.cancel()
        channel.close()

    start = time.perf_counter()
    _run_threads(one, len(addresses))
    return Rate(sum(counts), time.perf_counter() - start)


def replay_insert(client: ReplayClient, batch: dict[str, np.ndarray], seconds: float, writers: int) -> Rate:
    """Batches/s through `writers` ReplayWriters (one thread each), all acked."""
    counts = [0] * writers
    stop = time.perf_counter() + seconds

    def one(i: int) -> None:
        with client.writer(f"bench-{i}") as w:
            while time.perf_counter() < stop:
                w.insert(batch, policy_version=1)
                counts[i] += 1
            w.flush(30)

    start = time.perf_counter()
    _run_threads(one, writers)
    return Rate(sum(counts), time.perf_counter() - start)


def replay_sample(client: ReplayClient, batch_size: int, seconds: float) -> Rate:
    client.sample(batch_size, timeout=30)  # streams open, prefetch queue filled
    count = 0
    start = time.perf_counter()
    stop = start + seconds
    while time.perf_counter() < stop:
        client.sample(batch_size, timeout=30)
        count += 1
    return Rate(count, time.perf_counter() - start)


def _run_threads(fn, n: int) -> None:
    with futures.ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(fn, i) for i in range(n)]:
            f.result()


# -- orchestration ----------------------------------------------------------------------------------


def start_servers(k: int, capacity: int) -> tuple[list[subprocess.Popen], list[str]]:
    procs, addresses = [], []
    for _ in range(k):
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--capacity", str(capacity)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"shard server did not start: {line!r}")
        procs.append(proc)
        addresses.append(line.removeprefix("listening on "))
    return procs, addresses


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """Throughput and CPU cost per message of one measurement, summed over its rounds."""

    messages: int = 0
    seconds: float = 0.0
    server_cpu_s: float | None = 0.0
    client_cpu_s: float | None = 0.0
    rates: list = None

    def add(self, rate: Rate, server_cpu: float | None, client_cpu: float | None) -> None:
        self.messages += rate.items
        self.seconds += rate.seconds
        self.rates = [*(self.rates or []), rate.per_s]
        self.server_cpu_s = (
            None if server_cpu is None or self.server_cpu_s is None else self.server_cpu_s + server_cpu
        )
        self.client_cpu_s = (
            None if client_cpu is None or self.client_cpu_s is None else self.client_cpu_s + client_cpu
        )

    @property
    def per_s(self) -> float:
        # Median over rounds: other tenants of a shared machine slow single rounds down.
        return float(np.median(self.rates))

    def cpu_us(self, which: str) -> float | None:
        total = self.server_cpu_s if which == "server" else self.client_cpu_s
        return None if total is None or not self.messages else total / self.messages * 1e6


def _measured(phase: Phase, pids: list[int], fn) -> None:
    before = [_cpu_seconds(p) for p in pids]
    me = _cpu_seconds(os.getpid())
    rate = fn()
    after = [_cpu_seconds(p) for p in pids]
    me_after = _cpu_seconds(os.getpid())
    server = (
        None if None in before or None in after else sum(a - b for a, b in zip(after, before, strict=True))
    )
    client = None if me is None or me_after is None else me_after - me
    phase.add(rate, server, client)


def run(args: argparse.Namespace) -> tuple[dict, list[Result]]:
    seconds = 0.5 if args.quick else args.seconds
    rounds = 2 if args.quick else args.rounds
    rng = np.random.default_rng(0)
    insert_batch = transitions(args.insert_batch, rng)
    # The messages exactly as a writer and a uniform table send them.
    insert_msg = pack_transition_batch(insert_batch, table="default", actor_id="bench-0", policy_version=1)
    insert_msg.sequence = time.time_ns() // 1000
    insert_size = insert_msg.ByteSize()
    n = args.sample_batch
    layout = RowLayout.pack(
        ((name, a.dtype, a.shape[1:]) for name, a in insert_batch.items()), with_meta=True
    )
    sample_size = len(
        encode_sample_batch("default", np.zeros((n, layout.row_bytes), dtype=np.uint8), layout, args.prefill)
    )

    procs, addresses = start_servers(args.shards, args.capacity)
    pids = [p.pid for p in procs]
    phases = {name: Phase() for name in ("raw_up", "insert", "raw_down", "sample")}
    try:
        client = ReplayClient(addresses, prefetch=args.prefetch, sample_window=args.sample_window)
        client_window = client.sample_window
        fill = transitions(1024, rng)
        for i in range(args.shards):
            with client.writer(_actor_with_home(i, args.shards)) as w:
                for _ in range(max(1, args.prefill // 1024 // args.shards)):
                    w.insert(fill)
        client.sample(n, timeout=30)  # sample streams open and prefetching
        payload = os.urandom(insert_size)
        # The raw streams go where the writers go: writer i's home shard.
        up_addresses = [addresses[home_shard(f"bench-{i}", args.shards)] for i in range(args.writers)]
        for _ in range(rounds):
            _measured(phases["raw_up"], pids, lambda: raw_up(up_addresses, payload, seconds, args.writers))
            _measured(
                phases["insert"], pids, lambda: replay_insert(client, insert_batch, seconds, args.writers)
            )
            _measured(phases["raw_down"], pids, lambda: raw_down(addresses, sample_size, seconds))
            _measured(phases["sample"], pids, lambda: replay_sample(client, n, seconds))
        client.close()
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    b = args.insert_batch
    ins, raw_ins, smp, raw_smp = (phases[k] for k in ("insert", "raw_up", "sample", "raw_down"))
    results = [
        Result(
            "insert/transitions_per_s",
            ins.per_s * b,
            "transitions/s",
            f"raw gRPC bidi bytes stream ({insert_size} B messages, 1-byte acks, window 8, "
            f"{args.writers} stream(s))",
            raw_ins.per_s * b,
        ),
        Result(
            "sample/transitions_per_s",
            smp.per_s * n,
            "transitions/s",
            f"raw gRPC server-stream bytes ({sample_size} B messages, {args.shards} stream(s))",
            raw_smp.per_s * n,
        ),
        Result(
            f"sample/batches_of_{n}_per_s",
            smp.per_s,
            "batches/s",
            f"target: 1000 batches/s per shard x {args.shards}",
            1000.0 * args.shards,
            baseline_kind="target",  # a goal we set, not a peer measured in this run
        ),
    ]
    # CPU cost per message in each process: where the time goes (lower is better).
    for side in ("server", "client"):
        for name, ours, raw, size in (("insert", ins, raw_ins, b), ("sample", smp, raw_smp, n)):
            ours_us, raw_us = ours.cpu_us(side), raw.cpu_us(side)
            if ours_us is not None and raw_us is not None:
                results.append(
                    Result(
                        f"{name}/{side}_cpu_us_per_batch",
                        ours_us,
                        f"CPU us per batch of {size}",
                        f"raw gRPC, {side} process",
                        raw_us,
                        lower_is_better=True,
                    )
                )
    config = {
        "shards": args.shards,
        "writers": args.writers,
        "insert_batch": args.insert_batch,
        "sample_batch": n,
        "prefetch": args.prefetch,
        "sample_window": client_window,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "capacity": args.capacity,
        "prefill": args.prefill,
        "insert_message_bytes": insert_size,
        "sample_message_bytes": sample_size,
        "quick": args.quick,
    }
    return config, results


def _actor_with_home(shard: int, num_shards: int) -> str:
    i = 0
    while home_shard(f"fill-{i}", num_shards) != shard:
        i += 1
    return f"fill-{i}"


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.5, help="length of each measurement round")
    p.add_argument(
        "--rounds", type=int, default=5, help="rounds, alternating raw and replay; medians reported"
    )
    p.add_argument("--insert-batch", type=int, default=64)
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument(
        "--sample-window",
        type=int,
        default=None,
        help="learner batches a shard may sample ahead of the learner (default: the client's, 4 x prefetch)",
    )
    p.add_argument("--capacity", type=int, default=1_000_000)
    p.add_argument("--prefill", type=int, default=100_000)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.capacity)
        return
    config, results = run(args)
    print_table(
        results, title=f"replay throughput ({args.shards} shard(s), medians of {config['rounds']} rounds)"
    )
    write_json(args.json, "replay_throughput", config, results)


if __name__ == "__main__":
    main()
