"""Hundreds of open streams per server, clients that stop reading, clients that come and go.

Servers are `grpc.aio` servers (`distrl.wire.server`): an open stream costs no
thread. These tests hold 256 Insert streams on one replay shard beside a
sampling learner, 256 Report streams on one coordinator, half-dead Insert and
Sample streams (opened, then never read), and a client that connects and
disconnects in a loop, and check every other client is still served and
nothing piles up. (256 Subscribe streams on the params server:
tests/test_params_many_streams.py.)
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from replay_helpers import batch, shard, start_cli_shard, stop_process, wait_for

from distrl.config import TelemetryConfig
from distrl.proto.v1 import replay_pb2, telemetry_pb2
from distrl.replay.client import ReplayClient
from distrl.replay.messages import pack_transition_batch
from distrl.telemetry import Coordinator, start_coordinator_server

STREAMS = 256
INSERT = "/distrl.v1.Replay/Insert"
SAMPLE = "/distrl.v1.Replay/Sample"
REPORT = "/distrl.v1.Telemetry/Report"
# Each stream on a connection of its own, as separate actor processes would.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _request(actor_id: str, sequence: int, ids: range) -> bytes:
    request = pack_transition_batch(batch(ids), table="", actor_id=actor_id, policy_version=0)
    request.sequence = sequence
    request.incarnation = actor_id.encode()
    return request.SerializeToString()


async def _write_batches(address: str, actor_id: str, batches: int, acked: dict[str, int]) -> None:
    """One writer's Insert stream: `batches` batches, each sent once the previous one is acked."""
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        call = channel.stream_stream(INSERT, response_deserializer=replay_pb2.InsertAck.FromString)()
        for sequence in range(1, batches + 1):
            await call.write(_request(actor_id, sequence, range(sequence * 4, sequence * 4 + 4)))
            ack = await call.read()
            assert ack.sequence == sequence and ack.stored, ack
            acked[actor_id] = acked.get(actor_id, 0) + 1
        await call.done_writing()


def _server_threads() -> int:
    return threading.active_count()


def test_one_shard_serves_256_insert_streams_while_the_learner_samples():
    with shard(capacity=100_000, min_size_to_sample=16) as (s, running):
        with ReplayClient([running.address]) as learner:
            for i in range(8):
                learner.writer(f"seed-{i}").insert(batch(range(i * 4, i * 4 + 4)))
            learner.sample(16, timeout=10.0)  # the prefetch stream is open before the writers
            threads_before = _server_threads()
            acked: dict[str, int] = {}
            opened = asyncio.Event()
            learner_batches: list[int] = []

            async def all_writers() -> None:
                writers = [_write_batches(running.address, f"w-{i}", 5, acked) for i in range(STREAMS)]
                await asyncio.gather(*writers)

            def sample_meanwhile() -> None:
                while not opened.is_set():
                    learner.sample(16, timeout=10.0)
                    learner_batches.append(1)

            sampler = threading.Thread(target=sample_meanwhile)
            sampler.start()
            try:
                asyncio.run(asyncio.wait_for(all_writers(), timeout=60))
            finally:
                opened.set()
                sampler.join(20)
            assert len(acked) == STREAMS and set(acked.values()) == {5}, "a writer was not served"
            assert learner_batches, "the learner got no batch while the writers streamed"
            # One thread per stream would be hundreds; the servers run on event loops.
            assert _server_threads() - threads_before < 32
        stats = s.table_stats("default")
        assert stats.inserted_batches == STREAMS * 5 + 8


def test_a_coordinator_takes_256_report_streams_at_once(tmp_path: Path):
    coordinator = Coordinator(tmp_path / "run", TelemetryConfig(console=False), total_env_steps=10**9)
    running = start_coordinator_server(coordinator, port=0)
    accepted: list[int] = []

    async def reporter(i: int, everyone_open: asyncio.Barrier) -> None:
        async with grpc.aio.insecure_channel(running.address, options=OWN_CONNECTION) as channel:
            call = channel.stream_unary(
                REPORT,
                request_serializer=telemetry_pb2.MetricBatch.SerializeToString,
                response_deserializer=telemetry_pb2.ReportResponse.FromString,
            )()
            batch_ = telemetry_pb2.MetricBatch(source=f"actor-{i}", env_steps=i + 1)
            batch_.metrics.add(name="actor/steps_per_s", value=float(i))
            await call.write(batch_)
            await everyone_open.wait()  # every stream is open before any ends
            await call.write(batch_)
            await call.done_writing()
            accepted.append((await call).accepted)

    async def all_reporters() -> None:
        everyone_open = asyncio.Barrier(STREAMS)
        await asyncio.gather(*(reporter(i, everyone_open) for i in range(STREAMS)))

    try:
        asyncio.run(asyncio.wait_for(all_reporters(), timeout=60))
        assert accepted == [2] * STREAMS
        row = coordinator.flush_window()
        assert row is not None
        assert coordinator.snapshot().env_steps == sum(range(1, STREAMS + 1))
    finally:
        coordinator.close()
        running.stop(0)


# -- clients that misbehave ----------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def cli_shard():
    proc, address = start_cli_shard("--capacity", "20000", "--min-size", "64")
    try:
        yield proc, address
    finally:
        stop_process(proc)


def test_half_dead_clients_block_no_one_and_hold_bounded_memory(cli_shard):
    proc, address = cli_shard
    with ReplayClient([address]) as client:
        writer = client.writer("filler")
        for i in range(40):
            writer.insert(batch(range(i * 64, i * 64 + 64)))
        writer.flush(timeout=10)
        client.sample(64, timeout=10.0)
        rss_before = _rss_mib(proc.pid)

        # 32 half-dead clients on their own connections: 16 open an endless Sample stream of
        # large batches and never read it, 16 send Insert batches and never read an ack.
        channels = [grpc.insecure_channel(address, options=OWN_CONNECTION) for _ in range(32)]
        dead_calls = []
        for channel in channels[:16]:
            request = replay_pb2.SampleRequest(batch_size=2048, num_batches=0)
            dead_calls.append(channel.unary_stream(SAMPLE)(request.SerializeToString()))
        for i, channel in enumerate(channels[16:]):
            requests = iter([_request(f"dead-{i}", s, range(s * 4, s * 4 + 4)) for s in range(1, 200)])
            dead_calls.append(channel.stream_stream(INSERT)(requests))
        try:
            time.sleep(3.0)  # their buffers fill up to gRPC's flow-control windows, then stop
            # Everyone else is still served: a new writer's batches are acked, the learner samples.
            other = client.writer("alive")
            for i in range(20):
                other.insert(batch(range(10_000 + i * 8, 10_000 + i * 8 + 8)))
            other.flush(timeout=15)
            for _ in range(20):
                client.sample(64, timeout=10.0)
            grown = _rss_mib(proc.pid) - rss_before
            assert grown < 128, f"the shard grew {grown:.0f} MiB holding 32 half-dead streams"
        finally:
            for call in dead_calls:
                call.cancel()
            for channel in channels:
                channel.close()


def test_clients_that_come_and_go_leak_nothing(cli_shard):
    proc, address = cli_shard

    def one_visit(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            call = channel.stream_stream(INSERT, response_deserializer=replay_pb2.InsertAck.FromString)
            acks = list(call(iter([_request(f"visitor-{i}", 1, range(i * 4, i * 4 + 4))]), timeout=10))
            assert len(acks) == 1 and acks[0].stored

    for i in range(20):  # warm-up: buffers and pools reach their working size
        one_visit(i)
    threads_before, rss_before = _thread_count(proc.pid), _rss_mib(proc.pid)
    for i in range(20, 320):
        one_visit(i)
    wait_for(lambda: _thread_count(proc.pid) <= threads_before, timeout=10, message="threads to settle")
    grown = _rss_mib(proc.pid) - rss_before
    assert grown < 32, f"the shard grew {grown:.0f} MiB over 300 connect/disconnect cycles"
    with ReplayClient([address]) as client:
        info = client.info()[0]
    assert info.table("default").inserted_batches == 320
