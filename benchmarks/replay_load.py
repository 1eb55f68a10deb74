"""Many writers, many subscribers, one learner: does every client get served?

Two replay shards and a params server run in subprocesses (`distrl serve`), as
in a real run. Writer processes (no envs) each run a share of `--writers`
Insert streams and `--subscribers` Subscribe streams as coroutines, each stream
on its own connection; every writer streams HalfCheetah-sized batches of 64
transitions to its home shard with the same unacked window as an actor's
`ReplayWriter` (8) and times every ack. A publisher puts a new policy version
(256 KiB) on the params server every `--publish-every-s`, and a learner in this
process samples batches of 256 through `ReplayClient` at its own pace
(`--learner-rate`, the update rate of a CPU learner; 0: as fast as it can). The
shards' rate limiter (`--samples-per-insert`, 1 by default) holds the writers
to the learner's pace, as in a training run: inserts held back wait on the shard.

Reported: transitions/s inserted, ack latency p50/p99, each shard's RSS after
warm-up (the table full) and at the end, writer fairness (the slowest writer's
batches/s over the fastest's; 0 means a writer was starved), the learner's
batches/s with the writers beside the same learner alone, and how many policy
versions the slowest and fastest subscriber received.

`--soak` runs a real training job instead (`configs/sac_halfcheetah.yaml`, a
10k-item replay table, replay checkpoints every 2 minutes) for `--soak-minutes`
(30). Warm-up lasts until the table has wrapped and one replay checkpoint has
been written since. Reported: env steps/s and updates/s over the first 5 minutes
after warm-up against the last 5, and every component's RSS (the processes named
in RUN_DIR/pids.json, sampled every 30 s) at the end against the end of warm-up,
beside a least-squares slope over the samples after warm-up.

    python benchmarks/replay_load.py [--quick] [--json out.json] [--seconds 300]
        [--writers 256] [--subscribers 256] [--processes 8] [--learner-rate 200]
    python benchmarks/replay_load.py --soak [--soak-minutes 30] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import Result, parser, print_table, read_metrics, start_serve, start_train, write_json  # noqa: E402

OBS, ACT = 17, 6
INSERT_WINDOW = 8
POLICY_BYTES = 256 * 1024
# Connections get their own subchannel, as separate actor processes would.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def transitions(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "obs": rng.standard_normal((n, OBS)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "next_obs": rng.standard_normal((n, OBS)).astype(np.float32),
        "terminated": np.zeros(n, dtype=bool),
        "truncated": np.zeros(n, dtype=bool),
    }


# -- servers ------------------------------------------------------------------------------------------


def shard_args(capacity: int, samples_per_insert: float) -> list[str]:
    """A shard whose table fills to `capacity` before any sample, then holds writers to the learner's pace.

    With a rate limit, the limiter's band is centred on half the capacity and as wide
    as it: inserts are held back once `capacity x SPI` samples are owed, samples wait
    when none are.
    """
    args = ["replay", "--capacity", str(capacity)]
    if samples_per_insert <= 0:
        return [*args, "--min-size", "1000"]
    half = capacity // 2
    return [
        *args,
        "--min-size",
        str(half),
        "--samples-per-insert",
        str(samples_per_insert),
        "--error-buffer",
        str(half * samples_per_insert),
    ]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- writer processes ---------------------------------------------------------------------------------


async def _writer(
    actor_id: str, address: str, request, deadline: float, latencies: list[float], acked: list[int], slot: int
) -> None:
    import grpc

    from distrl.proto.v1 import replay_pb2

    async with grpc.aio.insecure_channel(address, options=_OWN_CONNECTION) as channel:
        call = channel.stream_stream(
            "/distrl.v1.Replay/Insert",
            request_serializer=None,
            response_deserializer=replay_pb2.InsertAck.FromString,
        )()
        window = asyncio.Semaphore(INSERT_WINDOW)
        sent: dict[int, float] = {}

        async def read_acks() -> None:
            async for ack in call:
                started = sent.pop(ack.sequence, None)
                if started is not None:
                    latencies.append(time.perf_counter() - started)
                acked[slot] += 1
                window.release()

        reader = asyncio.create_task(read_acks())
        request.actor_id = actor_id
        request.incarnation = os.urandom(8)
        sequence = 0
        try:
            while time.monotonic() < deadline:
                try:  # a writer the shard does not serve waits here until the deadline
                    await asyncio.wait_for(window.acquire(), timeout=max(deadline - time.monotonic(), 0.001))
                except asyncio.TimeoutError:
                    break
                sequence += 1
                request.sequence = sequence
                sent[sequence] = time.perf_counter()
                await call.write(request.SerializeToString())
            await asyncio.wait_for(call.done_writing(), timeout=10)
            await asyncio.wait_for(reader, timeout=10)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError):
            pass  # refused or cut off by the shard: the writer's count shows it
        finally:
            reader.cancel()
            call.cancel()


async def _subscriber(address: str, deadline: float, versions: list[int], slot: int) -> None:
    import grpc

    from distrl.proto.v1 import params_pb2

    async with grpc.aio.insecure_channel(address, options=_OWN_CONNECTION) as channel:
        call = channel.unary_stream(
            "/distrl.v1.Parameters/Subscribe",
            request_serializer=params_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=params_pb2.ParamChunk.FromString,
        )(params_pb2.SubscribeRequest(after_version=0), timeout=max(deadline - time.monotonic(), 1))
        try:
            async for chunk in call:
                if chunk.end_of_version:
                    versions[slot] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise


async def _writer_process(spec: dict) -> dict:
    from distrl.replay.messages import pack_transition_batch
    from distrl.replay.writer import home_shard

    rng = np.random.default_rng(spec["index"])
    template = pack_transition_batch(transitions(64, rng), table="", actor_id="x", policy_version=0)
    deadline = time.monotonic() + spec["seconds"]
    latencies: list[float] = []
    acked = [0] * len(spec["writer_ids"])
    versions = [0] * spec["subscribers"]
    shards = spec["shards"]
    tasks = []
    for slot, actor_id in enumerate(spec["writer_ids"]):
        request = type(template)()
        request.CopyFrom(template)
        address = shards[home_shard(actor_id, len(shards))]
        tasks.append(_writer(actor_id, address, request, deadline, latencies, acked, slot))
    tasks += [_subscriber(spec["params"], deadline + 2, versions, i) for i in range(spec["subscribers"])]
    window: dict[str, list[int]] = {}

    async def snapshot(name: str, at: float) -> None:
        await asyncio.sleep(max(at - time.monotonic(), 0))
        window[name] = list(acked)

    # Per-writer rates come from the steady state: after warm-up, before the streams wind down.
    tasks += [snapshot("start", deadline - spec["seconds"] + spec["settle_s"]), snapshot("end", deadline - 1)]
    await asyncio.gather(*tasks)
    in_window = [end - start for start, end in zip(window["start"], window["end"], strict=True)]
    return {"acked": acked, "in_window": in_window, "latencies": latencies, "versions": versions}


def writer_process_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_writer_process(spec))
    np.save(out_path + ".lat.npy", np.asarray(result.pop("latencies"), dtype=np.float32))
    Path(out_path).write_text(json.dumps(result))


# -- the learner and the publisher --------------------------------------------------------------------


class Learner(threading.Thread):
    """Samples batches of 256 at `rate` per second (0: as fast as it can); counts them per window."""

    def __init__(self, shards: list[str], rate: float) -> None:
        super().__init__(name="learner", daemon=True)
        from distrl.replay.client import ReplayClient

        self.client = ReplayClient(shards)
        self.rate = rate
        self.count = 0
        self.timeouts = 0
        self._halt = threading.Event()

    def run(self) -> None:
        next_at = time.perf_counter()
        while not self._halt.is_set():
            try:
                self.client.sample(256, timeout=5.0)
                self.count += 1
            except TimeoutError:
                self.timeouts += 1
            if self.rate > 0:
                next_at += 1.0 / self.rate
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.perf_counter()

    def rate_over(self, seconds: float) -> float:
        start = self.count
        time.sleep(seconds)
        return (self.count - start) / seconds

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.client.close()


def publish_loop(address: str, every_s: float, stop: threading.Event, published: list[int]) -> None:
    from distrl.params.client import ParamsClient

    weights = {"w": np.zeros(POLICY_BYTES // 4, dtype=np.float32)}
    with ParamsClient(address) as client:
        while not stop.wait(every_s):
            weights["w"][0] += 1
            published.append(client.publish(weights))


def prefill(shards: list[str], items: int) -> None:
    from distrl.replay.client import ReplayClient

    rng = np.random.default_rng(0)
    batch = transitions(64, rng)
    with ReplayClient(shards) as client:
        writers = [client.writer(f"prefill-{i}") for i in range(len(shards))]
        for n in range(items // 64):
            writers[n % len(writers)].insert(batch)
        for w in writers:
            w.close()


# -- the soak -----------------------------------------------------------------------------------------

SOAK_WINDOW_S = 300.0
SOAK_CAPACITY = 10_000  # wraps in a few minutes at a CPU learner's pace
SOAK_CHECKPOINT_EVERY_S = 120.0  # several replay checkpoints (each copies the table) per soak
SOAK_RSS_EVERY_S = 30.0


def _rates(rows: list[dict], start_s: float, end_s: float) -> tuple[float, float]:
    """Env steps/s and updates/s between two wall times of a run (metrics.jsonl rows)."""
    inside = [r for r in rows if start_s <= r["wall_time"] <= end_s]
    if len(inside) < 2:
        raise SystemExit(f"no metrics rows between {start_s:.0f}s and {end_s:.0f}s of the soak")
    first, last = inside[0], inside[-1]
    span = last["wall_time"] - first["wall_time"]
    return (last["env_steps"] - first["env_steps"]) / span, (last["updates"] - first["updates"]) / span


def _component_rss(run_dir: Path) -> dict[str, float]:
    pids = json.loads((run_dir / "pids.json").read_text())
    named = {"launcher": int(pids["launcher"])}
    named |= {name: int(child["pid"]) for name, child in pids["children"].items()}
    out = {}
    for name, pid in named.items():
        try:
            out[name] = rss_mib(pid)
        except (OSError, RuntimeError):
            continue  # restarting right now
    return out


def _wrapped_at(rows: list[dict], capacity: int) -> float | None:
    """The run's wall time when every replay shard's table first reported itself full."""
    for row in rows:
        sizes = {k: v for k, v in row.items() if k.startswith("learner/replay/") and k.endswith("/size")}
        if sizes and all(v >= capacity for v in sizes.values()):
            return float(row["wall_time"])
    return None


def _slope_mib_per_10min(series: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per 10 minutes."""
    t = np.array([s for s, _ in series])
    y = np.array([m for _, m in series])
    if len(t) < 3 or np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t, y, 1)[0] * 600.0)


def soak(minutes: float, json_path: Path | None, capacity: int, checkpoint_every_s: float) -> None:
    """A real run: warm-up lasts until the table has wrapped and one replay checkpoint has been
    written since (so the table is full size and a checkpoint's copy has been paid for); RSS is
    sampled every 30 s, and growth is the end over the end of warm-up, beside a fitted slope."""
    window_s = min(SOAK_WINDOW_S, minutes * 60 / 6)
    total_s = minutes * 60
    run_dir = Path(tempfile.mkdtemp(prefix="soak-")) / "run"
    overrides = [
        f"replay.table.capacity={capacity}",
        f"replay.table.min_size_to_sample={min(5000, capacity // 2)}",
        f"replay.checkpoint_every_s={checkpoint_every_s:g}",
        "train.total_env_steps=100000000",
        "learner.checkpoint_every=5000",
        "telemetry.report_every_s=5",
    ]
    run = start_train(ROOT / "configs" / "sac_halfcheetah.yaml", run_dir, overrides)
    print(f"soak: {run_dir} for {minutes:g} min", flush=True)
    started = time.monotonic()
    series: dict[str, list[tuple[float, float]]] = {}
    warm_end_s: float | None = None  # run wall time when warm-up ended
    try:
        while (elapsed := time.monotonic() - started) < total_s:
            if run.proc.poll() is not None:
                raise SystemExit(f"the soak run exited with {run.proc.returncode}; see {run_dir / 'logs'}")
            time.sleep(min(SOAK_RSS_EVERY_S, total_s - elapsed))
            rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
            wall = rows[-1]["wall_time"] if rows else 0.0
            if (run_dir / "pids.json").exists():
                for name, mib in _component_rss(run_dir).items():
                    series.setdefault(name, []).append((wall, mib))
            if warm_end_s is None and (wrapped := _wrapped_at(rows, capacity)) is not None:
                warm_end_s = wrapped + checkpoint_every_s + SOAK_RSS_EVERY_S
            last = rows[-1] if rows else {}
            state = "warm-up" if warm_end_s is None or wall < warm_end_s else "measuring"
            print(
                f"  {(time.monotonic() - started) / 60:5.1f} min  {state:9s} env steps "
                f"{last.get('env_steps', 0):,}  updates {last.get('updates', 0):,}",
                flush=True,
            )
    finally:
        run.proc.send_signal(2)  # SIGINT: a clean stop
        run.proc.wait(120)
    rows = read_metrics(run_dir)
    end_wall = rows[-1]["wall_time"]
    if warm_end_s is None or end_wall - warm_end_s < 2 * window_s:
        raise SystemExit(f"the table did not wrap early enough to measure (warm-up ended at {warm_end_s})")
    steps_first, updates_first = _rates(rows, warm_end_s, warm_end_s + window_s)
    steps_last, updates_last = _rates(rows, end_wall - window_s, end_wall)
    growth, slope, warm_rss, end_rss = {}, {}, {}, {}
    for name, points in series.items():
        after = [(t, m) for t, m in points if t >= warm_end_s]
        if len(after) < 2:
            continue
        warm_rss[name], end_rss[name] = after[0][1], after[-1][1]
        growth[name] = end_rss[name] / warm_rss[name]
        slope[name] = _slope_mib_per_10min(after)
    worst = max(growth, key=growth.get)
    print(f"  warm-up ended {warm_end_s:.0f}s into the run (table wrapped + one replay checkpoint)")
    for name in sorted(growth):
        print(
            f"  RSS {name:12s} {warm_rss[name]:8.1f} -> {end_rss[name]:8.1f} MiB"
            f"  (fit: {slope[name]:+.2f} MiB / 10 min)"
        )
    first = "first window after warm-up"
    results = [
        Result("soak/env_steps_per_s_last", steps_last, "env steps/s", first, steps_first),
        Result("soak/updates_per_s_last", updates_last, "updates/s", first, updates_first),
        Result(
            "soak/rss_growth_max", growth[worst], f"end / after warm-up ({worst})", "no growth", 1.0,
            lower_is_better=True, baseline_kind="target",
        ),
        Result("soak/rss_slope_max", max(slope.values()), "MiB per 10 min (largest fitted slope)"),
    ]  # fmt: skip
    print_table(results, f"soak: a real SAC HalfCheetah run for {minutes:g} min")
    config = {
        "minutes": minutes,
        "overrides": overrides,
        "warmup_end_wall_s": warm_end_s,
        "rss_after_warmup": warm_rss,
        "rss_end": end_rss,
        "rss_slope_mib_per_10min": slope,
        "rss_series": {name: [[round(t, 1), round(m, 1)] for t, m in pts] for name, pts in series.items()},
    }
    write_json(json_path, "replay_load_soak", config, results)


# -- the benchmark ------------------------------------------------------------------------------------


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300.0, help="how long the writers stream")
    p.add_argument("--writers", type=int, default=256)
    p.add_argument("--subscribers", type=int, default=256)
    p.add_argument("--processes", type=int, default=8, help="writer processes sharing the streams")
    p.add_argument("--learner-rate", type=float, default=200.0, help="learner batches/s; 0: unpaced")
    p.add_argument("--capacity", type=int, default=200_000, help="items per shard table")
    p.add_argument(
        "--samples-per-insert", type=float, default=1.0, help="the shards' rate limit; 0: no limit"
    )
    p.add_argument("--publish-every-s", type=float, default=2.0)
    p.add_argument("--soak", action="store_true", help="a long real training run instead (see above)")
    p.add_argument("--soak-minutes", type=float, default=30.0)
    p.add_argument("--writer-process", nargs=2, metavar=("SPEC", "OUT"), help=argparse_hidden())
    args = p.parse_args()
    if args.writer_process:
        writer_process_main(*args.writer_process)
        return
    if args.soak:
        if args.quick:  # a smoke test of the mechanics: a table that wraps in seconds
            soak(3.0, args.json, capacity=1000, checkpoint_every_s=20.0)
        else:
            soak(args.soak_minutes, args.json, SOAK_CAPACITY, SOAK_CHECKPOINT_EVERY_S)
        return
    if args.quick:
        args.seconds, args.writers, args.subscribers, args.processes = 20.0, 32, 32, 2
    # The prefilled tables let the learner alone draw `capacity x SPI` items per shard.
    alone_s = 5.0

    procs: list[subprocess.Popen] = []
    try:
        shard_procs = []
        shards = []
        for _ in range(2):
            proc, address = start_serve(shard_args(args.capacity, args.samples_per_insert))
            procs.append(proc)
            shard_procs.append(proc)
            shards.append(address)
        proc, params = start_serve(["params", "--max-subscribers", str(max(args.subscribers, 1) + 8)])
        procs.append(proc)

        print(f"prefilling {len(shards)} shards to {args.capacity} items each", flush=True)
        prefill(shards, args.capacity * len(shards))
        rss_prefilled = [rss_mib(p.pid) for p in shard_procs]

        learner = Learner(shards, args.learner_rate)
        learner.start()
        time.sleep(2.0)  # prefetch warm-up
        alone = learner.rate_over(alone_s)
        print(f"learner alone: {alone:.1f} batches/s", flush=True)

        stop_publishing = threading.Event()
        published: list[int] = []
        publisher = threading.Thread(
            target=publish_loop, args=(params, args.publish_every_s, stop_publishing, published), daemon=True
        )
        publisher.start()

        settle = min(30.0, args.seconds / 5)
        workdir = Path(tempfile.mkdtemp(prefix="replay_load-"))
        writer_ids = [f"load-{i}" for i in range(args.writers)]
        children = []
        for index in range(args.processes):
            spec = {
                "index": index,
                "writer_ids": writer_ids[index :: args.processes],
                "subscribers": len(range(index, args.subscribers, args.processes)),
                "shards": shards,
                "params": params,
                "seconds": args.seconds,
                "settle_s": settle,
            }
            spec_path = workdir / f"spec{index}.json"
            spec_path.write_text(json.dumps(spec))
            out = workdir / f"out{index}.json"
            cmd = [sys.executable, __file__, "--writer-process", str(spec_path), str(out)]
            children.append((subprocess.Popen(cmd), out))
        print(
            f"{args.writers} writers and {args.subscribers} subscribers in {args.processes} processes "
            f"for {args.seconds:.0f}s",
            flush=True,
        )
        started = time.monotonic()
        time.sleep(settle)
        learned_before = learner.count
        # After warm-up: the table full, every writer and subscriber connected.
        rss_start = [rss_mib(p.pid) for p in shard_procs]
        window_start = time.monotonic()
        while time.monotonic() - started < args.seconds - 1:
            time.sleep(min(30.0, max(0.5, args.seconds - 1 - (time.monotonic() - started))))
            print(f"  {time.monotonic() - started:5.0f}s  learner {learner.count} batches", flush=True)
        with_writers = (learner.count - learned_before) / (time.monotonic() - window_start)
        rss_end = [rss_mib(p.pid) for p in shard_procs]
        for child, _ in children:
            if child.wait(timeout=args.seconds + 120) != 0:
                raise SystemExit(f"writer process exited with {child.returncode}")
        stop_publishing.set()
        publisher.join(10)
        learner.stop()

        acked: list[int] = []
        in_window: list[int] = []
        versions: list[int] = []
        latencies = []
        for _, out in children:
            result = json.loads(out.read_text())
            acked += result["acked"]
            in_window += result["in_window"]
            versions += result["versions"]
            latencies.append(np.load(str(out) + ".lat.npy"))
        lat_ms = np.concatenate(latencies) * 1000 if latencies else np.zeros(1)
        per_writer = np.asarray(in_window, dtype=float) / (args.seconds - 1 - settle)
        fairness = float(per_writer.min() / per_writer.max()) if per_writer.max() > 0 else 0.0
        growth = max(end / start for start, end in zip(rss_start, rss_end, strict=True))
        results = [
            Result("load/insert_transitions_per_s", float(per_writer.sum() * 64), "transitions/s"),
            Result("load/ack_latency_p50_ms", float(np.percentile(lat_ms, 50)), "ms"),
            Result("load/ack_latency_p99_ms", float(np.percentile(lat_ms, 99)), "ms"),
            Result(
                "load/shard_rss_growth",
                growth,
                "end / start (largest shard)",
                "no growth",
                1.0,
                lower_is_better=True,
                baseline_kind="target",
            ),
            Result(
                "load/writer_fairness",
                fairness,
                "min / max per-writer batches/s",
                "equal service",
                1.0,
                baseline_kind="target",
            ),
            Result("load/writers_starved", float((per_writer == 0).sum()), "writers with no ack"),
            Result(
                "load/learner_batches_per_s",
                with_writers,
                "batches of 256/s",
                "the same learner alone",
                alone,
            ),
            Result("load/learner_batches_per_s_alone", alone, "batches of 256/s"),
            Result(
                "load/subscriber_versions_min",
                float(min(versions, default=0)),
                "versions received",
                "versions published",
                float(len(published)),
                baseline_kind="measured",
            ),
            Result("load/subscriber_versions_max", float(max(versions, default=0)), "versions received"),
        ]
        quantiles = np.percentile(per_writer, [0, 10, 50, 90, 100])
        print(
            "per-writer batches/s: min {:.2f}  p10 {:.2f}  p50 {:.2f}  p90 {:.2f}  max {:.2f}".format(
                *quantiles
            )
        )
        print(
            f"shard RSS MiB prefilled {[round(r) for r in rss_prefilled]}, after warm-up "
            f"{[round(r) for r in rss_start]}, at the end {[round(r) for r in rss_end]}"
        )
        print_table(
            results,
            f"replay load ({args.writers} writers, {args.subscribers} subscribers, "
            f"{args.seconds:.0f}s, learner pace {args.learner_rate:g}/s, SPI {args.samples_per_insert:g})",
        )
        write_json(args.json, "replay_load", vars(args) | {"json": None}, results)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
