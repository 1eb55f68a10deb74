"""Actor identity: an index for people, an incarnation per process start for replay, distinct env seeds.

Kubernetes Deployment pods have no ordinal, so their index is a hash of the pod name and two pods
(or a pod and its own restart) may share it. What must never be shared: the replay writer's
identity, which the shard de-duplicates by, and the env seeds of live actors.
"""

from __future__ import annotations

import itertools
import random
import string
import threading
import zlib

import grpc
import numpy as np
import pytest
from replay_helpers import acked, batch, shard, table_ids

from distrl.actors import identity as identity_module
from distrl.actors.actor import Actor, ActorAddresses
from distrl.actors.identity import (
    INDEX_SLOTS,
    SEED_SPACE,
    ActorIdentity,
    env_seed,
    pod_ordinal,
)
from distrl.config import validate_config
from distrl.experiment import replay_table_config
from distrl.proto.v1 import replay_pb2_grpc
from distrl.replay.checkpoint import restore_tables, write_checkpoint
from distrl.replay.client import NO_INCARNATION, ReplayClient, new_incarnation
from distrl.replay.config import ReplayShardConfig, TableConfig
from distrl.replay.messages import encode_transition_batch
from distrl.replay.protocol import REJECTED_FIELD_KEY
from distrl.replay.sequences import WriterSequences
from distrl.replay.server import serve_replay_shard
from distrl.replay.table import Table
from distrl.wire.channel import open_channel

# The alphabet Kubernetes draws pod-template hashes and pod-name suffixes from.
K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def deployment_pod_name(rng: random.Random, deployment: str = "actors") -> str:
    """`actors-5d8c7b9f4-x2k9q`: deployment, pod-template hash, random suffix."""
    template = "".join(rng.choices(K8S_ALPHABET, k=rng.choice((9, 10))))
    return f"{deployment}-{template}-{''.join(rng.choices(K8S_ALPHABET, k=5))}"


def pod_uid(rng: random.Random) -> str:
    hexdigits = "".join(rng.choices(string.hexdigits.lower()[:16], k=32))
    return "-".join((hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20], hexdigits[20:]))


def seed_ranges_disjoint(seeds: list[int], num_envs: int) -> bool:
    """Env j of an actor gets seed + j: no two actors' ranges may overlap."""
    ordered = sorted(seeds)
    return all(b - a >= num_envs for a, b in itertools.pairwise(ordered))


def in_seed_space(seed: int, num_envs: int) -> bool:
    return seed >= 0 and seed + num_envs <= SEED_SPACE


@pytest.fixture
def seeded_incarnations(monkeypatch):
    """Incarnations from a seeded generator instead of the OS, so the seed checks are reproducible
    (with OS draws they hold with probability 1 - ~N^2 * num_envs / 2^32, see `env_seed`)."""
    rng = random.Random(20261207)
    monkeypatch.setattr(identity_module, "new_incarnation", lambda: rng.randbytes(16))


# -- who an actor is ----------------------------------------------------------------------------


def test_pod_ordinal_only_for_statefulset_names():
    assert pod_ordinal("actors-0") == 0
    assert pod_ordinal("replay-12") == 12
    assert pod_ordinal("actors-5d8c7b9f4-x2k9q") is None
    # A Deployment pod's 5-character suffix can be all digits: still not an ordinal.
    assert pod_ordinal("actors-5d8c7b9f4-24567") is None
    assert pod_ordinal("") is None
    assert pod_ordinal("worker") is None


def test_identity_from_the_environment():
    env = {"POD_NAME": "actors-3", "POD_UID": "0f1e-uid"}
    ordinal = ActorIdentity.from_environment(None, env)
    assert (ordinal.index, ordinal.ordinal, ordinal.pod_uid) == (3, True, "0f1e-uid")
    assert (ordinal.name, ordinal.source) == ("actor-3", "actor/3")
    name = "actors-5d8c7b9f4-x2k9q"
    hashed = ActorIdentity.from_environment(None, {"POD_NAME": name})
    assert (hashed.index, hashed.ordinal, hashed.pod_uid) == (zlib.crc32(name.encode()), False, None)
    assert ActorIdentity.from_environment(None, {"HOSTNAME": "actors-7"}).index == 7
    given = ActorIdentity.from_environment(5, {"POD_NAME": name})
    assert (given.index, given.ordinal) == (5, True)
    # Every call is a new incarnation: 16 bytes from the OS.
    assert len(given.incarnation) == 16
    assert ActorIdentity.from_environment(5, {}).incarnation != given.incarnation
    assert given.incarnation.hex() in given.describe()


def test_200_deployment_pods_and_their_restarts_never_share_a_writer_id_or_an_env_seed(seeded_incarnations):
    """200 Deployment pods; each container restarts once (same name and UID, a new process) and
    each pod is rescheduled once (a new name and UID)."""
    rng = random.Random(15)
    num_envs = 4
    pods = [(deployment_pod_name(rng), pod_uid(rng)) for _ in range(200)]
    assert len(set(pods)) == 200
    lives = [(name, uid) for name, uid in pods for _ in range(2)]  # first start and a container restart
    lives += [(deployment_pod_name(rng), pod_uid(rng)) for _ in pods]  # rescheduled pods
    identities = [ActorIdentity.from_environment(None, {"POD_NAME": n, "POD_UID": u}) for n, u in lives]
    assert not any(i.ordinal for i in identities)
    assert [i.pod_uid for i in identities] == [u for _, u in lives]
    # The index is only a label: a restart shares it with its previous life.
    assert len({i.index for i in identities}) < len(identities)
    # The writer identity is never shared, nor is any env seed (live or not).
    writers = {(i.name, i.incarnation) for i in identities}
    assert len(writers) == len({i.incarnation for i in identities}) == len(identities) == 600
    seeds = [env_seed(7, i, num_envs) for i in identities]
    assert seed_ranges_disjoint(seeds, num_envs)
    assert all(in_seed_space(s, num_envs) for s in seeds)


def test_incarnations_come_from_the_os():
    drawn = {new_incarnation() for _ in range(10_000)}
    assert len(drawn) == 10_000 and {len(d) for d in drawn} == {16}
    names = [f"actors-5d8c7b9f4-{i:05x}" for i in range(200)]
    lives = [ActorIdentity.from_environment(None, {"POD_NAME": n}) for n in names for _ in range(3)]
    assert len({(i.name, i.incarnation) for i in lives}) == 600


@pytest.mark.parametrize("num_envs", [1, 4, 7])
def test_ordinal_actors_never_share_a_seed_whatever_their_incarnations(num_envs):
    """Launcher and StatefulSet indices are unique among live actors: each owns a residue of the seed
    space, so even identical incarnations cannot make two of them collide."""
    same = b"\x00" * 16
    for incarnation in (same, None):
        identities = [
            ActorIdentity(i, incarnation if incarnation is not None else new_incarnation())
            for i in range(200)
        ]
        seeds = [env_seed(3, i, num_envs) for i in identities]
        assert seed_ranges_disjoint(seeds, num_envs)
        assert all(in_seed_space(s, num_envs) for s in seeds)
        assert all(s // num_envs % INDEX_SLOTS == i.index for s, i in zip(seeds, identities, strict=True))


def test_ordinal_actor_seeds_are_reproducible_from_the_run_seed(seeded_incarnations):
    lives = [ActorIdentity.start(3) for _ in range(20)]  # restarts: new incarnations, same index
    assert len({env_seed(0, i, 2) for i in lives}) == 1
    assert env_seed(1, lives[0], 2) != env_seed(0, lives[0], 2)
    # A Deployment pod has no ordinal: its seed follows its incarnation.
    pods = [ActorIdentity(3, i.incarnation, ordinal=False) for i in lives]
    assert len({env_seed(0, i, 2) for i in pods}) == 20


def test_seeds_fit_in_32_bits_for_any_index_and_run_seed():
    for run_seed in (-5, 0, 2**40):
        for index in (0, INDEX_SLOTS - 1, INDEX_SLOTS, 2**32 - 1):
            for num_envs in (1, 64, 70_000):
                seed = env_seed(run_seed, ActorIdentity.start(index), num_envs)
                assert in_seed_space(seed, num_envs)
    with pytest.raises(ValueError, match="num_envs"):
        env_seed(0, ActorIdentity.start(0), 0)


# -- what replay does with it ---------------------------------------------------------------------


def test_two_writers_sharing_an_actor_id_and_first_sequence_lose_nothing():
    """Two pods whose names hash to one index, both counting sequences from the same value."""
    with shard(capacity=1000) as (s, running), ReplayClient([running.address]) as client:
        a = client.writer("actor-7", first_sequence=100)
        b = client.writer("actor-7", first_sequence=100)
        for i in range(5):
            a.insert(batch(range(i * 10, i * 10 + 10)))
            b.insert(batch(range(500 + i * 10, 500 + i * 10 + 10)))
        a.close()
        b.close()
        assert (a.stats().stored, b.stats().stored) == (5, 5)
        assert (a.stats().duplicates, b.stats().duplicates) == (0, 0)
        ids = table_ids(s)
        assert sorted(ids.tolist()) == [*range(50), *range(500, 550)]
        assert s.tables["default"].stats().duplicate_batches == 0
        # A restarted actor (same id, sequences from the same value again) is a new writer too.
        with client.writer("actor-7", first_sequence=100) as c:
            c.insert(batch(range(900, 910)))
            c.flush(5)
            assert c.stats().stored == 1
        assert len(table_ids(s)) == 110


def _request(ids, sequence: int, incarnation: bytes, actor: str = "actor-7"):
    msg = encode_transition_batch(batch(ids), table="default", actor_id=actor, policy_version=0)
    msg.sequence = sequence
    msg.incarnation = incarnation
    return msg


def test_a_writer_resending_the_same_sequence_is_still_deduplicated():
    one, two = new_incarnation(), new_incarnation()
    with shard(capacity=1000) as (s, running):
        channel = open_channel(running.address)
        try:
            stub = replay_pb2_grpc.ReplayStub(channel)
            first = [_request(range(0, 10), 0, one), _request(range(10, 20), 1, one)]
            assert acked(list(stub.Insert(iter(first), timeout=5))) == [(0, True), (1, True)]
            # After a reconnect the writer resends 1 (and 0); the other incarnation's 0 and 1 are new.
            again = [
                _request(range(10, 20), 1, one),
                _request(range(0, 10), 0, one),
                _request(range(100, 110), 0, two),
                _request(range(110, 120), 1, two),
                _request(range(20, 30), 2, one),
            ]
            acks = list(stub.Insert(iter(again), timeout=5))
            # An ack covers only consecutive batches of one writer (here at most two's 0 and 1).
            assert acked(acks) == [
                (1, False),
                (0, False),
                (0, True),
                (1, True),
                (2, True),
            ]
            assert sorted(table_ids(s).tolist()) == [*range(30), *range(100, 120)]
            assert s.tables["default"].stats().duplicate_batches == 2
            # An incarnation longer than any writer draws is refused, naming the field.
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Insert(iter([_request(range(3), 5, b"x" * 33)]), timeout=5))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert dict(err.value.trailing_metadata())[REJECTED_FIELD_KEY] == "incarnation"
        finally:
            channel.close()


def test_a_writer_without_incarnation_keeps_its_identity_across_restarts():
    """The learner's demo inserter: a restarted learner resends from sequence 0 and nothing doubles."""
    with shard(capacity=1000) as (s, running), ReplayClient([running.address]) as client:
        for _ in range(2):  # the learner and its restart
            with client.writer("demos", first_sequence=0, incarnation=NO_INCARNATION) as w:
                for i in range(3):
                    w.insert(batch(range(i * 10, i * 10 + 10)))
        assert len(table_ids(s)) == 30
        assert s.tables["default"].stats().duplicate_batches == 3
        assert s.tables["default"].snapshot().last_sequence == {"demos": 2}


def test_deduplication_state_stays_bounded_under_churn():
    sequences = WriterSequences(max_writers=3)
    sequences.record("demos", b"", 9)
    lives = [new_incarnation() for _ in range(5)]
    for incarnation in lives:
        sequences.record("actor-1", incarnation, 4)
    assert len(sequences) == 4 and sequences.forgotten == 2
    # The least recently stored incarnations are forgotten; writers without one have their own bound.
    assert [e.incarnation for e in sequences.incarnations()] == lives[2:]
    assert sequences.is_resend("demos", b"", 9) and sequences.is_resend("actor-1", lives[4], 4)
    assert not sequences.is_resend("actor-1", lives[0], 4)
    # Storing again makes a writer the most recent.
    sequences.record("actor-1", lives[2], 5)
    sequences.record("actor-2", new_incarnation(), 0)
    assert lives[2] in {e.incarnation for e in sequences.incarnations()}
    assert lives[3] not in {e.incarnation for e in sequences.incarnations()}


def test_writers_without_an_incarnation_are_bounded_too_and_survive_a_checkpoint():
    """A client naming a new actor_id on every batch, with no incarnation, cannot grow the state."""
    sequences = WriterSequences(max_writers=4, max_stable=3)
    sequences.record("demos", b"", 9)
    for i in range(10):
        sequences.record(f"junk-{i}", b"", i)
        sequences.record("demos", b"", 9)  # the demo inserter keeps writing, so it stays
    assert len(sequences.stable()) == 3 and sequences.forgotten == 8
    assert list(sequences.stable()) == ["junk-8", "junk-9", "demos"]
    assert sequences.is_resend("demos", b"", 9) and not sequences.is_resend("junk-0", b"", 0)
    restored = WriterSequences.restore(sequences.stable(), sequences.incarnations(), 4, 3)
    assert restored.stable() == sequences.stable()
    restored.record("junk-10", b"", 0)  # the least recently stored goes first after a restore too
    assert list(restored.stable()) == ["junk-9", "demos", "junk-10"]


def test_a_restored_table_still_recognises_each_incarnations_resends(tmp_path):
    config = TableConfig(capacity=100)
    table = Table(config)
    one, two = new_incarnation(), new_incarnation()
    table.insert(batch(range(4)), actor_id="actor-1", sequence=3, incarnation=one)
    table.insert(batch(range(4, 8)), actor_id="actor-1", sequence=3, incarnation=two)
    table.insert(batch(range(8, 12)), actor_id="demos", sequence=0)
    write_checkpoint([table], tmp_path)
    restored = restore_tables([config], tmp_path)[0]["default"]
    snap = restored.snapshot()
    assert snap.last_sequence == {"demos": 0}
    assert [(e.actor_id, e.incarnation, e.sequence) for e in snap.incarnation_sequences] == [
        ("actor-1", one, 3),
        ("actor-1", two, 3),
    ]
    assert not restored.insert(batch(range(4)), actor_id="actor-1", sequence=3, incarnation=one).stored
    assert not restored.insert(batch(range(8, 12)), actor_id="demos", sequence=0).stored
    assert restored.insert(
        batch(range(12, 16)), actor_id="actor-1", sequence=3, incarnation=new_incarnation()
    ).stored
    assert np.array_equal(np.sort(restored.snapshot().fields["id"]), np.arange(16))


def test_two_actors_sharing_an_index_both_land_in_replay():
    """Two Deployment pods whose names hash to one index run one after the other against a shard."""
    config = validate_config(
        {
            "name": "identity",
            "env": {"id": "gym:InvertedPendulum-v5"},
            "algo": {"name": "sac", "hidden_sizes": [16]},
            "actors": {"num_actors": 2, "envs_per_actor": 2, "warmup_steps": 10_000, "insert_batch_size": 16},
            "replay": {"table": {"capacity": 10_000}},
            "eval": {"enabled": False},
            "telemetry": {"console": False},
        }
    )
    shard_, running = serve_replay_shard(ReplayShardConfig(tables=[replay_table_config(config)]))
    try:
        actors = [
            Actor(config, ActorIdentity.start(4242, ordinal=False), ActorAddresses([running.address], None))
            for _ in range(2)
        ]
        for actor in actors:
            actor.run(threading.Event(), max_steps=64)
        table = shard_.tables[config.replay.table.name]
        assert len(table) == 128 and table.stats().duplicate_batches == 0
        stored = {(e.actor_id, e.incarnation) for e in table.snapshot().incarnation_sequences}
        assert stored == {("actor-4242", a.identity.incarnation) for a in actors}
        assert [a.writer_stats.stored for a in actors] == [4, 4]
    finally:
        running.stop(0)
        shard_.close(final_checkpoint=False)
