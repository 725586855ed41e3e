"""The stall detector: an assigned partition whose records wait while nothing is committed.

Every way a partition can stop moving (a record the loop keeps retrying, a broker or alert
layer that stays away, a bug) ends the same way: its committed offset stays put while records
wait behind it. So that is what is watched, whatever the cause: a partition is *stalled* when
it has records waiting (a batch of it in hand, or a consumer lag above 0) and its committed
offset has not moved for ``after_s`` seconds (counted from the moment records started to wait
at the earliest, and from its assignment).
A stalled partition turns /readyz not ready, shows as ``vaeguard_partition_stalled = 1``,
counts once in ``vaeguard_partition_stalls_total``, and is logged with the offset it is stuck
at; when it moves again that is logged too.

The loop thread feeds it (assignments, polls, commits, lag); ``check`` is called from the loop
and from the ops listener's thread, hence the lock. It holds no Kafka client and no clock of
its own (``clock`` is injectable), so its logic is tested without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vaeguard.daemon import metrics

log = logging.getLogger("vaeguard.daemon")


@dataclass
class _Partition:
    progress_at: float
    #: The committed next offset (None until this daemon commits one).
    position: int | None = None
    #: The first offset of records polled but not committed yet (None: none in hand).
    waiting_from: int | None = None
    lag: int = 0
    #: Since when records wait (an idle partition's old commit is no stall when records come).
    waiting_since: float = 0.0
    stalled: bool = False

    @property
    def waiting(self) -> bool:
        return self.waiting_from is not None or self.lag > 0


@dataclass(frozen=True)
class Stall:
    topic: str
    partition: int
    #: The offset it is stuck at (the first record not committed), when known.
    offset: int | None
    #: Seconds since its committed offset last moved.
    seconds: float
    lag: int

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": f"{self.topic}[{self.partition}]",
            "offset": self.offset,
            "seconds": round(self.seconds, 1),
            "lag": self.lag,
        }


class StallDetector:
    def __init__(self, after_s: float, clock: Callable[[], float] = time.monotonic):
        self.after_s = after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._parts: dict[Any, _Partition] = {}

    def assigned(self, partitions: Iterable[Any]) -> None:
        """Partitions handed to this daemon: their clock starts now (kept if already owned)."""
        now = self.clock()
        with self._lock:
            for tp in partitions:
                self._parts.setdefault(tp, _Partition(progress_at=now))

    def revoked(self, partitions: Iterable[Any]) -> None:
        with self._lock:
            for tp in partitions:
                if self._parts.pop(tp, None) is not None:
                    metrics.forget_stall(tp.topic, tp.partition)

    def clear(self) -> None:
        self.revoked(list(self._parts))

    def polled(self, tp: Any, first_offset: int) -> None:
        """Records of ``tp`` from ``first_offset`` on are in hand, not committed yet."""
        with self._lock:
            part = self._part(tp)
            if not part.waiting:
                part.waiting_since = self.clock()
            if part.waiting_from is None:
                part.waiting_from = first_offset

    def committed(self, tp: Any, next_offset: int) -> None:
        with self._lock:
            part = self._part(tp)
            if part.position is None or next_offset > part.position:
                part.progress_at = self.clock()
            part.position = next_offset
            if part.waiting_from is not None and part.waiting_from < next_offset:
                part.waiting_from = None

    def lag(self, tp: Any, lag: int) -> None:
        with self._lock:
            part = self._part(tp)
            if not part.waiting and lag > 0:
                part.waiting_since = self.clock()
            part.lag = max(0, int(lag))

    def check(self) -> list[Stall]:
        """The stalled partitions now; metrics and logs follow each change of state."""
        now = self.clock()
        out: list[Stall] = []
        with self._lock:
            for tp, part in self._parts.items():
                seconds = now - max(part.progress_at, part.waiting_since)
                stalled = part.waiting and seconds > self.after_s
                offset = part.position if part.position is not None else part.waiting_from
                if stalled:
                    out.append(Stall(tp.topic, tp.partition, offset, seconds, part.lag))
                if stalled == part.stalled:
                    continue
                part.stalled = stalled
                metrics.PARTITION_STALLED.labels(tp.topic, str(tp.partition)).set(int(stalled))
                where = {"partition": f"{tp.topic}[{tp.partition}]", "offset": offset}
                if stalled:
                    metrics.PARTITION_STALLS.inc()
                    log.error(
                        "partition stalled: records wait and nothing was committed",
                        extra={**where, "seconds": round(seconds, 1), "lag": part.lag},
                    )
                else:
                    log.info("stalled partition moves again", extra=where)
        return out

    def _part(self, tp: Any) -> _Partition:
        part = self._parts.get(tp)
        if part is None:  # not announced by an assignment (a test, a manual assignment)
            part = self._parts[tp] = _Partition(progress_at=self.clock())
        return part
