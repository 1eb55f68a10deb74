"""Cumulative insert acks: one ack for every batch a stream stored since its last ack.

The shard's Insert handler reads and stores batches in stream order; instead of writing
an ack after each batch and waiting for that write, it hands the batch to `CumulativeAcks`
and reads on. A task per stream writes the owed acks `delay_s` (the shard's `ack_delay_ms`,
2 ms by default) after the first batch it owes: batches stored meanwhile, and while a write
is in flight, share one ack (`InsertAck.batches`, `InsertAck.resent`). A gRPC message costs
a `grpc.aio` server most of its per-batch CPU, so a stream of batches a few ms apart needs
about half the messages; the price is at most `delay_s` more ack latency, which the writer's
window of unacked batches hides.

The writer side (`ReplayWriter`) already drops every unacked batch with a sequence up to the
ack's, so acks from older servers (one per batch, `batches` 0) read the same.
"""

from __future__ import annotations

import asyncio

from distrl.proto.v1 import replay_pb2


class CumulativeAcks:
    """(event loop only) The acks still owed on one Insert stream, and the task that writes them.

    One ack covers only consecutive batches of one writer (same `actor_id` and incarnation,
    rising sequences), which is what a `ReplayWriter` sends; a batch that breaks the run (a
    client mixing writers, or resending an older sequence) closes the owed ack first.
    """

    __slots__ = (
        "_batches",
        "_closed",
        "_context",
        "_delay_s",
        "_resent",
        "_sequence",
        "_stored",
        "_table_size",
        "_task",
        "_writer",
    )

    def __init__(self, context, delay_s: float) -> None:
        self._context = context
        self._delay_s = delay_s
        self._writer: tuple[str, bytes] | None = None
        self._sequence = 0
        self._batches = 0
        self._resent: list[int] = []
        self._closed: list[replay_pb2.InsertAck] = []  # owed acks that later batches cannot join
        self._task: asyncio.Task | None = None

    def add(self, request: replay_pb2.TransitionBatch, stored: bool, table_size: int) -> None:
        """Owe an ack for `request` (stored, or a resend of a stored batch); it is written soon."""
        writer = (request.actor_id, request.incarnation)
        if self._batches and (writer != self._writer or request.sequence <= self._sequence):
            self._closed.append(self._owed())
        self._writer = writer
        self._sequence = request.sequence
        self._stored = stored
        self._table_size = table_size
        self._batches += 1
        if not stored:
            self._resent.append(request.sequence)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_owed())

    async def flush(self) -> None:
        """Write every owed ack now and wait for it (before the stream ends or is aborted)."""
        self._delay_s = 0.0
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        """The stream is gone: stop writing."""
        if self._task is not None:
            self._task.cancel()

    def _owed(self) -> replay_pb2.InsertAck:
        ack = replay_pb2.InsertAck(
            actor_id=self._writer[0],
            sequence=self._sequence,
            stored=self._stored,
            table_size=self._table_size,
            batches=self._batches,
            resent=self._resent,
        )
        self._batches = 0
        self._resent = []
        return ack

    async def _write_owed(self) -> None:
        try:
            if self._delay_s > 0:
                await asyncio.sleep(self._delay_s)
            while self._closed or self._batches:
                if self._closed:
                    ack = self._closed.pop(0)
                else:
                    ack = self._owed()
                await self._context.write(ack)
        except Exception:
            self._closed.clear()
            self._batches = 0
        finally:
            self._task = None
