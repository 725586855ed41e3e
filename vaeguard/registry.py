"""A versioned model registry: one set of rules over two storage backends.

    registry/
      registry.json        marker: this folder is a registry
      v0001/               an immutable version: a model bundle + lineage.json
      v0002/
      CURRENT              the version in service ("v0002"), replaced atomically
      promotions.jsonl     log of every change of CURRENT (for rollback and audit)

Version names are ``v`` and 4 to 9 ASCII digits (`VERSION_PATTERN`); any other name is refused
with one line (`VersionNameError`), and a folder with another name is not a version.

`ModelRegistry` holds the rules (version numbering, what CURRENT may name, the promotion log,
promote, rollback, prune) once; a `RegistryStorage` backend holds the primitives they are built
on: `LocalStorage` for a folder (renames and flock), `ObjectStoreStorage` for ``s3://`` (single
conditional requests and leases; see `ObjectStoreRegistry`).

In a folder, a version is written into a hidden temporary folder and published with one rename,
so a half-written version never exists under a version name, let alone becomes current. Every
mutation (register, promote, rollback, prune) holds the exclusive lock on `.registry.lock` from
its first read to its last write: a promote cannot check a version that a prune then deletes.

A change of CURRENT is logged first and made second: its entry is appended to promotions.jsonl
and fsynced, then CURRENT is replaced (write + fsync + rename); readers leave out a torn last
line and a last entry that never took effect (its ``from`` is still current), and the next
writer cuts them off, so after a crash at any point the log ends where CURRENT points.

Everything is written owner-only (files 0600, or 0400 inside a version; folders 0700): who can
write the registry chooses the model in service.

The root may also be an object store, ``s3://bucket/prefix``: `ModelRegistry` then opens an
`ObjectStoreRegistry`, with the same operations and guarantees built on single conditional
requests instead of renames and flock (see its docstring).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vaeguard.bundle import MANIFEST_FILE, read_manifest
from vaeguard.errors import (
    BundleError,
    CorruptVersion,
    LockHeld,
    RegistryConflict,
    RegistryError,
    VersionNameError,
)
from vaeguard.files import fsync_dir, user_cache_dir, write_atomic

MARKER = "registry.json"
CURRENT = "CURRENT"
PROMOTIONS = "promotions.jsonl"
LINEAGE = "lineage.json"
#: A version name: ``v`` and 4 to 9 ASCII digits (v0001 … v999999999).
VERSION_PATTERN = r"v[0-9]{4,9}"
VERSION_RE = re.compile(VERSION_PATTERN, re.ASCII)
_NUMBER_RE = re.compile(r"[0-9]{1,9}", re.ASCII)
_MAX_VERSION = 999_999_999


def is_version_name(name: object) -> bool:
    """True for a name of the `VERSION_PATTERN` form (ASCII only, the whole string)."""
    return isinstance(name, str) and VERSION_RE.fullmatch(name) is not None


@dataclass
class VersionInfo:
    """One registered version, as listings show it."""

    version: str
    path: Path
    created_at: str
    current: bool
    lineage: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.lineage.get("validation", {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "current": self.current,
            "parent": self.lineage.get("parent"),
            "source": self.lineage.get("source"),
            "threshold": self.threshold,
            "metrics": self.metrics,
            "training_window": self.lineage.get("training_window"),
            "data_fingerprint": self.lineage.get("data_fingerprint"),
        }


def is_registry(path, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` (a directory, or an ``s3://`` URI) holds a registry."""
    from vaeguard.registry_store import looks_like_uri

    if looks_like_uri(path):
        return ObjectStoreRegistry.exists(path, storage_options)
    return (Path(path) / MARKER).is_file()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _marker_record() -> bytes:
    return json.dumps(
        {"format": "vaeguard-registry", "format_version": 1, "created_at": _now()}
    ).encode()


class ModelRegistry:
    """Versions of a model, one of them current. See the module docstring for the layout.

    The rules live here, written once; every read and write of the storage goes through
    ``self.storage`` (a `RegistryStorage`), so both backends follow them alike.
    """

    storage: RegistryStorage

    def __new__(cls, root=None, *args, **kwargs):
        """An ``s3://bucket/prefix`` root opens an `ObjectStoreRegistry` (same operations)."""
        from vaeguard.registry_store import looks_like_uri

        if cls is ModelRegistry and looks_like_uri(root):
            return super().__new__(ObjectStoreRegistry)
        return super().__new__(cls)

    def __init__(
        self,
        root,
        *,
        create: bool = False,
        storage_options: dict[str, Any] | None = None,
        cache_dir: Path | None = None,
    ):
        """``storage_options`` and ``cache_dir`` serve an object-store root only."""
        self.storage = self._open_storage(root, create, storage_options, cache_dir)
        self.root = self.storage.root

    @staticmethod
    def _open_storage(root, create: bool, storage_options, cache_dir) -> RegistryStorage:
        return LocalStorage(Path(root), create=create)

    # -- locking ------------------------------------------------------------------------------

    def lock(self, name: str = "registry", *, blocking: bool = True):
        """An exclusive lock across processes and machines sharing the registry: "registry"
        guards mutations, "retrain" guards jobs (the two never block each other). Not
        reentrant: a holder must not take the same lock again. `LockHeld` when not blocking
        and another holder has it."""
        return self.storage.lock(name, blocking=blocking)

    # -- reading ------------------------------------------------------------------------------

    def version_names(self) -> list[str]:
        """The versions, oldest first (anything else under the root is not a version)."""
        return self.storage.version_names()

    def _pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        """CURRENT as a switch entry (None when absent), and what a compare-and-set of it needs."""
        return self.storage.read_pointer()

    def _read_current(self) -> str | None:
        """What CURRENT says (None when there is no CURRENT), not checked."""
        pointer, _ = self._pointer()
        return None if pointer is None else pointer["to"]

    def current(self) -> str | None:
        """The version in service, or None for an empty registry."""
        name = self._read_current()
        if name is None:
            return None
        if not is_version_name(name) or not self.storage.has_version(name):
            raise RegistryError(
                f"registry {self.root}: CURRENT names {_short(name)}, which is not a "
                f"{self.storage.version_word} here"
            )
        return name

    def _current_or_none(self) -> str | None:
        try:
            return self.current()
        except RegistryError:
            return None

    def _no_version(self, version: str) -> RegistryError:
        known = ", ".join(self.version_names()) or "none"
        return RegistryError(f"no version {version} in {self.root} (versions: {known})")

    def path_of(self, version: str) -> Path:
        """A local folder holding the version (for an object store, a verified cached copy)."""
        version = self._normalize(version)
        path = self.storage.local_copy(version)
        if path is None:
            raise self._no_version(version)
        return path

    def info(self, version: str, *, current: str | None = None) -> VersionInfo:
        version = self._normalize(version)
        if not self.storage.has_version(version):
            raise self._no_version(version)
        lineage, manifest = self.storage.read_meta(version)
        created = lineage.get("created_at", "") or manifest.get("created_at", "")
        threshold = manifest.get("threshold")
        threshold = threshold.get("value") if isinstance(threshold, dict) else None
        if current is None:
            current = self._read_current()
        return VersionInfo(
            version,
            self.storage.info_path(version),
            created,
            version == current,
            lineage,
            threshold,
        )

    def versions(self) -> list[VersionInfo]:
        current = self._read_current()
        return [self.info(v, current=current or "") for v in self.version_names()]

    def identity(self, version: str) -> str:
        """What tells two publications of one version name apart (a folder version is never
        published twice: its name; an object-store version: its upload token)."""
        version = self._normalize(version)
        identity = self.storage.identity(version)
        if identity is None:
            raise self._no_version(version)
        return identity

    def pin(self, path: Path) -> Pin:
        """Keep a version's local folder while it serves (see `Pin`)."""
        return self.storage.pin(path)

    def promotions(self) -> list[dict[str, Any]]:
        """The changes of CURRENT that took effect, oldest first."""
        pointer, _ = self._pointer()
        return self.storage.switches(pointer)

    def load(self, version: str | None = None):
        """Load a version (default: current) as the validated model it holds (`load_any`: a
        `VAEDetector`, a window model's `ViewSet`); returns (model, version)."""
        from vaeguard.bundle import load_any

        version = self._normalize(version) if version else self.current()
        if version is None:
            raise RegistryError(f"registry {self.root} has no current version yet")
        return load_any(self.path_of(version)), version

    # -- writing ------------------------------------------------------------------------------

    def register(
        self, detector, lineage: dict[str, Any] | None = None, *, make_current: bool | None = None
    ) -> str:
        """Publish a detector as the next version; make it current if asked (default: if none is).
        The storage publishes it whole or not at all."""
        from vaeguard.bundle import save_bundle

        with self.lock():
            with self.storage.staging() as bundle:
                save_bundle(detector, bundle)
                version = self.storage.claim()
                record = {
                    "version": version,
                    "created_at": _now(),
                    "parent": self._current_or_none(),
                    "data_fingerprint": detector.training_info_.get("data_fingerprint"),
                    **(lineage or {}),
                }
                write_atomic(bundle / LINEAGE, (json.dumps(record, indent=2) + "\n").encode())
                self.storage.publish(version, bundle, record)
            if make_current or (make_current is None and self._read_current() is None):
                self._set_current(version, "register")
        return version

    def promote(self, version: str, *, reason: str = "promote") -> str:
        """Make a version current after checking it loads as its kind (a broken version is
        refused)."""
        from vaeguard.bundle import load_any

        version = self._normalize(version)
        with self.lock():  # checked and switched under one lock: a prune cannot come between
            path = self.path_of(version)
            try:
                load_any(path)
            except BundleError as exc:
                raise RegistryError(f"refusing to promote {version}: {exc}") from None
            self._set_current(version, reason)
        return version

    def rollback(self) -> str:
        """Go back to the version that was current before the current one (like `rollout undo`)."""
        with self.lock():
            return self._switch(self._rollback_target)

    def _rollback_target(self, pointer: dict[str, Any] | None) -> tuple[str, str]:
        current, previous = self._current_and_previous()
        if previous is None or not self.storage.has_version(previous):
            raise RegistryError(
                f"nothing to roll back to: {current or 'no version'} has no previous current version"
            )
        return previous, "rollback"

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond the newest `keep`, never the current one or its rollback target."""
        if keep < 1:
            raise RegistryError("--keep must be at least 1")
        with self.lock():
            doomed = self._prunable(keep)
            self.storage.delete(doomed)
        return doomed

    def _current_and_previous(self) -> tuple[str | None, str | None]:
        """CURRENT, and the version that was current before it (what a rollback goes back to;
        the caller checks that it still exists)."""
        current = self.current()
        previous = next(
            (
                p.get("from")
                for p in reversed(self.promotions())
                if p.get("to") == current and p.get("from")
            ),
            None,
        )
        return current, previous

    def _prunable(self, keep: int) -> list[str]:
        """The versions older than the newest ``keep``, less the current one and its rollback
        target (the caller holds the registry lock)."""
        current = self.current()
        protected = {current}
        protected |= {p.get("from") for p in self.promotions() if p.get("to") == current}
        return [n for n in self.version_names()[:-keep] if n not in protected]

    # -- switching CURRENT (callers hold the registry lock) ---------------------------------------

    def _set_current(self, version: str, reason: str) -> None:
        self._switch(lambda _pointer: (version, reason))

    def _switch(self, decide: Callable[[dict[str, Any] | None], tuple[str, str]]) -> str:
        """Switch CURRENT to ``decide(pointer)``, logged; a lost compare-and-set re-reads and
        decides again, so whatever ``decide`` read after CURRENT is checked by the write.

        First the log is settled with CURRENT (the storage repairs what a crashed writer left),
        and a CURRENT moved outside the registry (by hand, an older vaeguard) is logged as an
        "outside change", so the log keeps following CURRENT.
        """
        for _ in range(50):
            pointer, token = self._pointer()
            current = pointer["to"] if pointer and is_version_name(pointer["to"]) else None
            seq, last = self.storage.settle_log(pointer)
            if current is not None and last != current:
                seq += 1
                outside = {"at": _now(), "from": last, "to": current, "reason": "outside change"}
                self.storage.append_log(outside, seq)
            target, reason = decide(pointer)
            entry = {"at": _now(), "from": current, "to": target, "reason": reason}
            try:
                self.storage.switch(entry, seq + 1, token)
            except RegistryConflict:
                continue
            return target
        raise RegistryError(f"registry {self.root}: CURRENT kept changing; try again")

    @staticmethod
    def _normalize(version: str) -> str:
        """``v0002``, or a bare number (``2``), as the version name; anything else: one line."""
        v = str(version).strip()
        if _NUMBER_RE.fullmatch(v):
            v = f"v{int(v):04d}"
        if not is_version_name(v):
            raise VersionNameError(
                f"{_short(version)} is not a version name "
                f"(expected {VERSION_PATTERN}: v0001, v0002, … or a number)"
            )
        return v


def _entry(line: bytes) -> dict[str, Any] | None:
    """One promotion-log line as an entry, or None when it is not one."""
    try:
        entry = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict) or not is_version_name(entry.get("to")):
        return None
    if entry.get("from") is not None and not is_version_name(entry.get("from")):
        return None
    entry.setdefault("from", None)
    return entry


class Pin:
    """A shared flock on a cached version's folder, held while a daemon serves it: eviction takes
    the exclusive lock without waiting, so it skips a folder in use in any process, and a
    process that dies releases its pins with it."""

    def __init__(self, fd: int | None):
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops its flock


def _short(name: object, limit: int = 40) -> str:
    """A name for an error line: repr (so no newline gets through), cut to a readable length."""
    text = repr(str(name))
    return text if len(text) <= limit else text[: limit - 4] + "…'"


def _make_read_only(path: Path) -> None:
    """A published version: files 0400, folders 0700 (owner only; see the module docstring)."""
    for p in [path, *path.rglob("*")]:
        if p.is_dir():
            p.chmod(stat.S_IRWXU)
        elif p.is_file():
            p.chmod(stat.S_IRUSR)


def _make_writable(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)
        elif p.is_dir():
            p.chmod(stat.S_IRWXU)


def _json_dict(raw: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw is not None else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


# -- the storage interface ----------------------------------------------------------------------


class RegistryStorage(Protocol):
    """The primitives a registry is built on (`ModelRegistry` holds the rules above them).

    A switch of CURRENT is an entry ``{"at", "from", "to", "reason"}``, numbered ``seq`` where
    the storage numbers its log; CURRENT reads as such an entry (``seq`` 0 for a bare version
    name) with a token for the compare-and-set that replaces it.
    """

    root: Any
    #: What CURRENT must name, for the error line when it does not.
    version_word = "version"

    def lock(self, name: str, *, blocking: bool) -> contextlib.AbstractContextManager[None]: ...
    def version_names(self) -> list[str]: ...
    def has_version(self, version: str) -> bool: ...
    def identity(self, version: str) -> str | None:
        """What tells two publications of the name apart; None when there is no such version."""

    def local_copy(self, version: str) -> Path | None:
        """A local folder holding the version, ready to load; None when there is no such version."""

    def pin(self, path: Path) -> Pin: ...
    def read_meta(self, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The version's lineage and manifest ({} for one that is missing or unreadable)."""

    def info_path(self, version: str) -> Path: ...
    def staging(self) -> contextlib.AbstractContextManager[Path]:
        """A local folder (not yet existing) to save a bundle into before publishing it."""

    def claim(self) -> str:
        """The next version name, never handed out before (the caller holds the lock)."""

    def publish(self, version: str, bundle: Path, record: dict[str, Any]) -> None:
        """Make the staged bundle the version, whole, in one step that readers see."""

    def delete(self, versions: list[str]) -> None: ...
    def read_pointer(self) -> tuple[dict[str, Any] | None, str | None]: ...
    def switches(self, pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The switches that took effect, oldest first, given CURRENT as read."""

    def settle_log(self, pointer: dict[str, Any] | None) -> tuple[int, str | None]:
        """Repair what a crashed switch left in the log; returns the last logged switch's
        ``seq`` (0 where the log is not numbered) and its ``to``."""

    def append_log(self, entry: dict[str, Any], seq: int) -> None: ...
    def switch(self, entry: dict[str, Any], seq: int, token: str | None) -> None:
        """Log and make the switch, in the order that survives a crash at any point;
        `RegistryConflict` when CURRENT changed since it was read with ``token``."""


class LocalStorage(RegistryStorage):
    """A registry in a local folder: renames, fsync and flock (see the module docstring)."""

    def __init__(self, root: Path, *, create: bool = False):
        self.root = root
        if is_registry(root):
            return
        if not create:
            if root.exists() and (root / MANIFEST_FILE).exists():
                raise RegistryError(f"{root} is a single model bundle, not a registry")
            raise RegistryError(
                f"no model registry at {root} (create one with `vaeguard train --registry {root}`)"
            )
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise RegistryError(f"cannot create a registry in {root}: the folder is not empty")
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(root / MARKER, _marker_record())

    @contextlib.contextmanager
    def lock(self, name: str = "registry", *, blocking: bool = True) -> Iterator[None]:
        """flock on ``.<name>.lock``: locks belong to the open file, so two threads exclude
        each other like two processes, and a crashed holder releases its lock with its process."""
        fd = os.open(self.root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise LockHeld(
                    f"registry {self.root}: the {name} lock is held by another process"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def version_names(self) -> list[str]:
        names = [p.name for p in self.root.iterdir() if is_version_name(p.name) and p.is_dir()]
        return sorted(names, key=lambda n: int(n[1:]))

    def has_version(self, version: str) -> bool:
        return (self.root / version).is_dir()

    def identity(self, version: str) -> str | None:
        return version  # a folder version is never published twice under its name

    def local_copy(self, version: str) -> Path | None:
        path = self.root / version
        return path if path.is_dir() else None

    def pin(self, path: Path) -> Pin:
        return Pin(None)  # a folder version is never evicted

    def read_meta(self, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
        path = self.root / version
        raw = None
        with contextlib.suppress(OSError):
            raw = (path / LINEAGE).read_bytes()
        try:
            manifest = read_manifest(path)
        except BundleError:
            manifest = {}
        return _json_dict(raw), manifest

    def info_path(self, version: str) -> Path:
        return self.root / version

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming-"))
        try:
            yield tmp / "bundle"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def claim(self) -> str:
        names = self.version_names()
        number = (int(names[-1][1:]) + 1) if names else 1
        if number > _MAX_VERSION:
            raise RegistryError(f"registry {self.root} is full: {names[-1]} is the last")
        return f"v{number:04d}"

    def publish(self, version: str, bundle: Path, record: dict[str, Any]) -> None:
        _make_read_only(bundle)
        os.rename(bundle, self.root / version)
        fsync_dir(self.root)

    def delete(self, versions: list[str]) -> None:
        for name in versions:
            path = self.root / name
            _make_writable(path)
            trash = self.root / f".deleting-{name}"
            os.rename(path, trash)  # atomic: the version vanishes whole
            shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(self.root)

    # CURRENT is the bare version name; promotions.jsonl is appended to before CURRENT changes.

    def read_pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            raw = (self.root / CURRENT).read_bytes()
        except FileNotFoundError:
            return None, None
        return {"to": raw.decode("utf-8", errors="replace").strip(), "from": None, "seq": 0}, None

    def switches(self, pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
        entries, _ = self._log(None if pointer is None else pointer["to"])
        return entries

    def settle_log(self, pointer: dict[str, Any] | None) -> tuple[int, str | None]:
        current = pointer["to"] if pointer and is_version_name(pointer["to"]) else None
        entries, end = self._log(current)
        path = self.root / PROMOTIONS
        if path.exists() and end < path.stat().st_size:
            os.truncate(path, end)  # a torn line or a switch that never happened
        return 0, (entries[-1]["to"] if entries else None)

    def append_log(self, entry: dict[str, Any], seq: int) -> None:
        fd = os.open(self.root / PROMOTIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write((json.dumps(entry) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def switch(self, entry: dict[str, Any], seq: int, token: str | None) -> None:
        # The caller holds the flock: CURRENT cannot have changed since it was read.
        self.append_log(entry, seq)
        write_atomic(self.root / CURRENT, (entry["to"] + "\n").encode())

    def _log(self, current: str | None) -> tuple[list[dict[str, Any]], int]:
        """The entries that took effect, and the length of the file's prefix that holds them.

        Left out: a torn last line (no newline: the append never finished) and a last entry
        whose switch never happened (CURRENT still names its ``from``). Lines that are not
        entries (corrupt, or naming something that is not a version) are skipped.
        """
        try:
            raw = (self.root / PROMOTIONS).read_bytes()
        except FileNotFoundError:
            return [], 0
        end = raw.rfind(b"\n") + 1  # a last line without its newline is torn
        entries: list[tuple[dict[str, Any], int]] = []
        start = 0
        for line in raw[:end].split(b"\n")[:-1]:
            entry = _entry(line)
            if entry is not None:
                entries.append((entry, start))
            start += len(line) + 1
        if entries:
            last, offset = entries[-1]
            if last["from"] == current and last["to"] != current:
                entries.pop()
                end = offset
        return [e for e, _ in entries], end


# -- a registry on an object store -----------------------------------------------------------

#: The object that makes a version visible, written last (see `ObjectStoreRegistry`).
COMPLETE = "COMPLETE"
#: The object that reserves a version number before its files are uploaded.
CLAIM = ".claim"
PROMOTION_LOG = "promotions"
LOCKS = ".locks"
_TOKEN_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)


def _storage_attribute(name: str, doc: str | None = None) -> Any:
    """An attribute of the registry's storage, read and set through the registry."""
    return property(
        lambda self: getattr(self.storage, name),
        lambda self, value: setattr(self.storage, name, value),
        doc=doc,
    )


class ObjectStoreRegistry(ModelRegistry):
    """A registry at ``s3://bucket/prefix``: the same operations as a directory registry.

        registry.json          marker: this prefix is a registry
        v0001/…                a version's files, then v0001/COMPLETE (their sizes and sha256)
        CURRENT                the switch in effect: {"to", "from", "seq", "at", "reason"}
        promotions/000000001.json …  the log of switches (the newest one may be only in CURRENT)
        .locks/registry, .locks/retrain   leases (holder, expiry), renewed while held

    S3 has no rename and no directories, so visibility rests on single requests, each atomic:
    a version counts only once its COMPLETE object exists, written after every file, with
    ``If-None-Match: *``; readers ignore a version without it. CURRENT is replaced with one
    PUT carrying ``If-Match`` on the ETag it was read with (compare-and-swap), after checking
    that the named version is complete and loads, so it only ever names a complete version
    and two promoters never lose a switch: the loser re-reads and applies its change on top.
    The log entry of a switch is written after the switch (CURRENT holds it meanwhile) and
    the next switch repairs a missing one. Mutations also hold the "registry" lease, as the
    local registry holds its flock, so a prune cannot delete a version a promote is checking.

    Readers (`path_of`, `load`, the daemon's reload) download a version into a local cache
    folder (one per version and upload), verify every file against COMPLETE, then rename it
    into place, so the existing loaders read a complete local bundle. After each download the
    cache keeps the folder just fetched, the current version's, every folder a daemon serves
    (`pin`: a shared flock, so this holds across processes sharing the cache) and the
    `cache_keep` most recently used others; the rest are deleted. Opening the registry removes
    the temporary folders of downloads whose process died (each live one holds a flock).

    The primitives are `ObjectStoreStorage`'s; its settings show through here.
    """

    storage: ObjectStoreStorage

    @staticmethod
    def _open_storage(root, create: bool, storage_options, cache_dir) -> RegistryStorage:
        return ObjectStoreStorage(root, create, storage_options, cache_dir)

    @classmethod
    def exists(cls, root, storage_options: dict[str, Any] | None = None) -> bool:
        from vaeguard.registry_store import ObjectStore

        return ObjectStore(str(root), storage_options).read(MARKER) is not None

    uri = _storage_attribute("uri", "The registry's canonical ``s3://`` URI.")
    store = _storage_attribute("store", "The `ObjectStore` under the registry.")
    cache = _storage_attribute("cache", "The local folder of downloaded versions.")
    lease_ttl_s = _storage_attribute("lease_ttl_s")
    lock_timeout_s = _storage_attribute("lock_timeout_s")
    cache_keep = _storage_attribute("cache_keep")


class ObjectStoreStorage(RegistryStorage):
    """The primitives of `ObjectStoreRegistry` (whose docstring gives the layout): conditional
    requests, leases, and the local download cache."""

    version_word = "complete version"
    lease_ttl_s = 120.0
    lock_timeout_s = 300.0
    #: Cached versions kept besides the current one, the one just fetched and those serving:
    #: the likely rollback targets, without the cache growing with every promotion.
    cache_keep = 2

    def __init__(self, root, create: bool, storage_options: dict | None, cache_dir: Path | None):
        import hashlib

        from vaeguard.registry_store import ObjectStore, canonical_uri

        self.uri = canonical_uri(root)
        self.root = self.uri
        self.store = ObjectStore(self.uri, storage_options)
        if cache_dir is None:
            digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
            cache_dir = user_cache_dir() / "registries" / digest
        self.cache = Path(cache_dir)
        self._sweep_leftovers()
        if self.store.read(MARKER) is not None:
            return
        if not create:
            if self.store.read(MANIFEST_FILE) is not None:
                raise RegistryError(f"{self.uri} is a single model bundle, not a registry")
            raise RegistryError(
                f"no model registry at {self.uri} (create one with `vaeguard train --registry {self.uri}`)"
            )
        if any(not k.startswith(".") for k in self.store.list()):
            raise RegistryError(f"cannot create a registry in {self.uri}: the prefix is not empty")
        with contextlib.suppress(RegistryConflict):
            self.store.put(MARKER, _marker_record(), if_absent=True)

    # -- locking: leases --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str = "registry", *, blocking: bool = True) -> Iterator[None]:
        """A lease on ``.locks/<name>``: created with If-None-Match, renewed with If-Match.

        A holder that dies leaves a lease that expires (`lease_ttl_s`) and is then taken over
        with If-Match on its ETag, so two takers never both win. Blocking waits at most
        `lock_timeout_s`. Leases rely on the machines' clocks agreeing to well within the TTL.
        """
        import threading
        import uuid

        key = f"{LOCKS}/{name}"
        token = uuid.uuid4().hex
        etag = self._acquire(key, name, token, blocking)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(key, token, etag, stop), name=f"vaeguard-lease-{name}"
        )
        renewer.daemon = True
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            got = self.store.get(key)
            if got is not None and _json_dict(got[0]).get("token") == token:
                self.store.delete([key])

    def _lease_body(self, token: str) -> bytes:
        import socket

        return json.dumps(
            {
                "holder": f"{socket.gethostname()}:{os.getpid()}",
                "token": token,
                "expires_at": _time() + self.lease_ttl_s,
            }
        ).encode()

    def _acquire(self, key: str, name: str, token: str, blocking: bool) -> str:
        import time

        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                return self.store.put(key, self._lease_body(token), if_absent=True)
            except RegistryConflict:
                pass
            got = self.store.get(key)
            if got is None:
                continue  # released in between
            holder = _json_dict(got[0])
            if float(holder.get("expires_at", 0)) < _time():  # expired (or unreadable): take over
                try:
                    return self.store.put(key, self._lease_body(token), if_match=got[1])
                except RegistryConflict:
                    continue
            if not blocking or time.monotonic() >= deadline:
                raise LockHeld(
                    f"registry {self.uri}: the {name} lock is held by "
                    f"{_short(holder.get('holder', 'another process'))}"
                )
            time.sleep(delay)  # back off: another process holds it
            delay = min(delay * 2, 1.0)

    def _renew(self, key: str, token: str, etag: str, stop) -> None:
        import logging

        while not stop.wait(self.lease_ttl_s / 3):
            try:
                etag = self.store.put(key, self._lease_body(token), if_match=etag)
            except Exception as exc:  # lost (taken over after expiry) or the store is down
                logging.getLogger("vaeguard.registry").warning(
                    "registry lease not renewed", extra={"lock": key, "error": str(exc)}
                )
                if isinstance(exc, RegistryConflict):
                    return

    # -- versions -------------------------------------------------------------------------------

    def _marker(self, version: str) -> dict[str, Any] | None:
        """A version's COMPLETE record, or None when it is not (yet, or any more) complete."""
        raw = self.store.read(f"{version}/{COMPLETE}")
        try:
            marker = json.loads(raw) if raw is not None else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if (
            not isinstance(marker, dict)
            or not isinstance(marker.get("files"), dict)
            or not isinstance(marker.get("token"), str)
            or not _TOKEN_RE.fullmatch(marker["token"])
        ):
            return None
        return marker

    def version_names(self) -> list[str]:
        """The complete versions, oldest first (a version without COMPLETE is not one)."""
        names = set()
        for key in self.store.list():
            head, _, rest = key.partition("/")
            if rest == COMPLETE and is_version_name(head):
                names.add(head)
        return sorted(names, key=lambda n: int(n[1:]))

    def has_version(self, version: str) -> bool:
        return self._marker(version) is not None

    def identity(self, version: str) -> str | None:
        """The version's upload token (from COMPLETE): a version name published again after a
        prune removed it is another upload, with another token."""
        marker = self._marker(version)
        return None if marker is None else f"{version}-{marker['token']}"

    def local_copy(self, version: str) -> Path | None:
        """A local, verified copy of a version (downloaded once into the cache folder)."""
        marker = self._marker(version)
        return None if marker is None else self._fetch(version, marker)

    def read_meta(self, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
        found = self.store.read_many([f"{version}/{LINEAGE}", f"{version}/{MANIFEST_FILE}"])
        return (
            _json_dict(found.get(f"{version}/{LINEAGE}")),
            _json_dict(found.get(f"{version}/{MANIFEST_FILE}")),
        )

    def info_path(self, version: str) -> Path:
        return self.cache / version

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="vaeguard-publish-") as tmp:
            yield Path(tmp) / "bundle"

    def claim(self) -> str:
        """Reserve the next version number with an If-None-Match write (never reused)."""
        taken = {
            int(head[1:])
            for head in (k.partition("/")[0] for k in self.store.list())
            if is_version_name(head)
        }
        number = max(taken, default=0) + 1
        while True:
            if number > _MAX_VERSION:
                raise RegistryError(f"registry {self.uri} is full: v{_MAX_VERSION} is the last")
            version = f"v{number:04d}"
            try:
                self.store.put(f"{version}/{CLAIM}", b"", if_absent=True)
                return version
            except RegistryConflict:
                number += 1

    def publish(self, version: str, bundle: Path, record: dict[str, Any]) -> None:
        """Upload the files, then COMPLETE: the version appears whole or not at all."""
        import uuid

        from vaeguard.files import sha256_file

        files = {}
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                rel = path.relative_to(bundle).as_posix()
                files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
                self.store.upload(path, f"{version}/{rel}")
        marker = {
            "version": version,
            "token": uuid.uuid4().hex,
            "created_at": record["created_at"],
            "files": files,
        }
        self.store.put(f"{version}/{COMPLETE}", json.dumps(marker).encode(), if_absent=True)

    def delete(self, versions: list[str]) -> None:
        """A version's COMPLETE goes first, so it vanishes whole; its claim stays, so a number
        is never handed out twice."""
        for name in versions:
            self.store.delete([f"{name}/{COMPLETE}"])
            rest = [k for k in self.store.list(name + "/") if k != f"{name}/{CLAIM}"]
            self.store.delete(rest)

    # -- CURRENT (a compare-and-swap on its ETag) and the numbered log ----------------------------

    def read_pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        """CURRENT as an entry (None when absent) and its ETag, read in one request."""
        got = self.store.get(CURRENT)
        if got is None:
            return None, None
        return _pointer_entry(got[0]), got[1]

    def switches(self, pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The logged switches, then the one in CURRENT (logged or not yet)."""
        logged = self._logged()
        if pointer is None:
            return [e for _, e in logged]
        seq = pointer["seq"]
        entries = [e for s, e in logged if seq <= 0 or s < seq]
        if seq > 0:
            entries.append(pointer)
        elif is_version_name(pointer["to"]):  # CURRENT written by hand (seq 0)
            last = entries[-1]["to"] if entries else None
            if last != pointer["to"]:
                entries.append({**pointer, "from": last, "reason": "outside change"})
        return entries

    def settle_log(self, pointer: dict[str, Any] | None) -> tuple[int, str | None]:
        if pointer is not None and pointer["seq"] > 0:
            self.append_log(pointer, pointer["seq"])  # its writer may have died before logging
            return pointer["seq"], pointer["to"]
        # no CURRENT yet, or one written by hand: number on from the log
        logged = self._logged()
        return (logged[-1][0], logged[-1][1]["to"]) if logged else (0, None)

    def append_log(self, entry: dict[str, Any], seq: int) -> None:
        """Write a switch's log entry once (If-None-Match): a repeat is a no-op."""
        with contextlib.suppress(RegistryConflict):
            self.store.put(
                f"{PROMOTION_LOG}/{seq:09d}.json",
                (json.dumps({**entry, "seq": seq}) + "\n").encode(),
                if_absent=True,
            )

    def switch(self, entry: dict[str, Any], seq: int, token: str | None) -> None:
        """CURRENT first (If-Match on the ETag it was read with), then the log entry."""
        entry = {"seq": seq, **entry}
        data = (json.dumps(entry) + "\n").encode()
        if token is None:
            self.store.put(CURRENT, data, if_absent=True)
        else:
            self.store.put(CURRENT, data, if_match=token)
        self.append_log(entry, seq)

    def _logged(self) -> list[tuple[int, dict[str, Any]]]:
        names = [
            k
            for k in self.store.list(PROMOTION_LOG + "/")
            if re.fullmatch(PROMOTION_LOG + r"/[0-9]{9}\.json", k, re.ASCII)
        ]
        entries = []
        for key, raw in self.store.read_many(names).items():
            entry = _entry(raw)
            if entry is not None:
                entries.append((int(key[len(PROMOTION_LOG) + 1 : -5]), entry))
        return sorted(entries, key=lambda se: se[0])

    # -- the local cache ------------------------------------------------------------------------

    def pin(self, path: Path) -> Pin:
        """A shared flock on a cached version's folder (see `Pin`); FileNotFoundError when the
        folder was evicted meanwhile (fetch it again)."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # an evictor holds its exclusive lock for a rename
            if os.stat(path).st_ino != os.fstat(fd).st_ino:  # renamed away while we waited
                raise FileNotFoundError(path)
        except BaseException:
            os.close(fd)
            raise
        return Pin(fd)

    def _fetch(self, version: str, marker: dict[str, Any]) -> Path:
        final = self.cache / f"{version}-{marker['token'][:16]}"
        if final.is_dir():
            with contextlib.suppress(OSError):
                os.utime(final)  # recently used: the last to be evicted
            return final
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(dir=self.cache, prefix=".incoming-"))
        busy = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(busy, fcntl.LOCK_EX)  # a live download: not a leftover to sweep
            self._download(version, marker, tmp, final)
        finally:
            if tmp.exists():
                _make_writable(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
            os.close(busy)
        self._evict(keep=final)
        return final

    def _download(self, version: str, marker: dict[str, Any], tmp: Path, final: Path) -> None:
        from vaeguard.files import sha256_file

        for rel, meta in marker["files"].items():
            parts = rel.split("/") if isinstance(rel, str) else []
            if not parts or any(p in ("", ".", "..") for p in parts) or not isinstance(meta, dict):
                raise CorruptVersion(f"version {version} in {self.uri}: COMPLETE is corrupt")
            local = tmp.joinpath(*parts)
            local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                self.store.download(f"{version}/{rel}", local)
            except FileNotFoundError:
                raise CorruptVersion(
                    f"version {version} in {self.uri} is incomplete: {_short(rel)} is missing"
                ) from None
            if sha256_file(local) != meta.get("sha256"):
                raise CorruptVersion(
                    f"version {version} in {self.uri} is corrupt: {_short(rel)} does not "
                    "match its checksum in COMPLETE"
                )
        _make_read_only(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else another reader put the same copy in place first
                raise

    # -- the local cache ------------------------------------------------------------------------

    def _evict(self, keep: Path) -> None:
        """Delete cached versions beyond what the class docstring says is kept (best effort:
        a cache that cannot be cleaned is no reason to fail a download)."""
        try:
            pointer, _ = self.read_pointer()
        except RegistryError:
            return  # not knowing the current version, delete nothing
        current = None if pointer is None else pointer["to"]
        try:
            cached = [p for p in self.cache.iterdir() if _CACHED_RE.fullmatch(p.name)]
            others = [p for p in cached if p != keep and p.name.rpartition("-")[0] != current]
            # most recently used first; a tie (a coarse clock) goes to the newer version
            others.sort(key=lambda p: (p.stat().st_mtime_ns, int(p.name[1:].split("-")[0])))
            others.reverse()
        except OSError:
            return
        for path in others[self.cache_keep :]:
            trash = self.cache / f".deleting-{path.name}-{os.getpid()}-{id(path):x}"
            _remove_unless_locked(path, trash)

    def _sweep_leftovers(self) -> None:
        """Remove the temporary folders of downloads and evictions whose process died."""
        try:
            leftovers = [
                p for p in self.cache.iterdir() if p.name.startswith((".incoming-", ".deleting-"))
            ]
        except OSError:
            return
        for path in leftovers:
            _remove_unless_locked(path, None)


#: A cached version's folder: the version and the first 16 hex digits of its upload token.
_CACHED_RE = re.compile(VERSION_PATTERN + r"-[0-9a-f]{16}", re.ASCII)


def _remove_unless_locked(path: Path, trash: Path | None) -> None:
    """Delete a cache folder unless a flock on it is held (a pin, a live download): with the
    exclusive lock held it is renamed to ``trash`` first, so it vanishes whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # in use
        try:
            if trash is not None:
                os.rename(path, trash)
                path = trash
        except OSError:
            return
    finally:
        os.close(fd)
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def _time() -> float:
    import time

    return time.time()


def _pointer_entry(raw: bytes) -> dict[str, Any]:
    """CURRENT's content as a switch entry; a bare version name (written by hand) has seq 0."""
    value = _json_dict(raw)
    if value and isinstance(value.get("to"), str):
        seq = value.get("seq")
        entry = _entry(raw.strip()) or {"to": value["to"], "from": None}
        return {**value, **entry, "seq": seq if isinstance(seq, int) and seq > 0 else 0}
    text = raw.decode("utf-8", errors="replace").strip()
    return {"to": text, "from": None, "seq": 0, "reason": "outside change"}
