"""Fuzzing every server's decode path: replay Insert and UpdatePriorities, params Publish, telemetry Report.

Real servers in a process of their own (tests/fuzz_servers.py), real gRPC on loopback.
For random messages and for mutated valid ones (tests/fuzz_strategies.py) the server
either accepts (and did what it answered) or refuses with a client-error code and details
that name the problem, its accepted state unchanged; it never dies, and its memory stays
within a bound (tests/fuzz_targets.py). The examples are the same on every run; the long
run is `benchmarks/fuzz.py`.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fuzz_servers import INSERT_TABLE, FuzzServers, valid_columns
from fuzz_strategies import MUTATED, RANDOM, Stream
from fuzz_targets import RSS_BOUND_BYTES, FuzzRun, Outcome, Tally, fuzz

from distrl.params.names import MAX_VERSION
from distrl.proto.v1 import params_pb2, replay_pb2, tensor_pb2
from distrl.replay.messages import encode_transition_batch, pack_transition_batch
from distrl.wire.codec import encode
from distrl.wire.requests import MAX_DETAILS

EXAMPLES = 100
TARGETS = ("insert", "priorities", "publish", "report")


@pytest.fixture(scope="module")
def fuzz_run():
    servers = FuzzServers()
    run = FuzzRun(servers)
    try:
        yield run
    finally:
        run.close()
        servers.stop()


# -- the bugs the properties found, one at a time (first, on fresh servers) ----------------------------


def _send(fuzz_run: FuzzRun, target: str, *messages) -> Outcome:
    """One call through the same checks as every fuzzed example; it must break no property."""
    raw = tuple(m if isinstance(m, bytes) else m.SerializeToString() for m in messages)
    outcome = fuzz_run.run(target, Stream(raw, "regression"))
    assert outcome.problem is None, outcome.problem
    return outcome


@pytest.mark.parametrize(
    ("target", "text_field"), [("insert", 1), ("priorities", 1), ("publish", 2), ("report", 1)]
)
@pytest.mark.parametrize("damage", ["bad utf-8", "cut field", "cut varint"])
def test_bytes_that_do_not_parse_are_invalid_argument_naming_the_message(
    fuzz_run, target, text_field, damage
):
    payload = {
        "bad utf-8": bytes([text_field << 3 | 2, 2, 0xFF, 0xFE]),  # a string field that is not UTF-8
        "cut field": b"\x0a\x50abc",  # 80 bytes announced, 3 sent
        "cut varint": b"\x08\x80",
    }[damage]
    outcome = _send(fuzz_run, target, payload)
    assert outcome.code == "INVALID_ARGUMENT"
    assert "is not a valid distrl.v1." in outcome.details


def _valid_insert(sequence: int) -> replay_pb2.TransitionBatch:
    msg = pack_transition_batch(
        valid_columns(3, np.random.default_rng(sequence)),
        table=INSERT_TABLE,
        actor_id="regress",
        policy_version=0,
    )
    msg.incarnation, msg.sequence = b"r" * 16, sequence
    return msg


def test_an_insert_stream_refuses_bytes_that_do_not_parse_after_storing_the_valid_batches(fuzz_run):
    good = _valid_insert(1)
    with grpc.insecure_channel(fuzz_run.servers.addresses["replay"]) as channel:
        insert = channel.stream_stream(
            "/distrl.v1.Replay/Insert", response_deserializer=replay_pb2.InsertAck.FromString
        )
        acks = []
        with pytest.raises(grpc.RpcError) as err:
            for ack in insert(iter([good.SerializeToString(), _valid_insert(2).SerializeToString()[:-7]])):
                acks.append(ack)
    fuzz_run.refresh()  # batch 1 was stored
    assert [(a.sequence, a.stored) for a in acks] == [(1, True)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid distrl.v1.TransitionBatch" in err.value.details()


def test_a_rejected_field_name_that_is_no_header_value_is_escaped_not_internal(fuzz_run):
    # The shard names the rejected field in trailing metadata, which must be printable ASCII.
    columns = {**valid_columns(3, np.random.default_rng(3)), "é\n" + "x" * 300: np.zeros(3, np.float32)}
    msg = encode_transition_batch(columns, table=INSERT_TABLE, actor_id="regress", policy_version=0)
    msg.incarnation, msg.sequence = b"r" * 16, 3
    outcome = _send(fuzz_run, "insert", msg)
    assert outcome.code == "INVALID_ARGUMENT" and "not in the table spec" in outcome.details


def test_a_refusal_naming_a_huge_field_name_fits_in_a_header(fuzz_run):
    # Uncut, the details would pass gRPC's header limit: RESOURCE_EXHAUSTED "Stream removed".
    columns = {**valid_columns(3, np.random.default_rng(5)), "é" * 200_000: np.zeros(3, np.float32)}
    msg = encode_transition_batch(columns, table=INSERT_TABLE, actor_id="regress", policy_version=0)
    msg.incarnation, msg.sequence = b"r" * 16, 5
    outcome = _send(fuzz_run, "insert", msg)
    assert outcome.code == "INVALID_ARGUMENT" and len(outcome.details) <= MAX_DETAILS + 3


def test_a_layout_numpy_cannot_build_is_invalid_argument(fuzz_run):
    # Empty rows pass every byte check, but no structured dtype has a 2^40-element column.
    layout = replay_pb2.RowLayout(
        row_bytes=2**42, columns=[replay_pb2.RowColumn(name="obs", dtype=tensor_pb2.FLOAT32, shape=[2**40])]
    )
    msg = _valid_insert(4)
    msg.layout.CopyFrom(layout)
    msg.rows.CopyFrom(tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=[0, 2**42]))
    outcome = _send(fuzz_run, "insert", msg)
    assert outcome.code == "INVALID_ARGUMENT" and "numpy cannot lay out these columns" in outcome.details


def test_priorities_all_zero_make_sample_a_failed_precondition(fuzz_run):
    keys = np.arange(4 * 64)
    _send(fuzz_run, "priorities", replay_pb2.UpdatePrioritiesRequest(
        table="prio", keys=encode(keys), priorities=encode(np.zeros(len(keys)))
    ))  # fmt: skip
    with grpc.insecure_channel(fuzz_run.servers.addresses["replay"]) as channel:
        sample = channel.unary_stream("/distrl.v1.Replay/Sample")
        request = replay_pb2.SampleRequest(table="prio", batch_size=4, num_batches=1)
        with pytest.raises(grpc.RpcError) as err:
            list(sample(request.SerializeToString(), timeout=10))
    fuzz_run.refresh()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "every stored item has priority 0" in err.value.details()
    _send(fuzz_run, "priorities", replay_pb2.UpdatePrioritiesRequest(
        table="prio", keys=encode(keys), priorities=encode(np.ones(len(keys)))
    ))  # fmt: skip


def test_publish_refuses_an_update_count_that_only_looks_like_digits(fuzz_run):
    chunk = params_pb2.ParamChunk(
        name="w", dtype=tensor_pb2.FLOAT32, shape=[1], data=bytes(4), end_of_version=True,
        metadata={"updates": "²"}, param_set="regress",
    )  # fmt: skip
    outcome = _send(fuzz_run, "publish", chunk)
    assert outcome.code == "INVALID_ARGUMENT" and "must be a non-negative integer" in outcome.details


def test_publish_refuses_a_version_after_the_last_one(fuzz_run):
    chunk = params_pb2.ParamChunk(
        version=MAX_VERSION, name="w", dtype=tensor_pb2.FLOAT32, shape=[1], data=bytes(4),
        end_of_version=True, param_set="regress",
    )  # fmt: skip
    assert _send(fuzz_run, "publish", chunk).code == "OK"
    chunk.version = 0  # "current + 1": a version no subscriber would take
    outcome = _send(fuzz_run, "publish", chunk)
    assert outcome.code == "OUT_OF_RANGE" and str(MAX_VERSION) in outcome.details


# -- the properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["random", "mutated"])
def test_decode_path_refuses_by_name_and_keeps_its_state(fuzz_run, target, kind):
    strategies = RANDOM if kind == "random" else MUTATED
    tally = Tally()
    fuzz(fuzz_run, target, strategies[target](), EXAMPLES, tally)
    assert tally.examples >= EXAMPLES // 2
    assert fuzz_run.check_still_serving(target) is None
    if kind == "mutated":  # valid messages with one to three changes: some still pass, most do not
        assert tally.refused, "no mutated message was refused: the mutations do not reach the decoder"


def test_memory_stayed_within_the_bound(fuzz_run):
    memory = fuzz_run.servers.memory()
    assert memory.peak <= fuzz_run.servers.start_memory.rss + RSS_BOUND_BYTES
