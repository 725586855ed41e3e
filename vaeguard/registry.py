"""A versioned model registry on the file system.

    registry/
      registry.json        marker: this folder is a registry
      v0001/               an immutable version: a model bundle + lineage.json
      v0002/
      CURRENT              the version in service ("v0002"), replaced atomically
      promotions.jsonl     append-only log of every change of CURRENT (for rollback and audit)

A version is written into a hidden temporary folder and published with one rename, so a
half-written version never exists under a version name, let alone becomes current. CURRENT is
replaced by write + fsync + rename. Mutations hold an exclusive lock on `.lock`, so two
processes (a retrain job and an operator) cannot interleave.
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

from vaeguard.bundle import MANIFEST_FILE, fsync_dir, read_manifest, write_atomic
from vaeguard.errors import BundleError, VaeguardError

MARKER = "registry.json"
CURRENT = "CURRENT"
PROMOTIONS = "promotions.jsonl"
LINEAGE = "lineage.json"
VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(VaeguardError):
    """A registry operation cannot be done (unknown version, nothing to roll back to, …)."""


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
            self.root.mkdir(parents=True, exist_ok=True)
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

        flock locks belong to the open file, so the two names never block each other and a
        crashed holder releases its lock with its process.
        """
        with open(self.root / f".{name}.lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise RegistryError(
                    f"registry {self.root}: the {name} lock is held by another process"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- reading ------------------------------------------------------------------------------

    def version_names(self) -> list[str]:
        names = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        """The version in service, or None for an empty registry."""
        try:
            name = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        if not VERSION_RE.match(name) or not (self.root / name).is_dir():
            raise RegistryError(
                f"registry {self.root}: CURRENT names {name!r}, which is not a version here"
            )
        return name

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
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            lineage = json.loads((path / LINEAGE).read_text())
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
        try:
            lines = (self.root / PROMOTIONS).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def load(self, version: str | None = None):
        """Load a version (default: current) as a validated detector; returns (detector, version)."""
        from vaeguard.bundle import load_bundle

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
                version = f"v{(int(names[-1][1:]) + 1) if names else 1:04d}"
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
        from vaeguard.bundle import load_bundle

        version = self._normalize(version)
        path = self.path_of(version)
        try:
            load_bundle(path)
        except BundleError as exc:
            raise RegistryError(f"refusing to promote {version}: {exc}") from None
        with self.lock():
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

    def _set_current(self, version: str, reason: str) -> None:
        previous = self.current()
        write_atomic(self.root / CURRENT, (version + "\n").encode())
        entry = {"at": _now(), "from": previous, "to": version, "reason": reason}
        with open(self.root / PROMOTIONS, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _normalize(version: str) -> str:
        v = str(version).strip()
        if v.isdigit():
            v = f"v{int(v):04d}"
        if not VERSION_RE.match(v):
            raise RegistryError(
                f"{version!r} is not a version name (expected v0001, v0002, … or a number)"
            )
        return v


def _make_read_only(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _make_writable(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)
