"""A third-party sink used by vaeguard's tests: appends "<prefix> <alert id> <status>" lines."""

from pathlib import Path

from vaeguard.alerts.sink import Sink, SinkSettings


class MemoSettings(SinkSettings):
    path: Path
    prefix: str = "memo"


class MemoSink(Sink):
    """Appends one line per alert to a file (a test fixture)."""

    Settings = MemoSettings
    max_batch = 50

    def send(self, alerts):
        with open(self.settings.path, "a", encoding="utf-8") as f:
            for a in alerts:
                f.write(f"{self.settings.prefix} {a.id} {a.status}\n")
