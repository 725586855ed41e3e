"""When a batch's offsets may be committed: the checkpoint policy.

A stateless model's offsets are committed as soon as its batch is produced and alerted. A
stateful model (window mode) holds per-entity state built from the records it has seen, so
the state must be on disk before the offsets it covers are committed; saving is throttled to
``scoring.state_interval_s`` (the state of many entities is megabytes). A crash replays at most
that interval's records, which the saved state re-scores exactly as before (at-least-once
duplicates), and a replay of records the saved state already holds is skipped
(`Serving.covers`). Without ``scoring.state_dir`` the state lives in memory only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaeguard.errors import VaeguardError

log = logging.getLogger("vaeguard.daemon.window")


class StateStore:
    """The state file of one daemon: ``<state_dir>/<group>.<instance>.window-state.json``.

    Written with `write_atomic` (a crash leaves the old file or the new one, never half).
    Daemons must not share a file: the name includes the consumer group and the daemon's
    ``group_instance_id`` (else its ``client_id``).
    """

    def __init__(self, state_dir: Path, group_id: str, task_id: str):
        safe = lambda s: re.sub(r"[^A-Za-z0-9._-]", "_", s)  # noqa: E731
        self.path = Path(state_dir) / f"{safe(group_id)}.{safe(task_id)}.window-state.json"

    def save(self, state: dict[str, Any]) -> None:
        from vaeguard.bundle import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state, separators=(",", ":"), allow_nan=False)
        write_atomic(self.path, data.encode())

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if there is none; a corrupt file is moved aside."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.quarantine(f"unreadable ({exc})")
            return None
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            return state
        except (ValueError, RecursionError) as exc:
            self.quarantine(f"not JSON ({exc})")
            return None

    def quarantine(self, reason: str) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        self.path.replace(aside)
        log.error(
            "window state is corrupt; moved aside, every entity starts a fresh window",
            extra={"path": str(self.path), "moved_to": str(aside), "reason": reason},
        )


class Checkpoint:
    """Decides when processed offsets are committed, and carries state across model swaps."""

    def __init__(
        self,
        store: StateStore | None,
        interval_s: float,
        commit: Callable[[dict[Any, int]], None],
    ):
        self.store = store
        self.interval_s = interval_s
        self._commit = commit
        #: The stateful model whose state is checkpointed (None while serving a stateless one).
        self.serving = None
        #: Offsets processed but not committed yet (waiting for the next state save).
        self.pending: dict[Any, int] = {}
        self._last_save = 0.0

    def take_over(self, serving, version: str) -> None:
        """A new model serves from now on: hand it the state of the previous one, or restore
        it from the store at start-up."""
        if not serving.stateful:
            self.flush()  # what the stateful model processed, committed
            self.serving = None
            return
        if self.serving is not None:
            kept = serving.adopt(self.serving)
            log.info("window state handed to the new model", extra={"version": version, **kept})
        elif self.store is None:
            log.warning(
                "window mode without scoring.state_dir: the per-entity state lives in memory "
                "only, so after a restart each entity fills its window again before it is scored"
            )
        else:
            state = self.store.load()
            if state is None:
                log.info("no window state to restore yet", extra={"path": str(self.store.path)})
            else:
                try:
                    kept = serving.restore(state)
                except VaeguardError as exc:
                    self.store.quarantine(str(exc))
                else:
                    log.info(
                        "window state restored",
                        extra={"path": str(self.store.path), "offsets": serving.offsets, **kept},
                    )
        self.serving = serving

    def done(self, serving, next_offsets: dict[Any, int]) -> None:
        """A batch is produced and alerted: commit its offsets now or with the next save."""
        serving.advance(next_offsets)
        if serving.stateful and self.store is not None:
            self.pending.update(next_offsets)
            self.tick()
        else:
            self._commit(next_offsets)

    def tick(self, *, force: bool = False) -> None:
        """Save the state and commit the offsets it covers, when due (or now, with force)."""
        if not self.pending or self.serving is None or self.store is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.interval_s:
            return
        self.store.save(self.serving.snapshot())
        self._last_save = now
        offsets, self.pending = self.pending, {}
        self._commit(offsets)

    def flush(self) -> None:
        self.tick(force=True)

    def revoked(self, partitions) -> None:
        for tp in partitions:
            # never committed: the partition's next owner replays those records
            self.pending.pop(tp, None)
