"""Per-role tokens: each role makes the calls it needs and is refused the rest, on real servers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from replay_helpers import start_cli_shard, stop_process

from distrl.config import TelemetryConfig
from distrl.params import ParamsClient, start_params_server
from distrl.proto.v1 import params_pb2, replay_pb2, telemetry_pb2
from distrl.replay import ReplayClient
from distrl.replay.client import ReplayClientError
from distrl.replay.config import ReplayShardConfig, TableConfig
from distrl.replay.server import serve_replay_shard
from distrl.telemetry.coordinator import Coordinator, start_coordinator_server
from distrl.wire import SecurityConfig, open_channel
from distrl.wire.roles import RoleTokensError, load_role_digests

TOKENS = {role: f"{role}-token-{i}" for i, role in enumerate(("admin", "learner", "actor", "reader"))}
DENIED = grpc.StatusCode.PERMISSION_DENIED

# What the issue asks of each role, written out here rather than read from distrl.wire.roles.
ALLOWED = {
    "actor": {"Replay/Insert", "Replay/Info", "Parameters/Subscribe", "Parameters/Fetch", "Parameters/Info",
              "Telemetry/Report"},
    "learner": {"Replay/Insert", "Replay/Sample", "Replay/GrantSamples", "Replay/UpdatePriorities",
                "Replay/Info", "Parameters/Publish", "Parameters/Subscribe", "Parameters/Fetch",
                "Parameters/Info", "Telemetry/Report"},
    "reader": {"Replay/Info", "Parameters/Info"},
}  # fmt: skip


def write_role_dir(directory: Path, digests_only: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for role, token in TOKENS.items():
        if digests_only:
            (directory / f"{role}.sha256").write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
        else:
            (directory / role).write_text(token + "\n")
    return directory


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A replay shard, a params server and a coordinator that check per-role tokens."""
    root = tmp_path_factory.mktemp("roles")
    security = SecurityConfig(role_tokens_dir=write_role_dir(root / "tokens", digests_only=True))
    shard_config = ReplayShardConfig(tables=[TableConfig(capacity=1000, min_size_to_sample=1)])
    shard, replay = serve_replay_shard(shard_config, security=security)
    params = start_params_server(security=security)
    coordinator = Coordinator(root / "run", TelemetryConfig(console=False))
    telemetry = start_coordinator_server(coordinator, port=0, security=security)
    yield {"Replay": replay.address, "Parameters": params.address, "Telemetry": telemetry.address}
    telemetry.stop(0)
    params.stop(0)
    replay.stop(0)
    shard.close(final_checkpoint=False)


def _rpc(channel: grpc.Channel, service: str, method, request_serializer):
    """A callable for `method` of `service` on `channel`, of the method's streaming kind; replies
    are left as bytes."""
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    return kinds[(method.client_streaming, method.server_streaming)](
        f"/distrl.v1.{service}/{method.name}",
        request_serializer=request_serializer,
        response_deserializer=None,
    )


def _call(address: str, service: str, method, token: str | None) -> grpc.StatusCode:
    """Call `method` with an empty request (or stream) and return the status it ends with."""
    channel = open_channel(address, SecurityConfig(token=token))
    message = _message_class(method.input_type)()
    rpc = _rpc(channel, service, method, request_serializer=lambda m: m.SerializeToString())
    request = iter([]) if method.client_streaming else message
    try:
        result = rpc(request, timeout=1.0)
        if method.server_streaming:
            for _ in result:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()


_MODULES = (replay_pb2, params_pb2, telemetry_pb2)


def _message_class(descriptor):
    for module in _MODULES:
        cls = getattr(module, descriptor.name, None)
        if cls is not None and cls.DESCRIPTOR is descriptor:
            return cls
    raise LookupError(descriptor.full_name)


def _methods():
    for module, service in ((replay_pb2, "Replay"), (params_pb2, "Parameters"), (telemetry_pb2, "Telemetry")):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            yield service, method


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_makes_its_calls_and_is_refused_the_rest(servers, role):
    allowed, refused = [], []
    for service, method in _methods():
        code = _call(servers[service], service, method, TOKENS[role])
        assert code != grpc.StatusCode.UNAUTHENTICATED, (role, method.name)
        (refused if code == DENIED else allowed).append(f"{service}/{method.name}")
    assert set(allowed) == ALLOWED[role]
    assert "Replay/Checkpoint" in refused


def test_admin_may_call_everything_and_strangers_nothing(servers):
    for service, method in _methods():
        assert _call(servers[service], service, method, TOKENS["admin"]) != DENIED, method.name
        for token in (None, "not-a-token", TOKENS["admin"] + "x"):
            assert _call(servers[service], service, method, token) == grpc.StatusCode.UNAUTHENTICATED


def test_bytes_that_do_not_parse_are_refused_by_name_on_every_call(servers):
    """Not gRPC's UNKNOWN (which a client cannot tell from a crash): INVALID_ARGUMENT naming the type."""
    garbage = b"\x0a\xff\xff\xff"  # field 1, a length past the end
    channel_for = {s: open_channel(a, SecurityConfig(token=TOKENS["admin"])) for s, a in servers.items()}
    try:
        for service, method in _methods():
            rpc = _rpc(channel_for[service], service, method, request_serializer=None)
            with pytest.raises(grpc.RpcError) as err:
                result = rpc(iter([garbage]) if method.client_streaming else garbage, timeout=5.0)
                if method.server_streaming:
                    list(result)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, err.value.details())
            assert f"is not a valid {method.input_type.full_name}" in err.value.details(), method.name
    finally:
        for channel in channel_for.values():
            channel.close()


def test_actor_token_cannot_publish_weights_or_change_priorities(servers):
    """Through the real clients: the refusals are named, and the refused publish does not land."""
    actor_security, learner_security = (SecurityConfig(token=TOKENS[r]) for r in ("actor", "learner"))
    with ParamsClient(servers["Parameters"], actor_security, timeout_s=5.0) as actor:
        with pytest.raises(grpc.RpcError) as err:
            actor.publish({"w": np.ones(4, dtype=np.float32)})
        assert err.value.code() == DENIED and "actor role may not call" in err.value.details()
    with ParamsClient(servers["Parameters"], learner_security, timeout_s=5.0) as learner:
        published = learner.info().publishes
        assert learner.publish({"w": np.ones(4, dtype=np.float32)}) >= 1
        assert learner.info().publishes == published + 1
    with ParamsClient(servers["Parameters"], actor_security, timeout_s=5.0) as actor:
        assert actor.fetch().tensors["w"].shape == (4,)
    client = ReplayClient([servers["Replay"]], security=actor_security)
    try:
        with pytest.raises(
            ReplayClientError, match=r"actor role may not call /distrl\.v1\.Replay/UpdatePriorities"
        ):
            client.update_priorities(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1))
    finally:
        client.close()


def test_role_directory_errors_name_the_problem(tmp_path):
    bad = write_role_dir(tmp_path / "unknown")
    (bad / "superuser").write_text("x\n")
    with pytest.raises(RoleTokensError, match="unknown role 'superuser'"):
        load_role_digests(bad)
    empty = write_role_dir(tmp_path / "empty")
    (empty / "reader").write_text("\n")
    with pytest.raises(RoleTokensError, match="reader is empty"):
        load_role_digests(empty)
    shared = write_role_dir(tmp_path / "shared")
    (shared / "reader").write_text(TOKENS["actor"])
    with pytest.raises(RoleTokensError, match="share one token"):
        load_role_digests(shared)
    digest = write_role_dir(tmp_path / "digest")
    (digest / "actor.sha256").write_text("zz" * 32)
    with pytest.raises(RoleTokensError, match="64 hex digits"):
        load_role_digests(digest)
    (tmp_path / "none").mkdir()
    with pytest.raises(RoleTokensError, match="holds no token"):
        load_role_digests(tmp_path / "none")
    # Kubernetes' hidden ..data links are skipped; tokens and digests of one role may sit side by side.
    ok = write_role_dir(tmp_path / "ok")
    write_role_dir(ok, digests_only=True)
    (ok / "..data").mkdir()
    assert set(load_role_digests(ok)) == set(TOKENS)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_stranger_s_huge_unary_request_is_refused_before_it_is_received(tmp_path):
    """The refusal reads nothing: the shard's peak memory does not grow by the request's size."""
    proc, address = start_cli_shard(env={"DISTRL_TOKEN": "the-token"})
    try:
        channel = open_channel(address, SecurityConfig(token="wrong"))
        update = channel.unary_unary(
            "/distrl.v1.Replay/UpdatePriorities", request_serializer=lambda m: m, response_deserializer=None
        )
        # A 200 MiB UpdatePrioritiesRequest: field 1 (a string) of that many bytes.
        size = 200 * 1024 * 1024
        payload = b"\x0a" + _varint(size) + bytes(size)
        time.sleep(0.5)
        before = _peak_rss_mib(proc.pid)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                update(payload, timeout=30.0)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        after = _peak_rss_mib(proc.pid)
        channel.close()
        assert after - before < 64, f"the shard's peak RSS grew {after - before:.0f} MiB"
    finally:
        stop_process(proc)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distrl.cli", "serve", "params", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_a_token_on_the_command_line_or_an_empty_token_is_refused():
    out = _serve("--token", "visible-in-ps", env={})
    assert out.returncode == 2 and "ps" in out.stderr and "DISTRL_TOKEN" in out.stderr
    out = _serve(env={"DISTRL_TOKEN": ""})
    assert out.returncode == 2 and "DISTRL_TOKEN is set but empty" in out.stderr
    with pytest.raises(ValueError, match="token is empty"):
        SecurityConfig(token="  ")


def test_distrl_train_names_why_it_takes_no_roles_directory(tmp_path):
    roles = write_role_dir(tmp_path / "roles")
    out = subprocess.run(
        [sys.executable, "-m", "distrl.cli", "train", "configs/sac_smoke.yaml",
         "--run-dir", str(tmp_path / "run"), f"network.security.role_tokens_dir={roles}"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "MUJOCO_GL": "disable"},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "network.security.role_tokens_dir" in out.stderr and "k8s render" in out.stderr
