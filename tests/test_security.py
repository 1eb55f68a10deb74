"""TLS, mutual TLS and bearer tokens on a real server (the parameter server)."""

from __future__ import annotations

import signal
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import TlsFiles, make_tls_files
from run_helpers import rows, start_train, wait_for

from distrl.params import ParamsClient, ParamsSubscriptionError, RunningParamServer, start_params_server
from distrl.proto.v1 import params_pb2, params_pb2_grpc
from distrl.replay import ReplayClient
from distrl.wire import SecurityConfig, check_health, open_channel

TOKEN = "s3cret-token"
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-other"), prefix="other-")


@pytest.fixture
def tls_server(tls: TlsFiles) -> Iterator[RunningParamServer]:
    security = SecurityConfig(tls_cert=tls.server_cert, tls_key=tls.server_key, token=TOKEN)
    running = start_params_server(security=security)
    yield running
    running.stop(0)


@pytest.fixture
def mtls_server(tls: TlsFiles) -> Iterator[RunningParamServer]:
    security = SecurityConfig(tls_cert=tls.server_cert, tls_key=tls.server_key, tls_client_ca=tls.ca_cert)
    running = start_params_server(security=security)
    yield running
    running.stop(0)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_right_token_over_tls_works_for_every_kind_of_call(tls, tls_server):
    security = SecurityConfig(tls_ca=tls.ca_cert, token=TOKEN)
    with ParamsClient(f"localhost:{tls_server.port}", security, timeout_s=TIMEOUT_S) as client:
        tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
        subscription = client.subscribe()
        assert client.publish(tensors) == 1  # stream -> unary
        got = subscription.wait_for_version(1, TIMEOUT_S)  # unary -> stream
        np.testing.assert_array_equal(got.tensors["w"], tensors["w"])
        assert client.info().version == 1  # unary
    # The certificate names 127.0.0.1 too, and a token file works like an inline token.
    token_file = Path(tls.ca_cert).parent / "token"
    token_file.write_text(TOKEN + "\n")
    security = SecurityConfig(tls_ca=tls.ca_cert, token_file=token_file)
    with ParamsClient(tls_server.address, security, timeout_s=TIMEOUT_S) as client:
        assert client.fetch().version == 1


def test_missing_or_wrong_token_is_refused(tls, tls_server):
    address = f"localhost:{tls_server.port}"
    for token in (None, "wrong-token", TOKEN + "x"):
        security = SecurityConfig(tls_ca=tls.ca_cert, token=token)
        with ParamsClient(address, security, timeout_s=TIMEOUT_S) as client:
            assert _code(client.info) == grpc.StatusCode.UNAUTHENTICATED, token
            assert _code(lambda c=client: c.publish({"w": np.zeros(3)})) == grpc.StatusCode.UNAUTHENTICATED
            assert _code(client.fetch) == grpc.StatusCode.UNAUTHENTICATED
            # A subscription gives up rather than retrying a refused token forever.
            subscription = client.subscribe()
            with pytest.raises(ParamsSubscriptionError, match="UNAUTHENTICATED"):
                subscription.wait_for_version(1, TIMEOUT_S)
    with ParamsClient(address, SecurityConfig(tls_ca=tls.ca_cert, token=TOKEN)) as client:
        assert client.info().publishes == 0  # none of the refused publishes landed


def test_health_check_needs_no_token(tls, tls_server):
    channel = open_channel(f"localhost:{tls_server.port}", SecurityConfig(tls_ca=tls.ca_cert))
    try:
        assert check_health(channel, timeout=TIMEOUT_S) == "SERVING"
        assert check_health(channel, "distrl.v1.Parameters", timeout=TIMEOUT_S) == "SERVING"
    finally:
        channel.close()


def test_plaintext_client_cannot_talk_to_tls_server(tls_server):
    channel = grpc.insecure_channel(tls_server.address)
    stub = params_pb2_grpc.ParametersStub(channel)
    try:
        code = _code(lambda: stub.Info(params_pb2.ParamsInfoRequest(), timeout=2.0))
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()
    # Even with the right token: the handshake fails before any call is made.
    with ParamsClient(tls_server.address, SecurityConfig(token=TOKEN), timeout_s=2.0) as client:
        assert _code(client.info) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_client_refuses_server_signed_by_an_unknown_ca(other_ca, tls_server):
    security = SecurityConfig(tls_ca=other_ca.ca_cert, token=TOKEN)
    with ParamsClient(f"localhost:{tls_server.port}", security, timeout_s=2.0) as client:
        assert _code(client.info) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(tls, other_ca, mtls_server):
    address = f"localhost:{mtls_server.port}"
    with ParamsClient(address, SecurityConfig(tls_ca=tls.ca_cert), timeout_s=2.0) as client:
        assert _code(client.info) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # A certificate from a CA the server does not trust is refused too.
    untrusted = SecurityConfig(tls_ca=tls.ca_cert, tls_cert=other_ca.client_cert, tls_key=other_ca.client_key)
    with ParamsClient(address, untrusted, timeout_s=2.0) as client:
        assert _code(client.info) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    trusted = SecurityConfig(tls_ca=tls.ca_cert, tls_cert=tls.client_cert, tls_key=tls.client_key)
    with ParamsClient(address, trusted, timeout_s=TIMEOUT_S) as client:
        assert client.publish({"w": np.ones(2, dtype=np.float32)}) == 1
        assert client.info().version == 1


@pytest.mark.slow
def test_a_whole_training_run_over_tls_with_a_token_refuses_strangers(tls, tmp_path):
    """`distrl train` with TLS and a token on every channel (actors, learner, evaluator, replay,
    params, coordinator): it trains, and a client without the token or without TLS is refused."""
    run_dir, token_file = tmp_path / "run", tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = start_train(
        "configs/sac_smoke.yaml", run_dir, "train.total_env_steps=100000",
        f"network.security.tls_cert={tls.server_cert}", f"network.security.tls_key={tls.server_key}",
        f"network.security.tls_ca={tls.ca_cert}", f"network.security.token_file={token_file}",
    )  # fmt: skip
    try:
        wait_for(
            lambda: any(r.get("updates", 0) > 50 and "eval/return_mean" in r for r in rows(run_dir)),
            240,
            "updates and an evaluation over TLS",
            proc,
        )
        log = (run_dir / "logs" / "replay-0.log").read_text()
        address = next(
            line.split("listening on ", 1)[1].strip() for line in log.splitlines() if "listening on" in line
        )
        with ReplayClient([address], security=SecurityConfig(tls_ca=tls.ca_cert, token=TOKEN)) as client:
            assert client.info()[0].tables[0].size > 0  # the run's own credentials work
        # A refused shard answers `up=False` with the status named.
        for security in (
            SecurityConfig(tls_ca=tls.ca_cert, token="wrong"),
            SecurityConfig(tls_ca=tls.ca_cert),
        ):
            with ReplayClient([address], security=security, rpc_timeout_s=5.0) as client:
                info = client.info()[0]
                assert not info.up and info.error.startswith("UNAUTHENTICATED"), info.error
        with ReplayClient(
            [address], security=SecurityConfig(token=TOKEN), rpc_timeout_s=5.0
        ) as client:  # no TLS
            info = client.info()[0]
            assert not info.up and info.error.split(":")[0] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), (
                info.error
            )
        assert TOKEN not in (run_dir / "config.yaml").read_text()  # the file's path is kept, not the secret
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output


@pytest.mark.slow
def test_a_token_given_as_an_override_is_written_nowhere_in_the_run_dir(tmp_path):
    """The token reaches every component (the run trains), yet no file of the run holds it: not
    config.yaml, the learner's checkpoints, metrics, logs or the W&B run's config; the secrets
    file that carries it to the components is the owner's alone."""
    run_dir, token = tmp_path / "run", "inline-override-token-4242"
    proc = start_train(
        "configs/sac_smoke.yaml", run_dir, "train.total_env_steps=1500", "learner.checkpoint_every=20",
        f"network.security.token={token}", "telemetry.wandb.enabled=true", "telemetry.wandb.mode=offline",
    )  # fmt: skip
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    assert list((run_dir / "checkpoints").glob("learner-*.pt")), "no learner checkpoint to check"
    (wandb_run,) = run_dir.rglob("wandb/offline-run-*/run-*.wandb")  # W&B's record of the run
    holders = [p for p in run_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert holders == [run_dir / "secrets" / "token"]
    assert (run_dir / "secrets" / "token").stat().st_mode & 0o777 == 0o600
    assert (run_dir / "secrets").stat().st_mode & 0o777 == 0o700
    assert b"<redacted>" in wandb_run.read_bytes()  # its config and its command line


def test_servers_refuse_tls_older_than_1_2(tls, tls_server):
    """The minimum TLS version is 1.2 (gRPC's floor); a TLS 1.1 client cannot even shake hands."""

    def handshake(version: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(tls.ca_cert)
        context.set_alpn_protocols(["h2"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("ALL:@SECLEVEL=0")
        with (
            socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as wrapped,
        ):
            return wrapped.version()

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(ssl.TLSVersion.TLSv1_1)
