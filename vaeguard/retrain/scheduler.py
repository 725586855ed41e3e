"""Running the retraining job on a schedule inside the daemon (APScheduler 3.x).

The job store holds data, never code: per job id, its trigger spec and next run time, as JSON
in a SQLite file. At start the jobs are rebuilt from the settings and bound, by id, to the
functions the daemon passes in; a stored row gives only the schedule state (so a run missed
while the daemon was down is caught up once, coalesce + misfire grace, and an unchanged
schedule keeps its next run time). A row's ``func`` or ``args`` are never read, a row of an
unknown job or a malformed one is dropped with a warning, and the file is rewritten afresh.
At most one instance runs in this process (max_instances=1), and the registry's retrain lock
excludes runs in other processes (a cron-driven `vaeguard retrain`, another daemon).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from vaeguard.errors import ConfigError
from vaeguard.files import replacing, user_state_dir
from vaeguard.retrain.durations import looks_like_duration, parse_duration
from vaeguard.retrain.settings import RetrainSettings
from vaeguard.snapshot import is_finite_number

log = logging.getLogger("vaeguard.retrain.scheduler")

JOB_ID = "vaeguard-retrain"
#: The job store's file name inside an explicit ``retrain.state_dir``.
STORE_NAME = "scheduler.sqlite"
#: APScheduler's SQL job store table, so that the times of a store written before carry over.
TABLE = "apscheduler_jobs"
_SCHEMA = (
    f"CREATE TABLE {TABLE} (id VARCHAR(191) NOT NULL PRIMARY KEY, "
    "next_run_time FLOAT, job_state BLOB NOT NULL);"
    f"CREATE INDEX ix_{TABLE}_next_run_time ON {TABLE} (next_run_time);"
)
#: A row's JSON larger than this is malformed (ours are a few hundred bytes).
_MAX_STATE_BYTES = 64 * 1024
#: Dropped rows logged one by one; beyond, only their count.
_MAX_LOGGED_DROPS = 20


def default_state_dir() -> Path:
    """The per-user state folder (XDG): outside the registry, which model publishers can write."""
    try:
        return user_state_dir()
    except RuntimeError as exc:  # no home folder to resolve
        raise ConfigError(f"retrain.state_dir: must be set ({exc})") from None


def store_name_for(group_id: str) -> str:
    """The job store's file name in the shared default folder: one per consumer group."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", group_id) + "." + STORE_NAME


def trigger_for(schedule: str):
    """An interval ("6h") or a crontab expression ("0 3 * * *"), in UTC."""
    if looks_like_duration(schedule):
        return IntervalTrigger(seconds=parse_duration(schedule), timezone=dt.UTC)
    return CronTrigger.from_crontab(schedule, timezone=dt.UTC)


def _trigger_spec(trigger) -> dict[str, Any]:
    """What tells whether the schedule changed (an interval's phase lives in the next run time)."""
    if isinstance(trigger, IntervalTrigger):
        return {"type": "interval", "seconds": trigger.interval.total_seconds()}
    if isinstance(trigger, CronTrigger):
        return {
            "type": "cron",
            "fields": {f.name: str(f) for f in trigger.fields if not f.is_default},
        }
    raise TypeError(f"cannot store a {type(trigger).__name__} trigger")


def _parse_spec(spec: Any) -> dict[str, Any]:
    """A stored trigger spec, checked as data (it is compared, never used to build a trigger)."""
    if not isinstance(spec, dict):
        raise ValueError("trigger is not an object")
    if spec.get("type") == "interval":
        seconds = spec.get("seconds")
        if not (is_finite_number(seconds) and seconds > 0):
            raise ValueError("interval seconds is not a positive number")
        return {"type": "interval", "seconds": float(seconds)}
    if spec.get("type") == "cron":
        fields = spec.get("fields")
        if not isinstance(fields, dict) or not all(
            k in CronTrigger.FIELD_NAMES and isinstance(v, str) for k, v in fields.items()
        ):
            raise ValueError("cron fields are not a mapping of field names to text")
        return {"type": "cron", "fields": dict(fields)}
    raise ValueError("unknown trigger type")


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("next_run_time is not text")
    when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        raise ValueError("next_run_time has no time zone")
    return when.astimezone(dt.UTC)


@dataclass(frozen=True)
class StoredSchedule:
    """What a stored row may say about a known job: its schedule and its next run time."""

    trigger: dict[str, Any]
    next_run_time: dt.datetime


class ScheduleStore:
    """The job store file. Rows hold a trigger spec and a next run time; never a callable."""

    def __init__(self, path: Path):
        self.path = path

    def restore(self, known: frozenset[str]) -> dict[str, StoredSchedule]:
        """The valid rows of known jobs; every other row is dropped with a warning and the file
        is rewritten empty (the caller stores its jobs again). Never raises."""
        found: dict[str, StoredSchedule] = {}
        if self.path.is_file():
            try:
                with closing(sqlite3.connect(self.path, timeout=5)) as conn:
                    rows = conn.execute(f"SELECT id, job_state FROM {TABLE}")
                    found = self._validate(rows, known)
            except (sqlite3.Error, OSError, MemoryError) as exc:
                log.warning("job store %s unreadable (%s): starting a fresh one", self.path, exc)
        self._rewrite()
        return found

    def _validate(self, rows, known: frozenset[str]) -> dict[str, StoredSchedule]:
        found: dict[str, StoredSchedule] = {}
        dropped = 0
        for job_id, state in rows:
            reason = None
            if not isinstance(job_id, str) or job_id not in known:
                reason = "unknown job"
            elif job_id in found:
                reason = "duplicate row"
            else:
                try:
                    found[job_id] = _parse_row(job_id, state)
                except Exception as exc:  # any content a row can hold: dropped, never raised
                    reason = f"malformed: {type(exc).__name__}: {str(exc)[:200]}"
            if reason is None:
                continue
            dropped += 1
            if dropped <= _MAX_LOGGED_DROPS:
                log.warning(
                    "job store %s: dropped the row of job %s (%s)",
                    self.path,
                    repr(job_id)[:100],
                    reason,
                )
        if dropped > _MAX_LOGGED_DROPS:
            log.warning(
                "job store %s: dropped %d more rows", self.path, dropped - _MAX_LOGGED_DROPS
            )
        return found

    def _rewrite(self) -> None:
        """A fresh, empty store (0600) in place of the old file, its journals included."""
        try:
            with replacing(self.path) as tmp:
                with closing(sqlite3.connect(tmp)) as conn:
                    conn.executescript(_SCHEMA)
                for suffix in ("-journal", "-wal", "-shm"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        except (sqlite3.Error, OSError) as exc:
            log.warning(
                "job store %s cannot be written (%s): the schedule lives in memory only",
                self.path,
                exc,
            )

    def save(self, job_id: str, trigger, next_run_time: dt.datetime | None) -> None:
        """Record a job's schedule; a failure is logged (the schedule goes on in memory)."""
        if next_run_time is None:
            return self.delete(job_id)
        state = {
            "id": job_id,
            "trigger": _trigger_spec(trigger),
            "next_run_time": next_run_time.isoformat(),
        }
        self._execute(
            f"INSERT OR REPLACE INTO {TABLE} (id, next_run_time, job_state) VALUES (?, ?, ?)",
            (job_id, next_run_time.timestamp(), json.dumps(state).encode()),
        )

    def delete(self, job_id: str) -> None:
        self._execute(f"DELETE FROM {TABLE} WHERE id = ?", (job_id,))

    def _execute(self, sql: str, params: tuple) -> None:
        try:
            with closing(sqlite3.connect(self.path, timeout=5)) as conn, conn:
                conn.execute(sql, params)
        except (sqlite3.Error, OSError) as exc:
            log.warning("job store %s not updated: %s", self.path, exc)


def _parse_row(job_id: str, state: Any) -> StoredSchedule:
    if not isinstance(state, bytes | str):
        raise ValueError("job_state is not text")
    if len(state) > _MAX_STATE_BYTES:
        raise ValueError("job_state is too large")
    payload = json.loads(state)
    if not isinstance(payload, dict):
        raise ValueError("job_state is not a JSON object")
    if payload.get("id", job_id) != job_id:
        raise ValueError("job_state names another job")
    return StoredSchedule(
        _parse_spec(payload.get("trigger")), _parse_time(payload.get("next_run_time"))
    )


class PersistentJobStore(MemoryJobStore):
    """Jobs (and their callables) in memory; each change of a schedule written to the file."""

    def __init__(self, store: ScheduleStore):
        super().__init__()
        self.store = store

    def add_job(self, job: Job) -> None:
        super().add_job(job)
        self.store.save(job.id, job.trigger, job.next_run_time)

    def update_job(self, job: Job) -> None:
        super().update_job(job)
        self.store.save(job.id, job.trigger, job.next_run_time)

    def remove_job(self, job_id: str) -> None:
        super().remove_job(job_id)
        self.store.delete(job_id)


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
    """Runs `run` on `settings.schedule`, persisting the schedule in `state_dir/store_name`.

    ``state_dir`` defaults to ``settings.state_dir``, then to `default_state_dir`.
    """

    def __init__(
        self,
        settings: RetrainSettings,
        run: Callable[[], Any],
        *,
        state_dir: Path | str | None = None,
        store_name: str = STORE_NAME,
    ):
        self.settings = settings
        self.run = run
        #: The fixed table of jobs a store may name, bound here, from code, to their functions.
        self.jobs: dict[str, Callable[[], Any]] = {JOB_ID: run}
        state_dir = state_dir or settings.state_dir  # an empty setting counts as unset
        folder = Path(state_dir) if state_dir else default_state_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if folder.stat().st_mode & 0o077:
                folder.chmod(0o700)
        except OSError as exc:
            raise ConfigError(
                f"retrain.state_dir: cannot use {folder} for the retraining job store: {exc}"
            ) from None
        self.store_path = folder / store_name
        self.store = ScheduleStore(self.store_path)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": PersistentJobStore(self.store), "oneoff": MemoryJobStore()},
            executors={"default": DaemonThreadExecutor()},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(settings.misfire_grace_s),
            },
            timezone=dt.UTC,
        )

    def start(self) -> None:
        """Rebuild the job from the settings; a stored, unchanged schedule keeps its next run
        time, so a run missed while the daemon was down is caught up (once)."""
        stored = self.store.restore(frozenset(self.jobs)).get(JOB_ID)
        trigger, next_run = self._plan(stored)
        self.scheduler.start(paused=True)
        self.scheduler.add_job(
            self.jobs[JOB_ID],
            trigger,
            id=JOB_ID,
            name="retrain",
            jobstore="default",
            next_run_time=next_run,
        )
        self.scheduler.resume()

    def _plan(self, stored: StoredSchedule | None):
        """The trigger and first run time: the stored time where it fits the schedule."""
        now = dt.datetime.now(dt.UTC)
        fresh = trigger_for(self.settings.schedule)
        upcoming = fresh.get_next_fire_time(None, now)
        spec = _trigger_spec(fresh)
        if stored is None or stored.trigger != spec:
            changed = "changed to" if stored is not None else "scheduled:"
            log.info("retraining %s %s; next run %s", changed, self.settings.schedule, upcoming)
            return fresh, upcoming
        when = stored.next_run_time
        if when > upcoming or (
            spec["type"] == "cron" and fresh.get_next_fire_time(None, when) != when
        ):
            log.warning(
                "stored next run time %s does not fit the schedule %s: next run %s",
                when,
                self.settings.schedule,
                upcoming,
            )
            return fresh, upcoming
        trigger = fresh
        if spec["type"] == "interval":  # keep the stored phase
            trigger = IntervalTrigger(seconds=spec["seconds"], start_date=when, timezone=dt.UTC)
        horizon = now - dt.timedelta(seconds=self.settings.misfire_grace_s)
        if when < horizon:  # runs missed by more than the grace are skipped, not replayed
            when = trigger.get_next_fire_time(None, horizon)
        log.info("retraining schedule %s kept; next run %s", self.settings.schedule, when)
        return trigger, when

    def run_soon(self, reason: str) -> None:
        """An extra, one-off run now (e.g. drift crossed its level); skipped if one is pending."""
        if self.scheduler.get_job(f"{JOB_ID}-now", jobstore="oneoff") is not None:
            return
        log.warning("retraining early: %s", reason)
        self.scheduler.add_job(
            self.run,
            DateTrigger(run_date=dt.datetime.now(dt.UTC), timezone=dt.UTC),
            id=f"{JOB_ID}-now",
            name="retrain-now",
            jobstore="oneoff",
            misfire_grace_time=None,
        )

    def next_run_time(self) -> dt.datetime | None:
        job = self.scheduler.get_job(JOB_ID, jobstore="default")
        return job.next_run_time if job else None

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
