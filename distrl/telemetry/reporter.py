"""The client side of telemetry: what actors, learners and evaluators report through.

`report()` and `event()` only touch an in-memory buffer under a lock, so they
never block on the network and never fail because the coordinator is down. A
background thread sends the buffer every `interval_s` as one `MetricBatch`. Each
send is its own short `Report` call with a deadline: the response acknowledges
the batch, so a batch that did not get through is merged back into the buffer
and retried (with backoff) instead of being lost inside a broken stream, and no
coordinator worker thread is pinned by an idle stream.

Within one interval, values of a metric combine as the coordinator combines them
across sources (`aggregate.reduction_for`): the mean, or the latest for `*_per_s`,
or the max / min for `*_max` / `*_min`. Events (`event()`) are sent one by one,
so the coordinator averages every episode's return, not a mean of means.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from distrl.telemetry.aggregate import Reduction, reduction_for
from distrl.wire.retry import Backoff
from distrl.wire.security import SecurityConfig

log = logging.getLogger(__name__)

# A source with nothing new still sends its counts this often, so the coordinator knows it is live.
HEARTBEAT_S = 5.0
MAX_BACKOFF_S = 15.0
RPC_TIMEOUT_S = 5.0


@dataclass
class _Gauge:
    """Values of one `report()`ed metric since the last send."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    latest: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.latest = value

    def merge_older(self, older: _Gauge) -> None:
        """Fold in values that were taken before these (a send that failed)."""
        self.count += older.count
        self.total += older.total
        self.low = min(self.low, older.low)
        self.high = max(self.high, older.high)

    def value(self, reduction: Reduction) -> float:
        if reduction is Reduction.SUM_OF_LATEST:
            return self.latest
        if reduction is Reduction.MAX:
            return self.high
        if reduction is Reduction.MIN:
            return self.low
        return self.total / self.count


@dataclass
class _Pending:
    gauges: dict[str, _Gauge] = field(default_factory=dict)
    events: list[tuple[str, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.gauges or self.events)


class TelemetryReporter:
    """Buffers metrics and streams them to the coordinator at `address` every `interval_s`.

    `address=None` sends nothing and only keeps the last values (tests, serial mode).
    `env_steps` / `updates` are this source's own cumulative counts.
    """

    def __init__(
        self,
        address: str | None,
        source: str,
        security: SecurityConfig | None = None,
        interval_s: float = 1.0,
        *,
        max_events: int = 10_000,
        max_names: int = 1024,
    ) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"source must be a non-empty name like 'actor/3', got {source!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.address = address
        self.source = source
        self.interval_s = float(interval_s)
        self._max_events = max_events
        self._max_names = max_names
        self._lock = threading.Lock()
        self._pending = _Pending()
        self._last: dict[str, float] = {}
        self._env_steps: int | None = None
        self._updates: int | None = None
        self._counts_changed = False
        self._warned: set[str] = set()
        self._sent_batches = 0
        self._stop = threading.Event()
        self._close_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._channel = None
        self._channel_closed = False
        if address is not None:
            from distrl.wire.channel import open_channel

            self._channel = open_channel(address, security)
            self._thread = threading.Thread(target=self._run, name=f"telemetry-{source}", daemon=True)
            self._thread.start()

    # -- the public face ------------------------------------------------------------------------

    def report(
        self, metrics: Mapping[str, float], *, env_steps: int | None = None, updates: int | None = None
    ) -> None:
        """Record gauge values (averaged over the interval) and this source's cumulative counts."""
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping of name -> number, got {type(metrics).__name__}")
        values = [(name, self._number(name, value)) for name, value in metrics.items()]
        env_steps = self._count("env_steps", env_steps)
        updates = self._count("updates", updates)
        with self._lock:
            if env_steps is not None:
                self._counts_changed |= env_steps != self._env_steps
                self._env_steps = env_steps
            if updates is not None:
                self._counts_changed |= updates != self._updates
                self._updates = updates
            for name, value in values:
                if value is None:
                    continue
                self._last[name] = value
                if self._thread is None:
                    continue
                gauge = self._pending.gauges.get(name)
                if gauge is None:
                    if len(self._pending.gauges) >= self._max_names:
                        self._warn_once(
                            "names", f"more than {self._max_names} metric names; dropping {name!r}"
                        )
                        continue
                    gauge = self._pending.gauges[name] = _Gauge()
                gauge.add(value)

    def event(self, name: str, value: float) -> None:
        """Record one occurrence (e.g. an episode's return); every event is sent, not averaged."""
        number = self._number(name, value)
        if number is None:
            return
        with self._lock:
            self._last[name] = number
            if self._thread is None:
                return
            if len(self._pending.events) >= self._max_events:
                self._warn_once(
                    "events", f"more than {self._max_events} events buffered; dropping the oldest"
                )
                del self._pending.events[: len(self._pending.events) - self._max_events + 1]
            self._pending.events.append((name, number))

    @property
    def last(self) -> dict[str, float]:
        """The last value reported for each metric (gauges and events)."""
        with self._lock:
            return dict(self._last)

    @property
    def env_steps(self) -> int | None:
        return self._env_steps

    @property
    def updates(self) -> int | None:
        return self._updates

    @property
    def sent_batches(self) -> int:
        """Batches the coordinator has acknowledged."""
        return self._sent_batches

    def close(self, timeout: float = 2.0) -> None:
        """Stop the sender after one last attempt (bounded by `timeout`) to deliver the buffer."""
        if self._thread is None:
            return
        self._close_deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        self._thread.join(timeout + 0.5)
        self._channel_closed = True
        if self._channel is not None:
            self._channel.close()  # also cancels a send still in flight
        self._thread = None

    def __enter__(self) -> TelemetryReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation -----------------------------------------------------------------------------

    def _number(self, name: object, value: object) -> float | None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"metric names must be non-empty strings, got {name!r}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(f"metric {name!r}: value {value!r} is not a number") from None
        if not math.isfinite(number):
            self._warn_once(f"nonfinite:{name}", f"{self.source}: dropping non-finite value of {name!r}")
            return None
        return number

    @staticmethod
    def _count(name: str, value: int | None) -> int | None:
        if value is None:
            return None
        try:
            count = operator.index(value)
        except TypeError:
            count = -1
        if isinstance(value, bool) or count < 0:
            raise ValueError(f"{name} must be a non-negative integer count, got {value!r}")
        return count

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # -- the sender thread ----------------------------------------------------------------------

    def _run(self) -> None:
        from distrl.proto.v1 import telemetry_pb2_grpc

        stub = telemetry_pb2_grpc.TelemetryStub(self._channel)
        # After failed sends, wait longer than the interval before the next try.
        backoff = Backoff(self.interval_s, MAX_BACKOFF_S, jitter=0.25)
        delay = self.interval_s
        last_sent = time.monotonic()
        while True:
            stopping = self._stop.wait(delay)
            heartbeat = time.monotonic() - last_sent >= max(HEARTBEAT_S, self.interval_s)
            timeout = RPC_TIMEOUT_S
            if stopping and self._close_deadline is not None:
                timeout = max(0.05, self._close_deadline - time.monotonic())
            if self._channel_closed:
                return
            outcome = self._send(stub, heartbeat or stopping, timeout)
            if outcome is not None:
                if outcome:
                    if backoff.failures:
                        log.info("%s: telemetry reconnected to %s", self.source, self.address)
                    backoff.reset()
                    delay = self.interval_s
                    last_sent = time.monotonic()
                else:
                    delay = backoff.failed()
            if stopping:
                return

    def _send(self, stub, force: bool, timeout: float) -> bool | None:
        """Send what is buffered; None when there was nothing to send."""
        import grpc

        from distrl.proto.v1 import telemetry_pb2

        with self._lock:
            if not self._pending and not self._counts_changed and not force:
                return None
            taken, self._pending = self._pending, _Pending()
            counts_changed, self._counts_changed = self._counts_changed, False
            batch = telemetry_pb2.MetricBatch(
                source=self.source,
                wall_time=time.time(),
                env_steps=self._env_steps or 0,
                updates=self._updates or 0,
            )
        for name, gauge in taken.gauges.items():
            batch.metrics.add(name=name, value=gauge.value(reduction_for(name)))
        for name, value in taken.events:
            batch.metrics.add(name=name, value=value)
        try:
            stub.Report(iter([batch]), timeout=timeout)
        except ValueError:  # close() gave up waiting and closed the channel under this send
            self._requeue(taken, counts_changed)
            return False
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                # Retrying cannot fix a batch the coordinator refuses.
                log.error("%s: coordinator refused a metric batch: %s", self.source, exc.details())
                return True
            self._requeue(taken, counts_changed)
            self._warn_once(
                f"rpc:{code}",
                f"{self.source}: cannot reach the coordinator at {self.address} ({code.name}); "
                "metrics are buffered and sent when it is back",
            )
            return False
        self._sent_batches += 1
        return True

    def _requeue(self, taken: _Pending, counts_changed: bool) -> None:
        with self._lock:
            self._counts_changed |= counts_changed
            for name, older in taken.gauges.items():
                gauge = self._pending.gauges.get(name)
                if gauge is None:
                    self._pending.gauges[name] = older
                else:
                    gauge.merge_older(older)
            events = taken.events + self._pending.events
            self._pending.events = events[-self._max_events :]
