"""`file`: alerts appended as JSON lines, rotated by size, the newest backups kept.

Files are created 0600 (owner only); rotated backups are the same files renamed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from pydantic import Field

from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import Sink, SinkSettings


def _private(path: str, flags: int) -> int:
    # Alerts name hosts, labels and scores: readable by the daemon's user only. Rotation
    # renames, so the backups keep this mode; an existing file keeps the mode it was given.
    return os.open(path, flags, 0o600)


class FileSettings(SinkSettings):
    path: Path
    #: Rotate when the file would grow past this size: alerts.jsonl → alerts.jsonl.1 → ...
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Rotated files kept (alerts.jsonl.1 .. .N); older ones are deleted.
    backups: int = Field(5, ge=0)
    #: fsync after every batch: an alert reported as sent is on disk.
    fsync: bool = True


class FileSink(Sink):
    """Appends each alert's canonical JSON as one line; size-based rotation and retention."""

    Settings = FileSettings
    max_batch = 1000

    def __init__(self, settings: FileSettings, context):
        super().__init__(settings, context)
        self.path = Path(settings.path)
        self._lock = threading.Lock()

    def send(self, alerts: list[Alert]) -> None:
        data = b"".join(a.json_bytes() + b"\n" for a in alerts)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.settings.max_bytes:
                self._rotate()
            with open(self.path, "ab", opener=_private) as f:
                f.write(data)
                f.flush()
                if self.settings.fsync:
                    os.fsync(f.fileno())

    def _rotate(self) -> None:
        keep = self.settings.backups
        if keep == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{keep}")
        oldest.unlink(missing_ok=True)
        for i in range(keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def health(self) -> dict[str, Any]:
        return {"path": str(self.path)}
