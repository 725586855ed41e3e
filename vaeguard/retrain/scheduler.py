"""Running the retraining job on a schedule inside the daemon (APScheduler 3.x).

The job store is SQLite, so a run missed while the daemon was down is caught up once at the
next start (coalesce + misfire grace). APScheduler's SQL store pickles job state; ours stores
JSON instead (the trigger is rebuilt from a small spec), so no state file is ever unpickled.
At most one instance runs in this process (max_instances=1), and the registry's retrain lock
excludes runs in other processes (a cron-driven `vaeguard retrain`, another daemon).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from vaeguard.retrain.durations import looks_like_duration, parse_duration
from vaeguard.retrain.settings import RetrainSettings

log = logging.getLogger("vaeguard.retrain.scheduler")

JOB_ID = "vaeguard-retrain"
#: Jobs look their callable up here by id, so the stored job holds only a textual reference.
_RUNNERS: dict[str, Callable[[], Any]] = {}


def run_registered(job_id: str) -> None:
    """The function every stored job points at: runs the callable registered for its id."""
    runner = _RUNNERS.get(job_id)
    if runner is None:
        log.error("no runner registered for scheduled job %s", job_id)
        return
    runner()


def trigger_for(schedule: str):
    """An interval ("6h") or a crontab expression ("0 3 * * *"), in UTC."""
    if looks_like_duration(schedule):
        return IntervalTrigger(seconds=parse_duration(schedule), timezone=dt.UTC)
    return CronTrigger.from_crontab(schedule, timezone=dt.UTC)


def _trigger_spec(trigger) -> dict[str, Any]:
    if isinstance(trigger, IntervalTrigger):
        return {
            "type": "interval",
            "seconds": trigger.interval.total_seconds(),
            "start": trigger.start_date.isoformat(),
        }
    if isinstance(trigger, CronTrigger):
        return {
            "type": "cron",
            "fields": {f.name: str(f) for f in trigger.fields if not f.is_default},
        }
    if isinstance(trigger, DateTrigger):
        return {"type": "date", "run_date": trigger.run_date.isoformat()}
    raise TypeError(f"cannot store a {type(trigger).__name__} trigger")


def _trigger_from_spec(spec: dict[str, Any]):
    if spec["type"] == "interval":
        return IntervalTrigger(
            seconds=spec["seconds"],
            start_date=dt.datetime.fromisoformat(spec["start"]),
            timezone=dt.UTC,
        )
    if spec["type"] == "cron":
        return CronTrigger(**spec["fields"], timezone=dt.UTC)
    if spec["type"] == "date":
        return DateTrigger(run_date=dt.datetime.fromisoformat(spec["run_date"]), timezone=dt.UTC)
    raise ValueError(f"unknown trigger type {spec['type']!r}")


class JsonSQLAlchemyJobStore(SQLAlchemyJobStore):
    """SQLAlchemy job store whose rows hold JSON, not pickles."""

    def _encode(self, job: Job) -> bytes:
        state = job.__getstate__()
        payload = {
            "version": state["version"],
            "id": state["id"],
            "func": state["func"],
            "trigger": _trigger_spec(state["trigger"]),
            "executor": state["executor"],
            "args": list(state["args"]),
            "kwargs": dict(state["kwargs"]),
            "name": state["name"],
            "misfire_grace_time": state["misfire_grace_time"],
            "coalesce": state["coalesce"],
            "max_instances": state["max_instances"],
            "next_run_time": state["next_run_time"].isoformat() if state["next_run_time"] else None,
        }
        return json.dumps(payload).encode()

    def add_job(self, job: Job) -> None:
        from apscheduler.jobstores.base import ConflictingIdError
        from apscheduler.util import datetime_to_utc_timestamp
        from sqlalchemy.exc import IntegrityError

        insert = self.jobs_t.insert().values(
            id=job.id,
            next_run_time=datetime_to_utc_timestamp(job.next_run_time),
            job_state=self._encode(job),
        )
        with self.engine.begin() as connection:
            try:
                connection.execute(insert)
            except IntegrityError:
                raise ConflictingIdError(job.id) from None

    def update_job(self, job: Job) -> None:
        from apscheduler.jobstores.base import JobLookupError
        from apscheduler.util import datetime_to_utc_timestamp

        update = (
            self.jobs_t.update()
            .values(
                next_run_time=datetime_to_utc_timestamp(job.next_run_time),
                job_state=self._encode(job),
            )
            .where(self.jobs_t.c.id == job.id)
        )
        with self.engine.begin() as connection:
            if connection.execute(update).rowcount == 0:
                raise JobLookupError(job.id)

    def _reconstitute_job(self, job_state: bytes) -> Job:
        payload = json.loads(job_state)
        payload["trigger"] = _trigger_from_spec(payload["trigger"])
        payload["args"] = tuple(payload["args"])
        nrt = payload["next_run_time"]
        payload["next_run_time"] = dt.datetime.fromisoformat(nrt) if nrt else None
        payload["jobstore"] = self
        job = Job.__new__(Job)
        job.__setstate__(payload)
        job._scheduler = self._scheduler
        job._jobstore_alias = self._alias
        return job


class DaemonThreadExecutor(BaseExecutor):
    """Runs each job on its own daemon thread.

    A retraining run can take minutes; with APScheduler's thread pool the interpreter would
    wait for it at exit and a SIGTERM could not end the daemon within its grace. A run cut
    short this way leaves nothing behind: versions are published by one rename and the
    registry's lock dies with the process.
    """

    def _do_submit_job(self, job, run_times) -> None:
        def target() -> None:
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException as exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, events)

        threading.Thread(target=target, name=f"vaeguard-{job.name}", daemon=True).start()


class RetrainScheduler:
    """Runs `run` on `settings.schedule`, persisting the schedule in `state_dir/scheduler.sqlite`.

    ``state_dir`` defaults to ``settings.state_dir``; one of them must be given.
    """

    def __init__(
        self,
        settings: RetrainSettings,
        run: Callable[[], Any],
        *,
        job_id: str = JOB_ID,
        state_dir: Path | str | None = None,
    ):
        self.settings = settings
        self.job_id = job_id
        self.run = run
        if state_dir is None and settings.state_dir is None:
            raise ValueError("the retraining scheduler needs a state_dir for its job store")
        state_dir = Path(state_dir if state_dir is not None else settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store_path = state_dir / "scheduler.sqlite"
        self.scheduler = BackgroundScheduler(
            jobstores={
                "default": JsonSQLAlchemyJobStore(url=f"sqlite:///{self.store_path}"),
                "oneoff": MemoryJobStore(),
            },
            executors={"default": DaemonThreadExecutor()},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(settings.misfire_grace_s),
            },
            timezone=dt.UTC,
        )

    def start(self) -> None:
        """Start; keep a stored job whose schedule is unchanged, so a missed run is caught up."""
        _RUNNERS[self.job_id] = self.run
        self.scheduler.start(paused=True)
        self.store_path.chmod(0o600)
        trigger = trigger_for(self.settings.schedule)
        existing = self.scheduler.get_job(self.job_id, jobstore="default")
        if existing is not None and _same_schedule(existing.trigger, trigger):
            log.info(
                "retraining schedule %s kept; next run %s",
                self.settings.schedule,
                existing.next_run_time,
            )
        else:
            self.scheduler.add_job(
                "vaeguard.retrain.scheduler:run_registered",
                trigger,
                args=[self.job_id],
                id=self.job_id,
                name="retrain",
                replace_existing=True,
                jobstore="default",
            )
            log.info("retraining scheduled: %s", self.settings.schedule)
        self.scheduler.resume()

    def run_soon(self, reason: str) -> None:
        """An extra, one-off run now (e.g. drift crossed its level); skipped if one is pending."""
        if self.scheduler.get_job(f"{self.job_id}-now", jobstore="oneoff") is not None:
            return
        log.warning("retraining early: %s", reason)
        self.scheduler.add_job(
            "vaeguard.retrain.scheduler:run_registered",
            DateTrigger(run_date=dt.datetime.now(dt.UTC), timezone=dt.UTC),
            args=[self.job_id],
            id=f"{self.job_id}-now",
            name="retrain-now",
            jobstore="oneoff",
            misfire_grace_time=None,
        )

    def next_run_time(self) -> dt.datetime | None:
        job = self.scheduler.get_job(self.job_id, jobstore="default")
        return job.next_run_time if job else None

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
        _RUNNERS.pop(self.job_id, None)


def _same_schedule(a, b) -> bool:
    spec_a, spec_b = _trigger_spec(a), _trigger_spec(b)
    if spec_a["type"] == spec_b["type"] == "interval":
        return spec_a["seconds"] == spec_b["seconds"]
    return spec_a == spec_b
