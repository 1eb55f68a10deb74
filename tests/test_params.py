"""The parameter server and its client, over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from distrl.params import (
    DEFAULT_PARAM_SET,
    MAX_MESSAGE_BYTES,
    UPDATES_KEY,
    ParamsClient,
    ParamsSubscriptionError,
    RunningParamServer,
    start_params_server,
)
from distrl.params.chunks import VersionAssembler, iter_chunks, prepare_tensors
from distrl.proto.v1 import params_pb2, params_pb2_grpc, tensor_pb2
from distrl.wire import check_health, open_channel

TIMEOUT_S = 20.0


def model(step: int, big: int = 2_621_440) -> dict[str, np.ndarray]:
    """A policy-like set of tensors whose contents depend on `step`; `big` float32s (~10 MiB default)."""
    rng = np.random.default_rng(step)
    return {
        "actor/w0": rng.standard_normal(big, dtype=np.float32).reshape(-1, 256),
        "actor/b0": rng.standard_normal(256).astype(np.float16),
        "obs_norm/count": np.array(step, dtype=np.int64),
        "mask": rng.random((3, 5)) > 0.5,
        "empty": np.zeros((0, 4), dtype=np.float64),
    }


def assert_same(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, arr in expected.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


@pytest.fixture
def server() -> Iterator[RunningParamServer]:
    running = start_params_server()
    yield running
    running.stop(0)


@pytest.fixture
def client(server: RunningParamServer) -> Iterator[ParamsClient]:
    with ParamsClient(server.address, timeout_s=TIMEOUT_S) as c:
        yield c


def raw_stub(address: str, **options: int) -> tuple[grpc.Channel, params_pb2_grpc.ParametersStub]:
    channel = grpc.insecure_channel(address, options=list(options.items()))
    return channel, params_pb2_grpc.ParametersStub(channel)


def read_versions(stream, count: int) -> list[VersionAssembler]:
    """Assemble `count` complete versions from a raw chunk stream."""
    out = []
    assembler = VersionAssembler()
    for chunk in stream:
        if assembler.add(chunk):
            out.append(assembler)
            if len(out) == count:
                break
            assembler = VersionAssembler()
    return out


def wait_until(predicate, timeout: float = TIMEOUT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- publish / subscribe ------------------------------------------------------------------------


def test_large_model_reaches_subscriber_in_order_and_intact(server, client):
    subscription = client.subscribe()
    # A raw subscriber too, to see the chunks themselves.
    channel, stub = raw_stub(server.address)
    raw = stub.Subscribe(params_pb2.SubscribeRequest(), timeout=TIMEOUT_S)
    for step in (1, 2, 3):
        published = model(step)
        assert client.publish(published, metadata={"updates": str(100 * step)}) == step
        got = subscription.wait_for_version(step, timeout=TIMEOUT_S)
        assert got.version == step
        assert got.metadata == {"updates": str(100 * step)}
        assert_same(published, got.tensors)
        assert got.tensors["actor/w0"].flags.writeable

        # Read as fast as it is published, a subscriber sees every version, whole and in order.
        (version,) = read_versions(raw, 1)
        assert version.version == step
        assert_same(published, version.tensors())
        assert all(c.ByteSize() < MAX_MESSAGE_BYTES for c in version.chunks)
        big_chunks = [c for c in version.chunks if c.name == "actor/w0"]
        assert len(big_chunks) > 2, "a 10 MiB tensor must be split over several chunks"
        assert [c.offset for c in big_chunks] == sorted({c.offset for c in big_chunks})
        assert [c.end_of_version for c in version.chunks] == [False] * (len(version.chunks) - 1) + [True]
    assert subscription.version == 3
    raw.cancel()
    channel.close()


def test_slow_subscriber_skips_to_the_newest_version(server, client):
    def small(step: int) -> dict[str, np.ndarray]:
        return {"w": np.full(512 * 1024, step, dtype=np.float32)}  # 2 MiB: more than the stream window

    client.publish(small(1))
    # A small fixed HTTP/2 window, so the server blocks mid-version while this subscriber does not read.
    channel, stub = raw_stub(
        server.address, **{"grpc.http2.bdp_probe": 0, "grpc.http2.lookahead_bytes": 65536}
    )
    stream = stub.Subscribe(params_pb2.SubscribeRequest(), timeout=TIMEOUT_S)
    seen = [v.version for v in read_versions(stream, 1)]
    for step in (2, 3, 4, 5):
        client.publish(small(step))
    assembler = VersionAssembler()
    for chunk in stream:
        if assembler.add(chunk):
            seen.append(assembler.version)
            assert_same(small(assembler.version), assembler.tensors())
            if assembler.version == 5:
                break
            assembler = VersionAssembler()
    stream.cancel()
    channel.close()
    assert seen[0] == 1 and seen[-1] == 5
    assert seen == sorted(set(seen))
    # At most the version already in flight when it stalled, then straight to the newest.
    assert len(seen) <= 3, seen


def test_subscriber_resumes_after_server_restart_on_same_port():
    first = start_params_server()
    port = first.port
    client = ParamsClient(first.address, timeout_s=TIMEOUT_S)
    subscription = client.subscribe(initial_backoff_s=0.05, max_backoff_s=0.5)
    try:
        client.publish(model(1, big=1024), version=7)
        assert subscription.wait_for_version(7, TIMEOUT_S).version == 7
        first.stop(0)
        reconnects_before = subscription.reconnects

        second = start_params_server(port=port)
        try:
            with ParamsClient(second.address, timeout_s=TIMEOUT_S) as learner:
                # The new server starts empty; the learner keeps counting.
                learner.publish(model(8, big=1024), version=8)
            got = subscription.wait_for_version(8, TIMEOUT_S)
            assert got.version == 8
            assert_same(model(8, big=1024), got.tensors)
            assert subscription.reconnects > reconnects_before
            assert subscription.error is None
        finally:
            second.stop(0)
    finally:
        client.close()


def test_subscription_asks_only_for_newer_versions(server, client):
    for step in (1, 2, 3):
        client.publish(model(step, big=256))
    # A new subscriber starts from the current version, not the history.
    channel, stub = raw_stub(server.address)
    stream = stub.Subscribe(params_pb2.SubscribeRequest(), timeout=TIMEOUT_S)
    assert [v.version for v in read_versions(stream, 1)] == [3]
    stream.cancel()
    # One that already holds 3 waits for 4.
    subscription = client.subscribe(after_version=3)
    with pytest.raises(TimeoutError, match="no version >= 4"):
        subscription.wait_for_version(4, timeout=0.3)
    assert subscription.latest() is None
    client.publish(model(4, big=256))
    assert subscription.wait_for_version(4, TIMEOUT_S).version == 4
    channel.close()


def test_closed_or_expired_subscriptions_release_the_server(server, client):
    subscription = client.subscribe()
    wait_until(lambda: client.info().subscribers == 1, what="subscriber to register")
    subscription.close()
    wait_until(lambda: client.info().subscribers == 0, what="closed subscriber to go")
    with pytest.raises(ParamsSubscriptionError, match="closed"):
        subscription.wait_for_version(1, timeout=1)

    # A deadline on a subscriber that is waiting for a version ends its stream on the server too.
    channel, stub = raw_stub(server.address)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Subscribe(params_pb2.SubscribeRequest(), timeout=0.3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: client.info().subscribers == 0, what="expired subscriber to go")
    channel.close()


def test_subscriber_limit_keeps_publish_working():
    running = start_params_server(max_subscribers=1)
    try:
        with ParamsClient(running.address, timeout_s=TIMEOUT_S) as client:
            first = client.subscribe()
            wait_until(lambda: client.info().subscribers == 1, what="subscriber to register")
            channel, stub = raw_stub(running.address)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Subscribe(params_pb2.SubscribeRequest(), timeout=TIMEOUT_S))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "subscriber limit 1" in err.value.details()
            assert client.publish(model(1, big=256)) == 1
            assert first.wait_for_version(1, TIMEOUT_S).version == 1
            channel.close()
    finally:
        running.stop(0)


def test_subscription_stops_on_a_refused_call(server):
    # A subscriber asking a server that does not speak Parameters cannot succeed by retrying.
    from distrl.wire import start_server

    other = start_server(register=[], service_names=[])
    try:
        with ParamsClient(other.address) as client:
            subscription = client.subscribe()
            with pytest.raises(ParamsSubscriptionError, match="UNIMPLEMENTED"):
                subscription.wait_for_version(1, timeout=TIMEOUT_S)
    finally:
        other.stop(0)


# -- fetch, info, versions ------------------------------------------------------------------------


def test_fetch_returns_the_current_version(client):
    with pytest.raises(grpc.RpcError) as err:
        client.fetch()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    tensors = model(1)
    client.publish(tensors, metadata={"algo": "sac"})
    got = client.fetch()
    assert got.version == 1
    assert got.metadata == {"algo": "sac"}
    assert_same(tensors, got.tensors)
    with pytest.raises(grpc.RpcError) as err:
        client.fetch(min_version=2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "older than min_version 2" in err.value.details()


def test_versions_only_grow(client):
    tensors = model(0, big=256)
    assert client.publish(tensors) == 1
    assert client.publish(tensors) == 2
    assert client.publish(tensors, version=10) == 10
    for stale in (10, 3):
        with pytest.raises(grpc.RpcError) as err:
            client.publish(tensors, version=stale)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"version {stale} is not newer than the current version 10" in err.value.details()
    assert client.publish(tensors) == 11
    info = client.info()
    assert info.version == 11
    assert info.publishes == 4
    assert info.names == list(tensors)
    assert info.num_tensors == len(tensors)
    assert info.num_bytes == sum(a.nbytes for a in tensors.values())


def _chunks(version: int = 0, **arrays: np.ndarray) -> list[params_pb2.ParamChunk]:
    return list(iter_chunks(version, prepare_tensors(arrays), chunk_bytes=16))


def _malformed_streams() -> dict[str, list[params_pb2.ParamChunk]]:
    f32 = tensor_pb2.FLOAT32
    good = _chunks(w=np.arange(12, dtype=np.float32), b=np.ones(3, dtype=np.float32))
    no_end = [params_pb2.ParamChunk.FromString(c.SerializeToString()) for c in good]
    no_end[-1].end_of_version = False
    swapped = list(good)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    mixed_versions = _chunks(5, w=np.arange(12, dtype=np.float32))
    mixed_versions[-1].version = 6
    return {
        "too few bytes": [
            params_pb2.ParamChunk(name="w", dtype=f32, shape=[4], data=b"\0" * 12, end_of_version=True)
        ],
        "too many bytes": [
            params_pb2.ParamChunk(name="w", dtype=f32, shape=[4], data=b"\0" * 20, end_of_version=True)
        ],
        "missing end_of_version": no_end,
        "offsets out of order": swapped,
        "chunk over 4 MiB": [
            params_pb2.ParamChunk(
                name="w",
                dtype=f32,
                shape=[2**20 + 1024],
                data=b"\0" * (4 * 2**20 + 4096),
                end_of_version=True,
            )
        ],
        "unknown dtype": [
            params_pb2.ParamChunk(name="w", dtype=0, shape=[1], data=b"\0", end_of_version=True)
        ],
        "tensor split apart": good[:1] + _chunks(x=np.ones(1, dtype=np.float32))[:1] + good[1:],
        "chunk after end_of_version": [*good, good[-1]],
        "version changes": mixed_versions,
        "no name": [params_pb2.ParamChunk(dtype=f32, shape=[1], data=b"\0" * 4, end_of_version=True)],
        "empty stream": [],
        # Weight poisoning: versions no subscriber could decode, or that wedge the next publish.
        "empty tensor of impossible shape": [
            params_pb2.ParamChunk(name="w", dtype=f32, shape=[2**62, 2**62, 0], end_of_version=True)
        ],
        "70 dimensions": [
            params_pb2.ParamChunk(name="w", dtype=f32, shape=[1] * 70, data=b"\0" * 4, end_of_version=True)
        ],
        "version INT64_MAX": [
            params_pb2.ParamChunk(
                name="w", dtype=f32, shape=[1], data=b"\0" * 4, version=2**63 - 1, end_of_version=True
            )
        ],
        "updates not a number": [
            params_pb2.ParamChunk(
                name="w", dtype=f32, shape=[1], data=b"\0" * 4, metadata={"updates": "x"}, end_of_version=True
            )
        ],
        "too many tensors": [
            params_pb2.ParamChunk(name=f"t{i}", dtype=f32, shape=[0], end_of_version=i == 16384)
            for i in range(16385)
        ],
    }


@pytest.mark.parametrize("case", sorted(_malformed_streams()))
def test_malformed_publish_is_rejected_and_current_version_kept(server, client, case):
    tensors = model(1, big=256)
    client.publish(tensors)
    channel, stub = raw_stub(server.address)
    with pytest.raises(grpc.RpcError) as err:
        stub.Publish(iter(_malformed_streams()[case]), timeout=TIMEOUT_S)
    channel.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith("publish rejected:")
    current = client.fetch()
    assert current.version == 1
    assert_same(tensors, current.tensors)
    assert client.info().publishes == 1


def test_client_rejects_unsendable_input(client):
    with pytest.raises(ValueError, match="empty"):
        client.publish({})
    with pytest.raises(TypeError, match="tensor 'z'"):
        client.publish({"z": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(ValueError, match="version"):
        client.publish({"w": np.zeros(2)}, version=0)
    with pytest.raises(TypeError, match="metadata"):
        client.publish({"w": np.zeros(2)}, metadata={"n": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="metadata"):
        client.publish({"w": np.zeros(2)}, metadata={"big": "x" * MAX_MESSAGE_BYTES})
    assert client.info().publishes == 0


def test_concurrent_publishers_get_distinct_growing_versions(client):
    results: list[int] = []
    lock = threading.Lock()

    def publish() -> None:
        for _ in range(5):
            v = client.publish(model(0, big=1024))
            with lock:
                results.append(v)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 21))


# -- named parameter sets -------------------------------------------------------------------------


def barrier(step: int) -> dict[str, np.ndarray]:
    """A small set unlike `model`, so a version from the wrong set cannot pass as this one."""
    return {"alpha": np.full((4, 3), step, dtype=np.float64), "centers": np.arange(6, dtype=np.int32) + step}


def test_sets_are_published_with_independent_versions(client):
    policy, base = model(1, big=1024), model(99, big=4096)
    assert client.publish(policy, metadata={UPDATES_KEY: "10"}) == 1
    assert client.publish(policy) == 2
    # A new set starts its own sequence, whatever the other sets' versions are.
    assert client.publish(base, param_set="base") == 1
    assert client.publish(policy, version=10) == 10
    assert client.publish(barrier(3), param_set="barrier", version=3) == 3
    assert client.publish(barrier(4), param_set="barrier") == 4

    got = client.fetch(param_set="base")
    assert (got.version, got.param_set) == (1, "base")
    assert_same(base, got.tensors)
    got = client.fetch()
    assert (got.version, got.param_set) == (10, DEFAULT_PARAM_SET)
    assert_same(policy, got.tensors)
    got = client.fetch(min_version=4, param_set="barrier")
    assert (got.version, got.param_set) == (4, "barrier")
    assert_same(barrier(4), got.tensors)

    info = client.info(param_set="base")
    assert (info.param_set, info.version, info.publishes) == ("base", 1, 1)
    assert info.names == list(base)
    assert info.num_bytes == sum(a.nbytes for a in base.values())
    assert info.sets == ["barrier", "base", "policy"]
    info = client.info()
    assert (info.param_set, info.version, info.publishes) == ("policy", 10, 3)
    assert info.sets == ["barrier", "base", "policy"]


def test_each_subscription_receives_only_its_set(server, client):
    base_sub = client.subscribe(param_set="base")
    policy_sub = client.subscribe()
    channel, stub = raw_stub(server.address)
    raw_base = stub.Subscribe(params_pb2.SubscribeRequest(param_set="base"), timeout=TIMEOUT_S)
    wait_until(lambda: client.info("base").subscribers == 2, what="base subscribers to register")
    assert client.info().subscribers == 1

    client.publish(model(1, big=1024))
    client.publish(model(50, big=4096), param_set="base")
    client.publish(model(2, big=1024))
    client.publish(model(3, big=1024))
    client.publish(model(51, big=4096), param_set="base", version=7)

    got = policy_sub.wait_for_version(3, TIMEOUT_S)
    assert (got.version, got.param_set) == (3, "policy")
    assert_same(model(3, big=1024), got.tensors)
    got = base_sub.wait_for_version(7, TIMEOUT_S)
    assert (got.version, got.param_set) == (7, "base")
    assert_same(model(51, big=4096), got.tensors)

    # The raw base stream saw base versions only, each whole and labelled with its set.
    versions = read_versions(raw_base, 2)
    assert [v.version for v in versions] == [1, 7]
    assert {c.param_set for v in versions for c in v.chunks} == {"base"}
    assert_same(model(50, big=4096), versions[0].tensors())
    raw_base.cancel()
    channel.close()


def test_a_stale_version_of_one_set_leaves_the_others_alone(client):
    client.publish(model(1, big=256), version=5)
    client.publish(barrier(3), param_set="barrier", version=3)
    for stale in (3, 2):
        with pytest.raises(grpc.RpcError) as err:
            client.publish(barrier(stale), param_set="barrier", version=stale)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details()
        assert (
            f"version {stale} is not newer than the current version 3 of parameter set 'barrier'" in details
        )
    with pytest.raises(grpc.RpcError) as err:
        client.publish(model(2, big=256), version=5)
    assert "current version 5 of parameter set 'policy'" in err.value.details()

    # Neither refusal touched either set, and each still takes its own next versions.
    assert client.fetch(param_set="barrier").version == 3
    assert client.fetch().version == 5
    assert client.publish(barrier(4), param_set="barrier", version=4) == 4  # below policy's 5: fine
    assert client.publish(model(3, big=256)) == 6
    assert client.info("barrier").publishes == 2
    assert client.info().publishes == 2


@pytest.mark.parametrize("name", ["has space", "a/b", "x" * 65, "ünï", "policy\n"])
def test_bad_set_names_are_rejected_by_name(server, client, name):
    shown = repr(name[:40])
    with pytest.raises(ValueError, match="parameter set name"):
        client.publish(model(1, big=256), param_set=name)
    for call in (
        lambda: client.fetch(param_set=name),
        lambda: client.info(param_set=name),
        lambda: client.subscribe(param_set=name),
    ):
        with pytest.raises(ValueError, match="parameter set name"):
            call()

    # A client that skips the checks is refused by the server, naming the set.
    channel, stub = raw_stub(server.address)
    chunks = list(iter_chunks(0, prepare_tensors(barrier(1)), param_set=name))
    calls = {
        "Publish": lambda: stub.Publish(iter(chunks), timeout=TIMEOUT_S),
        "Fetch": lambda: list(stub.Fetch(params_pb2.FetchRequest(param_set=name), timeout=TIMEOUT_S)),
        "Subscribe": lambda: list(
            stub.Subscribe(params_pb2.SubscribeRequest(param_set=name), timeout=TIMEOUT_S)
        ),
        "Info": lambda: stub.Info(params_pb2.ParamsInfoRequest(param_set=name), timeout=TIMEOUT_S),
    }
    for rpc, call in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
        assert f"parameter set name {shown}" in err.value.details(), rpc
    channel.close()
    assert client.info().sets == []


def test_a_publish_naming_two_sets_is_rejected(server, client):
    client.publish(barrier(1), param_set="barrier")
    chunks = _chunks(w=np.arange(12, dtype=np.float32), b=np.ones(3, dtype=np.float32))
    for chunk in chunks:
        chunk.param_set = "base" if chunk.name == "b" else "barrier"
    channel, stub = raw_stub(server.address)
    with pytest.raises(grpc.RpcError) as err:
        stub.Publish(iter(chunks), timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert details.startswith("publish rejected:")
    assert "parameter set 'base' inside a version of set 'barrier'" in details
    assert client.info().sets == ["barrier"]
    assert client.fetch(param_set="barrier").version == 1

    # The empty name is the default set, so "" and "policy" in one publish are one set.
    chunks = _chunks(w=np.arange(12, dtype=np.float32))
    chunks[-1].param_set = DEFAULT_PARAM_SET
    assert stub.Publish(iter(chunks), timeout=TIMEOUT_S).version == 1
    channel.close()
    assert client.info().sets == ["barrier", "policy"]


def test_a_set_never_published_is_not_found_but_can_be_waited_for(client):
    client.publish(model(1, big=256))
    with pytest.raises(grpc.RpcError) as err:
        client.fetch(param_set="barrier")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "parameter set 'barrier' has been published" in err.value.details()
    assert "sets held: policy" in err.value.details()
    info = client.info("barrier")
    assert (info.param_set, info.version, info.publishes, info.names) == ("barrier", 0, 0, [])

    subscription = client.subscribe(param_set="barrier")
    wait_until(lambda: client.info("barrier").subscribers == 1, what="barrier subscriber to register")
    # Waiting on a set does not make the server hold it.
    assert client.info().sets == ["policy"]
    with pytest.raises(TimeoutError):
        subscription.wait_for_version(1, timeout=0.3)
    client.publish(model(2, big=256))
    assert subscription.latest() is None
    client.publish(barrier(5), param_set="barrier", version=5)
    got = subscription.wait_for_version(5, TIMEOUT_S)
    assert (got.version, got.param_set) == (5, "barrier")
    assert_same(barrier(5), got.tensors)
    subscription.close()
    wait_until(lambda: client.info("barrier").subscribers == 0, what="barrier subscriber to go")
    assert client.info().sets == ["barrier", "policy"]


def test_the_number_of_sets_is_limited():
    running = start_params_server(max_sets=2)
    try:
        with ParamsClient(running.address, timeout_s=TIMEOUT_S) as client:
            client.publish(barrier(1))
            client.publish(barrier(1), param_set="base")
            with pytest.raises(grpc.RpcError) as err:
                client.publish(barrier(1), param_set="barrier")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = err.value.details()
            assert "'barrier'" in details and "limit of 2" in details and "--max-sets" in details
            # The sets already held keep taking versions.
            assert client.publish(barrier(2), param_set="base") == 2
            assert client.publish(barrier(2)) == 2
            assert client.info().sets == ["base", "policy"]
    finally:
        running.stop(0)


def test_callers_that_name_no_set_use_the_default_set(server, client):
    client.publish(barrier(9), param_set="base", version=9)
    channel, stub = raw_stub(server.address)
    # A publisher from before sets: no set on its chunks.
    chunks = list(iter_chunks(0, prepare_tensors(barrier(1))))
    assert {c.param_set for c in chunks} == {""}
    assert stub.Publish(iter(chunks), timeout=TIMEOUT_S).version == 1
    got = client.fetch(param_set=DEFAULT_PARAM_SET)
    assert (got.version, got.param_set) == (1, "policy")
    assert_same(barrier(1), got.tensors)

    client.publish(barrier(2), metadata={UPDATES_KEY: "200"})
    (fetched,) = read_versions(stub.Fetch(params_pb2.FetchRequest(), timeout=TIMEOUT_S), 1)
    assert (fetched.version, fetched.param_set, fetched.metadata) == (2, "policy", {"updates": "200"})
    assert_same(barrier(2), fetched.tensors())
    stream = stub.Subscribe(params_pb2.SubscribeRequest(after_version=1), timeout=TIMEOUT_S)
    assert [v.version for v in read_versions(stream, 1)] == [2]
    stream.cancel()
    info = stub.Info(params_pb2.ParamsInfoRequest(), timeout=TIMEOUT_S)
    assert (info.param_set, info.version, list(info.sets)) == ("policy", 2, ["base", "policy"])
    channel.close()


def test_a_set_subscription_resumes_after_its_own_newest_version():
    first = start_params_server()
    port = first.port
    client = ParamsClient(first.address, timeout_s=TIMEOUT_S)
    subscription = client.subscribe(param_set="barrier", initial_backoff_s=0.05, max_backoff_s=0.5)
    try:
        client.publish(model(1, big=256), version=50)
        client.publish(barrier(3), param_set="barrier", version=3)
        assert subscription.wait_for_version(3, TIMEOUT_S).version == 3
        first.stop(0)
        second = start_params_server(port=port)
        try:
            with ParamsClient(second.address, timeout_s=TIMEOUT_S) as learner:
                learner.publish(model(2, big=256), version=51)
                learner.publish(barrier(4), param_set="barrier", version=4)
            # Resuming after the policy's 50 instead of the barrier's 3 would never see 4.
            got = subscription.wait_for_version(4, TIMEOUT_S)
            assert (got.version, got.param_set) == (4, "barrier")
            assert_same(barrier(4), got.tensors)
        finally:
            second.stop(0)
    finally:
        client.close()


# -- command line ---------------------------------------------------------------------------------


def _read_line(stream, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise AssertionError(f"no line within {timeout}s")
    return box[0]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distrl.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_serve_params_command_runs_reports_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distrl.cli", "serve", "params", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = _read_line(proc.stdout, 60)
        if not line.startswith("listening on "):
            proc.kill()
            pytest.fail(f"expected 'listening on HOST:PORT', got {line!r}; stderr:\n{proc.stderr.read()}")
        address = line.split()[-1]
        channel = open_channel(address)
        assert check_health(channel) == "SERVING"
        assert check_health(channel, "distrl.v1.Parameters") == "SERVING"
        channel.close()

        with ParamsClient(address) as client:
            client.publish({"w": np.ones((2, 3), dtype=np.float32)}, version=4)
            client.publish({"alpha": np.ones(5, dtype=np.float64)}, param_set="barrier")
        out = _cli("params", "info", address, "--json")
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["version"] == 4
        assert info["names"] == ["w"]
        assert info["num_bytes"] == 24
        assert info["param_set"] == "policy"
        assert info["sets"] == ["barrier", "policy"]
        human = _cli("params", "info", address)
        assert human.returncode == 0, human.stderr
        assert "version      4" in human.stdout
        human = _cli("params", "info", address, "--set", "barrier")
        assert human.returncode == 0, human.stderr
        assert "set          barrier" in human.stdout
        assert "version      1" in human.stdout
        assert "names        alpha" in human.stdout
        assert "sets         barrier, policy" in human.stdout
        bad = _cli("params", "info", address, "--set", "no good")
        assert bad.returncode == 2
        assert "'no good'" in bad.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_params_info_names_an_unreachable_server():
    out = _cli("params", "info", "127.0.0.1:1", "--timeout-s", "1")
    assert out.returncode == 1
    assert "127.0.0.1:1" in out.stderr
    assert "UNAVAILABLE" in out.stderr or "DEADLINE_EXCEEDED" in out.stderr


def test_a_subscriber_skips_a_version_no_array_can_hold_and_takes_the_next():
    # A peer that is not a checking params server (an older one, or a hostile one) sends a version
    # of 70 dimensions, then a good one, on one stream: the subscription skips the first and
    # delivers the second instead of stopping for good.
    from distrl.params.server import SERVICE_NAME
    from distrl.wire import start_server

    good = _chunks(2, w=np.arange(3, dtype=np.float32))
    bad = params_pb2.ParamChunk(
        name="w", dtype=tensor_pb2.FLOAT32, shape=[1] * 70, data=b"\0" * 4, version=1, end_of_version=True
    )

    async def subscribe(request, context):
        for chunk in [bad, *good]:
            await context.write(chunk.SerializeToString())
        await asyncio.sleep(TIMEOUT_S)

    def register(server):
        handler = grpc.unary_stream_rpc_method_handler(
            subscribe, request_deserializer=params_pb2.SubscribeRequest.FromString
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Subscribe": handler}),)
        )

    peer = start_server([register], [])
    try:
        with ParamsClient(peer.address) as client:
            subscription = client.subscribe()
            version = subscription.wait_for_version(2, timeout=TIMEOUT_S)
            assert version.version == 2
            np.testing.assert_array_equal(version.tensors["w"], np.arange(3, dtype=np.float32))
            assert subscription.skipped_versions == 1
    finally:
        peer.stop(0)


def test_updates_metadata_that_is_not_a_number_falls_back_to_the_version():
    from distrl.params.names import updates_of

    assert updates_of({"updates": "120"}, 7) == 120
    for junk in ("x", "-3", "1e9", "9" * 40, ""):
        assert updates_of({"updates": junk}, 7) == 7
    assert updates_of({}, 7) == 7


def _stalled_publish(stub, first: params_pb2.ParamChunk, release: threading.Event):
    """A Publish that sends its first chunk, then nothing until `release` is set."""

    def chunks():
        yield first
        release.wait(30)

    return stub.Publish.future(chunks(), timeout=30)


def test_a_stalled_publish_is_ended_and_the_publishers_limit_holds():
    running = start_params_server(publish_idle_s=1.0, max_publishers=2)
    release = threading.Event()
    channel, stub = raw_stub(running.address)
    try:
        with ParamsClient(running.address, timeout_s=TIMEOUT_S) as client:
            assert client.publish({"w": np.zeros(64, dtype=np.float32)}) == 1
            first = _chunks(0, w=np.ones(64, dtype=np.float32))[0]
            stalled = [_stalled_publish(stub, first, release) for _ in range(2)]
            wait_until(lambda: running.params._publishers == 2, what="two publishes in progress")
            # A third publisher is refused while two hold their slots ...
            with pytest.raises(grpc.RpcError) as err:
                client.publish({"w": np.zeros(64, dtype=np.float32)})
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-publishers" in err.value.details()
            # ... until the idle timeout ends the stalled ones, dropping their partial versions.
            for call in stalled:
                with pytest.raises(grpc.RpcError) as err:
                    call.result(timeout=10)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "publish stalled: no chunk for 1s" in err.value.details()
            assert client.info().version == 1
            assert client.publish({"w": np.full(64, 2.0, dtype=np.float32)}) == 2
            assert client.fetch().tensors["w"][0] == 2.0
    finally:
        release.set()
        channel.close()
        running.stop(0)
