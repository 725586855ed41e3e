"""`vaeguard run --workers N`: how workers are started, stopped from a terminal, and watched.

Workers start without a ``preexec_fn`` (it runs between fork and exec in a copy of the
multi-threaded supervisor) and set their own parent-death signal; they run in their own
session, so a terminal's Ctrl-C reaches the supervisor only, which stops them with SIGTERM and
the grace; a worker whose heartbeat stops (SIGSTOP here: a real hang) is restarted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    DaemonProcess,
    committed,
    create_topic,
    daemon_env,
    unique,
)
from tests.daemon.test_scaleout import _alive
from vaeguard.config import Settings
from vaeguard.daemon import supervisor as sup
from vaeguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# -- how a worker starts ----------------------------------------------------------------------


def test_workers_start_without_preexec_fn_in_their_own_session(monkeypatch, tmp_path):
    calls: list[dict] = []

    class Recorder:
        def __init__(self, args, **kwargs):
            calls.append(kwargs)
            self.pid = 4242

    monkeypatch.setattr(sup.subprocess, "Popen", Recorder)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    s = sup.Supervisor(Settings(), None, 1)
    s._start(s.workers[0])
    try:
        (kwargs,) = calls
        assert kwargs.get("preexec_fn") is None
        assert kwargs.get("start_new_session") is True or kwargs.get("process_group") == 0
        env = kwargs["env"]
        assert env[sup.PARENT_PID_ENV] == str(os.getpid())
        assert int(env[sup.HEARTBEAT_FD_ENV]) in kwargs["pass_fds"]
    finally:
        if s.workers[0].beat_fd is not None:
            os.close(s.workers[0].beat_fd)


_STARTUP = """
import ctypes, os, sys
from vaeguard.daemon.supervisor import worker_startup
beat = worker_startup()
sig = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
leaked = [k for k in ("VAEGUARD_PARENT_PID", "VAEGUARD_HEARTBEAT_FD") if k in os.environ]
print("started", sig.value, beat is not None, leaked)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_sets_its_own_parent_death_signal_and_exits_if_its_parent_is_gone():
    def start(parent_pid: int) -> subprocess.CompletedProcess:
        read_fd, write_fd = os.pipe()
        try:
            return subprocess.run(
                [sys.executable, "-c", _STARTUP],
                env={
                    **os.environ,
                    sup.PARENT_PID_ENV: str(parent_pid),
                    sup.HEARTBEAT_FD_ENV: str(write_fd),
                },
                pass_fds=(write_fd,),
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
            )
        finally:
            os.close(read_fd)
            os.close(write_fd)

    ok = start(os.getpid())  # this process is its parent, as the supervisor would be
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split(maxsplit=1) == ["started", f"{int(signal.SIGTERM)} True []\n"]
    # another pid: the supervisor that started it is gone (it died before the prctl)
    orphan = start(os.getpid() + 1)
    assert orphan.returncode == 1 and "started" not in orphan.stdout
    assert "supervisor" in orphan.stderr and "gone" in orphan.stderr


def test_hang_timeout_setting_is_validated():
    assert Settings().supervisor.hang_timeout_s == 120.0
    with pytest.raises(ConfigError, match=r"invalid setting supervisor\.hang_timeout_s"):
        from vaeguard.config import load_settings

        load_settings(supervisor={"hang_timeout_s": 1})


# -- a worker that hangs and ignores SIGTERM (no broker: a stand-in worker) --------------------

_HUNG_AND_DEAF = """
import signal, time
from vaeguard.daemon.supervisor import worker_startup
worker_startup()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("hanging", flush=True)
time.sleep(600)
"""


def test_a_hung_worker_deaf_to_sigterm_is_killed_after_the_grace_and_restarted(monkeypatch):
    from prometheus_client import generate_latest

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(sup, "KILL_MARGIN_S", 0.0)
    s = sup.Supervisor(Settings(http={"enabled": False}, shutdown_grace_s=0.5), None, 1)
    s.hang_timeout_s = 1.0  # below the setting's floor: a stand-in worker that never beats
    s.command = [sys.executable, "-c", _HUNG_AND_DEAF]
    w = s.workers[0]
    runner = threading.Thread(target=s.run, daemon=True)
    runner.start()
    try:
        wait_for(
            lambda: w.reasons.get("hung", 0) >= 1,
            timeout=60,
            interval=0.05,
            message="the hung worker restarted",
        )
        assert w.exit_codes[0] == -signal.SIGKILL, w.exit_codes  # SIGTERM was ignored
        assert w.restarts == 1 and w.reasons == {"hung": 1}
        text = generate_latest(s.registry()).decode()
        assert 'vaeguard_worker_restarts_total{reason="hung",worker="0"} 1.0' in text
        assert 'vaeguard_worker_restarts_total{reason="exited",worker="0"} 0.0' in text
    finally:
        s.stop("test over")
        runner.join(30)
    assert not runner.is_alive()


# -- the real thing: `vaeguard run --workers 2` against the broker ----------------------------


class TerminalSupervisor(DaemonProcess):
    """The supervisor as a shell runs it in a terminal: the leader of its own process group,
    which is what Ctrl-C signals."""

    def start(self) -> TerminalSupervisor:
        args = [sys.executable, "-m", "vaeguard.cli.main", "run", *self.start_args]
        self.proc = subprocess.Popen(
            args,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),  # noqa: SIM115 (the child owns it)
            cwd=ROOT,
            start_new_session=True,
        )
        return self


@pytest.fixture
def terminal(tmp_path):
    started: list[TerminalSupervisor] = []

    def make(env: dict[str, str]) -> TerminalSupervisor:
        d = TerminalSupervisor(tmp_path, "supervisor", env)
        d.start_args = ["--workers", "2"]
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.stop()


def _workers_ready(supervisor: DaemonProcess) -> bool:
    code, body = supervisor.readyz()
    return code == 200 and all(w["partitions_assigned"] for w in body["workers"])


def test_ctrl_c_reaches_only_the_supervisor_and_the_workers_finish_cleanly(
    broker, small_bundle, terminal
):
    from tests.daemon.test_delivery import PacedProducer, _sources

    bs = broker.bootstrap_servers
    topic, group = unique("ctrlc-in"), unique("ctrlc")
    create_topic(bs, topic, 2)
    supervisor = terminal(daemon_env(bs, small_bundle, [topic], group))
    wait_for(
        lambda: _workers_ready(supervisor),
        timeout=90,
        interval=0.2,
        message="both workers ready",
    )
    pids = [w["pid"] for w in supervisor.readyz()[1]["workers"]]
    groups = {pid: os.getpgid(pid) for pid in pids}
    stream = PacedProducer(bs, topic, n=4000, rate=800)
    stream.start()
    scores = Collector(bs, f"{group}.scores")
    scores.wait_count(300, timeout=30, message="the workers scoring")
    os.killpg(supervisor.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code = supervisor.proc.wait(60)
    log = supervisor.log()
    assert code == 0, log[-4000:]
    assert "second signal" not in log
    assert log.count("vaeguard daemon stopped") == 2, log[-4000:]
    assert all(not _alive(pid) for pid in pids)
    assert all(g != supervisor.proc.pid for g in groups.values()), "workers in the shell's group"
    # every record below a committed offset has its score record (the batches were finished)
    stream.join(30)
    scores.drain()
    scored = _sources(scores)
    for partition, offset in committed(bs, group, topic, [0, 1]).items():
        assert offset is not None, "nothing committed"
        missing = [o for o in range(offset) if (partition, o) not in scored]
        assert not missing, f"partition {partition}: committed past unscored offsets {missing[:5]}"


def test_a_hung_worker_is_restarted(broker, small_bundle, daemons):
    bs = broker.bootstrap_servers
    topic, group = unique("hung-in"), unique("hung")
    create_topic(bs, topic, 2)
    env = daemon_env(bs, small_bundle, [topic], group, VAEGUARD_SUPERVISOR__HANG_TIMEOUT_S="10")
    supervisor = daemons("supervisor", env)
    supervisor.start_args = ["--workers", "2"]
    supervisor.start()
    wait_for(
        lambda: _workers_ready(supervisor), timeout=90, interval=0.2, message="both workers ready"
    )
    workers = supervisor.readyz()[1]["workers"]
    victim = workers[1]["pid"]
    os.kill(victim, signal.SIGSTOP)  # alive, holds its partitions, makes no progress
    try:

        def replaced() -> bool:
            w = supervisor.readyz()[1].get("workers", [{}, {}])[1]
            return w.get("pid") not in (None, victim) and w.get("restart_reasons") == {"hung": 1}

        wait_for(replaced, timeout=90, interval=0.2, message="the hung worker restarted")
        wait_for(lambda: not _alive(victim), timeout=30, message="the hung worker gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    assert "worker hung: no heartbeat" in supervisor.log()
    wait_for(lambda: _workers_ready(supervisor), timeout=90, interval=0.2, message="ready again")
    body = supervisor.readyz()[1]
    # the other worker, idle for longer than the hang timeout, kept beating
    assert body["workers"][0]["restarts"] == 0
    assert supervisor.metric("vaeguard_worker_restarts_total", 'reason="hung"') == 1
    assert supervisor.terminate() == 0, supervisor.log()[-3000:]


def test_the_first_restart_is_immediate_and_quick_repeated_crashes_back_off(tmp_path):
    """A crash must not add seconds to the restart (issue 26: restart within 15 s); a worker
    that keeps dying young waits 1, 2, 4 … s between tries, and a stable run resets that."""
    from types import SimpleNamespace

    from vaeguard.daemon.supervisor import STABLE_S, Supervisor

    sup = Supervisor(Settings(), None, 1)
    sup.metrics_dir = tmp_path
    worker = sup.workers[0]
    delays = []
    for ran in (1.0, 1.0, 1.0, STABLE_S + 1.0, 1.0):
        worker.proc = SimpleNamespace(returncode=1, pid=2**22 + 1)
        worker.started_at = time.monotonic() - ran
        before = time.monotonic()
        sup._reap(worker)
        delays.append(round(worker.next_start - before))
    assert delays == [0, 1, 2, 0, 1]
