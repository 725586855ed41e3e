"""A versioned model registry on the file system.

    registry/
      registry.json        marker: this folder is a registry
      v0001/               an immutable version: a model bundle + lineage.json
      v0002/
      CURRENT              the version in service ("v0002"), replaced atomically
      promotions.jsonl     log of every change of CURRENT (for rollback and audit)

Version names are ``v`` and 4 to 9 ASCII digits (`VERSION_PATTERN`); any other name is refused
with one line (`VersionNameError`), and a folder with another name is not a version.

A version is written into a hidden temporary folder and published with one rename, so a
half-written version never exists under a version name, let alone becomes current. Every
mutation (register, promote, rollback, prune) holds the exclusive lock on `.registry.lock` from
its first read to its last write: a promote cannot check a version that a prune then deletes.

A change of CURRENT is logged first and made second: its entry is appended to promotions.jsonl
and fsynced, then CURRENT is replaced (write + fsync + rename); readers leave out a torn last
line and a last entry that never took effect (its ``from`` is still current), and the next
writer cuts them off, so after a crash at any point the log ends where CURRENT points.

Everything is written owner-only (files 0600, or 0400 inside a version; folders 0700): who can
write the registry chooses the model in service.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaeguard.bundle import MANIFEST_FILE, read_manifest
from vaeguard.errors import BundleError, LockHeld, RegistryError, VersionNameError
from vaeguard.files import fsync_dir, write_atomic

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


def is_registry(path) -> bool:
    return (Path(path) / MARKER).is_file()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ModelRegistry:
    """Versions of a model, one of them current. See the module docstring for the layout."""

    def __init__(self, root, *, create: bool = False):
        self.root = Path(root)
        if not is_registry(self.root):
            if not create:
                if self.root.exists() and (self.root / MANIFEST_FILE).exists():
                    raise RegistryError(f"{self.root} is a single model bundle, not a registry")
                raise RegistryError(
                    f"no model registry at {self.root} (create one with `vaeguard train --registry {self.root}`)"
                )
            if self.root.exists() and any(
                p for p in self.root.iterdir() if not p.name.startswith(".")
            ):
                raise RegistryError(
                    f"cannot create a registry in {self.root}: the folder is not empty"
                )
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(
                self.root / MARKER,
                json.dumps(
                    {"format": "vaeguard-registry", "format_version": 1, "created_at": _now()}
                ).encode(),
            )

    # -- locking ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str = "registry", *, blocking: bool = True) -> Iterator[None]:
        """An exclusive, cross-process lock: "registry" guards mutations, "retrain" guards jobs.

        flock locks belong to the open file, so the two names never block each other, two
        threads exclude each other like two processes, and a crashed holder releases its lock
        with its process. Not reentrant: a holder must not take the same lock again.
        """
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

    # -- reading ------------------------------------------------------------------------------

    def version_names(self) -> list[str]:
        """The versions, oldest first; folders with other names are not versions (ignored)."""
        names = [p.name for p in self.root.iterdir() if is_version_name(p.name) and p.is_dir()]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        """The version in service, or None for an empty registry."""
        name = self._read_current()
        if name is None:
            return None
        if not is_version_name(name) or not (self.root / name).is_dir():
            raise RegistryError(
                f"registry {self.root}: CURRENT names {_short(name)}, which is not a version here"
            )
        return name

    def _read_current(self) -> str | None:
        """What CURRENT says (None when there is no CURRENT), not checked."""
        try:
            raw = (self.root / CURRENT).read_bytes()
        except FileNotFoundError:
            return None
        return raw.decode("utf-8", errors="replace").strip()

    def path_of(self, version: str) -> Path:
        version = self._normalize(version)
        path = self.root / version
        if not path.is_dir():
            known = ", ".join(self.version_names()) or "none"
            raise RegistryError(f"no version {version} in {self.root} (versions: {known})")
        return path

    def info(self, version: str) -> VersionInfo:
        path = self.path_of(version)
        lineage = {}
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            lineage = json.loads((path / LINEAGE).read_text())
        if not isinstance(lineage, dict):
            lineage = {}
        threshold = None
        created = lineage.get("created_at", "")
        try:
            manifest = read_manifest(path)
            threshold = manifest["threshold"]["value"]
            created = created or manifest["created_at"]
        except BundleError:
            pass
        return VersionInfo(
            path.name, path, created, path.name == self.current(), lineage, threshold
        )

    def versions(self) -> list[VersionInfo]:
        return [self.info(v) for v in self.version_names()]

    def promotions(self) -> list[dict[str, Any]]:
        """The changes of CURRENT that took effect, oldest first (see the module docstring)."""
        entries, _ = self._log(self._read_current())
        return entries

    def load(self, version: str | None = None):
        """Load a version (default: current) as a validated detector; returns (detector, version)."""
        from vaeguard.detector import load_bundle

        version = self._normalize(version) if version else self.current()
        if version is None:
            raise RegistryError(f"registry {self.root} has no current version yet")
        return load_bundle(self.path_of(version)), version

    # -- writing ------------------------------------------------------------------------------

    def register(
        self, detector, lineage: dict[str, Any] | None = None, *, make_current: bool | None = None
    ) -> str:
        """Publish a detector as the next version; make it current if asked (default: if none is)."""
        from vaeguard.bundle import save_bundle

        with self.lock():
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming-"))
            try:
                save_bundle(detector, tmp / "bundle")
                names = self.version_names()
                number = (int(names[-1][1:]) + 1) if names else 1
                if number > _MAX_VERSION:
                    raise RegistryError(f"registry {self.root} is full: {names[-1]} is the last")
                version = f"v{number:04d}"
                record = {
                    "version": version,
                    "created_at": _now(),
                    "parent": self.current(),
                    "data_fingerprint": detector.training_info_.get("data_fingerprint"),
                    **(lineage or {}),
                }
                write_atomic(
                    tmp / "bundle" / LINEAGE, (json.dumps(record, indent=2) + "\n").encode()
                )
                _make_read_only(tmp / "bundle")
                os.rename(tmp / "bundle", self.root / version)
                fsync_dir(self.root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if make_current or (make_current is None and self.current() is None):
                self._set_current(version, "register")
        return version

    def promote(self, version: str, *, reason: str = "promote") -> str:
        """Make a version current after checking it loads (a broken version is refused)."""
        from vaeguard.detector import load_bundle

        version = self._normalize(version)
        with self.lock():  # checked and switched under one lock: a prune cannot come between
            path = self.path_of(version)
            try:
                load_bundle(path)
            except BundleError as exc:
                raise RegistryError(f"refusing to promote {version}: {exc}") from None
            self._set_current(version, reason)
        return version

    def rollback(self) -> str:
        """Go back to the version that was current before the current one (like `rollout undo`)."""
        with self.lock():
            current = self.current()
            previous = next(
                (
                    p.get("from")
                    for p in reversed(self.promotions())
                    if p.get("to") == current and p.get("from")
                ),
                None,
            )
            if previous is None or not (self.root / previous).is_dir():
                raise RegistryError(
                    f"nothing to roll back to: {current or 'no version'} has no previous current version"
                )
            self._set_current(previous, "rollback")
        return previous

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond the newest `keep`, never the current one or its rollback target."""
        if keep < 1:
            raise RegistryError("--keep must be at least 1")
        with self.lock():
            names = self.version_names()
            current = self.current()
            protected = {current}
            protected |= {p.get("from") for p in self.promotions() if p.get("to") == current}
            doomed = [n for n in names[:-keep] if n not in protected]
            for name in doomed:
                path = self.root / name
                _make_writable(path)
                trash = self.root / f".deleting-{name}"
                os.rename(path, trash)  # atomic: the version vanishes whole
                shutil.rmtree(trash, ignore_errors=True)
            fsync_dir(self.root)
        return doomed

    # -- the promotion log (callers hold the registry lock to write) ------------------------------

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

    def _set_current(self, version: str, reason: str) -> None:
        """Log the change, then make it: see the module docstring for why in this order."""
        current = self._read_current()  # may name a lost version: switching away repairs that
        current = current if is_version_name(current) else None
        entries, end = self._log(current)
        path = self.root / PROMOTIONS
        if path.exists() and end < path.stat().st_size:
            os.truncate(path, end)  # a torn line or a switch that never happened
        logged = entries[-1]["to"] if entries else None
        if logged != current:  # CURRENT moved outside the registry (by hand, an older vaeguard)
            self._append({"at": _now(), "from": logged, "to": current, "reason": "outside change"})
        self._append({"at": _now(), "from": current, "to": version, "reason": reason})
        write_atomic(self.root / CURRENT, (version + "\n").encode())

    def _append(self, entry: dict[str, Any]) -> None:
        fd = os.open(self.root / PROMOTIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write((json.dumps(entry) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

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
