"""The contract between the daemon and alerting: `AlertLayer` and `build_alert_layer`.

The daemon calls `AlertLayer.process(records)` once per batch with every scored record (normal
ones too: they resolve episodes) and commits its Kafka offsets only after it returns. It
returns only when every alert the batch produced is delivered or durably spooled, and raises
`AlertDeliveryError` if it could do neither (the daemon then retries the same batch).

Records become alerts here: grouping (one episode per group, stream + entity by default),
dedup (an episode notifies each sink once, again after ``repeat_interval_s`` or when it
escalates), resolve after ``resolve_after_records`` normal records (or early, least recently
active first, beyond ``max_open_episodes``), routing with rate limits, then delivery through
one `SinkWorker` per sink.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from vaeguard.alerts import metrics
from vaeguard.alerts.delivery import SinkWorker, describe_error, new_nid
from vaeguard.alerts.model import (
    Alert,
    AlertSource,
    FeatureContribution,
    alert_id,
    firing_summary,
    resolved_summary,
    to_datetime,
)
from vaeguard.alerts.routing import Router, SeverityOrder
from vaeguard.alerts.settings import AlertsSettings
from vaeguard.alerts.sink import SinkContext, kafka_config_for
from vaeguard.alerts.spool import Spool
from vaeguard.errors import AlertDeliveryError as AlertDeliveryError
from vaeguard.errors import ConfigError
from vaeguard.scored import ScoredRecord, Source
from vaeguard.severity import DEFAULT_BANDS

log = logging.getLogger("vaeguard.alerts")


@dataclasses.dataclass
class Episode:
    """One group's run of anomalies, from its first anomalous record until it resolves."""

    key: tuple
    group: dict[str, str | None]
    id: str
    stream: str
    entity: str | None
    first: AlertSource
    first_seen: dt.datetime
    last_seen: dt.datetime
    touched_at: float
    count: int = 0
    score: float = 0.0
    threshold: float = 0.0
    severity: str = ""
    peak_score: float = float("-inf")
    peak_severity: str = ""
    peak_rank: int = 0
    top: list[FeatureContribution] = dataclasses.field(default_factory=list)
    model_version: str = ""
    source: AlertSource | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    normal_streak: int = 0
    #: sink → (clock time, peak rank) of its last notification.
    notified: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)

    #: Why it closed, when not by normal records (e.g. evicted beyond max_open_episodes).
    closed_because: str | None = None

    def alert(self, status: str = "firing", resolved_at: dt.datetime | None = None) -> Alert:
        if status == "resolved" and self.closed_because:
            where = f" on {self.entity}" if self.entity else ""
            summary = f"{self.stream} episode{where} closed: {self.closed_because}"
        elif status == "firing":
            summary = firing_summary(
                self.stream, self.entity, self.score, self.threshold, self.severity, self.top
            )
        else:
            summary = resolved_summary(
                self.stream,
                self.entity,
                self.normal_streak,
                self.count,
                self.peak_score,
                self.peak_severity,
            )
        return Alert(
            id=self.id,
            status=status,
            stream=self.stream,
            entity=self.entity,
            group=self.group,
            severity=self.severity,
            peak_severity=self.peak_severity,
            score=self.score,
            peak_score=self.peak_score,
            threshold=self.threshold,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            resolved_at=resolved_at,
            anomalous_records=self.count,
            top_features=self.top,
            model_version=self.model_version,
            episode=self.first,
            source=self.source,
            labels=self.labels,
            summary=summary,
        )


@dataclasses.dataclass
class _Note:
    """A planned notification: one alert for one sink, and what to do once it is safe."""

    sink: str
    alert: Alert
    #: Open episode (key, peak rank) to mark notified; None for carried / closed episodes.
    mark: tuple[tuple, int] | None = None


def _top(contributions: list[dict[str, Any]]) -> list[FeatureContribution]:
    """The alert's features; where a window record's metric was judged against the other
    metrics (``given_others``), its observed and expected values are that judgement's."""
    out = []
    for c in contributions:
        try:
            given = c.get("given_others") if isinstance(c, dict) else None
            if isinstance(given, dict):
                c = {**c, "observed": given.get("observed"), "expected": given.get("expected")}
            out.append(FeatureContribution.model_validate(c))
        except Exception:  # an odd explanation must not cost the alert
            continue
    return out


class AlertLayer:
    """Turns scored records into alerts and delivers them; see the module docstring."""

    def __init__(
        self,
        settings: AlertsSettings,
        workers: dict[str, SinkWorker],
        *,
        severity_bands: Sequence[tuple[str, float]] = DEFAULT_BANDS,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.workers = workers
        self.clock = clock
        self.order = SeverityOrder(severity_bands)
        self.router = Router(settings, self.order)
        self._repeat = {s.name: settings.repeat_interval_for(s) for s in settings.sinks}
        self._send_resolved = {s.name: settings.send_resolved_for(s) for s in settings.sinks}
        #: Open episodes, least recently active first (`_apply` moves a touched one last).
        self._episodes: dict[tuple, Episode] = {}
        self._retry_keys: set[tuple] = set()
        self._carry: list[_Note] = []
        self._last_batch: set[Source] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._last_error: str | None = None

    # -- the daemon's calls ----------------------------------------------------------------

    def process(self, records: Sequence[ScoredRecord]) -> None:
        """Feed one batch of scored records; returns once its alerts are delivered or spooled."""
        started = time.monotonic()
        with self._lock:
            if self._closed:
                raise AlertDeliveryError("the alert layer is closed")
            now = self.clock()
            # The daemon retries a batch whose process() raised: its records are not counted twice.
            coords = {r.source for r in records}
            last = self._last_batch
            fresh = [r for r in records if r.source not in last] if last else list(records)
            self._last_batch = coords
            touched, closed = self._apply(fresh, now)
            closed += self._expire(now)
            notes = self._carry
            self._carry = []
            notes += self._plan_closed(closed)
            notes += self._plan_open(touched | self._retry_keys, now)
            self._retry_keys = set()
            metrics.EPISODES_OPEN.set(len(self._episodes))
        try:
            self._deliver_notes(notes, now)
        finally:
            metrics.PROCESS_SECONDS.observe(time.monotonic() - started)

    def notify(self, alert: Alert) -> None:
        """Deliver an alert not tied to a record (e.g. ``Alert.system(...)``); routed like the
        others, without dedup or rate limits. Raises `AlertDeliveryError` if it could neither
        be delivered nor spooled."""
        if self._closed:
            raise AlertDeliveryError("the alert layer is closed")
        sinks: list[str] = []
        for _rule, names in self.router.route(alert):
            sinks += [s for s in names if s not in sinks]
        if not sinks:
            metrics.UNROUTED.inc()
            log.warning(
                "alert matched no route and there are no default sinks",
                extra={"alert_id": alert.id},
            )
            return
        self._deliver_notes([_Note(s, alert) for s in sinks], self.clock(), carry=False)

    def health(self) -> dict[str, Any]:
        """``ok`` is false only when alerts could not even be spooled (the daemon then stops
        committing); an unreachable sink shows as its breaker state and spool backlog."""
        return {
            "ok": not self._closed and self._last_error is None,
            "error": self._last_error,
            "episodes_open": len(self._episodes),
            "sinks": {name: w.health() for name, w in self.workers.items()},
        }

    def close(self) -> None:
        """Stop the sink workers (what they still hold goes to the spool) and close the sinks."""
        if self._closed:
            return
        self._closed = True
        for worker in self.workers.values():
            worker.close()

    def __enter__(self) -> AlertLayer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- records → episodes ----------------------------------------------------------------

    def _key(self, r: ScoredRecord) -> tuple:
        """The episode a record belongs to: its values of ``group_by``."""
        values = []
        for item in self.settings.group_by:
            if item == "topic":
                values.append(r.source.topic)
            elif item == "entity":
                values.append(r.key)
            else:
                values.append(r.labels.get(item[len("labels.") :]))
        return tuple(values)

    def _group(self, key: tuple) -> dict[str, str | None]:
        return dict(zip(self.settings.group_by, key, strict=True))

    def _apply(self, records: Sequence[ScoredRecord], now: float) -> tuple[set[tuple], list]:
        touched: set[tuple] = set()
        closed: list[tuple[Episode, dt.datetime]] = []
        evicted: list[tuple[Episode, dt.datetime]] = []
        episodes = self._episodes
        for r in records:
            if not r.is_anomaly and not episodes:  # nothing open that it could resolve
                continue
            key = self._key(r)
            ep = episodes.get(key)
            if not r.is_anomaly:
                if ep is not None:
                    ep.normal_streak += 1
                    if ep.normal_streak >= self.settings.resolve_after_records:
                        del episodes[key]
                        touched.discard(key)
                        self._retry_keys.discard(key)
                        closed.append((ep, to_datetime(r.ts, now)))
                continue
            seen = to_datetime(r.ts, now)
            source = AlertSource(
                topic=r.source.topic, partition=r.source.partition, offset=r.source.offset
            )
            if ep is None:
                evicted += self._evict(len(episodes) + 1 - self.settings.max_open_episodes, now)
                group = self._group(key)
                ep = Episode(
                    key=key,
                    group=group,
                    id=alert_id(group, source),
                    stream=r.source.topic,
                    entity=r.key,
                    first=source,
                    first_seen=seen,
                    last_seen=seen,
                    touched_at=now,
                )
                episodes[key] = ep
            else:
                episodes[key] = episodes.pop(key)  # most recently active last: evicted last
            ep.count += 1
            ep.normal_streak = 0
            ep.touched_at = now
            ep.last_seen = max(ep.last_seen, seen)
            ep.score, ep.threshold, ep.severity = float(r.score), float(r.threshold), r.severity
            ep.top = _top(r.contributions)
            ep.model_version = r.model_version
            ep.source = source
            ep.labels = dict(r.labels)
            rank = self.order.rank(r.severity)
            if rank > ep.peak_rank or not ep.peak_severity:
                ep.peak_rank, ep.peak_severity = rank, r.severity
            ep.peak_score = max(ep.peak_score, ep.score)
            touched.add(key)
        if evicted:
            metrics.EPISODES_EVICTED.inc(len(evicted))
            log.warning(
                "more open episodes than alerts.max_open_episodes: the least recently active "
                "were closed early",
                extra={
                    "evicted": len(evicted),
                    "max_open_episodes": self.settings.max_open_episodes,
                    "alert_ids": [ep.id for ep, _ in evicted][:20],
                },
            )
        return touched, closed + evicted

    def _evict(self, n: int, now: float) -> list[tuple[Episode, dt.datetime]]:
        """Close the ``n`` least recently active episodes (the dict keeps that order)."""
        if n <= 0:
            return []
        cap = self.settings.max_open_episodes
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        out = []
        for key in list(itertools.islice(self._episodes, n)):
            ep = self._episodes.pop(key)
            self._retry_keys.discard(key)
            ep.closed_because = (
                f"more than {cap} episodes open (alerts.max_open_episodes); this one was "
                f"the least recently active"
            )
            out.append((ep, at))
        return out

    def _expire(self, now: float) -> list[tuple[Episode, dt.datetime]]:
        timeout = self.settings.resolve_timeout_s
        if timeout is None:
            return []
        stale = [ep for ep in self._episodes.values() if now - ep.touched_at >= timeout]
        for ep in stale:
            del self._episodes[ep.key]
            self._retry_keys.discard(ep.key)
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        return [(ep, at) for ep in stale]

    # -- episodes → notifications ----------------------------------------------------------

    def _due(self, ep: Episode, sink: str, now: float) -> bool:
        last = ep.notified.get(sink)
        if last is None:
            return True
        at, rank = last
        return ep.peak_rank > rank or now - at >= self._repeat[sink]

    def _choose(self, ep: Episode, alert: Alert, wanted: Callable[[str], bool]) -> list[str]:
        """Sinks to notify now: routed, wanted, and let through by the routes' rate limits."""
        chosen: list[str] = []
        routes = self.router.route(alert)
        if not routes:
            metrics.UNROUTED.inc()
        for rule, sinks in routes:
            due = [s for s in sinks if s not in chosen and wanted(s)]
            if not due:
                continue
            if rule is not None and rule.limiter is not None and not rule.limiter.take():
                metrics.RATE_LIMITED.labels(rule.name).inc()
                log.info(
                    "notification held back by the route's rate limit",
                    extra={"route": rule.name, "alert_id": ep.id, "sinks": due},
                )
                continue
            chosen += due
        return chosen

    def _plan_open(self, keys: set[tuple], now: float) -> list[_Note]:
        notes = []
        for key in sorted(keys, key=repr):
            ep = self._episodes.get(key)
            if ep is None:
                continue
            alert = ep.alert("firing")
            for sink in self._choose(ep, alert, lambda s, ep=ep: self._due(ep, s, now)):
                notes.append(_Note(sink, alert, (key, ep.peak_rank)))
        return notes

    def _plan_closed(self, closed: list[tuple[Episode, dt.datetime]]) -> list[_Note]:
        notes = []
        for ep, resolved_at in closed:
            # An episode that opened and resolved before any sink heard of it still fires.
            firing = ep.alert("firing")
            new = self._choose(ep, firing, lambda s, ep=ep: s not in ep.notified)
            notes += [_Note(s, firing) for s in new]
            targets = [s for s in [*ep.notified, *new] if self._send_resolved[s]]
            if targets:
                resolved = ep.alert("resolved", resolved_at)
                notes += [_Note(s, resolved) for s in targets]
        return notes

    # -- delivery --------------------------------------------------------------------------

    def _deliver_notes(self, notes: list[_Note], now: float, carry: bool = True) -> None:
        if not notes:
            self._last_error = None
            return
        for n in notes:
            metrics.NOTIFICATIONS.labels(n.alert.status).inc()
        by_sink: dict[str, list[int]] = {}
        for i, n in enumerate(notes):
            by_sink.setdefault(n.sink, []).append(i)
        jobs = {}
        for sink, idxs in by_sink.items():
            jobs[sink] = self.workers[sink].submit([(new_nid(), notes[i].alert) for i in idxs])
        started = time.monotonic()
        for sink, job in jobs.items():
            worker = self.workers[sink]
            worker.wait(job, started + worker.delivery.max_wait_s)
        failed: list[_Note] = []
        errors: list[str] = []
        with self._lock:
            for sink, idxs in by_sink.items():
                job = jobs[sink]
                for item, i in zip(job.items, idxs, strict=True):
                    note = notes[i]
                    if item.state in ("delivered", "spooled", "dead"):
                        if note.mark is not None:
                            key, rank = note.mark
                            ep = self._episodes.get(key)
                            if ep is not None:
                                ep.notified[sink] = (now, rank)
                        continue
                    failed.append(note)
                    if note.mark is not None:
                        self._retry_keys.add(note.mark[0])
                    elif carry:
                        self._carry.append(note)
                if job.error is not None:
                    errors.append(f"sink {sink!r}: {describe_error(job.error)}")
        if failed:
            self._last_error = "; ".join(errors) or f"{len(failed)} alerts not delivered"
            raise AlertDeliveryError(
                f"{len(failed)} alert notification(s) could neither be delivered nor spooled: "
                f"{self._last_error}"
            )
        self._last_error = None


def build_alert_layer(
    settings: AlertsSettings | None = None,
    *,
    kafka_config: dict[str, Any] | None = None,
    severity_bands: Sequence[tuple[str, float]] | None = None,
    clock: Callable[[], float] = time.time,
    only: Sequence[str] | None = None,
) -> AlertLayer:
    """The alert layer for ``settings``: one started `SinkWorker` per configured sink.

    ``kafka_config``: kafka-python client options of the daemon's cluster (the `kafka` sink's
    default; other sinks get it without credentials, see `kafka_config_for`).
    ``severity_bands``: the daemon's bands (``scoring.severity_bands``), for routes'
    ``min_severity``. ``only``: build just these sinks (the CLI's ``--sink``).
    Raises `ConfigError` naming the sink when one cannot be set up.
    """
    settings = settings if settings is not None else AlertsSettings()
    workers = build_workers(settings, kafka_config=kafka_config, only=only)
    try:
        return AlertLayer(
            settings, workers, severity_bands=severity_bands or DEFAULT_BANDS, clock=clock
        )
    except BaseException:
        for w in workers.values():
            w.close(timeout=1.0)
        raise


def build_workers(
    settings: AlertsSettings,
    *,
    kafka_config: dict[str, Any] | None = None,
    only: Sequence[str] | None = None,
    start: bool = True,
) -> dict[str, SinkWorker]:
    from vaeguard.alerts import discovery

    workers: dict[str, SinkWorker] = {}
    max_bytes = int(settings.spool_max_mb * 1024 * 1024)
    dead_max_bytes = int(settings.dead_letter_max_mb * 1024 * 1024)
    try:
        for cfg in settings.sinks:
            if only is not None and cfg.name not in only:
                continue
            cls = discovery.load_sink_class(cfg.type)
            delivery = settings.delivery_for(cfg)
            context = SinkContext(
                name=cfg.name,
                timeout_s=delivery.timeout_s,
                kafka_config=kafka_config_for(cls, kafka_config),
                state_dir=settings.spool_dir,
                logger=logging.getLogger(f"vaeguard.alerts.sink.{cfg.name}"),
            )
            try:
                sink = cls(cfg.settings, context)
            except ConfigError as exc:
                raise ConfigError(f"invalid setting alerts.sinks[{cfg.name}]: {exc}") from None
            except Exception as exc:
                raise ConfigError(
                    f"sink {cfg.name!r} ({cfg.type}) cannot be set up: {describe_error(exc)}"
                ) from None
            if getattr(cfg.settings, "verify_tls", True) is False:
                log.warning(
                    "sink does not verify TLS certificates (verify_tls: false): anyone on the "
                    "path can read and alter its alerts and credentials",
                    extra={"sink": cfg.name, "type": cfg.type},
                )
            spool = Spool(settings.spool_dir, cfg.name, max_bytes, dead_max_bytes)
            worker = SinkWorker(sink, delivery, spool, type_name=cfg.type)
            workers[cfg.name] = worker.start() if start else worker
    except BaseException:
        for w in workers.values():
            w.close(timeout=1.0)
        raise
    return workers
