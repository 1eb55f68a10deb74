"""An opt-in ledger of what each replay writer sent and had acked, for counting lost transitions.

Replay promises to keep every transition it acknowledged, up to its last checkpoint. Checking that
after a crash needs the writers' side of the story, which no counter holds exactly: with
`DISTRL_ACK_LEDGER_DIR` set, every `ReplayWriter` appends to its own file in that directory one
line per batch it queues (`sent`) and one per batch a shard acknowledges (`ack`), each written with
one `write` call, so a `kill -9` loses at most the line being written (`read_ledger` skips a partial
one). Off by default: a writer then pays one `is None` test per batch and ack.

A line is tab-separated:
`kind actor_id incarnation_hex shard sequence transitions stored unix_time`, where kind is `sent`
(shard -1, stored 0) or `ack` (the acking shard's index; stored 1, or 0 when the shard recognised a
resend it already held). `benchmarks/chaos.py` reads the files back.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LEDGER_ENV = "DISTRL_ACK_LEDGER_DIR"
SUFFIX = ".ledger"
_FIELDS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class LedgerEntry:
    kind: str  # "sent" or "ack"
    actor_id: str
    incarnation: str  # hex
    shard: int  # the acking shard; -1 for `sent`
    sequence: int
    transitions: int
    stored: bool  # ack only: False = a resend the shard already held
    time: float  # time.time() when the line was written


class AckLedger:
    """One writer's ledger file. Thread-safe: `sent` runs on the actor's thread, `acked` on the
    writer's ack reader."""

    def __init__(self, directory: Path, actor_id: str, incarnation: bytes) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.actor_id = actor_id
        self.incarnation = incarnation.hex()
        name = f"{_UNSAFE.sub('_', actor_id)}-{self.incarnation or 'none'}-{os.getpid()}{SUFFIX}"
        self.path = directory / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        # Transitions per queued batch, until it is acked (an ack carries only the sequence).
        self._sizes: dict[int, int] = {}

    @classmethod
    def from_env(cls, actor_id: str, incarnation: bytes) -> AckLedger | None:
        """A ledger in `$DISTRL_ACK_LEDGER_DIR`, or None when it is unset (the default)."""
        directory = os.environ.get(LEDGER_ENV)
        return cls(Path(directory), actor_id, incarnation) if directory else None

    def sent(self, sequence: int, transitions: int) -> None:
        with self._lock:
            self._sizes[sequence] = transitions
            self._write("sent", -1, sequence, transitions, False)

    def acked(self, shard: int, sequence: int, stored: bool) -> None:
        with self._lock:
            self._write("ack", shard, sequence, self._sizes.pop(sequence, 0), stored)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _write(self, kind: str, shard: int, sequence: int, transitions: int, stored: bool) -> None:
        if self._fd < 0:
            return
        line = (
            f"{kind}\t{self.actor_id}\t{self.incarnation}\t{shard}\t{sequence}\t{transitions}\t"
            f"{int(stored)}\t{time.time():.6f}\n"
        )
        os.write(self._fd, line.encode())


def read_ledger(directory: Path) -> list[LedgerEntry]:
    """Every complete line of every ledger file in `directory`; a partial or garbled line (a writer
    killed mid-write) is skipped."""
    entries = []
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        for line in path.read_bytes().decode(errors="replace").split("\n")[:-1]:
            parts = line.split("\t")
            if len(parts) != _FIELDS or parts[0] not in ("sent", "ack"):
                continue
            try:
                entries.append(
                    LedgerEntry(
                        kind=parts[0],
                        actor_id=parts[1],
                        incarnation=parts[2],
                        shard=int(parts[3]),
                        sequence=int(parts[4]),
                        transitions=int(parts[5]),
                        stored=parts[6] == "1",
                        time=float(parts[7]),
                    )
                )
            except ValueError:
                continue
    return entries
