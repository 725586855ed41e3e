"""`log`: every alert as one structured log line (the default when no sink is configured)."""

from __future__ import annotations

import logging
from typing import Literal

from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import Sink, SinkSettings


class LogSettings(SinkSettings):
    #: Logger the alerts go to (the daemon's JSON formatter turns them into JSON lines).
    logger: str = "vaeguard.alerts.log"
    #: Level of firing alerts; resolved ones are logged at INFO.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"


class LogSink(Sink):
    """Logs each alert: the summary as the message, the alert's JSON under the key ``alert``."""

    Settings = LogSettings
    max_batch = 1000

    def __init__(self, settings: LogSettings, context):
        super().__init__(settings, context)
        self._logger = logging.getLogger(settings.logger)
        self._level = logging.getLevelName(settings.level)

    def send(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            level = self._level if alert.status == "firing" else logging.INFO
            self._logger.log(
                level, alert.summary, extra={"alert": alert.to_json(), "sink": self.name}
            )
