"""When a batch's offsets may be committed: the checkpoint policy.

A stateless model's offsets are committed as soon as its batch is produced and alerted. A
stateful model (window mode) holds per-entity state built from the records it has seen, so
the state must be on disk before the offsets it covers are committed; saving is throttled to
``scoring.state_interval_s`` (the state of many entities is megabytes). A crash replays at most
that interval's records, which the saved state re-scores exactly as before (at-least-once
duplicates), and a replay of records the saved state already holds is skipped
(`Serving.covers`). Without ``scoring.state_dir`` the state lives in memory only.

The state file is data read from disk, not trusted: a file that cannot be read, parsed,
authenticated (``scoring.state_key``) or restored is moved aside, counted and logged, and the
daemon starts with empty state instead of crash-looping. The offsets it holds never make the
daemon skip records the consumer group has not committed: once the group's committed offsets
are known (after each assignment), a held offset beyond them is cut back to them, unless the
file records that the group had committed exactly those offsets when it was saved, i.e. the
daemon stopped between saving the state and committing (then the state holds those records).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaeguard.errors import DataError, VaeguardError
from vaeguard.errors import StateRefused as StateRefused
from vaeguard.files import write_atomic
from vaeguard.snapshot import is_count

log = logging.getLogger("vaeguard.daemon.window")

#: First line of an authenticated state file: this, the hex MAC of the rest, a newline.
MAC_PREFIX = b"HMAC-SHA256 "
#: What restoring a malformed state can raise: refused, moved aside, never a crash loop.
RESTORE_ERRORS = (
    VaeguardError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)


class StateStore:
    """The state file of one daemon: ``<state_dir>/<group>.<instance>.window-state.json``.

    Written with `write_atomic` (a crash leaves the old file or the new one, never half).
    Daemons must not share a file: the name includes the consumer group and the daemon's
    ``group_instance_id`` (else its ``client_id``). With a ``key``, the file starts with an
    HMAC-SHA256 of its JSON body, and a file without a valid one is refused.
    """

    def __init__(self, state_dir: Path, group_id: str, task_id: str, key: bytes | None = None):
        safe = lambda s: re.sub(r"[^A-Za-z0-9._-]", "_", s)  # noqa: E731
        self.path = Path(state_dir) / f"{safe(group_id)}.{safe(task_id)}.window-state.json"
        self._key = key

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state, separators=(",", ":"), allow_nan=False).encode()
        if self._key is not None:
            data = MAC_PREFIX + self._mac(data).encode() + b"\n" + data
        write_atomic(self.path, data)

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if there is none; a file that cannot be used is moved
        aside (`refuse`)."""
        try:
            return self.read()
        except StateRefused as exc:
            self.refuse(exc)
            return None

    def read(self) -> dict[str, Any] | None:
        """The saved state, None if there is none, `StateRefused` if it cannot be used."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateRefused("unreadable", f"unreadable ({exc})") from None
        body = self._authenticated(raw)
        try:
            state = json.loads(
                body.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float
            )
        except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
            raise StateRefused("corrupt", f"not JSON ({_cut(exc)})") from None
        if not isinstance(state, dict):
            raise StateRefused("corrupt", "not a JSON object")
        return state

    def _authenticated(self, raw: bytes) -> bytes:
        signed = raw.startswith(MAC_PREFIX)
        if self._key is None:  # not authenticated: a MAC line left by a keyed daemon is skipped
            return raw.split(b"\n", 1)[1] if signed and b"\n" in raw else raw
        head, _, body = raw.partition(b"\n")
        if not signed:
            raise StateRefused(
                "unauthenticated", "no HMAC-SHA256 line, and scoring.state_key is set"
            )
        given = head[len(MAC_PREFIX) :].strip()
        if not hmac.compare_digest(given, self._mac(body).encode()):
            raise StateRefused(
                "unauthenticated",
                "the HMAC-SHA256 does not verify (another key, or the file was changed)",
            )
        return body

    def refuse(self, exc: StateRefused | BaseException) -> None:
        """Move the file aside as ``<name>.bad-<UTC time>``, count it and log the reason."""
        from vaeguard.daemon import metrics

        kind = exc.kind if isinstance(exc, StateRefused) else "corrupt"
        reason = _cut(exc)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        try:
            self.path.replace(aside)
        except OSError as err:  # still refused: the next save replaces it
            log.error(
                "could not move the refused window state aside",
                extra={"path": str(self.path), "error": f"{type(err).__name__}: {err}"},
            )
            aside = None
        metrics.WINDOW_STATE_REFUSED.labels(kind).inc()
        log.error(
            "window state refused; moved aside, every entity starts a fresh window",
            extra={
                "path": str(self.path),
                "moved_to": None if aside is None else str(aside),
                "kind": kind,
                "reason": reason,
            },
        )

    def quarantine(self, reason: str) -> None:
        self.refuse(StateRefused("corrupt", reason))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a state file holds")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def _cut(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, VaeguardError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _key(tp: Any) -> str:
    """A partition as the state names it: ``topic:partition``."""
    return f"{tp.topic}:{tp.partition}"


def _committed_in(state: dict[str, Any]) -> dict[str, int]:
    """The file's ``committed``: the group's offsets as the daemon knew them when it saved."""
    committed = state.get("committed", {})
    if not isinstance(committed, dict) or not all(map(is_count, committed.values())):
        raise DataError("daemon window-state is corrupt: committed must map partitions to offsets")
    return dict(committed)


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
        #: The group's committed offsets of the assigned partitions, as fetched after the
        #: assignment ("topic:partition" → offset, None: nothing committed).
        self.group: dict[str, int | None] = {}
        #: What this daemon believes is committed (its own commits, the last fetch, or the
        #: restored file's record): saved with the state.
        self._believed: dict[str, int] = {}

    def take_over(self, serving, version: str) -> None:
        """A new model serves from now on: hand it the state of the previous one, or restore
        it from the store at start-up."""
        if not serving.stateful:
            self.flush()  # what the stateful model processed, committed
            self.serving = None
            return
        adopted = self.serving is not None
        if adopted:
            kept = serving.adopt(self.serving)
            log.info("window state handed to the new model", extra={"version": version, **kept})
        elif self.store is None:
            log.warning(
                "window mode without scoring.state_dir: the per-entity state lives in memory "
                "only, so after a restart each entity fills its window again before it is scored"
            )
        else:
            self._restore(serving)
        self.serving = serving
        if self.store is not None and not adopted:
            self._bound(dict(self.group))  # committed offsets known already (a model swap)

    def _restore(self, serving) -> None:
        state = self.store.load()
        if state is None:
            log.info("no window state to restore yet", extra={"path": str(self.store.path)})
            return
        try:
            believed = _committed_in(state)
            kept = serving.restore(state)
        except RESTORE_ERRORS as exc:  # the state is unchanged: restore takes all or nothing
            self.store.refuse(exc)
            return
        # The file's offsets are trusted beyond the group's committed ones only where the
        # group still has what the file says it had when it was saved (`_bound`).
        self._believed = believed
        log.info(
            "window state restored",
            extra={"path": str(self.store.path), "offsets": serving.offsets, **kept},
        )

    def committed(self, offsets: dict[Any, int | None]) -> None:
        """The group's committed offsets of newly assigned partitions (None: no commit yet),
        fetched by the pipeline after an assignment: the state's offsets are bounded by them."""
        found = {_key(tp): offset for tp, offset in offsets.items()}
        self.group.update(found)
        self._bound(found)

    def _bound(self, committed: dict[str, int | None]) -> None:
        """Cut the serving's held offsets back to the group's committed ones (see the module
        docstring); afterwards the daemon believes what the group says."""
        if self.serving is None:
            return
        for key, offset in committed.items():
            trusted = offset is not None and self._believed.get(key) == offset
            held = self.serving.offsets.get(key)
            if self.serving.bound_offset(key, offset, trusted=trusted):
                log.warning(
                    "window state holds records the consumer group has not committed; "
                    "they are fed again",
                    extra={"partition": key, "held": held, "committed": offset},
                )
            if offset is None:
                self._believed.pop(key, None)
            else:
                self._believed[key] = offset

    def done(self, serving, next_offsets: dict[Any, int]) -> None:
        """A batch is produced and alerted: commit its offsets now or with the next save."""
        serving.advance(next_offsets)
        if serving.stateful and self.store is not None:
            self.pending.update(next_offsets)
            self.tick()
        else:
            self._commit(next_offsets)
            self._committed(next_offsets)

    def tick(self, *, force: bool = False) -> None:
        """Save the state and commit the offsets it covers, when due (or now, with force)."""
        if not self.pending or self.serving is None or self.store is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.interval_s:
            return
        state = self.serving.snapshot()
        state["committed"] = dict(self._believed)  # before this commit: see `_bound`
        self.store.save(state)
        self._last_save = now
        offsets, self.pending = self.pending, {}
        self._commit(offsets)
        self._committed(offsets)

    def _committed(self, offsets: dict[Any, int]) -> None:
        """This daemon committed these offsets (a commit refused after a rebalance is not
        told apart: the partition is revoked, and its committed offset fetched again)."""
        for tp, offset in offsets.items():
            self._believed[_key(tp)] = int(offset)
            if _key(tp) in self.group:
                self.group[_key(tp)] = int(offset)

    def flush(self) -> None:
        self.tick(force=True)

    def revoked(self, partitions) -> None:
        for tp in partitions:
            # never committed: the partition's next owner replays those records
            self.pending.pop(tp, None)
            self.group.pop(_key(tp), None)


def state_key(settings: Any) -> bytes | None:
    """``scoring.state_key`` as bytes (None: the state file is not authenticated)."""
    key = getattr(settings, "state_key", None)
    return None if key is None else key.get_secret_value().encode("utf-8")
