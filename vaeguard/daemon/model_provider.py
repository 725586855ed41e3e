"""The model in service, loaded and swapped off the scoring path.

The pipeline asks `current()` once per batch and uses that `ActiveModel` for the whole batch,
so a new version takes over only between batches. Loading, validating and warming a model run
on the provider's own thread; a model that fails any of it is refused and the previous one
keeps serving.

`BundleModelProvider` serves a bundle directory and reloads it when its `bundle.json` changes.
`RegistryModelProvider` follows a model registry's CURRENT pointer by overriding `locate()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vaeguard.daemon import metrics
from vaeguard.errors import VaeguardError
from vaeguard.serving import Serving, load_serving

log = logging.getLogger("vaeguard.daemon.model")


@dataclass(frozen=True)
class ActiveModel:
    serving: Serving
    version: str
    path: Path


class ModelProvider(Protocol):
    def start(self) -> None: ...
    def current(self) -> ActiveModel | None: ...
    def wait_ready(self, timeout: float) -> ActiveModel | None: ...
    def close(self) -> None: ...


class BundleModelProvider:
    """Loads the bundle at ``path`` on a background thread; polls it every ``reload_interval_s``.

    ``failure`` holds the error that stopped the first load (no model can ever serve then).
    """

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        reload_interval_s: float = 30.0,
        *,
        alert_budget: float | None = None,
        follow_normal: bool = True,
    ):
        self.path = Path(path)
        self.device = device
        self.reload_interval_s = reload_interval_s
        #: Replaces the alert budget of every model served (None: each bundle's own).
        self.alert_budget = alert_budget
        #: Tabular models: keep the budget's threshold on the recent normal rows.
        self.follow_normal = follow_normal
        self.failure: BaseException | None = None
        self._active: ActiveModel | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="vaeguard-model", daemon=True)

    # -- what subclasses change -----------------------------------------------------------------

    def locate(self) -> tuple[Path, str]:
        """(bundle directory, version) of the model that should serve; cheap, no model load."""
        from vaeguard.bundle import read_manifest

        manifest = read_manifest(self.path)
        return self.path, manifest["model_sha256"][:12]

    # -- the pipeline's side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def current(self) -> ActiveModel | None:
        return self._active

    def wait_ready(self, timeout: float) -> ActiveModel | None:
        self._ready.wait(timeout)
        if self.failure is not None:
            raise self.failure
        return self._active

    @property
    def loaded(self) -> bool:
        return self._active is not None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Check for a new model now rather than at the next poll (e.g. right after a promotion)."""
        self._wake.set()

    # -- the loader thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            from vaeguard.daemon.device import select_device

            select_device(self.device)
            path, version = self.locate()
            self._install(self.load(path, version))
        except BaseException as exc:  # reported to the pipeline, which stops the daemon
            self.failure = exc
            if not isinstance(exc, VaeguardError):
                log.exception("model load failed")
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            # reload_interval_s = 0: no polling, only poke().
            self._wake.wait(self.reload_interval_s or None)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.refresh()

    def refresh(self) -> bool:
        """Load the located model if it differs from the active one; True if it swapped in.

        A failure is counted and logged once per distinct error, not at every poll.
        """
        version = None
        try:
            path, version = self.locate()
            if self._active is not None and version == self._active.version:
                self._last_error = None
                return False
            if self.is_refused(version):
                return False
            log.info("new model version found", extra={"version": version, "path": str(path)})
            self._install(self.load(path, version))
            self._last_error = None
            return True
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.refuse(version, error)
            if error != self._last_error:
                self._last_error = error
                metrics.MODEL_LOAD_FAILURES.inc()
                log.error(
                    "model refused; the current model keeps serving",
                    extra={
                        "error": error,
                        "refused_version": version,
                        "serving": self._active.version if self._active else None,
                    },
                )
            return False

    def is_refused(self, version: str) -> bool:
        """Whether a version already failed to load and must not be tried again."""
        return False

    def refuse(self, version: str | None, error: str) -> None:
        """Remember a version that failed to load (a bundle may still be being written: no-op)."""

    def load(self, path: Path, version: str) -> ActiveModel:
        """Load, validate and warm a model (compiles every batch-size bucket of the scorer)."""
        started = time.monotonic()
        serving = load_serving(path, version, budget=self.alert_budget, follow=self.follow_normal)
        try:
            serving.warm_up()
        except VaeguardError as exc:
            raise VaeguardError(f"model at {path} refused: {exc}") from None
        log.info(
            "model loaded",
            extra={
                "version": version,
                "path": str(path),
                "kind": serving.kind,
                "seconds": round(time.monotonic() - started, 2),
            },
        )
        return ActiveModel(serving, version, Path(path))

    def _install(self, model: ActiveModel) -> None:
        previous = self._active
        self._active = model
        metrics.set_model_version(model.version)
        if previous is not None:
            log.info(
                "model swapped",
                extra={"from_version": previous.version, "to_version": model.version},
            )


class RegistryModelProvider(BundleModelProvider):
    """Serves a model registry's CURRENT version and follows it as it moves.

    Versions are immutable, so one that fails to load (a corrupt file, a disk fault) or that
    an object store holds corrupt or incomplete is refused for good, by its name and upload
    (`ModelRegistry.identity`): later polls neither download nor load it again, and the
    serving version stays until CURRENT names another one. A store that is only unreachable
    refuses nothing: the next poll tries again. The folder of the version serving is pinned
    (`ModelRegistry.pin`), so no cache eviction, in any process, deletes it.
    """

    def __init__(self, path: Path, *args, registry_options: dict | None = None, **kwargs):
        """``registry_options``: `ModelRegistry`'s storage options and cache folder (s3://)."""
        from vaeguard.registry import ModelRegistry

        super().__init__(path, *args, **kwargs)
        self.registry = ModelRegistry(path, **(registry_options or {}))
        self.path = self.registry.root  # an s3:// URI stays one
        #: (version, identity) → why it was refused.
        self.refused: dict[tuple[str, str], str] = {}
        self._located: tuple[str, str] | None = None
        self._pin = self._pending_pin = None

    def locate(self) -> tuple[Path, str]:
        from vaeguard.errors import CorruptVersion
        from vaeguard.registry import RegistryError

        self._located = None
        version = self.registry.current()
        if version is None:
            raise RegistryError(f"registry {self.path} has no current version yet")
        active = self._active
        if active is not None and version == active.version:
            return active.path, version  # nothing to fetch
        located = (version, self.registry.identity(version))
        if located in self.refused:
            self._located = located
            return Path(), version  # refused already: `is_refused` says so, nothing fetched
        try:
            for _ in range(3):
                path = self.registry.path_of(version)
                try:
                    pin = self.registry.pin(path)
                except FileNotFoundError:  # evicted between the fetch and the pin: again
                    continue
                self._release_pending()
                self._pending_pin = pin
                self._located = located
                return path, version
        except CorruptVersion:
            self._located = located  # it will not heal: refused for good
            raise
        raise RegistryError(f"registry {self.path}: {version} kept vanishing from the cache")

    def is_refused(self, version: str) -> bool:
        return self._located is not None and self._located in self.refused

    def refuse(self, version: str | None, error: str) -> None:
        self._release_pending()
        if self._located is not None:
            self.refused[self._located] = error

    def _install(self, model: ActiveModel) -> None:
        super()._install(model)
        previous, self._pin, self._pending_pin = self._pin, self._pending_pin, None
        if previous is not None:
            previous.release()

    def _release_pending(self) -> None:
        pending, self._pending_pin = self._pending_pin, None
        if pending is not None:
            pending.release()
