"""What the pipeline knows of a model: the `Serving` interface and the records it handles.

The daemon's batch step, retraining and `vaeguard score` talk to a model only through this
interface, so they never tell model kinds apart: featurize the decoded records, score the rows,
get `ScoredRecord`s back. A new model kind is a new `Serving` class, not new branches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from vaeguard.ingest import Rejection, entity_text
from vaeguard.scored import ScoredRecord, Source


@dataclass(slots=True)
class Inbound:
    """A decoded record on its way to a model.

    ``key`` and ``timestamp_ms`` are the Kafka message's (None / 0 for a file row): the
    entity falls back to the message key, and a tabular record without ``ts`` reports the
    message time.
    """

    record: dict[str, Any]
    source: Source
    key: bytes | None = None
    timestamp_ms: int | None = None


def entity_of(item: Inbound, field: str = "key") -> str | None:
    """The entity a record is about, for every model kind: its ``field``, else the message
    key (None for a file row without the field)."""
    key = item.record.get(field)
    if key is not None:
        return entity_text(key)
    if item.key is not None:
        return item.key.decode("utf-8", "replace")
    return None


@dataclass
class Features:
    """Model input for the usable records of a batch.

    ``x`` (rows × features), ``c`` (encoded conditions or None), ``mask`` (1 = observed, None =
    all observed); ``keep``: for each row, the index of the record it reports on; ``entities``
    and ``timestamps`` of each row (as they go into the score record); ``rejected``: records
    refused (their ``index`` set); ``buffered``: records that only updated a stateful model's
    state. ``extra`` holds per-row arrays a model kind needs to explain its rows.
    """

    x: np.ndarray
    c: np.ndarray | None
    mask: np.ndarray | None
    keep: np.ndarray
    entities: list[str | None]
    timestamps: list[Any]
    rejected: list[Rejection] = field(default_factory=list)
    buffered: int = 0
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.keep.shape[0])

    def take(self, rows: Sequence[int]) -> Features:
        """The same batch restricted to some rows (for isolating a row that fails to score)."""
        idx = np.asarray(rows, dtype="int64")
        return replace(
            self,
            x=self.x[idx],
            c=None if self.c is None else self.c[idx],
            mask=None if self.mask is None else self.mask[idx],
            keep=self.keep[idx],
            entities=[self.entities[i] for i in idx.tolist()],
            timestamps=[self.timestamps[i] for i in idx.tolist()],
            rejected=[],
            buffered=0,
            extra={k: v[idx] for k, v in self.extra.items()},
        )


class Serving(Protocol):
    """One loaded model, ready to score records of its kind."""

    kind: str
    version: str
    #: Whether featurizing changes state (per-entity windows) that must be checkpointed.
    stateful: bool
    #: The training scores' reference quantiles (drift monitoring), or None.
    score_reference: np.ndarray | None
    #: Entities with state in memory (0 when stateless).
    n_entities: int
    #: Fields every record needs (a file without such a column cannot be scored at all).
    required_fields: list[str]

    def warm_up(self) -> None:
        """Compile every batch-size bucket; raise if the model scores NaN on benign input."""

    def featurize(self, items: Sequence[Inbound]) -> Features:
        """Rows for the usable records; never raises for a record (it is rejected instead)."""

    def score(
        self,
        features: Features,
        items: Sequence[Inbound],
        *,
        top_k: int,
        bands: Sequence[tuple[str, float]],
        explain: str = "all",
    ) -> list[ScoredRecord]:
        """One score record per row of ``features`` (``items`` are the featurized records).

        ``explain="anomalies"``: contributions only for rows above the threshold (the others
        get none: with ``output.mode: anomalies`` nobody reads them, and building them is most
        of the per-record cost)."""

    def learn(self) -> dict[str, Any] | None:
        """Called once per batch after it is scored: a model that learns online (window mode)
        refits here when due; returns what happened (``ok``, ``result``, ``windows``,
        ``seconds``) or None."""

    # -- state: no-ops for stateless models -------------------------------------------------

    def covers(self, source: Source) -> bool:
        """Whether the state already holds this record (a replay after a crash)."""

    def advance(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """The state now holds every record before these (topic, partition) offsets."""

    def snapshot(self) -> dict[str, Any] | None:
        """The state as JSON-safe data (None when stateless)."""

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Continue from a snapshot; returns what was kept, for the log."""

    def adopt(self, previous: Serving) -> dict[str, Any]:
        """Take over the state of the model this one replaces (a hot swap)."""


class Stateless:
    """The state half of `Serving` for models that score each record on its own."""

    stateful = False
    n_entities = 0

    def learn(self) -> dict[str, Any] | None:
        return None

    def covers(self, source: Source) -> bool:
        return False

    def advance(self, next_offsets) -> None:
        return None

    def snapshot(self) -> dict[str, Any] | None:
        return None

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        return {}

    def adopt(self, previous) -> dict[str, Any]:
        return {}
