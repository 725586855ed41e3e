"""Routes: which sinks an alert goes to, Alertmanager-style.

Routes are tried in order; the first that matches decides, unless it says ``continue: true``,
in which case later routes are tried too. An alert that matches none goes to
``default_sinks`` (every sink when unset). A route may carry a rate limit (a token bucket):
a notification it holds back is not lost, the episode stays due and is tried again with its
next anomalous record.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vaeguard.alerts.model import Alert
from vaeguard.alerts.settings import AlertsSettings, Route
from vaeguard.errors import ConfigError
from vaeguard.severity import DEFAULT_BANDS, NORMAL


class SeverityOrder:
    """Ranks severity names by the configured bands: normal 0, then the bands in order."""

    def __init__(self, bands: Sequence[tuple[str, float]] = DEFAULT_BANDS):
        self.names = [NORMAL, *(name for name, _ in bands)]
        self._rank = {name: i for i, name in enumerate(self.names)}

    def rank(self, name: str | None) -> int:
        # An unknown name (bands changed under a running episode) ranks as the mildest anomaly.
        return self._rank.get(name or "", 1)

    def known(self, name: str) -> bool:
        return name in self._rank


class TokenBucket:
    """``capacity`` tokens, refilled continuously over ``per_s`` seconds."""

    def __init__(self, capacity: int, per_s: float, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(capacity)
        self.rate = capacity / per_s
        self.clock = clock
        self.tokens = float(capacity)
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _glob(patterns: list[str] | None, value: str | None) -> bool:
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(value or "", p) for p in patterns)


@dataclass
class RouteRule:
    route: Route
    name: str
    order: SeverityOrder
    limiter: TokenBucket | None

    def matches(self, alert: Alert) -> bool:
        m = self.route.match
        severity = alert.peak_severity or alert.severity
        if not _glob(m.topic, alert.stream) or not _glob(m.entity, alert.entity):
            return False
        if m.kind is not None and alert.kind not in m.kind:
            return False
        if m.severity is not None and severity not in m.severity:
            return False
        if m.min_severity is not None and self.order.rank(severity) < self.order.rank(
            m.min_severity
        ):
            return False
        for label, pattern in m.labels.items():
            value = alert.labels.get(label)
            if value is None or not fnmatch.fnmatchcase(value, pattern):
                return False
        return True


class Router:
    def __init__(
        self,
        settings: AlertsSettings,
        order: SeverityOrder,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rules = []
        for i, route in enumerate(settings.routes):
            for field in ("severity", "min_severity"):
                value = getattr(route.match, field)
                for name in [value] if isinstance(value, str) else value or []:
                    if not order.known(name) or name == NORMAL:
                        raise ConfigError(
                            f"invalid setting alerts.routes.{i}.match.{field}: unknown severity "
                            f"{name!r}; known: {', '.join(order.names[1:])}"
                        )
            limiter = (
                TokenBucket(route.rate_limit.max_alerts, route.rate_limit.per_s, clock)
                if route.rate_limit
                else None
            )
            self.rules.append(RouteRule(route, route.name or f"routes[{i}]", order, limiter))
        all_sinks = [s.name for s in settings.sinks]
        self.default = list(
            settings.default_sinks if settings.default_sinks is not None else all_sinks
        )

    def route(self, alert: Alert) -> list[tuple[RouteRule | None, list[str]]]:
        """The matching routes in order (up to the first without ``continue``), each with its
        sinks; ``[(None, default_sinks)]`` when none matches."""
        matched: list[tuple[RouteRule | None, list[str]]] = []
        for rule in self.rules:
            if rule.matches(alert):
                matched.append((rule, list(rule.route.sinks)))
                if not rule.route.continue_:
                    break
        if not matched and self.default:
            matched.append((None, self.default))
        return matched
