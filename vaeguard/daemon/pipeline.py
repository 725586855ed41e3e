"""The daemon's Kafka side: poll → batch step → produce → flush → alert → checkpoint / commit.

One thread, one batch at a time. What happens to the records of a batch (decode, featurize,
score, dead letters) is the pure batch step (`vaeguard.records.batch`), which no record can make
raise; when offsets are committed is the checkpoint policy (`vaeguard.daemon.checkpoint`). A batch's offsets are committed only after every score record
and dead letter of the batch is acknowledged by the broker (acks=all) and the alert layer has
accepted its records, so a crash at any moment replays what was not finished (at-least-once)
and loses nothing. Rebalance callbacks run inside ``poll()``, i.e. between batches: at that
point every processed record is committed, so a revocation has nothing to flush; records that
were polled but not processed yet for a revoked partition are dropped (the new owner reads them
from the committed offset) and, should the rebalance hand that partition back to this
consumer, it is rewound to the first of them: kafka-python keeps a retained partition's fetch
position (as the Java client does), which is past the dropped records.

Failures of the broker or the alert layer are retried with capped exponential backoff while
`/readyz` reports not ready; nothing needs an operator to resume. A record the producer or the
broker refuses as too large is not retried: it becomes one dead letter (cut to fit), and if
even the smallest dead letter is refused, it is logged, counted and skipped, so no record can
stall a partition. Whatever else keeps a partition from committing while its records wait is
caught by the stall detector (`vaeguard.daemon.stall`): /readyz turns not ready.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, TopicPartition

from vaeguard.config import Settings
from vaeguard.daemon import metrics
from vaeguard.daemon.checkpoint import Checkpoint, StateStore, state_key
from vaeguard.daemon.logs import kafka_client_error, watch_kafka_client_errors
from vaeguard.daemon.model_provider import ActiveModel, ModelProvider
from vaeguard.daemon.stall import StallDetector
from vaeguard.errors import ConfigError
from vaeguard.errors import ShutdownExpired as ShutdownExpired
from vaeguard.ingest import STAGE_PRODUCE, Reason, Rejection, short_detail
from vaeguard.records import batch as batch_step
from vaeguard.records.inputs import InputStage
from vaeguard.records.wire import DeadLetter, Output, dlq_minimal, dlq_output
from vaeguard.scored import ScoredRecord

log = logging.getLogger("vaeguard.daemon")

#: How long an idle poll blocks: bounds how fast the loop notices a stop request.
IDLE_POLL_MS = 200
#: The producer's largest request (kafka-python's default): dead letters are cut to fit it.
MAX_REQUEST_SIZE = 1_048_576


@dataclass
class Shutdown:
    """A stop request and the monotonic deadline by which the daemon must be gone."""

    grace_s: float
    requested: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None

    def request(self) -> None:
        if not self.requested.is_set():
            self.deadline = time.monotonic() + self.grace_s
            self.requested.set()

    def expired(self, margin: float = 0.0) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline - margin

    def remaining(self, default: float) -> float:
        if self.deadline is None:
            return default
        return max(0.0, min(default, self.deadline - time.monotonic()))


@dataclass
class Stats:
    """Running totals (also in /metrics); read by the demo and the benchmark in-process."""

    consumed: int = 0
    scored: int = 0
    anomalous: int = 0
    dead_lettered: int = 0
    batches: int = 0
    duplicates_possible: int = 0
    buffered: int = 0  # window mode: records that only filled their entity's window
    replayed: int = 0  # window mode: replayed records the restored state already held
    refits: int = 0  # window mode: online warm refits that succeeded
    #: Seconds per stage of the record path (see metrics.STAGES), summed over batches.
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _Listener(ConsumerRebalanceListener):
    """Tracks the assignment. Runs on kafka-python's IO thread while the loop sits in poll()."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def on_partitions_revoked(self, revoked) -> None:
        self.pipeline._revoked(set(revoked), lost=False)

    def on_partitions_lost(self, lost) -> None:
        self.pipeline._revoked(set(lost), lost=True)

    def on_partitions_assigned(self, assigned) -> None:
        self.pipeline._assigned(set(assigned))


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        provider: ModelProvider,
        alert_layer: Any,
        shutdown: Shutdown,
        *,
        on_batch: Callable[[list[ScoredRecord], list[DeadLetter]], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
    ):
        self.settings = settings
        #: Called wherever the loop comes round or waits (a supervisor's hang detection).
        self._beat = heartbeat or (lambda: None)
        self.kafka = settings.kafka
        self.scoring = settings.scoring
        self.provider = provider
        self.alert_layer = alert_layer
        self.shutdown = shutdown
        self.on_batch = on_batch
        self.consumer = None
        self.producer = None
        self.stats = Stats()
        self.assignment: set[Any] = set()
        self._recently_revoked: set[Any] = set()
        #: First offset of each revoked partition's dropped records: where to rewind it if the
        #: rebalance hands it back.
        self._dropped_from: dict[Any, int] = {}
        #: Between a revocation and the assignment that ends the rebalance.
        self._rebalancing = False
        #: Assigned partitions whose committed offsets the checkpoint has not been told yet.
        self._committed_unknown: set[Any] = set()
        self._positions: dict[Any, int] = {}
        self._last_broker_ok = 0.0
        self._broker_ok = False
        #: Why the broker is taken as unreachable (for /readyz), while it is.
        self._broker_problem: str | None = None
        #: What the log last said about the broker (lines on a change only, see `_idle`).
        self._reported_reachable = True
        self._last_metrics_check = 0.0
        self._model: ActiveModel | None = None
        self._task_id = settings.kafka.group_instance_id or settings.kafka.client_id
        self._step = batch_step.StepSettings(
            output_topic=settings.kafka.output_topic,
            dlq_topic=settings.kafka.dlq_topic,
            max_record_bytes=settings.scoring.max_record_bytes,
            top_k=settings.scoring.top_k,
            bands=tuple(settings.scoring.bands),
            connector=settings.kafka.group_id,
            task=self._task_id,
            max_request_size=MAX_REQUEST_SIZE,
            output_mode=settings.output.mode,
            max_key_bytes=settings.scoring.max_key_bytes,
        )
        store = (
            StateStore(
                settings.scoring.state_dir,
                settings.kafka.group_id,
                self._task_id,
                state_key(settings.scoring),
            )
            if settings.scoring.state_dir is not None
            else None
        )
        self.checkpoint = Checkpoint(store, settings.scoring.state_interval_s, self._commit)
        self._partitioner = KeyPartitioner()
        #: `input.format` other than flat: the field mapping (and, tabular, the waiting rows).
        self._inputs = (
            InputStage(settings.input.spec()) if settings.input.format != "flat" else None
        )
        self.stalls = StallDetector(settings.scoring.stall_after_s)

    # -- readiness ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        model = self.provider.current()
        details = {
            "model_loaded": model is not None,
            "model_version": model.version if model else None,
            "partitions_assigned": len(self.assignment),
            "broker_reachable": self.broker_reachable,
            "stopping": self.shutdown.requested.is_set(),
        }
        stalled = self.stalls.check()
        details["stalled_partitions"] = [stall.to_json() for stall in stalled]
        reasons = []
        if details["stopping"]:
            reasons.append("stopping")
        if model is None:
            reasons.append("no model loaded yet")
        if not details["broker_reachable"]:
            reasons.append(self._broker_problem or self._silence())
        elif not self.assignment:
            reasons.append("no input partitions assigned (yet)")
        if stalled:
            reasons.append(f"{len(stalled)} partition(s) stalled")
        ready = not reasons
        details["reason"] = "; ".join(reasons) if reasons else None
        metrics.READY.set(1 if ready else 0)
        return ready, details

    @property
    def broker_reachable(self) -> bool:
        window = max(3 * self.kafka.heartbeat_interval_ms / 1000, 5.0)
        return self._broker_ok and time.monotonic() - self._last_broker_ok < window

    def _broker_up(self) -> None:
        self._broker_ok = True
        self._broker_problem = None
        self._last_broker_ok = time.monotonic()

    def _broker_down(self, problem: str | None = None) -> None:
        self._broker_ok = False
        if problem is not None:
            self._broker_problem = problem

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Process batches until a stop is requested; then finish, commit and close."""
        try:
            if not self._connect():
                return
            while not self.shutdown.requested.is_set():
                self._beat()
                batch = self._poll()
                if batch:
                    self._process(batch)
                elif self._inputs is not None and self._inputs.due():
                    self._process({})  # close the rows that have waited input.max_wait_s
                    self._idle()
                else:
                    self._idle()
            self.checkpoint.flush()
        finally:
            self._close()

    def _connect(self) -> bool:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaConfigurationError, KafkaError

        watch_kafka_client_errors()
        attempt = 0
        while not self.shutdown.requested.is_set():
            tried_at = time.monotonic()
            try:
                if self.producer is None:
                    self.producer = self._new_producer()
                consumer = KafkaConsumer(**self.kafka.consumer_config(**self.consumer_options()))
                consumer.subscribe(self.kafka.input_topics, listener=_Listener(self))
                self.consumer = consumer
                self._broker_up()
                self._reported_reachable = True
                log.info(
                    "connected to Kafka",
                    extra={
                        "bootstrap_servers": self.kafka.bootstrap_servers,
                        "topics": self.kafka.input_topics,
                        "group_id": self.kafka.group_id,
                        "group_instance_id": self.kafka.group_instance_id,
                    },
                )
                return True
            except KafkaConfigurationError as exc:  # settings kafka-python refuses together
                raise ConfigError(f"invalid Kafka client settings (kafka section): {exc}") from None
            except (KafkaError, OSError) as exc:
                attempt += 1
                metrics.RETRIES.labels(stage="connect").inc()
                delay = _backoff(attempt)
                cause = kafka_client_error(tried_at) or f"{type(exc).__name__}: {exc}"
                servers = self.kafka.bootstrap_servers
                self._broker_down(f"Kafka broker {servers} unreachable: {cause}")
                # One line per attempt: kafka-python's own lines are kept out (daemon.logs).
                log.warning(
                    f"kafka: broker {servers} unreachable ({cause}); retrying in {delay:g} s",
                    extra={
                        "error": f"{type(exc).__name__}: {exc}",
                        "cause": cause,
                        "attempt": attempt,
                        "retry_in_s": delay,
                    },
                )
                self._beat()
                self.shutdown.requested.wait(delay)
        return False

    def _close(self) -> None:
        timeout = self.shutdown.remaining(10.0)
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=int(timeout * 1000))
            except Exception as exc:
                log.warning("consumer close failed", extra={"error": str(exc)})
        if self.producer is not None:
            try:
                self.producer.close(timeout=self.shutdown.remaining(10.0))
            except Exception as exc:
                log.warning("producer close failed", extra={"error": str(exc)})
        self.assignment = set()
        self.stalls.clear()
        metrics.PARTITIONS_ASSIGNED.set(0)

    # -- rebalance callbacks (IO thread, during poll) -----------------------------------------

    def _assigned(self, assigned: set[Any]) -> None:
        self.assignment |= assigned
        self._committed_unknown |= assigned  # fetched off the IO thread (`_learn_committed`)
        # Eager rebalancing: ``assigned`` is the whole new assignment. A partition not handed
        # back has a new owner, which reads from the committed offset: nothing to rewind.
        self._rebalancing = False
        self._rewind(assigned & self._dropped_from.keys())
        self._dropped_from.clear()
        self.stalls.assigned(assigned)
        self._broker_up()
        metrics.PARTITIONS_ASSIGNED.set(len(self.assignment))
        log.info(
            "partitions assigned",
            extra={"partitions": _names(assigned), "total": len(self.assignment)},
        )

    def _revoked(self, revoked: set[Any], lost: bool) -> None:
        self.assignment -= revoked
        self._committed_unknown -= revoked
        self._rebalancing = True
        self.checkpoint.revoked(revoked)
        if self._inputs is not None:
            self._held_back(self._inputs.revoked(revoked))
        self._recently_revoked |= revoked
        self.stalls.revoked(revoked)
        for tp in revoked:
            self._positions.pop(tp, None)
            metrics.forget_partition(tp.topic, tp.partition)
        metrics.PARTITIONS_ASSIGNED.set(len(self.assignment))
        log.info(
            "partitions lost" if lost else "partitions revoked",
            extra={"partitions": _names(revoked), "total": len(self.assignment)},
        )

    # -- one batch --------------------------------------------------------------------------------

    def _new_producer(self):
        from kafka import KafkaProducer

        # linger_ms, batch_size and bootstrap_timeout_ms are defaults kafka.producer may
        # override; the rest is vaeguard's own (refused there, see kafka_options.KAFKA_OWNED).
        return KafkaProducer(
            **self.kafka.producer_config(
                acks="all",
                linger_ms=5,
                batch_size=256 * 1024,
                max_request_size=MAX_REQUEST_SIZE,
                max_block_ms=self.kafka.request_timeout_ms,
                delivery_timeout_ms=self._delivery_timeout_ms,
                bootstrap_timeout_ms=5_000,
            )
        )

    @property
    def _delivery_timeout_ms(self) -> int:
        return 3 * self.kafka.request_timeout_ms

    def _replace_producer(self, reason: str) -> None:
        """Swap in a new producer; the old one is closed off the scoring path.

        Records it still holds are not acknowledged, so the caller resends them on the new one
        (duplicates at worst, as at-least-once allows; nothing is committed before an ack).
        """
        from kafka.errors import KafkaError

        old, self.producer = self.producer, None
        metrics.RETRIES.labels(stage="producer_reset").inc()
        log.warning("replacing the Kafka producer", extra={"reason": reason})
        if old is not None:
            threading.Thread(
                target=old.close, kwargs={"timeout": 0}, name="vaeguard-producer-close", daemon=True
            ).start()
        try:
            self.producer = self._new_producer()
        except KafkaError as exc:  # the broker is still away: the produce retry tries again
            log.warning("could not create a Kafka producer yet", extra={"error": str(exc)})

    def consumer_options(self) -> dict[str, Any]:
        """The group consumer's settings beyond the connection ones."""
        return {
            "group_id": self.kafka.group_id,
            "group_instance_id": self.kafka.group_instance_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.kafka.auto_offset_reset,
            "session_timeout_ms": self.kafka.session_timeout_ms,
            "heartbeat_interval_ms": self.kafka.heartbeat_interval_ms,
            "max_poll_interval_ms": self.kafka.max_poll_interval_ms,
            "max_poll_records": self.scoring.batch_max_records,
            # Tansu answers a fetch only when its wait expires, and kafka-python's default of
            # 500 ms then sets the latency floor (benchmarks/RESULTS-throughput.md): wait no
            # longer than a batch does.
            "fetch_max_wait_ms": max(1, self.scoring.batch_max_wait_ms),
            "bootstrap_timeout_ms": 5_000,
        }

    def _poll(self) -> dict[Any, list[Any]]:
        """Up to batch_max_records, waiting at most batch_max_wait_ms after the first record."""
        limit = self.scoring.batch_max_records
        self._recently_revoked = set()
        batch = self._drop_revoked(self._poll_once(IDLE_POLL_MS, limit))
        if not batch:
            return batch
        count = sum(len(v) for v in batch.values())
        deadline = time.monotonic() + self.scoring.batch_max_wait_ms / 1000
        while count < limit and not self.shutdown.requested.is_set():
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                break
            more = self._poll_once(wait_ms, limit - count)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
            batch = self._drop_revoked(batch)
            count = sum(len(v) for v in batch.values())
            if not more:
                break
        return batch

    def _drop_revoked(self, batch: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """Drop the unprocessed records of partitions revoked during the poll: their next owner
        replays them from the committed offset. If the same rebalance gives a partition back to
        this consumer, kafka-python keeps its fetch position, which is past the dropped records,
        and the next commit would cover them unscored: so the partition is rewound to the first
        of them, now if the assignment came within the same poll, else when it comes
        (`_assigned`)."""
        if not self._recently_revoked:
            return batch
        for tp in self._recently_revoked:
            records = batch.pop(tp, [])
            if records:
                first = records[0].offset
                self._dropped_from[tp] = min(first, self._dropped_from.get(tp, first))
        self._recently_revoked = set()
        if not self._rebalancing:  # the assignment came within the same poll
            self._rewind(self.assignment & self._dropped_from.keys())
            self._dropped_from.clear()
        return {tp: records for tp, records in batch.items() if records}

    def _held_back(self, held: dict[tuple[str, int], int]) -> None:
        """Rows that waited are dropped at a rebalance: their partitions, if handed back, are
        rewound to the first sample those rows held (as dropped records are, `_assigned`)."""
        for (topic, partition), offset in held.items():
            tp = TopicPartition(topic, partition)
            self._dropped_from[tp] = min(offset, self._dropped_from.get(tp, offset))

    def _rewind(self, partitions: set[Any]) -> None:
        for tp in partitions:
            offset = self._dropped_from.pop(tp)
            self.consumer.seek(tp, offset)
            log.info(
                "partition handed back by the rebalance: rewound to its dropped records",
                extra={"partition": _names({tp})[0], "offset": offset},
            )

    def _poll_once(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        from kafka.errors import KafkaError

        try:
            records = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            self._broker_down()
            metrics.RETRIES.labels(stage="poll").inc()
            log.warning("poll failed; retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
            self.shutdown.requested.wait(1.0)
            return {}
        if records:
            self._broker_up()
        return records

    def _idle(self) -> None:
        failure = getattr(self.provider, "failure", None)
        if failure is not None:
            raise failure
        now = time.monotonic()
        if now - self._last_metrics_check < 1.0:
            return
        self._last_metrics_check = now
        self.checkpoint.tick()
        self.readiness()  # keeps vaeguard_ready current for a supervisor (no HTTP in workers)
        if not self._rebalancing:  # kafka-python lists the revoked ones until the assignment
            self.assignment = set(self.consumer.assignment())
        metrics.PARTITIONS_ASSIGNED.set(len(self.assignment))
        try:
            coordinator = self.consumer.metrics().get("consumer-coordinator-metrics", {})
            heartbeat_ago = float(coordinator.get("last-heartbeat-seconds-ago", float("inf")))
        except Exception:
            heartbeat_ago = float("inf")
        if heartbeat_ago < max(2 * self.kafka.heartbeat_interval_ms / 1000, 2.0):
            self._broker_up()
        self._report_broker()
        self._update_lag()

    def _silence(self) -> str:
        """Why the broker seems away when no connection attempt of ours failed."""
        if self._broker_ok and kafka_client_error(self._last_broker_ok) is None:
            return "waiting for the consumer group (no heartbeat yet)"
        return f"Kafka broker {self.kafka.bootstrap_servers} not answering"

    def _report_broker(self) -> None:
        """One line when the broker stops answering, one when it is back (kafka-python keeps
        reconnecting on its own meanwhile; its lines are kept out, see daemon.logs)."""
        reachable = self.broker_reachable
        cause = None if reachable else kafka_client_error(self._last_broker_ok)
        if not reachable and cause is None:  # a slow group join, not an outage
            return
        if reachable == self._reported_reachable:
            return
        self._reported_reachable = reachable
        servers = self.kafka.bootstrap_servers
        if reachable:
            log.info(f"kafka: broker {servers} reachable again")
            return
        self._broker_problem = f"Kafka broker {servers} not answering: {cause}"
        log.warning(
            f"kafka: broker {servers} not answering ({cause}); the client keeps reconnecting",
            extra={"cause": cause},
        )

    def _update_lag(self) -> None:
        for tp in list(self.assignment):
            try:
                high = self.consumer.highwater(tp)
            except Exception:
                continue
            position = self._positions.get(tp)
            if high is None or position is None:
                continue
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
            self.stalls.lag(tp, high - position)

    def _active_model(self) -> ActiveModel:
        model = self.provider.current()
        while model is None:
            self._beat()
            model = self.provider.wait_ready(0.5)
            if model is None and self.shutdown.expired():
                raise ShutdownExpired("stopped before the model finished loading")
        if self._model is None or model.version != self._model.version:
            log.info("scoring with model", extra={"version": model.version})
            self.checkpoint.take_over(model.serving, model.version)
            self._model = model
            _settle_heap()
        return model

    def _process(self, batch: dict[Any, list[Any]]) -> None:
        started = time.perf_counter()
        model = self._active_model()
        serving = model.serving
        if serving.stateful:  # before `covers` skips anything
            self._learn_committed()
        messages = [m for records in batch.values() for m in records]
        for tp, records in batch.items():
            metrics.RECORDS_CONSUMED.labels(topic=tp.topic).inc(len(records))
            self.stalls.polled(tp, records[0].offset)

        result = batch_step.process(serving, messages, self._step, self._inputs)
        if result.held:
            metrics.INPUT_MESSAGES.labels("held").inc(result.held)
        if result.unmapped:
            metrics.INPUT_MESSAGES.labels("unmapped").inc(result.unmapped)
        if result.replayed:
            self.stats.replayed += result.replayed
            metrics.WINDOW_REPLAYED.inc(result.replayed)
            log.info(
                "replayed records skipped: the restored window state already holds them",
                extra={"records": result.replayed},
            )
        if result.buffered:
            self.stats.buffered += result.buffered
            metrics.WINDOW_BUFFERED.inc(result.buffered)
        if result.refit is not None:
            metrics.WINDOW_REFITS.labels(result.refit["result"]).inc()
            self.stats.refits += bool(result.refit["ok"])
        scored, dead = result.scored, result.dead
        timings = dict(result.timings)
        t0 = time.perf_counter()
        refused = self._produce(result.outputs, result.origins)
        if refused:  # score records too large for the broker: dead letters now, not scores
            gone = {batch_step.source_of(d.message) for d in refused}
            scored = [r for r in scored if r.source not in gone]
            dead = [*dead, *refused]
        t1 = time.perf_counter()
        self._alert(scored)
        t2 = time.perf_counter()
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        if self._inputs is not None:  # not past the samples of rows still waiting
            offsets = self._inputs.commit_offsets(offsets)
        if offsets or self._inputs is None:
            self.checkpoint.done(serving, offsets)
            if self._inputs is not None:
                self._inputs.committed(offsets)
        timings.update(produce=t1 - t0, alert=t2 - t1, commit=time.perf_counter() - t2)
        for stage, seconds in timings.items():
            metrics.STAGE_SECONDS.labels(stage).inc(seconds)
            self.stats.stage_seconds[stage] = self.stats.stage_seconds.get(stage, 0.0) + seconds
        if serving.stateful:
            metrics.WINDOW_ENTITIES.set(serving.n_entities)

        n_anomalous = sum(1 for r in scored if r.is_anomaly)
        p_values = [r.p_value for r in scored if r.p_value is not None]
        if p_values:
            metrics.observe_p_values(p_values)
        metrics.RECORDS_SCORED.inc(len(scored))
        metrics.RECORDS_ANOMALOUS.inc(n_anomalous)
        for d in dead:
            metrics.RECORDS_DEAD_LETTERED.labels(reason=d.reason).inc()
            log.info(
                "record dead-lettered",
                extra={
                    "reason": d.reason,
                    "detail": d.detail,
                    "topic": d.message.topic,
                    "partition": d.message.partition,
                    "offset": d.message.offset,
                },
            )
        self.stats.consumed += len(messages)
        self.stats.scored += len(scored)
        self.stats.anomalous += n_anomalous
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1
        metrics.BATCH_RECORDS.observe(len(messages))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)
        self._update_lag()
        if time.monotonic() - self._last_metrics_check > 1.0:
            self._last_metrics_check = time.monotonic()
            self.readiness()
        if self.on_batch is not None:
            self.on_batch(scored, dead)

    # -- the three steps that must succeed before a commit --------------------------------------

    def _produce(
        self,
        outputs: list[Output],
        origins: list[tuple[Any, DeadLetter | None]] | None = None,
    ) -> list[DeadLetter]:
        """Produce every output until each is acknowledged; retried with backoff while the
        broker fails. ``origins``: each output's consumed message and, for a dead letter, its
        `DeadLetter` (`batch_step.BatchResult.origins`).

        An output refused as too large (by the producer's own check in ``send`` or by the
        broker) is never retried: a score record becomes a dead letter (``oversize_output``),
        a dead letter its minimal form (`dlq_minimal`), and a minimal dead letter refused too
        is logged and counted, then skipped. Returns the dead letters that replaced score
        records."""
        from kafka.errors import KafkaError

        if origins is None:
            origins = [(None, None)] * len(outputs)
        pending = [_Out(o, m, d) for o, (m, d) in zip(outputs, origins, strict=True)]
        replaced: list[DeadLetter] = []
        attempt = 0
        while pending:
            futures: list[Any] = []
            error: BaseException | None = None
            if self.producer is None:
                self._replace_producer("no producer after an earlier reset")
            partition = self._partitioner(self.producer) if self.producer is not None else None
            for i, item in enumerate(pending):
                topic, key, value, headers = item.output
                if self.producer is None:  # still none: the broker is away, retry below
                    futures = [None] * len(pending)
                    break
                try:
                    futures.append(
                        self.producer.send(
                            topic,
                            value=value,
                            key=key,
                            headers=headers,
                            partition=None if key is None else partition(topic, key),
                        )
                    )
                except SIZE_ERRORS as exc:  # the producer's own size check, before sending
                    futures.append(_Refused(exc))
                except KafkaError as exc:  # metadata or buffer wait timed out
                    error = exc
                    futures.extend([None] * (len(pending) - i))
                    break
            self._flush(futures)
            failed: list[_Out] = []
            smaller: list[_Out] = []
            for item, future in zip(pending, futures, strict=True):
                if future is not None and future.succeeded():
                    continue
                exc = future.exception if future is not None and future.is_done else None
                if isinstance(exc, SIZE_ERRORS):
                    nxt = self._smaller(item, exc, replaced)
                    if nxt is not None:
                        smaller.append(nxt)
                    continue
                failed.append(item)
                if error is None and exc is not None:
                    error = exc
            if not failed:
                self._broker_up()
                pending = smaller  # sent at once: the broker answered, only the size was wrong
                continue
            self._broker_down()
            attempt += 1
            self._retry_wait("produce", attempt, error, {"failed": len(failed), "of": len(pending)})
            pending = failed + smaller
        return replaced

    def _smaller(self, item: _Out, exc: BaseException, replaced: list[DeadLetter]) -> _Out | None:
        """What to send instead of an output refused as too large (None: give it up)."""
        s = self._step
        if item.message is not None and item.dead is None:  # a score record
            dead = DeadLetter(
                item.message,
                Rejection(
                    Reason.OVERSIZE_OUTPUT,
                    type(exc).__name__,
                    short_detail(f"the score record was refused as too large: {exc}"),
                    STAGE_PRODUCE,
                ),
                "vaeguard.daemon.pipeline",
            )
            replaced.append(dead)
            return _Out(
                dlq_output(dead, s.dlq_topic, s.connector, s.task, s.max_request_size),
                item.message,
                dead,
            )
        if item.dead is not None and not item.minimal:
            return _Out(
                dlq_minimal(item.dead, s.dlq_topic, s.connector, s.task),
                item.message,
                item.dead,
                minimal=True,
            )
        m = item.message
        metrics.DEAD_LETTERS_DROPPED.inc()
        log.error(
            "a record's dead letter was refused as too large even without its key and value; "
            "the record is skipped",
            extra={
                "topic": getattr(m, "topic", None),
                "partition": getattr(m, "partition", None),
                "offset": getattr(m, "offset", None),
                "reason": item.dead.reason if item.dead is not None else None,
                "output_topic": item.output[0],
                "error": f"{type(exc).__name__}: {exc}",
            },
        )
        return None

    def _flush(self, futures) -> None:
        """Wait for every future to resolve, or for the producer to break its own contract.

        kafka-python resolves each record within the delivery timeout, acknowledged or failed;
        after a broker freeze its producer was seen to hold a batch unresolved for good on a
        live connection (tests/daemon/test_delivery.py, the frozen broker). Past the delivery
        timeout plus one request timeout the producer is replaced and the batch resent.
        """
        from kafka.errors import KafkaTimeoutError

        if self.producer is None:
            return
        overdue_at = (
            time.monotonic() + (self._delivery_timeout_ms + self.kafka.request_timeout_ms) / 1000
        )
        while True:
            self._beat()
            with contextlib.suppress(KafkaTimeoutError):
                self.producer.flush(timeout=1.0)
            if all(f is None or f.is_done for f in futures):
                return
            self._broker_down()
            if self.shutdown.expired(margin=1.0):
                raise ShutdownExpired(
                    "shutdown grace expired while waiting for the broker to acknowledge a batch; "
                    "it was not committed and will be replayed"
                )
            if time.monotonic() > overdue_at:
                self._replace_producer("records unresolved past the delivery timeout")
                return

    def _alert(self, scored: list[ScoredRecord]) -> None:
        """Hand the batch to the alert layer. A delivery failure (no sink and no spool took
        the alerts) is retried; any other error is a record the layer cannot take, so the batch
        is retried record by record and a record that still fails is logged and counted (its
        score record is on the output topic already): it must not block the stream."""
        from vaeguard.alerts.layer import AlertDeliveryError

        attempt = 0
        while True:
            try:
                self.alert_layer.process(scored)
                return
            except AlertDeliveryError as exc:
                attempt += 1
                self._retry_wait("alert", attempt, exc, {"records": len(scored)})
            except Exception as exc:
                if len(scored) > 1:
                    for record in scored:
                        self._alert([record])
                    return
                metrics.ALERT_RECORD_ERRORS.inc()
                log.error(
                    "the alert layer could not take a scored record; no alert for it",
                    exc_info=exc,
                    extra={"source": scored[0].source.to_json() if scored else None},
                )
                return

    def _commit(self, next_offsets: dict[Any, int]) -> None:
        from kafka import OffsetAndMetadata
        from kafka.errors import (
            CommitFailedError,
            FencedInstanceIdError,
            IllegalGenerationError,
            KafkaError,
            RebalanceInProgressError,
            UnknownMemberIdError,
        )

        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()}
        attempt = 0
        while True:
            try:
                self.consumer.commit(offsets, timeout_ms=self.kafka.request_timeout_ms)
                break
            except (
                CommitFailedError,
                IllegalGenerationError,
                UnknownMemberIdError,
                RebalanceInProgressError,
                FencedInstanceIdError,
            ) as exc:
                # The group moved on: the partitions' new owner replays from the last commit.
                # Nothing is lost (this batch is already produced); a few records score twice.
                self.stats.duplicates_possible += sum(1 for _ in offsets)
                log.warning(
                    "commit refused after a rebalance; the new owner will replay this batch",
                    extra={"error": f"{type(exc).__name__}: {exc}", "partitions": _names(offsets)},
                )
                return
            except KafkaError as exc:
                if not (getattr(exc, "retriable", False) or "Timeout" in type(exc).__name__):
                    raise
                self._broker_down()
                attempt += 1
                self._retry_wait("commit", attempt, exc, {"partitions": _names(offsets)})
        self._broker_up()
        metrics.LAST_COMMIT.set_to_current_time()
        self._positions.update(next_offsets)
        for tp, offset in next_offsets.items():
            self.stalls.committed(tp, offset)

    def _learn_committed(self) -> None:
        """Tell the checkpoint the group's committed offsets of newly assigned partitions, so
        a window state's offsets beyond them cannot skip records (`Checkpoint.committed`).
        Fetched here, not in the rebalance callback: that runs on the IO thread, which a
        blocking fetch would deadlock."""
        from kafka.errors import KafkaError

        attempt = 0
        while self._committed_unknown:
            partitions = set(self._committed_unknown)
            try:
                found = {
                    tp: self.consumer.committed(tp, timeout_ms=self.kafka.request_timeout_ms)
                    for tp in partitions
                }
            except KafkaError as exc:
                self._broker_down()
                attempt += 1
                self._retry_wait("committed", attempt, exc, {"partitions": _names(partitions)})
                continue
            self._committed_unknown -= partitions
            self.checkpoint.committed(found)

    def _retry_wait(
        self, stage: str, attempt: int, error: BaseException | None, extra: dict
    ) -> None:
        metrics.RETRIES.labels(stage=stage).inc()
        self.readiness()  # the stall detector, and vaeguard_ready for a supervisor
        if self.shutdown.expired(margin=1.0):
            raise ShutdownExpired(
                f"shutdown grace expired while retrying the {stage} step; the batch was not "
                "committed and will be replayed"
            )
        delay = _backoff(attempt)
        if self.shutdown.deadline is not None:
            delay = min(delay, max(0.0, self.shutdown.deadline - time.monotonic() - 1.0))
        log.warning(
            f"{stage} failed; retrying",
            extra={
                "error": f"{type(error).__name__}: {error}" if error else None,
                "attempt": attempt,
                "retry_in_s": round(delay, 2),
                **extra,
            },
        )
        self._beat()
        time.sleep(delay)


@dataclass(slots=True)
class _Out:
    """An output on its way to the broker, with what it came from."""

    output: Output
    message: Any = None  # the consumed record
    dead: DeadLetter | None = None  # set for a dead letter
    minimal: bool = False  # a dead letter already reduced to its error headers


class _Refused:
    """A send the producer refused at once, dressed as a failed future."""

    is_done = True

    def __init__(self, exception: BaseException):
        self.exception = exception

    def succeeded(self) -> bool:
        return False


def _size_errors() -> tuple[type[BaseException], ...]:
    from kafka import errors

    names = ("MessageSizeTooLargeError", "RecordListTooLargeError", "RecordTooLargeError")
    return tuple(getattr(errors, n) for n in names if hasattr(errors, n))


#: Errors that mean "this record is too large": retrying it can never succeed.
SIZE_ERRORS = _size_errors()


#: Longest key whose hash `KeyPartitioner` remembers (an entity; not a dead letter's payload).
MAX_CACHED_KEY = 1024


class KeyPartitioner:
    """kafka-python's default partitioning of keyed records (murmur2 of the key, as the Java
    client), with each key's hash remembered: the pure-Python murmur2 is a visible share of a
    send's cost, and a stream's entities repeat. Called once per batch, so a topic's partition
    count is read afresh each batch (it can grow)."""

    MAX_KEYS = 100_000

    def __init__(self):
        self._hash: dict[bytes, int] = {}

    def __call__(self, producer):
        from kafka.partitioner.default import murmur2

        partitions: dict[str, list[int]] = {}
        hashes = self._hash
        if len(hashes) > self.MAX_KEYS:
            hashes.clear()

        def partition(topic: str, key: bytes) -> int | None:
            parts = partitions.get(topic)
            if parts is None:
                parts = partitions[topic] = sorted(producer.partitions_for(topic) or ())
            if not parts:
                return None  # metadata not known yet: the producer partitions it itself
            h = hashes.get(key)
            if h is None:
                h = murmur2(key) & 0x7FFFFFFF
                if len(key) <= MAX_CACHED_KEY:  # a dead letter's huge key is hashed, not kept
                    hashes[key] = h
            return parts[h % len(parts)]

        return partition


def _settle_heap() -> None:
    """Collect once, then exempt everything alive (TensorFlow, Keras, the model) from the
    cyclic garbage collector: its full collections otherwise scan that huge heap and freeze
    every thread, the Kafka clients' included (a p99 latency spike each time,
    benchmarks/throughput.py). Redone at each model swap so a replaced model is freed."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _backoff(attempt: int, base: float = 0.25, cap: float = 5.0) -> float:
    return min(cap, base * 2 ** (attempt - 1))


def _names(tps) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
