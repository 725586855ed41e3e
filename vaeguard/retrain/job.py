"""One retraining run: window → filter → candidate → gate → register and promote (or refuse).

The window is bounded by records and by bytes (`retrain.max_records`, `retrain.max_bytes`), and
the candidate's categorical conditions by `retrain.max_categories` columns each: a topic's
values, not the operator, decide how many categories there are.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from vaeguard.errors import LockHeld, RegistryError, RetrainRefused
from vaeguard.errors import RetrainRejected as RetrainRejected
from vaeguard.ingest import Rejection, check_entity, decode
from vaeguard.input_formats import InputReader, InputSpec
from vaeguard.registry import ModelRegistry
from vaeguard.retrain.gate import check_candidate
from vaeguard.retrain.recent import RecentData, read_recent
from vaeguard.retrain.settings import RetrainSettings

log = logging.getLogger("vaeguard.retrain")

RUNS = Counter(
    "vaeguard_retrain_runs_total",
    "Retraining runs by outcome (promoted, rejected, refused, failed).",
    ["outcome"],
)
LAST_RUN = Gauge(
    "vaeguard_retrain_last_run_timestamp_seconds",
    "Unix time of the last retraining run, by outcome.",
    ["outcome"],
)


@dataclass
class RetrainOutcome:
    status: str  # promoted | rejected | refused
    current: str | None
    candidate: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        if self.status == "promoted":
            return f"retrained: {self.candidate} promoted (was {self.current})"
        what = (
            "refused"
            if self.status == "refused"
            else f"candidate rejected, {self.current} stays current"
        )
        return f"retraining {what}: {'; '.join(self.reasons)}"


#: The daemon's default scoring.max_record_bytes and scoring.max_key_bytes.
DEFAULT_MAX_RECORD_BYTES = 262_144
DEFAULT_MAX_KEY_BYTES = 4096


def _decode(value: bytes | None, max_bytes: int) -> dict[str, Any] | Rejection:
    """The daemon's decode stage for a record value: the same refusals, the entity's size
    included (a record the daemon dead-letters is not trained on)."""
    record = decode(value, max_bytes)
    if type(record) is dict:
        refused = check_entity(record, "key", DEFAULT_MAX_KEY_BYTES)
        if refused is not None:
            return refused
    return record


class RetrainJob:
    """Retrains the current model of a registry on the recent window of the input topics.

    ``on_failure`` receives the outcome of a rejected candidate (the daemon routes it to the
    alert sinks). Two jobs never run at once: a second one, in this process or another, is
    refused while the registry's "retrain" lock is held.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        settings: RetrainSettings,
        kafka_config: dict[str, Any],
        topics: list[str],
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        decode: Callable[[bytes | None], dict[str, Any] | Rejection] | None = None,
        on_failure: Callable[[RetrainOutcome], None] | None = None,
        input_spec: InputSpec | None = None,
    ):
        """``decode``: the ingestion contract's `vaeguard.ingest.decode` with the daemon's
        ``max_record_bytes`` unless given, so retraining reads what the daemon scores."""
        self.registry = registry
        self.settings = settings
        self.kafka_config = kafka_config
        self.topics = list(topics)
        self.decode = decode or functools.partial(_decode, max_bytes=max_record_bytes)
        self.on_failure = on_failure
        #: The daemon's ``input:`` section: a format other than flat is read as it reads it.
        self.input_spec = input_spec
        self.max_record_bytes = max_record_bytes

    def run(self) -> RetrainOutcome:
        """Run once; refusals and rejections come back as outcomes (and are counted and logged)."""
        started = time.time()
        try:
            with self.registry.lock("retrain", blocking=False):
                outcome = self._run()
        except LockHeld:
            outcome = RetrainOutcome("refused", None, reasons=["another retraining job is running"])
        except RetrainRefused as exc:
            outcome = RetrainOutcome("refused", self._current_name(), reasons=[str(exc)])
        except RegistryError:
            raise  # uncounted, as when the lock error was told apart by its text
        except Exception:
            RUNS.labels("failed").inc()
            LAST_RUN.labels("failed").set(time.time())
            raise
        outcome.metrics.setdefault("seconds", round(time.time() - started, 3))
        RUNS.labels(outcome.status).inc()
        LAST_RUN.labels(outcome.status).set(time.time())
        (log.info if outcome.status == "promoted" else log.warning)(
            outcome.summary, extra={"retrain": outcome.to_json()}
        )
        if outcome.status == "rejected" and self.on_failure is not None:
            try:
                self.on_failure(outcome)
            except Exception:
                log.exception("could not send the retraining failure alert")
        return outcome

    def _decoder(self, current) -> Callable[[bytes | None], Any]:
        """``decode``, or for an input format the records a message gives (rows assembled for
        the current model's features, as the daemon assembles them)."""
        if self.input_spec is None or self.input_spec.flat:
            return self.decode
        reader = InputReader(
            self.input_spec,
            required=[*current.feature_names_, *current.conditions_.names],
            assemble=True,
            labels=[
                c.name
                for c in getattr(current.conditions_, "columns", ())
                if c.kind == "categorical"
            ],
        )
        max_bytes = self.max_record_bytes

        def decode_message(value: bytes | None) -> Any:
            obj = decode(value, max_bytes)
            if type(obj) is not dict:
                return obj
            read = reader.read(obj)
            return [r for r, _ in read.records] + [r for r, _ in read.refused]

        return decode_message

    def _current_name(self) -> str | None:
        try:
            return self.registry.current()
        except RegistryError:
            return None

    def _run(self) -> RetrainOutcome:
        from vaeguard.detector import VAEDetector

        s = self.settings
        current, current_name = self.registry.load()
        if not isinstance(current, VAEDetector):  # a window model's ViewSet
            raise RetrainRefused(
                f"{current_name} is a window-mode model: it learns online in the daemon (warm "
                "refits every schedule.retrain_max_gap rows per entity); scheduled retraining "
                "covers row models only; retrain it from scratch with `vaeguard train-window "
                "--registry` instead"
            )
        window = read_recent(
            self.kafka_config,
            self.topics,
            window_s=s.window_seconds,
            max_records=s.max_records,
            max_bytes=s.max_bytes,
            decode=self._decoder(current),
            idle_timeout_s=s.poll_timeout_s,
        )
        x, c_table, skipped = self._table(current, window)
        info = {
            **window.describe(),
            "skipped_invalid": sum(skipped.values()),
            "rejected_by_reason": dict(window.rejected + skipped),
        }
        n = x.shape[0]
        if n < s.min_records:
            raise RetrainRefused(
                f"the window ({s.window}) holds {n} usable records, fewer than min_records = {s.min_records}"
            )
        c = current.conditions_.transform(c_table) if c_table is not None else None
        verdict = current.score_matrix(x, c)
        flagged = verdict.is_anomaly
        share = float(flagged.mean())
        info["anomalous_share"] = share
        if share > s.max_anomalous_share:
            raise RetrainRefused(
                f"{share:.1%} of the window is anomalous under {current_name} (limit {s.max_anomalous_share:.0%}): "
                "an incident must not become the new normal"
            )
        keep = ~flagged
        x_norm = x[keep]
        c_norm = (
            None
            if c_table is None
            else {
                k: [v for v, kk in zip(col, keep, strict=True) if kk] for k, col in c_table.items()
            }
        )
        n_norm = x_norm.shape[0]
        if n_norm < s.min_records:
            raise RetrainRefused(
                f"after dropping anomalous records {n_norm} remain, fewer than min_records = {s.min_records}"
            )
        n_hold = max(1, round(n_norm * s.holdout_fraction))
        split = n_norm - n_hold  # records are in time order: the most recent are held out
        params = current.get_params()
        if s.epochs is not None:
            params["epochs"] = s.epochs
        candidate = VAEDetector(**params)
        features = {name: x_norm[:split, j] for j, name in enumerate(current.feature_names_)}
        conditions = None if c_norm is None else {k: v[:split] for k, v in c_norm.items()}
        categorical = [col.name for col in current.conditions_.columns if col.kind == "categorical"]
        candidate.fit(
            features,
            conditions,
            feature_names=current.feature_names_,
            categorical=categorical,
            init_from=current if s.warm_start else None,
            max_categories=s.max_categories,  # the topic's values, not a fixed list: capped
        )
        c_hold = None
        if c_norm is not None:
            c_hold = candidate.conditions_.transform({k: v[split:] for k, v in c_norm.items()})
        c_hold_current = (
            None
            if c_norm is None
            else current.conditions_.transform({k: v[split:] for k, v in c_norm.items()})
        )
        gate = check_candidate(
            candidate,
            current,
            x_norm[split:],
            c_hold,
            c_hold_current,
            fpr_tolerance=s.fpr_tolerance,
            score_margin=s.score_margin,
        )
        metrics = {**gate.metrics, "train_rows": split, "anomalous_share": share}
        if not gate.passed:
            return RetrainOutcome(
                "rejected", current_name, reasons=gate.reasons, metrics=metrics, window=info
            )
        lineage = {
            "source": "retrain",
            "parent": current_name,
            "training_window": {
                "topics": self.topics,
                "start_ms": window.start_ms,
                "end_ms": window.end_ms,
                "records": n,
                "used": split,
            },
            "validation": metrics,
        }
        version = self.registry.register(candidate, lineage, make_current=False)
        self.registry.promote(version, reason="retrain")
        return RetrainOutcome("promoted", current_name, version, metrics=metrics, window=info)

    @staticmethod
    def _table(current, window: RecentData):
        """Feature matrix (records the daemon would score, time order kept), condition columns
        and the refused records counted by reason (the same rules as the daemon's)."""
        from vaeguard.serving.tabular import TabularServing

        serving = TabularServing(current)
        features = current.feature_names_
        cond_names = current.conditions_.names
        rows, cond_rows = [], []
        skipped: collections.Counter[str] = collections.Counter()
        for record in window.records:
            row = serving.check(record)
            if isinstance(row, Rejection):
                skipped[str(row.reason)] += 1
                continue
            rows.append(row[: len(features)])
            cond_rows.append([record.get(cn) for cn in cond_names])
        x = np.asarray(rows, dtype="float64").reshape(-1, len(features))
        c_table = (
            {cn: [r[i] for r in cond_rows] for i, cn in enumerate(cond_names)}
            if cond_names
            else None
        )
        return x, c_table, skipped
