"""The contract between the daemon and alerting (placeholder until the sinks issue fills it in).

The daemon calls `AlertLayer.process(records)` once per batch with every scored record (normal
ones too: they resolve episodes) and commits its Kafka offsets only after it returns. It must
return only when every alert the batch produced is delivered or durably spooled, and raise if
it could do neither.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from vaeguard.scored import ScoredRecord

log = logging.getLogger("vaeguard.alerts")


class AlertLayer:
    """Minimal layer: logs each anomaly as one JSON line."""

    def process(self, records: Sequence[ScoredRecord]) -> None:
        for record in records:
            if record.is_anomaly:
                log.warning("anomaly %s", json.dumps(record.to_json(), separators=(",", ":")))

    def health(self) -> dict[str, object]:
        return {"ok": True}

    def close(self) -> None:
        pass
