"""One parameter server holding 256 Subscribe streams at once (issue 15).

The streams are opened by a grpc.aio client on one event loop over a few channels, so
neither side needs a thread per stream. Every subscriber must get every version whole,
and Publish, Fetch and Info must keep being answered while all the streams are open.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from distrl.params import ParamsClient, RunningParamServer, start_params_server
from distrl.params.chunks import VersionAssembler
from distrl.proto.v1 import params_pb2, params_pb2_grpc

STREAMS = 256
CHANNELS = 8
VERSIONS = 4
TIMEOUT_S = 20.0


def weights(step: int) -> dict[str, np.ndarray]:
    """64 KiB whose contents depend on `step`; published in 16 KiB chunks, so 4+ messages a version."""
    return {"w": np.full(16 * 1024, step, dtype=np.float32), "b": np.arange(8, dtype=np.int64) + step}


class Subscribers:
    """`STREAMS` raw Subscribe streams on one grpc.aio event loop in one thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        # Per stream: the versions it assembled, in order; and any error that ended it.
        self.seen: list[list[int]] = [[] for _ in range(STREAMS)]
        self.bad: list[str] = []
        self.ended_ok = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="many-subscribers", daemon=True)
        self._thread.start()
        assert self._ready.wait(TIMEOUT_S), "subscriber loop did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        channels = [grpc.aio.insecure_channel(self.address) for _ in range(CHANNELS)]
        stubs = [params_pb2_grpc.ParametersStub(c) for c in channels]
        tasks = [asyncio.create_task(self._follow(i, stubs[i % CHANNELS])) for i in range(STREAMS)]
        self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()

    async def _follow(self, index: int, stub: params_pb2_grpc.ParametersStub) -> None:
        call = stub.Subscribe(params_pb2.SubscribeRequest())
        assembler = VersionAssembler()
        try:
            async for chunk in call:
                if not assembler.add(chunk):
                    continue
                expected = weights(assembler.version or 0)
                got = assembler.tensors()
                intact = all(np.array_equal(got[k], v) for k, v in expected.items())
                with self.changed:
                    if not intact:
                        self.bad.append(f"stream {index}: version {assembler.version} corrupted")
                    self.seen[index].append(assembler.version or 0)
                    self.changed.notify_all()
                assembler = VersionAssembler()
            with self.changed:
                self.ended_ok += 1  # the server ended the stream with OK
                self.changed.notify_all()
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            with self.changed:
                self.bad.append(f"stream {index}: {exc.code().name}: {exc.details()}")
                self.changed.notify_all()

    def wait_all_have(self, version: int) -> None:
        """Wait until every stream has assembled `version`; fail naming the laggards."""

        def done() -> bool:
            return bool(self.bad) or all(s and s[-1] >= version for s in self.seen)

        with self.changed:
            self.changed.wait_for(done, TIMEOUT_S)
            assert not self.bad, self.bad[:5]
            behind = [i for i, s in enumerate(self.seen) if not s or s[-1] < version]
            assert not behind, f"{len(behind)} streams without version {version}, e.g. {behind[:5]}"

    def close(self) -> None:
        """Cancel every stream still open and stop the loop; idempotent."""
        if self._thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT_S)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def server() -> Iterator[RunningParamServer]:
    running = start_params_server()
    yield running
    running.stop(0)


def call_promptly(what: str, fn):
    """Run `fn` in a thread and fail if it does not finish within the (generous) timeout."""
    box: list = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # handed to the test thread below
            box.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    assert box, f"{what} did not complete within {TIMEOUT_S}s while {STREAMS} streams were open"
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def test_256_subscribers_each_get_every_version_while_other_calls_are_served(server):
    threads_before = threading.active_count()
    client = ParamsClient(server.address, timeout_s=TIMEOUT_S, chunk_bytes=16 * 1024)
    subscribers = Subscribers(server.address)
    try:
        # Every stream is open and waiting for the first version.
        wait_until(lambda: client.info().subscribers == STREAMS, f"{STREAMS} subscribers to register")
        # The server holds the streams without a thread each (nor does this client).
        assert threading.active_count() < threads_before + 32, threading.active_count()

        for step in range(1, VERSIONS + 1):
            assert call_promptly("Publish", lambda s=step: client.publish(weights(s))) == step
            # Other calls are answered while the version fans out to all the streams.
            info = call_promptly("Info", client.info)
            assert info.version == step
            assert info.subscribers == STREAMS
            fetched = call_promptly("Fetch", client.fetch)
            assert fetched.version == step
            assert np.array_equal(fetched.tensors["w"], weights(step)["w"])
            # A publish of another set (no subscribers) is not held up by the streams.
            barrier = {"alpha": np.full(4, step, dtype=np.float64)}
            assert call_promptly("Publish", lambda b=barrier: client.publish(b, param_set="barrier")) == step
            subscribers.wait_all_have(step)

        # Fair service: every stream got every version, whole and in order; none was skipped past.
        with subscribers.lock:
            assert not subscribers.bad, subscribers.bad[:5]
            wrong = [i for i, s in enumerate(subscribers.seen) if s != list(range(1, VERSIONS + 1))]
            assert not wrong, [(i, subscribers.seen[i]) for i in wrong[:5]]
        assert call_promptly("Info", lambda: client.info("barrier")).version == VERSIONS
        # Cancelling the streams on the client side releases them all on the server.
        subscribers.close()
        wait_until(lambda: client.info().subscribers == 0, "the cancelled streams to be released")
    finally:
        subscribers.close()
        client.close()


def test_closing_the_server_ends_all_256_streams():
    running = start_params_server()
    subscribers = Subscribers(running.address)
    try:
        with ParamsClient(running.address, timeout_s=TIMEOUT_S) as client:
            client.publish(weights(1))
            subscribers.wait_all_have(1)
        # stop() wakes every waiting subscriber, so their streams end with OK (were they left
        # open, the server would cancel them once the grace ran out).
        call_promptly("stop", lambda: running.stop(TIMEOUT_S / 2))
        with subscribers.changed:
            subscribers.changed.wait_for(lambda: subscribers.ended_ok == STREAMS, TIMEOUT_S)
            assert not subscribers.bad, subscribers.bad[:5]
            assert subscribers.ended_ok == STREAMS
    finally:
        running.stop(0)
        subscribers.close()
