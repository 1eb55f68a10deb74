"""WriterSequences: the last sequence a table stored from each writer, how it recognises a resend.

A writer is `(actor_id, incarnation)`. The incarnation is random bytes a writer draws
when it starts (`ReplayWriter`), so two live writers, or two lives of one actor, never
share a key, whatever their actor ids and first sequences: a batch is only ever taken
for a resend of one from the same writer. Incarnation writers are forgotten least
recently used first beyond `max_writers` (every actor restart is a new one), so the
state stays bounded under pod churn. Writers without an incarnation keep their id
across restarts on purpose (the learner's demo inserter resends from sequence 0 after
a restart); they are named by the application and few, but a client can name any
number, so they too are forgotten least recently used first, beyond `max_stable`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Far more writers than live at once on one shard (hundreds of actors): only an incarnation
# that has not inserted while this many others did is forgotten (a resend of its would then
# be stored twice, never dropped).
MAX_WRITERS = 8192
# Writers without an incarnation (a learner's demo inserter, clients that predate incarnations).
MAX_STABLE_WRITERS = 1024
MAX_INCARNATION_BYTES = 32


@dataclass(frozen=True)
class IncarnationSequence:
    """One incarnation writer's last stored sequence (what a checkpoint keeps)."""

    actor_id: str
    incarnation: bytes
    sequence: int


class WriterSequences:
    """The last stored sequence per writer; a batch at or below it is a resend."""

    def __init__(self, max_writers: int = MAX_WRITERS, max_stable: int = MAX_STABLE_WRITERS) -> None:
        if max_writers < 1 or max_stable < 1:
            raise ValueError(f"max_writers and max_stable must be >= 1, got {max_writers}, {max_stable}")
        self.max_writers = max_writers
        self.max_stable = max_stable
        self.forgotten = 0
        self._stable: OrderedDict[str, int] = OrderedDict()
        # Least recently stored first, so forgetting is popping the front.
        self._incarnations: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._stable) + len(self._incarnations)

    def is_resend(self, actor_id: str, incarnation: bytes, sequence: int) -> bool:
        last = self._incarnations.get((actor_id, incarnation)) if incarnation else self._stable.get(actor_id)
        return last is not None and sequence <= last

    def record(self, actor_id: str, incarnation: bytes, sequence: int) -> None:
        """`sequence` was stored (so it is the writer's newest)."""
        if not incarnation:
            self._remember(self._stable, actor_id, sequence, self.max_stable)
        else:
            self._remember(self._incarnations, (actor_id, incarnation), sequence, self.max_writers)

    def _remember(self, writers: OrderedDict, key, sequence: int, limit: int) -> None:
        writers[key] = sequence
        writers.move_to_end(key)
        while len(writers) > limit:
            writers.popitem(last=False)
            self.forgotten += 1

    # -- checkpointing ----------------------------------------------------------------

    def stable(self) -> dict[str, int]:
        """Writers without an incarnation: actor_id -> last sequence, least recently stored first."""
        return dict(self._stable)

    def incarnations(self) -> list[IncarnationSequence]:
        """Incarnation writers, least recently stored first."""
        return [IncarnationSequence(a, i, s) for (a, i), s in self._incarnations.items()]

    @classmethod
    def restore(
        cls,
        stable: dict[str, int],
        incarnations: list[IncarnationSequence],
        max_writers: int = MAX_WRITERS,
        max_stable: int = MAX_STABLE_WRITERS,
    ) -> WriterSequences:
        sequences = cls(max_writers, max_stable)
        for actor_id, sequence in stable.items():
            sequences.record(actor_id, b"", int(sequence))
        for entry in incarnations:
            sequences.record(entry.actor_id, entry.incarnation, int(entry.sequence))
        return sequences
