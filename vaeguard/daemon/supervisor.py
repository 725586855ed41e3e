"""`vaeguard run --workers N`: N daemons on one machine, one consumer group, one ops endpoint.

Python scores one batch at a time per process, so a machine with several cores runs several
group members. The supervisor starts them as child processes (``vaeguard run`` with
``kafka.group_instance_id`` = ``<id>-<k>`` and ``kafka.client_id`` = ``<client_id>-<k>``, where
``<id>`` is the configured group instance id, else the client id), restarts a worker that
dies (with capped backoff; static membership lets the restarted worker take its partitions
back without a rebalance) or hangs, stops them with SIGTERM and the shutdown grace, and serves
one ``/healthz``, ``/readyz`` and ``/metrics`` for all of them from prometheus_client's
multiprocess files. It never imports the model stack itself: it only watches.

Each worker runs in its own session, so a terminal's Ctrl-C (SIGINT to the foreground process
group) reaches the supervisor only, which then stops the workers itself: each finishes its
in-flight batch, commits and exits 0 (a worker hit by both the terminal's SIGINT and the
supervisor's SIGTERM would take the second as "exit at once"). A worker dies with its
supervisor, even one killed by SIGKILL: it sets its own parent-death signal first thing at
start (`worker_startup`; no ``preexec_fn``, which runs between fork and exec in a copy of this
multi-threaded process, where taking any lock can deadlock). A worker whose main loop stops
coming round (a deadlock, a C call that never returns) is restarted too: the loop writes a
heartbeat to a pipe the supervisor reads, and a worker silent for ``supervisor.hang_timeout_s``
gets SIGTERM (and SIGCONT, should it be stopped), then SIGKILL after the grace.

Only worker 0 runs scheduled retraining (the others follow the registry's CURRENT pointer),
and each worker keeps its own window-mode state file (named by its instance id).

Each worker gets a share of the cores for its compute thread pools: ``max(1, cores // N)``
threads (``cores`` = the CPUs this process may run on) in ``TF_NUM_INTRAOP_THREADS``,
``TF_NUM_INTEROP_THREADS`` and ``OMP_NUM_THREADS``. Left alone, every worker's TensorFlow sizes
its pools to all cores, and N workers' spinning pools oversubscribe them (measured in
benchmarks/RESULTS-throughput.md). A variable already set in the supervisor's environment is
passed on unchanged: that is the override.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("vaeguard.daemon.supervisor")

#: A worker that ran at least this long before dying is restarted without backoff.
STABLE_S = 60.0
#: The exit code of a settings error: every worker would fail the same way, so stop.
CONFIG_EXIT = 2
#: A worker's environment: the supervisor's pid and the write end of its heartbeat pipe.
PARENT_PID_ENV = "VAEGUARD_PARENT_PID"
HEARTBEAT_FD_ENV = "VAEGUARD_HEARTBEAT_FD"
#: A worker writes its heartbeat at most this often (its loop comes round at every poll).
BEAT_INTERVAL_S = 1.0
#: Beyond the shutdown grace, what a stopped worker gets before SIGKILL (its watchdog ends it
#: at the grace; this is for closing).
KILL_MARGIN_S = 5.0
#: Why a worker was restarted (the ``reason`` label of ``vaeguard_worker_restarts_total``).
RESTART_REASONS = ("exited", "hung")


def resolve_workers(value: str | int) -> int:
    """``auto`` → the cores this process may use; else a positive integer."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return _cores()
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        from vaeguard.errors import ConfigError

        raise ConfigError(f"invalid option --workers: {value!r} (a positive integer or auto)")
    return n


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: The environment variables that size a worker's compute thread pools (see the module doc).
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def threads_per_worker(n_workers: int, cores: int | None = None) -> int:
    """Threads for each worker's compute pools: an equal share of the cores, at least 1."""
    return max(1, (cores if cores is not None else _cores()) // max(1, n_workers))


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by SIGKILL, so no worker is left
    orphaned (Linux; elsewhere a no-op). The signal comes when the parent's *thread* that
    started the child ends: the supervisor starts workers from its main thread only."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_startup() -> Callable[[], None] | None:
    """First thing in a worker (`vaeguard run` started by a supervisor): die with the
    supervisor, and return the heartbeat its main loop calls (None outside a supervisor).

    A supervisor that died before the parent-death signal was set is caught by the parent pid
    check: the worker exits at once rather than run unsupervised."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    fd = os.environ.pop(HEARTBEAT_FD_ENV, None)
    if parent is None:
        return None
    _die_with_parent()
    if str(os.getppid()) != parent:
        sys.stderr.write(f"vaeguard worker: its supervisor (pid {parent}) is gone; exiting\n")
        sys.stderr.flush()
        os._exit(1)
    return Heartbeat.from_env(fd)


class Heartbeat:
    """A worker's side of its heartbeat pipe: one byte, at most every BEAT_INTERVAL_S.

    Non-blocking: a full pipe or a gone supervisor must never hold up the loop."""

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)  # not into the worker's own children
        self.fd = fd
        self.last = float("-inf")

    @classmethod
    def from_env(cls, value: str | None) -> Heartbeat | None:
        try:
            return cls(int(value))
        except (TypeError, ValueError, OSError):
            return None

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < BEAT_INTERVAL_S:
            return
        self.last = now
        with contextlib.suppress(OSError):
            os.write(self.fd, b".")


@dataclass
class Worker:
    index: int
    #: Static group membership (``<group_instance_id>-<k>``), when one is configured.
    instance_id: str | None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    #: Restarts by reason (RESTART_REASONS).
    reasons: dict[str, int] = field(default_factory=dict)
    #: The read end of the running worker's heartbeat pipe, and when it last had a beat.
    beat_fd: int | None = None
    last_beat: float = 0.0
    #: When a worker taken as hung gets SIGKILL (None: not taken as hung).
    kill_at: float | None = None


class Supervisor:
    def __init__(self, settings, config: Path | None, n_workers: int):
        self.settings = settings
        self.config = config
        base = settings.kafka.group_instance_id
        self.workers = [Worker(k, f"{base}-{k}" if base else None) for k in range(n_workers)]
        share = str(threads_per_worker(n_workers))
        #: The thread-pool sizes each worker gets (an operator's own values win).
        self.threads = {v: os.environ.get(v) or share for v in THREAD_VARS}
        self.stopping = threading.Event()
        self.exit_code = 0
        self.hang_timeout_s = settings.supervisor.hang_timeout_s
        #: What each worker runs (its settings come from the environment and the config file).
        self.command = [sys.executable, "-m", "vaeguard.cli.main", "run"]
        self.http = None
        self._own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        self.metrics_dir = Path(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            or tempfile.mkdtemp(prefix="vaeguard-metrics-")
        )

    # -- workers ------------------------------------------------------------------------------

    def _env(self, w: Worker) -> dict[str, str]:
        env = dict(os.environ)
        if w.instance_id is not None:
            env["VAEGUARD_KAFKA__GROUP_INSTANCE_ID"] = w.instance_id
        env.update(
            VAEGUARD_KAFKA__CLIENT_ID=f"{self.settings.kafka.client_id}-{w.index}",
            VAEGUARD_HTTP__ENABLED="false",
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
            VAEGUARD_WORKER_INDEX=str(w.index),
            **self.threads,
        )
        if w.index > 0:
            env["VAEGUARD_RETRAIN__ENABLED"] = "false"
        return env

    def _start(self, w: Worker) -> None:
        args = list(self.command)
        if self.config is not None:
            args += ["--config", str(self.config)]
        read_fd, write_fd = os.pipe()
        env = self._env(w)
        env[PARENT_PID_ENV] = str(os.getpid())
        env[HEARTBEAT_FD_ENV] = str(write_fd)
        try:
            # Its own session: a terminal's signals reach the supervisor only (module doc).
            w.proc = subprocess.Popen(args, env=env, pass_fds=(write_fd,), start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        w.beat_fd = read_fd
        w.started_at = w.last_beat = time.monotonic()
        w.kill_at = None
        log.info(
            "worker started",
            extra={
                "worker": w.index,
                "pid": w.proc.pid,
                "instance_id": w.instance_id,
                "intra_op_threads": self.threads["TF_NUM_INTRAOP_THREADS"],
            },
        )

    def _reap(self, w: Worker) -> None:
        """Handle a worker that exited: schedule its restart (or stop everything)."""
        from prometheus_client import multiprocess

        code = w.proc.returncode
        pid = w.proc.pid
        multiprocess.mark_process_dead(pid, str(self.metrics_dir))
        w.exit_codes.append(code)
        w.proc = None
        if w.beat_fd is not None:
            os.close(w.beat_fd)
            w.beat_fd = None
        reason = "hung" if w.kill_at is not None else "exited"
        w.kill_at = None
        if self.stopping.is_set():
            return
        if code == CONFIG_EXIT:
            log.error("worker exited with a settings error; stopping", extra={"worker": w.index})
            self.exit_code = CONFIG_EXIT
            self.stop("worker settings error")
            return
        ran = time.monotonic() - w.started_at
        # The first restart is immediate (a crash must not add seconds to the restart); a
        # worker that keeps dying young waits 1, 2, 4 … 30 s between tries.
        if ran >= STABLE_S:
            w.backoff = 0.0
        delay = w.backoff
        w.backoff = min(30.0, max(1.0, w.backoff * 2))
        w.next_start = time.monotonic() + delay
        w.restarts += 1
        w.reasons[reason] = w.reasons.get(reason, 0) + 1
        log.warning(
            "worker hung and was stopped; restarting"
            if reason == "hung"
            else "worker died; restarting",
            extra={
                "worker": w.index,
                "pid": pid,
                "exit_code": code,
                "reason": reason,
                "restart_in_s": delay,
            },
        )

    def _heard(self, w: Worker) -> bool:
        """Drain the worker's heartbeat pipe; whether it held a beat."""
        heard = False
        while w.beat_fd is not None:
            try:
                chunk = os.read(w.beat_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:  # the worker closed it: exiting
                break
            heard = True
        return heard

    def _watch(self, w: Worker, now: float) -> None:
        """Restart a live worker whose heartbeat is older than hang_timeout_s: SIGTERM (its
        in-flight batch may still finish), SIGKILL once the grace is over."""
        if self._heard(w):
            w.last_beat = now
        if w.kill_at is not None:
            if now >= w.kill_at:
                log.error("hung worker outlived the grace; killed", extra={"worker": w.index})
                w.proc.kill()
                w.kill_at = float("inf")
            return
        silent = now - w.last_beat
        if silent <= self.hang_timeout_s:
            return
        log.error(
            "worker hung: no heartbeat; stopping it",
            extra={
                "worker": w.index,
                "pid": w.proc.pid,
                "silent_s": round(silent, 1),
                "hang_timeout_s": self.hang_timeout_s,
            },
        )
        w.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.proc.pid, signal.SIGCONT)  # a stopped process handles nothing
        w.kill_at = now + self.settings.shutdown_grace_s + KILL_MARGIN_S

    def run(self) -> int:
        """Start the workers, keep them running until stopped; the exit code."""
        for f in self.metrics_dir.glob("*.db"):
            f.unlink()
        try:
            self._serve_ops()
            for w in self.workers:
                self._start(w)
            while not self.stopping.is_set():
                now = time.monotonic()
                for w in self.workers:
                    if w.proc is not None and w.proc.poll() is not None:
                        self._reap(w)
                    elif w.proc is not None:
                        self._watch(w, now)
                    if w.proc is None and not self.stopping.is_set() and now >= w.next_start:
                        self._start(w)
                self.stopping.wait(0.2)
            return self._shutdown()
        finally:
            if self.http is not None:
                self.http.stop()
            if self._own_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def stop(self, reason: str = "") -> None:
        if not self.stopping.is_set():
            log.info("stopping the workers", extra={"reason": reason})
            self.stopping.set()

    def _shutdown(self) -> int:
        """SIGTERM to every worker; SIGKILL to one still running after the grace."""
        live = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in live:
            if w.kill_at is None:  # a hung one has had its SIGTERM: a second means "at once"
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + KILL_MARGIN_S
        code = self.exit_code
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                rc = w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker outlived the shutdown grace; killed", extra={"worker": w.index})
                w.proc.kill()
                rc = w.proc.wait(10)
            if rc != 0 and code == 0:
                code = 1
            self._reap(w)
        log.info("all workers stopped", extra={"exit_code": code})
        return code

    # -- ops endpoints ------------------------------------------------------------------------

    def registry(self):
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        registry.register(_Restarts(self.workers))
        return registry

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every worker runs and reports ready (its ``vaeguard_ready`` gauge)."""
        ready_by_pid: dict[str, float] = {}
        partitions_by_pid: dict[str, float] = {}
        try:
            for metric in self.registry().collect():
                for sample in metric.samples:
                    pid = sample.labels.get("pid")
                    if sample.name == "vaeguard_ready":
                        ready_by_pid[pid] = sample.value
                    elif sample.name == "vaeguard_partitions_assigned":
                        partitions_by_pid[pid] = sample.value
        except Exception as exc:  # a half-written file while a worker starts
            log.debug("could not read worker metrics", extra={"error": str(exc)})
        workers = []
        for w in self.workers:
            pid = str(w.proc.pid) if w.proc is not None and w.proc.poll() is None else None
            workers.append(
                {
                    "index": w.index,
                    "pid": int(pid) if pid else None,
                    "instance_id": w.instance_id,
                    "ready": pid is not None and ready_by_pid.get(pid) == 1.0,
                    "partitions_assigned": int(partitions_by_pid.get(pid, 0)) if pid else 0,
                    "restarts": w.restarts,
                    "restart_reasons": dict(w.reasons),
                }
            )
        ready = not self.stopping.is_set() and all(w["ready"] for w in workers)
        reasons = ["stopping"] if self.stopping.is_set() else []
        reasons += [
            f"worker {w['index']} "
            + ("not running" if w["pid"] is None else "not ready (see its log: broker, model)")
            for w in workers
            if not w["ready"]
        ]
        return ready, {
            "workers": workers,
            "partitions_assigned": sum(w["partitions_assigned"] for w in workers),
            "stopping": self.stopping.is_set(),
            "reason": "; ".join(reasons) if reasons else None,
        }

    def _serve_ops(self) -> None:
        s = self.settings.http
        if not s.enabled:
            return
        from vaeguard.daemon.http import OpsServer
        from vaeguard.errors import ConfigError

        try:
            self.http = OpsServer(
                s.host,
                s.port,
                self.readiness,
                request_timeout_s=s.request_timeout_s,
                max_connections=s.max_connections,
                registry=self.registry(),
            ).start()
        except OSError as exc:
            raise ConfigError(
                f"invalid setting http.port: cannot listen on {s.host}:{s.port} "
                f"({exc.strerror or exc})"
            ) from None


class _Restarts:
    """``vaeguard_worker_restarts_total``: the supervisor's own counter (not a worker's file)."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "vaeguard_worker_restarts",
            "Workers restarted by the supervisor (exited: it died; hung: its heartbeat stopped).",
            labels=["worker", "reason"],
        )
        for w in self.workers:
            for reason in RESTART_REASONS:
                family.add_metric([str(w.index), reason], w.reasons.get(reason, 0))
        yield family
