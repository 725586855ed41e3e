"""The durable per-sink spool: alerts a sink has not accepted yet, in a JSON-lines file.

An append-only log of operations, fsync'ed before any call returns:
``{"op": "add", "nid": ..., "alert": {...}, "reason": ..., "at": ...}`` when an alert is
spooled, ``{"op": "ack", "nid": ...}`` once it is delivered. Pending = adds without an ack, in
file order. When nothing is pending the file is truncated; a torn last line (a crash in the
middle of a write, before the append returned) is ignored. An append writes all of its lines
or, if the disk refuses (full, quota), truncates what it wrote and raises `SpoolError`: what
was reported as spooled is never torn.

Files are 0600 and folders created 0700: alerts name hosts, labels and scores.

Alerts a sink can never deliver (`UndeliverableAlertError`, a payload that cannot be built)
are *dead letters*: moved to ``dead/<sink>.jsonl`` beside the spool (``{"op": "dead", ...}``
lines, fsync'ed before the spool's ack), so they neither block the alerts behind them nor fill
the spool. That file is rotated once (``.1``) past its size limit, so it stays bounded.

Several processes may share a spool (the daemon and ``vaeguard spool flush``): appends and
rewrites hold an exclusive ``flock`` on ``<sink>.lock``, and a redelivery pass holds
``<sink>.redeliver.lock`` so two processes never redeliver the same alert at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeguard.alerts.model import Alert
from vaeguard.errors import SpoolError as SpoolError
from vaeguard.files import replacing

log = logging.getLogger("vaeguard.alerts.spool")

SUFFIX = ".spool.jsonl"
DEAD_DIR = "dead"
#: Rewrite the file (dropping acknowledged entries) once it holds this many acks.
COMPACT_AFTER_ACKS = 1000


@dataclass(frozen=True)
class SpoolEntry:
    nid: str
    alert: Alert
    reason: str
    at: float


class Spool:
    """One sink's spool file."""

    def __init__(
        self,
        directory: Path | str,
        sink_name: str,
        max_bytes: int | None = None,
        dead_max_bytes: int | None = None,
    ):
        self.directory = Path(directory)
        self.sink_name = sink_name
        self.path = self.directory / f"{sink_name}{SUFFIX}"
        self.dead_path = self.directory / DEAD_DIR / f"{sink_name}.jsonl"
        self.max_bytes = max_bytes
        self.dead_max_bytes = dead_max_bytes
        self._lock = threading.Lock()
        self._redeliver_lock = threading.Lock()

    # -- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, suffix: str = ".lock", blocking: bool = True) -> Iterator[bool]:
        _private_dir(self.directory)
        fd = os.open(self.directory / f"{self.sink_name}{suffix}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def redelivery(self) -> Iterator[bool]:
        """Hold the right to redeliver (non-blocking): yields False if another process has it."""
        with self._redeliver_lock, self._locked(".redeliver.lock", blocking=False) as got:
            yield got

    # -- writing ---------------------------------------------------------------------------

    def _append(self, lines: Sequence[dict[str, Any]], check_size: bool) -> None:
        with self._lock, self._locked():
            self._append_locked(lines, check_size)

    def _append_locked(self, lines: Sequence[dict[str, Any]], check_size: bool) -> None:
        data = b"".join(_encode(line) for line in lines)
        try:
            if (
                check_size
                and self.max_bytes is not None
                and self.size() + len(data) > self.max_bytes
            ):
                raise SpoolError(
                    f"the spool of sink {self.sink_name!r} is full "
                    f"({self.size() / 1e6:.1f} MB ≥ spool_max_mb); alerts are not being "
                    f"delivered: check the sink"
                )
            fd = _open_private(self.path)
            try:
                # A crash may have left a torn last line: start ours on a fresh line.
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    data = b"\n" + data
                _append_whole(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(
                f"cannot write the spool of sink {self.sink_name!r} ({self.path}): {exc.strerror or exc}"
            ) from None

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def add(self, items: Sequence[tuple[str, Alert]], reason: str) -> None:
        """Durably record (nid, alert) pairs as pending. Raises `SpoolError` if it cannot."""
        if not items:
            return
        now = time.time()
        self._append(
            [
                {"op": "add", "nid": nid, "alert": alert.to_json(), "reason": reason, "at": now}
                for nid, alert in items
            ],
            check_size=True,
        )

    def ack(self, nids: Sequence[str]) -> None:
        """Mark entries delivered (acks are never refused for size: they free space)."""
        if nids:
            self._append([{"op": "ack", "nid": n} for n in nids], check_size=False)

    # -- dead letters ----------------------------------------------------------------------

    def bury(self, items: Sequence[tuple[str, Alert]], reason: str) -> None:
        """Durably record (nid, alert) pairs as dead letters. Raises `SpoolError` if it cannot.

        The caller acks spooled ones afterwards: a crash in between leaves an alert in both
        files, and it is dead-lettered again (twice listed, never lost).
        """
        if not items:
            return
        now = time.time()
        data = b"".join(
            _encode(
                {"op": "dead", "nid": nid, "alert": alert.to_json(), "reason": reason, "at": now}
            )
            for nid, alert in items
        )
        try:
            with self._lock, self._locked():
                _private_dir(self.dead_path.parent)
                size = _size(self.dead_path)
                if (
                    self.dead_max_bytes is not None
                    and size
                    and size + len(data) > self.dead_max_bytes
                ):
                    os.replace(self.dead_path, self._dead_backup)
                    log.warning(
                        "dead letters rotated: the oldest were dropped",
                        extra={"sink": self.sink_name, "path": str(self.dead_path)},
                    )
                fd = _open_private(self.dead_path)
                try:
                    _append_whole(fd, data)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise SpoolError(
                f"cannot write the dead letters of sink {self.sink_name!r} ({self.dead_path}): "
                f"{exc.strerror or exc}"
            ) from None

    @property
    def _dead_backup(self) -> Path:
        return self.dead_path.with_name(self.dead_path.name + ".1")

    def dead(self) -> list[SpoolEntry]:
        """Dead letters, oldest first (the rotated file's, then the current one's)."""
        out: list[SpoolEntry] = []
        for path in (self._dead_backup, self.dead_path):
            out += self._read_file(path, "dead")[0]
        return out

    def revive(self) -> int:
        """Move every dead letter back into the spool (``vaeguard spool flush --dead``);
        returns how many. Added before the dead files are removed (under the lock, so no
        dead letter written meanwhile is lost): a crash may duplicate, never lose."""
        with self._lock, self._locked():
            entries = self.dead()
            if entries:
                now = time.time()
                self._append_locked(
                    [
                        {
                            "op": "add",
                            "nid": e.nid,
                            "alert": e.alert.to_json(),
                            "reason": f"requeued dead letter ({e.reason})",
                            "at": now,
                        }
                        for e in entries
                    ],
                    check_size=False,
                )
            for path in (self._dead_backup, self.dead_path):
                path.unlink(missing_ok=True)
        return len(entries)

    # -- reading ---------------------------------------------------------------------------

    def size(self) -> int:
        return _size(self.path)

    def _read(self) -> tuple[list[SpoolEntry], int]:
        return self._read_file(self.path, "add")

    def _read_file(self, path: Path, add_op: str) -> tuple[list[SpoolEntry], int]:
        entries: dict[str, SpoolEntry] = {}
        acks = 0
        try:
            f = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return [], 0
        with f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    if line["op"] == add_op:
                        entries[line["nid"]] = SpoolEntry(
                            line["nid"],
                            Alert.model_validate(line["alert"]),
                            line.get("reason", ""),
                            float(line.get("at", 0.0)),
                        )
                    elif line["op"] == "ack":
                        acks += 1
                        entries.pop(line["nid"], None)
                except (ValueError, KeyError, TypeError) as exc:
                    # Only a crash mid-append leaves such a line, and that append never
                    # returned, so nothing that was reported as spooled is lost here.
                    log.warning(
                        "skipping an unreadable spool line",
                        extra={"sink": self.sink_name, "line": number, "error": str(exc)[:200]},
                    )
        return list(entries.values()), acks

    def pending(self) -> list[SpoolEntry]:
        """Entries not delivered yet, oldest first."""
        if not self.path.exists():
            return []
        with self._lock, self._locked():
            return self._read()[0]

    def compact(self) -> int:
        """Drop acknowledged entries from the file; returns how many are still pending."""
        if not self.path.exists():
            return 0
        with self._lock, self._locked():
            entries, acks = self._read()
            if not entries:
                if self.size():
                    with open(self.path, "r+b") as f:
                        f.truncate(0)
                        os.fsync(f.fileno())
                return 0
            if acks >= COMPACT_AFTER_ACKS:
                with replacing(self.path) as tmp, open(tmp, "wb") as f:
                    for e in entries:
                        line = {
                            "op": "add",
                            "nid": e.nid,
                            "alert": e.alert.to_json(),
                            "reason": e.reason,
                            "at": e.at,
                        }
                        f.write(_encode(line))
            return len(entries)


def spooled_sinks(directory: Path | str) -> list[str]:
    """Names of the sinks that have a spool file in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in directory.glob(f"*{SUFFIX}"))


def dead_sinks(directory: Path | str) -> list[str]:
    """Names of the sinks that have dead letters in ``directory``."""
    dead = Path(directory) / DEAD_DIR
    if not dead.is_dir():
        return []
    names = {p.name.removesuffix(".1").removesuffix(".jsonl") for p in dead.glob("*.jsonl*")}
    return sorted(n for n in names if any(Spool(directory, n).dead()))


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700 (missing parents get the default mode): alerts carry entity names,
    labels and scores."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _open_private(path: Path) -> int:
    """An append descriptor of ``path``, 0600 (also a file an older version made 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def _append_whole(fd: int, data: bytes) -> None:
    """Write all of ``data`` and fsync, or leave the file as it was and raise `OSError`.

    ``os.write`` may write less than asked (a signal, a full disk, a quota): the rest is
    written in a loop, since a torn record is skipped on read-back and the alert, reported as
    spooled, would be lost. If the write cannot complete, what it wrote is truncated away, so
    the file ends at a record boundary again. The caller holds the spool's lock.
    """
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "the write made no progress")
            view = view[written:]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
            os.fsync(fd)
        raise


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _encode(line: dict[str, Any]) -> bytes:
    # A lone surrogate (a record's JSON can carry "\ud800") has no UTF-8 form: written as its
    # JSON escape, so the spool never refuses an alert for its text.
    return (
        json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "backslashreplace"
        )
        + b"\n"
    )
