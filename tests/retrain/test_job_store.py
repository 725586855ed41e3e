"""The retraining job store holds data, not code: a planted row never runs anything.

Rows are planted with sqlite3 directly, in the store's own table and JSON format (with the
``func`` and ``args`` an older version resolved) and in APScheduler's default, pickled
format; the scheduler must rebuild its one job from the settings and drop everything else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import sqlite3
import stat
import tempfile
import threading
from contextlib import closing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_for
from vaeguard.config import Settings
from vaeguard.registry import ModelRegistry
from vaeguard.retrain.job import RetrainOutcome
from vaeguard.retrain.scheduler import JOB_ID, RetrainScheduler
from vaeguard.retrain.service import RetrainService
from vaeguard.retrain.settings import RetrainSettings

UTC = dt.UTC
#: The store's file in an explicit state_dir, and its table (APScheduler's SQL job store's).
STORE_NAME = "scheduler.sqlite"
TABLE = "apscheduler_jobs"
HOUR = {"type": "interval", "seconds": 3600.0}
DAILY_3AM = {
    "type": "cron",
    "fields": {"month": "*", "day": "*", "day_of_week": "*", "hour": "3", "minute": "0"},
}
#: APScheduler's SQL job store schema (what SQLAlchemyJobStore creates, and ours too).
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(191) NOT NULL PRIMARY KEY, "
    "next_run_time FLOAT, job_state BLOB NOT NULL)"
)


def write_marker(path: str) -> None:
    """The planted Python callable: proof that a stored func ran."""
    Path(path).write_text("pwned")


def plant(store: Path, job_id, job_state, next_run_time=None) -> None:
    store.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(store)) as conn, conn:
        conn.execute(SCHEMA)
        conn.execute(
            f"INSERT OR REPLACE INTO {TABLE} (id, next_run_time, job_state) VALUES (?, ?, ?)",
            (job_id, next_run_time, job_state),
        )


def plant_callable(store: Path, job_id: str, func: str, args: list, when: dt.datetime) -> None:
    """A row exactly as the store wrote it before: a textual callable and its arguments."""
    state = {
        "version": 1,
        "id": job_id,
        "func": func,
        "trigger": {**HOUR, "start": (when - dt.timedelta(hours=5)).isoformat()},
        "executor": "default",
        "args": args,
        "kwargs": {},
        "name": "retrain",
        "misfire_grace_time": 3600,
        "coalesce": True,
        "max_instances": 1,
        "next_run_time": when.isoformat(),
    }
    plant(store, job_id, json.dumps(state).encode(), when.timestamp())


def stored_rows(store: Path) -> dict[str, dict]:
    with closing(sqlite3.connect(store)) as conn:
        return {i: json.loads(s) for i, s in conn.execute(f"SELECT id, job_state FROM {TABLE}")}


class Runs:
    """The real job: counts its runs."""

    def __init__(self):
        self.count = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


def scheduler(tmp_path: Path, runs, **retrain) -> RetrainScheduler:
    return RetrainScheduler(RetrainSettings(**retrain), runs, state_dir=tmp_path / "state")


def test_a_planted_callable_row_never_runs_and_the_real_job_is_caught_up(tmp_path: Path, caplog):
    store = tmp_path / "state" / STORE_NAME
    marker, marker2 = tmp_path / "pwned", tmp_path / "pwned-too"
    due = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    plant_callable(store, JOB_ID, "os:system", [f"touch {shlex.quote(str(marker))}"], due)
    fn = f"{__name__}:write_marker"
    plant_callable(store, "evil", fn, [str(marker2)], due)
    caplog.set_level(logging.INFO, logger="vaeguard.retrain.scheduler")
    runs = Runs()
    sched = scheduler(tmp_path, runs, schedule="1h")
    sched.start()
    try:
        # The stored, unchanged schedule was due a minute ago: the real job is caught up.
        wait_for(runs.event.is_set, 30, message="the real job's catch-up run")
        assert not marker.exists() and not marker2.exists()
        assert sched.next_run_time() > dt.datetime.now(UTC)  # still scheduled
        rows = stored_rows(store)
        assert list(rows) == [JOB_ID] and set(rows[JOB_ID]) == {"id", "trigger", "next_run_time"}
        assert "'evil' (unknown job)" in caplog.text
    finally:
        sched.shutdown()


def test_rows_in_apschedulers_default_pickled_format_are_dropped(tmp_path: Path, caplog):
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = tmp_path / "state" / STORE_NAME
    store.parent.mkdir()
    marker, marker2 = tmp_path / "pwned", tmp_path / "pwned-too"
    due = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    planter = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{store}")}, timezone=UTC
    )
    cmd = f"touch {shlex.quote(str(marker))}"
    planter.add_job("os:system", "interval", hours=1, args=[cmd], id=JOB_ID, next_run_time=due)
    planter.add_job(write_marker, "interval", hours=1, args=[str(marker2)], id="evil")
    planter.start(paused=True)
    planter.shutdown(wait=False)
    with closing(sqlite3.connect(store)) as conn:
        states = [s for (s,) in conn.execute(f"SELECT job_state FROM {TABLE}")]
    assert len(states) == 2 and all(s[:1] == b"\x80" for s in states)  # pickles

    caplog.set_level(logging.WARNING, logger="vaeguard.retrain.scheduler")
    runs = Runs()
    sched = scheduler(tmp_path, runs, schedule="1h")
    sched.start()
    try:
        sched.run_soon("test")  # processed after the store: proof the scheduler is running
        wait_for(runs.event.is_set, 30, message="the one-off run of the real job")
        assert not marker.exists() and not marker2.exists()
        assert list(stored_rows(store)) == [JOB_ID]
        assert f"'{JOB_ID}' (malformed" in caplog.text and "'evil' (unknown job)" in caplog.text
        next_run = sched.next_run_time()
        assert next_run > dt.datetime.now(UTC) + dt.timedelta(minutes=50)  # rebuilt afresh
    finally:
        sched.shutdown()


def test_an_unknown_job_is_dropped_with_a_warning_naming_it(tmp_path: Path, caplog):
    store = tmp_path / "state" / STORE_NAME
    later = dt.datetime.now(UTC) + dt.timedelta(minutes=5)
    state = json.dumps(
        {"id": "nightly-export", "trigger": HOUR, "next_run_time": later.isoformat()}
    )
    plant(store, "nightly-export", state.encode())
    caplog.set_level(logging.WARNING, logger="vaeguard.retrain.scheduler")
    sched = scheduler(tmp_path, Runs(), schedule="1h")
    sched.start()
    try:
        (record,) = [r for r in caplog.records if "nightly-export" in r.getMessage()]
        assert record.levelno == logging.WARNING and "unknown job" in record.getMessage()
        assert [j.id for j in sched.scheduler.get_jobs()] == [JOB_ID]
        assert list(stored_rows(store)) == [JOB_ID]
    finally:
        sched.shutdown()


def test_malformed_rows_are_dropped_and_the_schedule_rebuilt(tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING, logger="vaeguard.retrain.scheduler")
    later = (dt.datetime.now(UTC) + dt.timedelta(minutes=5)).isoformat()
    bad = [
        b"{not json",
        b"[1, 2]",
        json.dumps({"trigger": "every hour", "next_run_time": later}).encode(),
        json.dumps({"trigger": {"type": "interval", "seconds": "3600"}, "next_run_time": later}),
        json.dumps({"trigger": {"type": "cron", "fields": {"hour": 3}}, "next_run_time": later}),
        json.dumps({"trigger": HOUR, "next_run_time": "tomorrow"}).encode(),
        json.dumps({"trigger": HOUR, "next_run_time": "2030-01-01T00:00:00"}).encode(),  # naive
        json.dumps({"trigger": HOUR, "next_run_time": None}).encode(),
        12345,
    ]
    for i, state in enumerate(bad):
        store = tmp_path / f"s{i}" / STORE_NAME
        plant(store, JOB_ID, state)
        caplog.clear()
        sched = RetrainScheduler(RetrainSettings(schedule="1h"), Runs(), state_dir=store.parent)
        sched.start()
        try:
            assert f"'{JOB_ID}' (malformed" in caplog.text, state
            next_run = sched.next_run_time()
            assert next_run > dt.datetime.now(UTC) + dt.timedelta(minutes=50), state
        finally:
            sched.shutdown()


def test_a_store_that_is_not_a_database_is_replaced(tmp_path: Path, caplog):
    store = tmp_path / "state" / STORE_NAME
    store.parent.mkdir()
    store.write_bytes(b"\x80\x04 not sqlite at all" * 100)
    caplog.set_level(logging.WARNING, logger="vaeguard.retrain.scheduler")
    sched = scheduler(tmp_path, Runs(), schedule="1h")
    sched.start()
    try:
        assert "unreadable" in caplog.text and list(stored_rows(store)) == [JOB_ID]
    finally:
        sched.shutdown()


def test_an_unchanged_schedule_keeps_its_next_run_time_and_a_changed_one_replaces_it(
    tmp_path: Path,
):
    first = scheduler(tmp_path, Runs(), schedule="0 3 * * *")
    first.start()
    kept = first.next_run_time()
    first.shutdown()
    again = scheduler(tmp_path, Runs(), schedule="0 3 * * *")
    again.start()
    assert again.next_run_time() == kept
    again.shutdown()

    hourly = scheduler(tmp_path, Runs(), schedule="1h")
    hourly.start()
    assert hourly.next_run_time() != kept
    assert stored_rows(tmp_path / "state" / STORE_NAME)[JOB_ID]["trigger"] == HOUR
    hourly.shutdown()


def test_a_missed_run_is_caught_up_once_in_the_stored_phase(tmp_path: Path):
    store = tmp_path / "state" / STORE_NAME
    missed = dt.datetime.now(UTC) - dt.timedelta(hours=2, minutes=30)  # three runs missed
    state = {"id": JOB_ID, "trigger": HOUR, "next_run_time": missed.isoformat()}
    plant(store, JOB_ID, json.dumps(state).encode())
    runs = Runs()
    sched = scheduler(tmp_path, runs, schedule="1h")
    sched.start()
    try:
        wait_for(runs.event.is_set, 30, message="the catch-up run")
        wait_for(lambda: sched.next_run_time() > dt.datetime.now(UTC), 30, message="next run")
        assert runs.count == 1
        assert sched.next_run_time() == missed + dt.timedelta(hours=3)
        assert stored_rows(store)[JOB_ID]["next_run_time"] == sched.next_run_time().isoformat()
    finally:
        sched.shutdown()


def test_a_run_missed_by_more_than_the_grace_is_skipped(tmp_path: Path):
    store = tmp_path / "state" / STORE_NAME
    missed = dt.datetime.now(UTC) - dt.timedelta(minutes=90)
    state = {"id": JOB_ID, "trigger": HOUR, "next_run_time": missed.isoformat()}
    plant(store, JOB_ID, json.dumps(state).encode())
    runs = Runs()
    sched = scheduler(tmp_path, runs, schedule="1h", misfire_grace_s=60)
    sched.start()
    try:
        assert sched.next_run_time() == missed + dt.timedelta(hours=2) and runs.count == 0
    finally:
        sched.shutdown()


def test_a_stored_time_beyond_the_schedule_cannot_postpone_retraining(tmp_path: Path, caplog):
    store = tmp_path / "state" / STORE_NAME
    far = dt.datetime.now(UTC) + dt.timedelta(days=365)
    plant(store, JOB_ID, json.dumps({"trigger": HOUR, "next_run_time": far.isoformat()}))
    caplog.set_level(logging.WARNING, logger="vaeguard.retrain.scheduler")
    sched = scheduler(tmp_path, Runs(), schedule="1h")
    sched.start()
    try:
        assert sched.next_run_time() <= dt.datetime.now(UTC) + dt.timedelta(hours=1)
        assert "does not fit the schedule" in caplog.text
    finally:
        sched.shutdown()


def test_store_file_and_folder_are_private(tmp_path: Path):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    plant(folder / STORE_NAME, "x", b"{}")
    (folder / STORE_NAME).chmod(0o644)
    sched = scheduler(tmp_path, Runs())
    sched.start()
    sched.shutdown()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / STORE_NAME).stat().st_mode) == 0o600


def test_default_state_dir_follows_xdg_then_home(tmp_path: Path, monkeypatch):
    from vaeguard.retrain.scheduler import default_state_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "vaeguard"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "vaeguard"


def service_settings(registry: Path, **retrain) -> Settings:
    return Settings(
        model={"path": str(registry)},
        kafka={"group_id": "team a/prod", "input_topics": ["metrics"]},
        retrain={"enabled": True, "schedule": "1h", **retrain},
    )


def test_the_service_keeps_its_store_outside_the_registry(tmp_path: Path, monkeypatch, caplog):
    """Whoever publishes models into the registry cannot plant a job: the old location is not
    read, and a row planted in the store itself runs nothing either."""
    registry = ModelRegistry(tmp_path / "registry", create=True).root
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    marker, marker2 = tmp_path / "pwned", tmp_path / "pwned-too"
    due = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    old = registry / ".state" / STORE_NAME  # where the store used to live
    plant_callable(old, JOB_ID, f"{__name__}:write_marker", [str(marker)], due)
    store = tmp_path / "xdg" / "vaeguard" / "team_a_prod.scheduler.sqlite"
    cmd = f"touch {shlex.quote(str(marker2))}"
    plant_callable(store, JOB_ID, "os:system", [cmd], due)
    service = RetrainService(service_settings(registry), alert_layer=None)
    runs = Runs()

    class Job:
        settings = service.job.settings

        def run(self) -> RetrainOutcome:
            runs()
            return RetrainOutcome("refused", None, reasons=["test"])

    service.job = Job()
    service.start()
    try:
        wait_for(runs.event.is_set, 30, message="the service's catch-up run")
        assert not marker.exists() and not marker2.exists()
        assert service.scheduler.next_run_time() > dt.datetime.now(UTC)
        assert service.scheduler.store_path == store
        assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(store.stat().st_mode) == 0o600
        assert "func" in stored_rows(old)[JOB_ID]  # never read, never rewritten
    finally:
        service.stop()


def test_retrain_state_dir_overrides_the_default(tmp_path: Path, monkeypatch):
    registry = ModelRegistry(tmp_path / "registry", create=True).root
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    service = RetrainService(
        service_settings(registry, state_dir=str(tmp_path / "mine")), alert_layer=None
    )
    assert service.scheduler.store_path == tmp_path / "mine" / STORE_NAME


# Arbitrary rows: whatever a store holds, start never raises and only the real job exists.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
offsets = st.timedeltas(min_value=-dt.timedelta(hours=23), max_value=dt.timedelta(hours=23))
near_now = st.timedeltas(min_value=-dt.timedelta(days=3), max_value=dt.timedelta(days=3)).map(
    lambda d: (dt.datetime.now(UTC) + d).isoformat()
)
times = st.one_of(
    st.datetimes(timezones=st.builds(dt.timezone, offsets)).map(dt.datetime.isoformat),
    st.datetimes().map(dt.datetime.isoformat),  # naive
    near_now,
    json_values,
)
triggers = st.one_of(
    st.just(HOUR),
    st.just(DAILY_3AM),
    st.fixed_dictionaries({"type": st.just("interval"), "seconds": json_values | st.floats()}),
    st.fixed_dictionaries(
        {
            "type": st.just("cron"),
            "fields": st.dictionaries(st.sampled_from(list(DAILY_3AM["fields"])), st.text()),
        }
    ),
    json_values,
)
states = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"trigger": triggers, "next_run_time": times},
        optional={
            "id": st.just(JOB_ID) | st.text(max_size=8),
            "func": st.just("os:system"),
            "args": st.just(["touch {marker}"]),
        },
    ).map(json.dumps),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),  # SQLite stores NaN as NULL, which job_state refuses
)
columns = st.none() | st.floats() | st.integers(-(2**63), 2**63 - 1) | st.text() | st.binary()
#: Rows of the real job that are well-formed but for their contents: the paths that keep,
#: replace or catch up a stored time.
near_valid = st.tuples(
    st.just(JOB_ID),
    columns,
    st.fixed_dictionaries(
        {
            "trigger": st.sampled_from([HOUR, DAILY_3AM]) | triggers,
            "next_run_time": near_now | times,
        },
        optional={"func": st.just("os:system"), "args": st.just(["touch {marker}"])},
    ).map(json.dumps),
)
rows = st.lists(
    near_valid | st.tuples(st.just(JOB_ID) | st.text(max_size=16), columns, states), max_size=4
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=rows | st.binary(max_size=256), schedule=st.sampled_from(["1h", "0 3 * * *"]))
def test_arbitrary_store_content_never_breaks_start_nor_runs_anything(content, schedule):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "state"
        folder.mkdir()
        marker = Path(tmp) / "pwned"
        store = folder / STORE_NAME
        if isinstance(content, bytes):
            store.write_bytes(content)
        else:
            for job_id, next_run_time, state in content:
                if isinstance(state, str):
                    state = state.replace("{marker}", shlex.quote(str(marker)))
                plant(store, job_id, state, next_run_time)
        runs = Runs()
        sched = RetrainScheduler(RetrainSettings(schedule=schedule), runs, state_dir=folder)
        sched.start()
        try:
            now = dt.datetime.now(UTC)
            jobs = sched.scheduler.get_jobs()
            assert [(j.id, j.func) for j in jobs] == [(JOB_ID, runs)]
            horizon = dt.timedelta(hours=1) if schedule == "1h" else dt.timedelta(days=1)
            assert sched.next_run_time() <= now + horizon  # a row cannot postpone it
            assert list(stored_rows(store)) == [JOB_ID]
            assert not marker.exists()
        finally:
            sched.shutdown()
        assert os.listdir(folder) == [STORE_NAME]
