"""The daemon's side of `input.format`: the field mapping bound to the model being served.

A Telegraf, Prometheus or OTLP message becomes flat records here (`vaeguard.input_formats`)
before the batch step sees them. Tabular models need every feature in one row, so their rows
are assembled, and a row that waits holds samples of messages already polled: the commit of
each partition stops at the first offset a waiting row holds (`commit_offsets`), so a crash or
a rebalance replays those samples instead of losing them (at-least-once, as everywhere else).
"""

from __future__ import annotations

from typing import Any

from vaeguard.input_formats import InputReader, InputSpec, Read

__all__ = ["InputStage"]


class InputStage:
    """One `InputReader` for the serving model (rebuilt when a swap changes its fields)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.reader: InputReader | None = None
        self._bound: tuple[Any, ...] | None = None
        #: Each polled partition's next offset (key: the consumer's TopicPartition).
        self._next: dict[Any, int] = {}
        self._committed: dict[Any, int] = {}

    def bind(self, serving) -> tuple[InputReader, Read]:
        """The reader for ``serving``; with the rows a previous model's reader still held,
        closed (a swap must not strand them)."""
        spec = getattr(serving, "spec", None)
        entity_field = getattr(serving, "entity_field", None) or "key"
        time_field = getattr(spec, "time_field", None) or "ts"
        required = tuple(getattr(spec, "metrics", None) or serving.required_fields)
        assemble = not serving.stateful  # window models take any subset of metrics per point
        # categorical conditions: a tag / label taken as the category it is
        labels = tuple(getattr(serving, "categorical_conditions", None) or ())
        key = (entity_field, time_field, required, assemble, labels)
        leftover = Read()
        if self.reader is None or key != self._bound:
            if self.reader is not None:
                leftover = self.reader.close_all()
            self.reader = InputReader(
                self.spec,
                entity_field=entity_field,
                time_field=time_field,
                required=required,
                assemble=assemble,
                labels=labels,
            )
            self._bound = key
        return self.reader, leftover

    def due(self) -> bool:
        """Whether a waiting row has waited ``input.max_wait_s`` (closed by the next batch)."""
        return self.reader is not None and self.reader.due_now()

    def commit_offsets(self, polled: dict[Any, int]) -> dict[Any, int]:
        """The offsets to commit after a batch that polled up to ``polled``: each partition's
        next offset, but not past the first sample a waiting row holds."""
        self._next.update(polled)
        held = {} if self.reader is None else self.reader.held_from()
        out = {}
        for tp, next_offset in self._next.items():
            offset = min(next_offset, held.get((tp.topic, tp.partition), next_offset))
            if self._committed.get(tp) != offset:
                out[tp] = offset
        return out

    def committed(self, offsets: dict[Any, int]) -> None:
        self._committed.update(offsets)

    def revoked(self, partitions) -> dict[tuple[str, int], int]:
        """Forget the partitions and every waiting row (their samples are replayed from the
        commit); returns per (topic, partition) the first offset the rows held, to rewind to
        if the partition comes back to this consumer."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
        return {} if self.reader is None else self.reader.drop_all()
