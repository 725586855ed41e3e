"""The durable per-sink spool: alerts a sink has not accepted yet, in a JSON-lines file.

An append-only log of operations, fsync'ed before any call returns:
``{"op": "add", "nid": ..., "alert": {...}, "reason": ..., "at": ...}`` when an alert is
spooled, ``{"op": "ack", "nid": ...}`` once it is delivered. Pending = adds without an ack, in
file order. When nothing is pending the file is truncated; a torn last line (a crash in the
middle of a write, before the append returned) is ignored.

Several processes may share a spool (the daemon and ``vaeguard spool flush``): appends and
rewrites hold an exclusive ``flock`` on ``<sink>.lock``, and a redelivery pass holds
``<sink>.redeliver.lock`` so two processes never redeliver the same alert at once.
"""

from __future__ import annotations

import contextlib
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
from vaeguard.errors import VaeguardError

log = logging.getLogger("vaeguard.alerts.spool")

SUFFIX = ".spool.jsonl"
#: Rewrite the file (dropping acknowledged entries) once it holds this many acks.
COMPACT_AFTER_ACKS = 1000


class SpoolError(VaeguardError):
    """The spool cannot take an alert (disk full, unwritable, over its size limit)."""


@dataclass(frozen=True)
class SpoolEntry:
    nid: str
    alert: Alert
    reason: str
    at: float


class Spool:
    """One sink's spool file."""

    def __init__(self, directory: Path | str, sink_name: str, max_bytes: int | None = None):
        self.directory = Path(directory)
        self.sink_name = sink_name
        self.path = self.directory / f"{sink_name}{SUFFIX}"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._redeliver_lock = threading.Lock()

    # -- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, suffix: str = ".lock", blocking: bool = True) -> Iterator[bool]:
        self.directory.mkdir(parents=True, exist_ok=True)
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
        data = b"".join(
            json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for line in lines
        )
        try:
            with self._lock, self._locked():
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
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    # A crash may have left a torn last line: start ours on a fresh line.
                    if os.fstat(fd).st_size and not self._ends_with_newline():
                        data = b"\n" + data
                    os.write(fd, data)
                    os.fsync(fd)
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

    # -- reading ---------------------------------------------------------------------------

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read(self) -> tuple[list[SpoolEntry], int]:
        entries: dict[str, SpoolEntry] = {}
        acks = 0
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return [], 0
        with f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    if line["op"] == "add":
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
                tmp = self.path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    for e in entries:
                        line = {
                            "op": "add",
                            "nid": e.nid,
                            "alert": e.alert.to_json(),
                            "reason": e.reason,
                            "at": e.at,
                        }
                        f.write(
                            json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()
                            + b"\n"
                        )
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            return len(entries)


def spooled_sinks(directory: Path | str) -> list[str]:
    """Names of the sinks that have a spool file in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in directory.glob(f"*{SUFFIX}"))
