"""Retraining inside the daemon: the scheduled job, early runs on drift, alerts on failure.

Runs only when ``retrain.enabled`` and ``model.path`` is a registry. The job trains on its own
thread (`DaemonThreadExecutor`), off the scoring path; a promotion pokes the model provider so
the new version takes over at the next batch boundary instead of the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from vaeguard.registry import ModelRegistry
from vaeguard.retrain.job import RetrainJob, RetrainOutcome
from vaeguard.retrain.notify import outcome_alert, send_alert
from vaeguard.retrain.scheduler import RetrainScheduler, default_state_dir, store_name_for

log = logging.getLogger("vaeguard.retrain")


class RetrainService:
    def __init__(
        self,
        settings: Any,  # vaeguard.config.Settings
        alert_layer: Any,
        *,
        on_promoted: Callable[[], None] | None = None,
    ):
        self.registry = ModelRegistry(settings.model.path, **settings.model.registry_options())
        self.alert_layer = alert_layer
        self.on_promoted = on_promoted
        self.job = RetrainJob(
            self.registry,
            settings.retrain,
            settings.kafka.consumer_config(),
            settings.kafka.input_topics,
            max_record_bytes=settings.scoring.max_record_bytes,
            on_failure=self._rejected,
            input_spec=settings.input.spec(),
        )
        # The job store never lives in the registry by default: whoever publishes models
        # there must not decide what the daemon runs (the store holds schedule times only).
        if settings.retrain.state_dir:
            self.scheduler = RetrainScheduler(settings.retrain, self.run_once)
        else:
            self.scheduler = RetrainScheduler(
                settings.retrain,
                self.run_once,
                state_dir=default_state_dir(),
                store_name=store_name_for(settings.kafka.group_id),
            )
        self.last_outcome: RetrainOutcome | None = None
        #: Set while a run trains or validates (`in_progress`).
        self._running = threading.Event()

    def start(self) -> None:
        self.scheduler.start()
        log.info(
            "retraining scheduled in the daemon",
            extra={
                "schedule": self.job.settings.schedule,
                "next_run": str(self.scheduler.next_run_time()),
                "job_store": str(self.scheduler.store_path),
            },
        )

    def trigger(self, psi: float) -> None:
        """An early run (drift crossed its level); the scheduler skips it if one is pending."""
        self.scheduler.run_soon(f"score drift PSI {psi:.3f}")

    def stop(self) -> None:
        """Stop scheduling; a run in progress is abandoned with the process (nothing half-done
        can become current)."""
        self.scheduler.shutdown(wait=False)

    @property
    def in_progress(self) -> bool:
        """Whether a run is training or validating now (abandoned if the process stops)."""
        return self._running.is_set()

    def run_once(self) -> RetrainOutcome | None:
        self._running.set()
        try:
            return self._run_once()
        finally:
            self._running.clear()

    def _run_once(self) -> RetrainOutcome | None:
        try:
            outcome = self.job.run()
        except Exception as exc:  # counted as "failed" by the job
            log.error(
                "retraining run failed",
                extra={"error": f"{type(exc).__name__}: {exc}"},
                exc_info=not isinstance(exc, OSError),
            )
            send_alert(
                self.alert_layer,
                outcome_alert(
                    f"retraining failed: {type(exc).__name__}: {exc}",
                    str(self.registry.root),
                    {"status": "failed", "error": str(exc)},
                ),
            )
            return None
        self.last_outcome = outcome
        if outcome.status == "promoted" and self.on_promoted is not None:
            self.on_promoted()
        return outcome

    def _rejected(self, outcome: RetrainOutcome) -> None:
        send_alert(
            self.alert_layer,
            outcome_alert(outcome.summary, str(self.registry.root), outcome.to_json()),
        )
