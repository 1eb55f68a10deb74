"""Who an actor is: an index for people, an incarnation for replay, and its env seeds.

- `index` names the actor (`actor-3` in logs, `actor/3` in telemetry) and picks its home
  shard. Launchers number their actors (`--index`) and a StatefulSet pod takes its ordinal:
  unique among live actors. A Deployment pod has no ordinal, so its index is a hash of its
  pod name, a label that two pods may share.
- `incarnation` is 16 random bytes drawn when the process starts: the replay writer's
  identity, which shards de-duplicate by. A restarted process is a new incarnation even in
  the same pod (a container restart keeps the pod's name and UID), so no two live actors,
  nor an actor and its previous life, can have their batches taken for each other's resends.
- Env seeds come from (run seed, index) for an ordinal index, so a run is reproducible from
  its seed, and from (run seed, incarnation) for a Deployment pod: see `env_seed`.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from distrl.replay.writer import new_incarnation

# dm_control seeds a numpy RandomState, which takes 32-bit seeds.
SEED_SPACE = 1 << 32
# An ordinal index below this owns its own residue of the seed space (see `env_seed`).
INDEX_SLOTS = 1 << 16
# A Deployment pod's name ends in a 5-character random suffix that can be all digits.
_DEPLOYMENT_SUFFIX_LEN = 5


@dataclass(frozen=True)
class ActorIdentity:
    index: int
    incarnation: bytes
    # True when the index is unique among live actors (a launcher's number, a StatefulSet ordinal).
    ordinal: bool = True
    pod_uid: str | None = None

    @classmethod
    def start(cls, index: int, *, ordinal: bool = True, pod_uid: str | None = None) -> ActorIdentity:
        """A new incarnation of actor `index` (call once per process start)."""
        return cls(index, new_incarnation(), ordinal, pod_uid)

    @classmethod
    def from_environment(
        cls, index: int | None = None, environ: Mapping[str, str] | None = None
    ) -> ActorIdentity:
        """`index` if given; else a StatefulSet pod's ordinal, else a hash of the pod name.

        Reads POD_NAME (else HOSTNAME) and POD_UID, which the rendered manifests set
        through the downward API.
        """
        env = os.environ if environ is None else environ
        pod_uid = env.get("POD_UID") or None
        if index is not None:
            return cls.start(index, pod_uid=pod_uid)
        name = env.get("POD_NAME") or env.get("HOSTNAME", "")
        ordinal = pod_ordinal(name)
        if ordinal is not None:
            return cls.start(ordinal, pod_uid=pod_uid)
        # All 32 bits: the index is only a label now, but a rarely shared one.
        return cls.start(zlib.crc32(name.encode()), ordinal=False, pod_uid=pod_uid)

    @property
    def name(self) -> str:
        """`actor-3`: the replay writer's actor_id (its home shard) and the name in logs."""
        return f"actor-{self.index}"

    @property
    def source(self) -> str:
        """`actor/3`: the telemetry source."""
        return f"actor/{self.index}"

    def describe(self) -> str:
        pod = f", pod {self.pod_uid}" if self.pod_uid else ""
        return f"{self.name} (incarnation {self.incarnation.hex()}{pod})"


def pod_ordinal(pod_name: str) -> int | None:
    """A StatefulSet pod's ordinal (`actors-3` -> 3); None for other names (a Deployment's)."""
    tail = pod_name.rsplit("-", 1)[-1]
    if tail.isascii() and tail.isdigit() and len(tail) < _DEPLOYMENT_SUFFIX_LEN:
        return int(tail)
    return None


def env_seed(run_seed: int, identity: ActorIdentity, num_envs: int) -> int:
    """The first of an actor's `num_envs` env seeds (env j gets seed + j; all below 2^32).

    An ordinal index i (a launcher's number, a StatefulSet ordinal) owns the seeds congruent
    to i modulo `INDEX_SLOTS` (times `num_envs`): seed = (block * INDEX_SLOTS + i) * num_envs
    with the block drawn from the run seed, so actors with different indices never share a
    seed and a run is reproducible from its `seed`. A restarted ordinal actor starts its envs
    from the same seeds as its previous life (reproducibility over novelty). Without an
    ordinal (a Deployment pod, whose index is a hash of its name) the seed is drawn from (run
    seed, incarnation): distinct by chance, two of N pods overlapping with probability about
    N^2 * num_envs / 2^32 (1e-5 for 200 pods of one env).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    blocks = SEED_SPACE // (INDEX_SLOTS * num_envs)
    ordinal = identity.ordinal and 0 <= identity.index < INDEX_SLOTS and blocks > 0
    salt = b"" if ordinal else b"/" + identity.incarnation
    digest = hashlib.blake2b(f"{run_seed}".encode() + salt, digest_size=8, person=b"distrl-env-seed").digest()
    drawn = int.from_bytes(digest, "little")
    if ordinal:
        return ((drawn % blocks) * INDEX_SLOTS + identity.index) * num_envs
    return drawn % (SEED_SPACE - num_envs + 1)
