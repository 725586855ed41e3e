"""Delivery to one sink: a worker thread with a bounded queue, retries with exponential backoff
and full jitter, a circuit breaker, and the spool as the fallback that never drops an alert.

Every item handed to `SinkWorker.submit` ends *delivered*, *spooled* (fsync'ed) or *failed*
(only when even the spool refused it). The caller waits at most ``max_wait_s`` for a job; what
the sink has not accepted by then goes to the spool, so a slow sink delays a batch by a bounded
time and never holds memory beyond its queue.

Order per sink is kept: while the spool holds deliverable alerts, new ones are appended behind
them (and the worker drains the spool in file order), so a "resolved" never overtakes its
"firing". Alerts a sink rejected for a reason only an operator can fix (`PermanentSinkError`:
credentials, a URL) are *parked*: kept in the spool, listed by ``vaeguard spool list``, retried
on restart or ``vaeguard spool flush``, but not in the background and not in the way of the
others. An alert that can never be delivered (`UndeliverableAlertError`, or a ``ValueError`` /
``TypeError`` while the sink builds its payload) is *dead-lettered*: moved out of the spool
(`Spool.bury`), so neither the queue nor the spool holds it; in a batch that failed so, the
alerts are sent one by one to find the bad ones.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vaeguard.alerts import metrics
from vaeguard.alerts.model import Alert
from vaeguard.alerts.settings import DeliverySettings
from vaeguard.alerts.sink import Sink, SinkError, UndeliverableAlertError
from vaeguard.alerts.spool import Spool, SpoolEntry, SpoolError
from vaeguard.redaction import redact_text

log = logging.getLogger("vaeguard.alerts.delivery")

_STOP = object()


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform(0, min(cap, initial · 2^attempt)) (attempt counts from 0)."""
    ceiling = min(cap, initial * (2.0 ** min(attempt, 62)))
    return (rng or random).uniform(0.0, ceiling)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for logs, health and the spool; a URL's credentials masked (a client
    library's message may quote the URL it failed on)."""
    text = redact_text(str(exc).strip().replace("\n", " "))[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_undeliverable(exc: BaseException) -> bool:
    """This alert can never be delivered by this sink: the target rejected its payload, or the
    sink could not build one (a ValueError / TypeError escaping ``send``, e.g. from `email`)."""
    if isinstance(exc, SinkError):
        return isinstance(exc, UndeliverableAlertError)
    return isinstance(exc, ValueError | TypeError)


def is_permanent(exc: BaseException) -> bool:
    return (isinstance(exc, SinkError) and not exc.retryable) or is_undeliverable(exc)


def dead_letter_reason(exc: BaseException) -> str:
    """The bounded ``reason`` label of the dead-lettered counter."""
    return "rejected" if isinstance(exc, SinkError) else "malformed"


class CircuitBreaker:
    """Closed → (``failures`` consecutive failures) → open → (``cooldown_s``) → half-open:
    one probe; its success closes the breaker, its failure opens it again."""

    CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
    _GAUGE: ClassVar[dict[str, int]] = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

    def __init__(self, sink: str, failures: int, cooldown_s: float, clock=time.monotonic):
        self.sink = sink
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = self.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._lock = threading.Lock()
        metrics.BREAKER_STATE.labels(sink).set(0)

    def _set(self, state: str) -> None:
        if state != self.state:
            log.log(
                logging.WARNING if state == self.OPEN else logging.INFO,
                "circuit breaker %s",
                state.replace("_", "-"),
                extra={"sink": self.sink, "consecutive_failures": self.consecutive_failures},
            )
            if state == self.OPEN:
                metrics.BREAKER_OPENED.labels(self.sink).inc()
        self.state = state
        metrics.BREAKER_STATE.labels(self.sink).set(self._GAUGE[state])

    def is_open(self) -> bool:
        """Open and still cooling down (no probe allowed yet)."""
        with self._lock:
            return self.state == self.OPEN and self.clock() - self.opened_at < self.cooldown_s

    def remaining(self) -> float:
        """Seconds until a probe is allowed (0 when one is)."""
        with self._lock:
            if self.state != self.OPEN:
                return 0.0
            return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))

    def allow(self) -> bool:
        """May an attempt be made now? Moves open → half-open once the cool-down is over."""
        with self._lock:
            if self.state == self.OPEN:
                if self.clock() - self.opened_at < self.cooldown_s:
                    return False
                self._set(self.HALF_OPEN)
            return True

    def success(self) -> None:
        with self._lock:
            self.consecutive_failures = 0
            self._set(self.CLOSED)

    def failure(self) -> None:
        with self._lock:
            self.consecutive_failures += 1
            if self.state == self.HALF_OPEN or self.consecutive_failures >= self.threshold:
                self.opened_at = self.clock()
                self._set(self.OPEN)


@dataclass
class Item:
    nid: str
    alert: Alert
    state: str = "pending"  # pending → delivered | spooled | dead | failed


@dataclass
class Job:
    """One batch of alerts for one sink, handed over by one `process()` / `notify()` call."""

    items: list[Item]
    chunk_size: int
    enqueued_at: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def chunks(self) -> list[list[Item]]:
        n = self.chunk_size
        return [self.items[i : i + n] for i in range(0, len(self.items), n)]

    def check_done(self) -> None:
        if all(it.state != "pending" for it in self.items):
            self.done.set()

    def outcome(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            out[it.state] = out.get(it.state, 0) + 1
        return out


def new_nid() -> str:
    return uuid.uuid4().hex


class SinkWorker:
    """Owns one sink: its queue, thread, breaker and spool."""

    def __init__(
        self,
        sink: Sink,
        delivery: DeliverySettings,
        spool: Spool,
        *,
        type_name: str = "",
        rng: random.Random | None = None,
    ):
        self.sink = sink
        self.name = sink.name
        self.type_name = type_name
        self.delivery = delivery
        self.spool = spool
        self.rng = rng or random.Random()
        metrics.init_sink(sink.name)
        self.breaker = CircuitBreaker(
            sink.name, delivery.breaker_failures, delivery.breaker_cooldown_s
        )
        self.chunk_size = max(
            1, min(type(sink).max_batch, delivery.batch_size or type(sink).max_batch)
        )
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=delivery.queue_size)
        #: Spooled alerts a sink rejected permanently in this process (not retried here).
        self.parked: set[str] = set()
        #: Deliverable (not parked) alerts in the spool, and a counter of spool additions.
        self.backlog = 0
        self._generation = 0
        self._count_lock = threading.Lock()
        self._next_pass = math.inf
        self._pass_failures = 0
        self._wake_pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.sent = 0
        self.spooled = 0
        self.dead_lettered = 0

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> SinkWorker:
        """Start the thread; a spool left by an earlier run is redelivered right away."""
        pending = self.spool.pending()
        with self._count_lock:
            self.backlog = len(pending)
        metrics.SPOOL_PENDING.labels(self.name).set(len(pending))
        if pending:
            self._next_pass = 0.0
            log.info(
                "redelivering spooled alerts",
                extra={"sink": self.name, "pending": len(pending)},
            )
        self._thread = threading.Thread(
            target=self._run, name=f"vaeguard-sink-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread (waiting up to ``timeout``), spool anything still queued, close
        the sink."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(_STOP)
        if self._thread is not None:
            self._thread.join(self.delivery.timeout_s + 1.0 if timeout is None else timeout)
            if self._thread.is_alive():
                log.warning("sink worker did not stop in time", extra={"sink": self.name})
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, Job):
                self._spool_pending(job, job.items, "shutting down")
        try:
            self.sink.close()
        except Exception as exc:
            log.warning(
                "closing a sink failed", extra={"sink": self.name, "error": describe_error(exc)}
            )

    # -- hand-over (caller's thread) -------------------------------------------------------

    def submit(self, alerts: Sequence[tuple[str, Alert]]) -> Job:
        """Queue (nid, alert) pairs for delivery, or spool them at once when the sink is
        behind (spool backlog, open breaker, full queue, stopped)."""
        job = Job([Item(nid, a) for nid, a in alerts], self.chunk_size)
        if not job.items:
            job.done.set()
            return job
        reason = None
        if self._stop.is_set():
            reason = "shutting down"
        elif self.backlog > 0:
            reason = "behind earlier spooled alerts"
        elif self.breaker.is_open():
            reason = "circuit open"
        if reason is None:
            try:
                self.queue.put_nowait(job)
                metrics.QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())
                return job
            except queue.Full:
                reason = "queue full"
        self._spool_pending(job, job.items, reason)
        self._wake()
        return job

    def wait(self, job: Job, deadline: float) -> None:
        """Wait for the job until ``deadline`` (monotonic); then spool what is not delivered."""
        if not job.done.wait(max(0.0, deadline - time.monotonic())):
            self._spool_pending(
                job, job.items, f"not delivered within max_wait_s={self.delivery.max_wait_s:g}"
            )
            self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(None)

    def _spool_pending(
        self, job: Job, items: Sequence[Item], reason: str, park: bool = False
    ) -> None:
        with job.lock:
            todo = [it for it in items if it.state == "pending"]
            if todo:
                try:
                    self.spool.add([(it.nid, it.alert) for it in todo], reason)
                except SpoolError as exc:
                    for it in todo:
                        it.state = "failed"
                    job.error = exc
                    log.error(
                        "alerts neither delivered nor spooled",
                        extra={"sink": self.name, "alerts": len(todo), "error": str(exc)},
                    )
                else:
                    for it in todo:
                        it.state = "spooled"
                    with self._count_lock:
                        self._generation += 1
                        if park:
                            self.parked.update(it.nid for it in todo)
                        else:
                            self.backlog += len(todo)
                            if math.isinf(self._next_pass):
                                self._next_pass = time.monotonic()
                    self.spooled += len(todo)
                    metrics.SPOOLED.labels(self.name, _reason_label(reason)).inc(len(todo))
                    metrics.SPOOL_PENDING.labels(self.name).inc(len(todo))
                    log.warning(
                        "alerts spooled",
                        extra={
                            "sink": self.name,
                            "alerts": len(todo),
                            "reason": reason,
                            "alert_ids": sorted({it.alert.id for it in todo})[:20],
                        },
                    )
            job.check_done()

    # -- the worker thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = None
            if self.backlog > 0 and not math.isinf(self._next_pass):
                timeout = max(0.0, self._next_pass - time.monotonic())
            try:
                job = self.queue.get(timeout=timeout)
            except queue.Empty:
                job = None
            metrics.QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())
            if job is _STOP:
                break
            if job is None:
                self._wake_pending = False
                if self._next_pass > time.monotonic() and self._pass_failures == 0:
                    self._next_pass = time.monotonic()
            else:
                try:
                    self._run_job(job)
                except Exception:  # a bug must not kill the thread; the job is spooled
                    log.exception("sink worker failed on a job", extra={"sink": self.name})
                    self._spool_pending(job, job.items, "internal error")
            if self.backlog > 0 and time.monotonic() >= self._next_pass and not self._stop.is_set():
                try:
                    self.redeliver()
                except Exception:
                    log.exception("spool redelivery failed", extra={"sink": self.name})
                    self._next_pass = time.monotonic() + self.delivery.redelivery_interval_s

    def _run_job(self, job: Job) -> None:
        retries = self.delivery.retries
        chunks = collections.deque(job.chunks)
        while chunks:
            chunk = chunks.popleft()
            attempt = 0
            while True:
                with job.lock:
                    if any(it.state != "pending" for it in chunk):
                        return  # the caller gave up waiting: this and the rest are spooled
                if self._stop.is_set():
                    return  # close() spools what is left
                if not self.breaker.allow():
                    self._spool_rest(job, chunk, "circuit open")
                    return
                try:
                    self.sink.send([it.alert for it in chunk])
                except Exception as exc:
                    self._failed(exc, len(chunk))
                    if is_undeliverable(exc) and len(chunk) > 1:
                        # One bad alert must not cost the batch: one by one, to find it.
                        chunks.extendleft([it] for it in reversed(chunk))
                        break
                    if is_undeliverable(exc):
                        self._bury(job, chunk, exc)
                        break
                    if is_permanent(exc):
                        # Kept (parked) in the spool; the rest of the job goes on live.
                        self._spool_pending(
                            job, chunk, f"rejected: {describe_error(exc)}", park=True
                        )
                        break
                    if attempt >= retries:
                        self._spool_rest(
                            job, chunk, f"{retries + 1} attempts failed: {describe_error(exc)}"
                        )
                        return
                    delay = backoff_delay(
                        attempt,
                        self.delivery.backoff_initial_s,
                        self.delivery.backoff_max_s,
                        self.rng,
                    )
                    retry_after = getattr(exc, "retry_after", None)
                    if retry_after:
                        delay = max(delay, min(retry_after, self.delivery.backoff_max_s))
                    attempt += 1
                    metrics.RETRIED.labels(self.name).inc(len(chunk))
                    if self._stop.wait(delay):
                        return
                    continue
                self.breaker.success()
                self._delivered(job, chunk)
                break

    def _spool_rest(self, job: Job, chunk: list[Item], reason: str) -> None:
        """Spool this chunk and every later one: order per sink is kept."""
        start = next(i for i, it in enumerate(job.items) if it is chunk[0])
        self._spool_pending(job, job.items[start:], reason)

    def _failed(self, exc: BaseException, n: int) -> None:
        permanent = is_permanent(exc)
        self.last_error = describe_error(exc)
        self.last_error_at = time.time()
        metrics.FAILED.labels(self.name, "permanent" if permanent else "retryable").inc(n)
        if not permanent:  # a rejected payload says the sink is up
            self.breaker.failure()
        log.warning(
            "sink send failed",
            extra={
                "sink": self.name,
                "alerts": n,
                "error": self.last_error,
                "permanent": permanent,
                "breaker": self.breaker.state,
            },
        )

    def _delivered(self, job: Job, chunk: list[Item]) -> None:
        now = time.monotonic()
        with job.lock:
            late = [it.nid for it in chunk if it.state == "spooled"]
            for it in chunk:
                it.state = "delivered"
            job.check_done()
        self.sent += len(chunk)
        metrics.SENT.labels(self.name).inc(len(chunk))
        for _ in chunk:
            metrics.LATENCY.labels(self.name).observe(now - job.enqueued_at)
        if late:
            # Delivered after the caller had spooled it: take it out of the spool again.
            self._ack_late(late, "cannot ack a delivered alert; it may be sent twice")

    def _ack_late(self, nids: list[str], warning: str) -> None:
        try:
            self.spool.ack(nids)
        except SpoolError as exc:
            log.warning(warning, extra={"sink": self.name, "error": str(exc)})
        else:
            with self._count_lock:
                self.backlog = max(0, self.backlog - len(nids))
            metrics.SPOOL_PENDING.labels(self.name).dec(len(nids))

    # -- dead letters ----------------------------------------------------------------------

    def _bury(self, job: Job, chunk: list[Item], exc: BaseException) -> None:
        """Dead-letter a job's alerts (also ones the caller spooled meanwhile); if even that
        fails, park them in the spool rather than lose them."""
        reason = describe_error(exc)
        with job.lock:
            items = [it for it in chunk if it.state in ("pending", "spooled")]
            late = [it.nid for it in items if it.state == "spooled"]
            try:
                self.spool.bury([(it.nid, it.alert) for it in items], reason)
            except SpoolError as err:
                log.error(
                    "cannot dead-letter alerts; parking them in the spool",
                    extra={"sink": self.name, "error": str(err)},
                )
                items = []
            else:
                for it in items:
                    it.state = "dead"
                job.check_done()
        if not items:
            self._spool_pending(job, chunk, f"rejected: {reason}", park=True)
            return
        if late:
            self._ack_late(late, "cannot ack a dead-lettered alert; it will be buried again")
        self._dead_lettered([it.alert for it in items], exc)

    def _bury_entries(self, entries: list[SpoolEntry], exc: BaseException) -> bool:
        """Move spooled entries to the dead letters; False if that failed (they stay)."""
        try:
            self.spool.bury([(e.nid, e.alert) for e in entries], describe_error(exc))
            self.spool.ack([e.nid for e in entries])
        except SpoolError as err:
            log.error(
                "cannot dead-letter spooled alerts; they stay parked",
                extra={"sink": self.name, "error": str(err)},
            )
            return False
        with self._count_lock:
            self.parked.difference_update(e.nid for e in entries)
        self._dead_lettered([e.alert for e in entries], exc)
        return True

    def _dead_lettered(self, alerts: list[Alert], exc: BaseException) -> None:
        self.dead_lettered += len(alerts)
        metrics.DEAD_LETTERED.labels(self.name, dead_letter_reason(exc)).inc(len(alerts))
        log.error(
            "alerts dead-lettered: the sink can never deliver them",
            extra={
                "sink": self.name,
                "alerts": len(alerts),
                "error": describe_error(exc),
                "alert_ids": sorted({a.id for a in alerts})[:20],
                "dead_letters": str(self.spool.dead_path),
            },
        )

    # -- redelivery ------------------------------------------------------------------------

    def redeliver(self, *, include_parked: bool = False, retry: bool = False) -> tuple[int, int]:
        """One pass over the spool, oldest first; returns (delivered, still pending).

        Stops at the first retryable failure (the next pass comes after a backoff or the
        breaker's cool-down). With ``retry`` (``vaeguard spool flush``) a failing chunk gets
        the sink's retries first.
        """
        delivered = 0
        with self.spool.redelivery() as got:
            if not got:  # another process is redelivering this spool
                self._next_pass = time.monotonic() + self.delivery.redelivery_interval_s
                return 0, len(self.spool.pending())
            with self._count_lock:
                generation = self._generation
            entries = self.spool.pending()
            deliverable = [e for e in entries if include_parked or e.nid not in self.parked]
            failed = False
            n = self.chunk_size
            chunks = collections.deque(
                deliverable[i : i + n] for i in range(0, len(deliverable), n)
            )
            while chunks:
                chunk = chunks.popleft()
                if self._stop.is_set():
                    failed = True
                    break
                exc = self._send_entries(chunk, retry)
                if exc is None:
                    delivered += len(chunk)
                    continue
                if is_undeliverable(exc) and len(chunk) > 1:
                    chunks.extendleft([e] for e in reversed(chunk))
                    continue
                if is_undeliverable(exc) and self._bury_entries(chunk, exc):
                    continue
                if is_permanent(exc):
                    with self._count_lock:
                        self.parked.update(e.nid for e in chunk)
                    continue
                failed = True
                self._pass_failures += 1
                delay = backoff_delay(
                    self._pass_failures - 1,
                    self.delivery.backoff_initial_s,
                    max(self.delivery.backoff_max_s, self.delivery.redelivery_interval_s),
                    self.rng,
                )
                delay = max(
                    delay, self.breaker.remaining(), getattr(exc, "retry_after", None) or 0.0
                )
                self._next_pass = time.monotonic() + delay
                break
            try:
                remaining = self.spool.compact()
            except OSError as exc:
                log.warning("spool compaction failed", extra={"sink": self.name, "error": str(exc)})
                remaining = len(entries) - delivered
            left = [e for e in self.spool.pending() if e.nid not in self.parked]
            with self._count_lock:
                if self._generation == generation:
                    self.backlog = len(left)
                elif not left:
                    self.backlog = 0
            metrics.SPOOL_PENDING.labels(self.name).set(remaining)
            if not failed:
                self._pass_failures = 0
                self._next_pass = time.monotonic() if self.backlog else math.inf
        if delivered:
            log.info(
                "spooled alerts redelivered",
                extra={"sink": self.name, "alerts": delivered, "pending": remaining},
            )
        return delivered, remaining

    def _send_entries(self, chunk, retry: bool) -> BaseException | None:
        attempts = self.delivery.retries + 1 if retry else 1
        for attempt in range(attempts):
            if not self.breaker.allow():
                if not retry:
                    return SinkError("circuit open")
                if self._stop.wait(self.breaker.remaining()):
                    return SinkError("stopped")
                continue
            try:
                self.sink.send([e.alert for e in chunk])
            except Exception as exc:
                self._failed(exc, len(chunk))
                if is_permanent(exc) or attempt + 1 >= attempts:
                    return exc
                metrics.RETRIED.labels(self.name).inc(len(chunk))
                delay = backoff_delay(
                    attempt, self.delivery.backoff_initial_s, self.delivery.backoff_max_s, self.rng
                )
                if self._stop.wait(delay):
                    return exc
                continue
            self.breaker.success()
            nids = [e.nid for e in chunk]
            self.spool.ack(nids)
            with self._count_lock:
                self.parked.difference_update(nids)
            self.sent += len(chunk)
            metrics.SENT.labels(self.name).inc(len(chunk))
            metrics.REDELIVERED.labels(self.name).inc(len(chunk))
            return None
        return SinkError("circuit open")

    # -- direct, synchronous sending (vaeguard alert test) ---------------------------------

    def send_now(self, alerts: list[Alert]) -> int:
        """Send with this sink's retries and backoff, no spool; returns the attempts used.
        Raises the last error if the sink never accepted the alerts."""
        last: BaseException | None = None
        for attempt in range(self.delivery.retries + 1):
            try:
                self.sink.send(alerts)
            except Exception as exc:
                last = exc
                self._failed(exc, len(alerts))
                if is_permanent(exc) or attempt == self.delivery.retries:
                    break
                time.sleep(
                    backoff_delay(
                        attempt,
                        self.delivery.backoff_initial_s,
                        self.delivery.backoff_max_s,
                        self.rng,
                    )
                )
                continue
            self.breaker.success()
            return attempt + 1
        assert last is not None
        raise last

    def health(self) -> dict[str, Any]:
        try:
            own = self.sink.health()
        except Exception as exc:
            own = {"error": describe_error(exc)}
        return {
            "type": self.type_name,
            "breaker": self.breaker.state,
            "queue": self.queue.qsize(),
            "spool_backlog": self.backlog,
            "spool_parked": len(self.parked),
            "dead_lettered": self.dead_lettered,
            "sent": self.sent,
            "spooled": self.spooled,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            **({"sink": own} if own else {}),
        }


def _reason_label(reason: str) -> str:
    """A bounded label value for the spooled counter."""
    for prefix, label in (
        ("rejected", "rejected"),
        ("not delivered within", "max_wait"),
        ("circuit open", "circuit_open"),
        ("queue full", "queue_full"),
        ("behind", "backlog"),
        ("shutting down", "shutdown"),
    ):
        if reason.startswith(prefix):
            return label
    return "retries_exhausted" if "attempts failed" in reason else "other"
