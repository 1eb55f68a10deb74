"""Sending a fuzzed call to a real server and judging what came back.

A `FuzzTarget` is one decode path (replay Insert, UpdatePriorities, params Publish,
telemetry Report) on the `FuzzServers` process. `FuzzRun.run` sends one `Stream` and
returns an `Outcome` whose `problem` says which property it broke, if any:

- the server process lives on;
- a refusal has a client-error status code and details that name the problem (never
  UNKNOWN/INTERNAL or gRPC's generic "Exception ..." text);
- a refusal leaves every server's accepted state as it was (the shard may count it);
- an accepted call did what its response says (per target: `check_accepted`);
- the process's RSS stays within `RSS_BOUND_BYTES` of where it started.

`FuzzRun.check_still_serving` sends each target's valid request.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import hypothesis
import numpy as np
from fuzz_servers import INSERT_TABLE, PRIO_TABLE, REFUSAL_COUNTERS, FuzzServers, valid_columns
from fuzz_strategies import Stream
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy

from distrl.params.chunks import iter_chunks, prepare_tensors
from distrl.params.client import ParamsClient
from distrl.params.names import resolve_param_set, updates_of
from distrl.proto.v1 import params_pb2, replay_pb2, replay_pb2_grpc, telemetry_pb2
from distrl.replay.messages import pack_transition_batch
from distrl.wire.codec import TensorDecodeError, decode

# How far the servers' resident memory may grow past where it started, at any point of a run:
# room for the largest allocation one message may cause (a 64 MiB decompressed tensor), twice.
RSS_BOUND_BYTES = 256 * 1024 * 1024
CALL_TIMEOUT_S = 20.0
# Refusals a client can act on: its message was wrong, or a limit was reached.
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
# What gRPC says when a handler or (de)serializer raised instead of refusing, or when the refusal's
# details were too long for a header (RESOURCE_EXHAUSTED "Stream removed (received metadata size ...").
GENERIC_DETAILS = ("Exception ", "Unexpected ", "Error in ", "Stream removed", "Socket closed")


@dataclass
class Outcome:
    code: str  # "OK" or the status code's name
    details: str
    problem: str | None  # the property this example broke; None when it held
    how: str


@dataclass
class Refusal:
    code: grpc.StatusCode
    details: str


@dataclass
class FuzzTarget:
    """One decode path: the gRPC method, and what an accepted call must have done."""

    name: str
    server: str  # key of FuzzServers.addresses
    method: str
    streaming: bool  # client streaming
    response_type: Any
    # (messages, response, state before, state after, server addresses) -> problem or None
    check_accepted: Callable[[list[Any], Any, dict, dict, dict[str, str]], str | None]
    parse: Callable[[bytes], Any]
    valid_request: Callable[[], list[bytes]]
    server_streaming: bool = False


@dataclass
class Tally:
    """What a run of examples did, per target (benchmarks/fuzz.py reports it)."""

    examples: int = 0
    accepted: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.examples += 1
        if outcome.code == "OK":
            self.accepted += 1
        else:
            self.refused[outcome.code] += 1
        if outcome.problem is not None:
            self.problems.append(f"{outcome.how}: {outcome.problem}")


class FuzzRun:
    """Examples against one `FuzzServers` process, each judged against the state before it."""

    def __init__(self, servers: FuzzServers) -> None:
        self.servers = servers
        self._channels = {name: grpc.insecure_channel(address) for name, address in servers.addresses.items()}
        self._state = servers.state()
        self.targets = {t.name: t for t in _targets()}

    def refresh(self) -> None:
        """Take the servers' state as it is now (after calls made outside `run`)."""
        self._state = self.servers.state()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def run(self, target_name: str, stream: Stream) -> Outcome:
        target = self.targets[target_name]
        before = self._state
        result = self._call(target, list(stream.messages))
        if not self.servers.alive():
            return Outcome("DEAD", "", f"the server process died: {self.servers.why_dead()}", stream.how)
        after = self._state = self.servers.state()
        if isinstance(result, Refusal):
            outcome = Outcome(result.code.name, result.details, None, stream.how)
            outcome.problem = _refusal_problem(result) or _changed(before, after)
        else:
            outcome = Outcome("OK", "", None, stream.how)
            outcome.problem = self._check_accepted(target, stream.messages, result, before, after)
            self._state = self.servers.state()  # the check may have sampled or fetched
        memory = self.servers.memory()
        limit = self.servers.start_memory.rss + RSS_BOUND_BYTES
        if outcome.problem is None and max(memory.rss, memory.peak) > limit:
            outcome.problem = (
                f"server RSS {memory.rss >> 20} MiB (peak {memory.peak >> 20} MiB) is past the bound of "
                f"{limit >> 20} MiB (start {self.servers.start_memory.rss >> 20} MiB "
                f"+ {RSS_BOUND_BYTES >> 20})"
            )
        return outcome

    def check_still_serving(self, target_name: str) -> str | None:
        """Send the target's valid request; a problem when it is not accepted as such."""
        target = self.targets[target_name]
        messages = target.valid_request()
        before = self._state
        result = self._call(target, messages)
        after = self._state = self.servers.state()
        if isinstance(result, Refusal):
            return f"a valid {target_name} request was refused: {result.code.name}: {result.details}"
        problem = self._check_accepted(target, messages, result, before, after)
        self._state = self.servers.state()
        return problem

    def _check_accepted(self, target: FuzzTarget, raw: list[bytes], response, before, after) -> str | None:
        try:
            messages = [target.parse(m) for m in raw]
        except Exception as exc:
            return f"accepted a message that does not parse: {exc}"
        return target.check_accepted(messages, response, before, after, self.servers.addresses)

    def _call(self, target: FuzzTarget, messages: list[bytes]) -> Any:
        channel = self._channels[target.server]
        decode_response = target.response_type.FromString
        try:
            if target.streaming and target.server_streaming:
                call = channel.stream_stream(target.method, response_deserializer=decode_response)
                return list(call(iter(messages), timeout=CALL_TIMEOUT_S))
            if target.streaming:
                call = channel.stream_unary(target.method, response_deserializer=decode_response)
                return call(iter(messages), timeout=CALL_TIMEOUT_S)
            call = channel.unary_unary(target.method, response_deserializer=decode_response)
            return call(messages[0], timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return Refusal(exc.code(), exc.details() or "")


def fuzz(
    run: FuzzRun,
    target: str,
    streams: SearchStrategy,
    max_examples: int,
    tally: Tally,
    *,
    seed: int | None = None,
    fail_fast: bool = True,
    on_example: Callable[[Outcome], None] | None = None,
) -> None:
    """Run `max_examples` streams drawn from `streams` against `target`.

    Without `seed` the examples are the same on every run (CI). `fail_fast` asserts every
    property on every example (hypothesis then shrinks to the smallest failing one); without
    it the problems are only tallied, and the run goes on.
    """

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink] if fail_fast else [Phase.generate],
    )
    @given(streams)
    def examples(stream) -> None:
        outcome = run.run(target, stream)
        tally.add(outcome)
        if on_example is not None:
            on_example(outcome)
        if outcome.code == "DEAD":
            raise ServersDied(outcome.problem)
        if fail_fast:
            assert outcome.problem is None, f"{outcome.how}: {outcome.code}: {outcome.problem}"

    if seed is not None:
        examples = hypothesis.seed(seed)(examples)
    examples()


class ServersDied(RuntimeError):
    """The server process died: no later example can tell anything."""


def _refusal_problem(refusal: Refusal) -> str | None:
    if refusal.code not in CLIENT_ERRORS:
        return f"refused with {refusal.code.name} (not a client error): {refusal.details!r}"
    if not refusal.details.strip():
        return f"refused with {refusal.code.name} and no details"
    if refusal.details.startswith(GENERIC_DETAILS):
        return f"refused with {refusal.code.name} but gRPC's generic details: {refusal.details!r}"
    return None


def _changed(before: dict, after: dict, allowed: frozenset[str] = REFUSAL_COUNTERS) -> str | None:
    """Which part of the accepted state differs (ignoring the counters a refusal may move)."""
    before, after = _without_counters(before, allowed), _without_counters(after, allowed)
    for server in before:
        for key in sorted(set(before[server]) | set(after[server])):
            if before[server].get(key) != after[server].get(key):
                old = json.dumps(before[server].get(key), sort_keys=True)[:300]
                new = json.dumps(after[server].get(key), sort_keys=True)[:300]
                return f"state changed after a refusal: {server}.{key}: {old} -> {new}"
    return None


def _without_counters(state: dict, allowed: frozenset[str]) -> dict:
    if "replay" not in state:
        return state
    replay = {
        name: {**table, "counters": {k: v for k, v in table["counters"].items() if k not in allowed}}
        for name, table in state["replay"].items()
    }
    return {**state, "replay": replay}


def _only_changed(before: dict, after: dict, server: str, key: str | None = None) -> str | None:
    """A problem unless every other server's (and, with `key`, every other table's) state is as it was."""
    for other in before:
        if other == server:
            continue
        problem = _changed({other: before[other]}, {other: after[other]}, frozenset())
        if problem:
            return f"accepted by {server} but {problem.removeprefix('state changed after a refusal: ')}"
    if key is not None:
        for name in before[server]:
            if name != key and before[server][name] != after[server].get(name):
                return f"accepted for {key!r} but {server}.{name} changed"
    return None


# -- per target ---------------------------------------------------------------------------------------


def _insert_accepted(messages, acks, before, after, addresses) -> str | None:
    (msg,) = messages
    table = msg.table or INSERT_TABLE
    if len(acks) != 1:
        return f"{len(acks)} acks for one batch"
    ack = acks[0]
    if (ack.actor_id, ack.sequence) != (msg.actor_id, msg.sequence):
        return f"ack for {ack.actor_id!r}/{ack.sequence}, sent {msg.actor_id!r}/{msg.sequence}"
    old, new = before["replay"][table], after["replay"][table]
    if ack.table_size != new["size"]:
        return f"ack says table size {ack.table_size}, the table holds {new['size']}"
    counter = "inserted_batches" if ack.stored else "duplicate_batches"
    if new["counters"][counter] != old["counters"][counter] + 1:
        return (
            f"stored={ack.stored} but {counter} went {old['counters'][counter]} -> {new['counters'][counter]}"
        )
    if not ack.stored and _without(old, counter) != _without(new, counter):
        return "a batch acked as a resend changed the table"
    return _only_changed(before, after, "replay", table)


def _without(table: dict, counter: str) -> dict:
    """A table's state less one of its counters."""
    return {**table, "counters": {k: v for k, v in table["counters"].items() if k != counter}}


def _priorities_accepted(messages, response, before, after, addresses) -> str | None:
    (msg,) = messages
    table = msg.table or INSERT_TABLE
    try:
        keys = decode(msg.keys, name="keys")
    except TensorDecodeError as exc:
        return f"accepted keys the codec refuses: {exc}"
    live = set(before["replay"][table]["keys"])
    expected = sum(int(k) in live for k in keys.astype(np.int64).reshape(-1))
    if response.updated != expected:
        return f"updated={response.updated}, but {expected} of the keys are stored"
    old, new = before["replay"][table], after["replay"][table]
    if {k: v for k, v in old.items() if k != "items"} != {k: v for k, v in new.items() if k != "items"}:
        return "a priority update changed more than priorities"
    return _only_changed(before, after, "replay", table) or _sample_problem(addresses["replay"], table)


def _sample_problem(address: str, table: str) -> str | None:
    """Whether the table still answers a Sample as it should after the priorities it took."""
    with grpc.insecure_channel(address) as channel:
        stub = replay_pb2_grpc.ReplayStub(channel)
        request = replay_pb2.SampleRequest(
            table=table, batch_size=4, num_batches=1, rate_limiter_timeout_ms=1
        )
        try:
            list(stub.Sample(request, timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "rate limiter" in (exc.details() or ""):
                return None  # an empty table: nothing to sample yet
            problem = _refusal_problem(Refusal(exc.code(), exc.details() or ""))
            if problem:
                return f"after the update, Sample was {problem}"
    return None


def _publish_accepted(messages, response, before, after, addresses) -> str | None:
    name = resolve_param_set(messages[0].param_set)
    held = after["params"].get(name)
    if held is None or held["version"] != response.version:
        return f"publish answered version {response.version}, set {name!r} holds {held}"
    previous = before["params"].get(name, {}).get("version", 0)
    if response.version <= previous:
        return f"version {response.version} accepted over version {previous}"
    with ParamsClient(addresses["params"], timeout_s=CALL_TIMEOUT_S) as client:
        try:
            version = client.fetch(param_set=name)
            updates_of(version.metadata, version.version)
        except Exception as exc:  # a version the server took must be one every subscriber can read
            return f"accepted version {response.version} of {name!r} cannot be read back: {exc!r}"
    return _only_changed(before, after, "params", name)


def _report_accepted(messages, response, before, after, addresses) -> str | None:
    values = sum(len(m.metrics) for m in messages)
    if not 0 <= response.accepted <= values:
        return f"accepted={response.accepted} of {values} values"
    return _only_changed(before, after, "telemetry")


def _valid_insert() -> list[bytes]:
    msg = pack_transition_batch(
        valid_columns(4, np.random.default_rng()), table=INSERT_TABLE, actor_id="probe", policy_version=1
    )
    msg.incarnation = np.random.default_rng().bytes(16)
    msg.sequence = 1
    return [msg.SerializeToString()]


def _valid_priorities() -> list[bytes]:
    from distrl.wire.codec import encode

    msg = replay_pb2.UpdatePrioritiesRequest(
        table=PRIO_TABLE, keys=encode(np.arange(4)), priorities=encode(np.full(4, 2.0))
    )
    return [msg.SerializeToString()]


def _valid_publish() -> list[bytes]:
    tensors = prepare_tensors({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    return [c.SerializeToString() for c in iter_chunks(0, tensors, {"updates": "1"}, param_set="probe")]


def _valid_report() -> list[bytes]:
    batch = telemetry_pb2.MetricBatch(
        source="probe/0", env_steps=1, metrics=[telemetry_pb2.Metric(name="loss", value=0.5)]
    )
    return [batch.SerializeToString()]


def _targets() -> list[FuzzTarget]:
    return [
        FuzzTarget(
            "insert", "replay", "/distrl.v1.Replay/Insert", True, replay_pb2.InsertAck,
            _insert_accepted, replay_pb2.TransitionBatch.FromString, _valid_insert, server_streaming=True,
        ),
        FuzzTarget(
            "priorities", "replay", "/distrl.v1.Replay/UpdatePriorities", False,
            replay_pb2.UpdatePrioritiesResponse, _priorities_accepted,
            replay_pb2.UpdatePrioritiesRequest.FromString, _valid_priorities,
        ),
        FuzzTarget(
            "publish", "params", "/distrl.v1.Parameters/Publish", True, params_pb2.PublishResponse,
            _publish_accepted, params_pb2.ParamChunk.FromString, _valid_publish,
        ),
        FuzzTarget(
            "report", "telemetry", "/distrl.v1.Telemetry/Report", True, telemetry_pb2.ReportResponse,
            _report_accepted, telemetry_pb2.MetricBatch.FromString, _valid_report,
        ),
    ]  # fmt: skip
