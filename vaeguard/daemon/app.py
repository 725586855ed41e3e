"""`Daemon`: wires settings, model provider, alert layer, ops endpoints and the pipeline.

`vaeguard run` builds one from the settings and runs it on the main thread; the demo and the
benchmark run one in-process. Stopping (a signal or `stop()`) lets the in-flight batch finish
and commit within ``shutdown_grace_s``; a watchdog ends the process if that is not enough.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from vaeguard._version import __version__
from vaeguard.config import Settings
from vaeguard.daemon.alerting import make_alert_layer
from vaeguard.daemon.http import OpsServer
from vaeguard.daemon.model_provider import BundleModelProvider, ModelProvider
from vaeguard.daemon.pipeline import Pipeline, Shutdown
from vaeguard.errors import ConfigError

log = logging.getLogger("vaeguard.daemon")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        provider: ModelProvider | None = None,
        alert_layer: Any = None,
        on_batch=None,
    ):
        self.settings = settings
        self.shutdown = Shutdown(settings.shutdown_grace_s)
        self.provider = provider or _provider_for(settings)
        self._alert_layer = alert_layer
        self._on_batch = on_batch
        self.pipeline: Pipeline | None = None
        self.http: OpsServer | None = None
        self.started = threading.Event()

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    def stop(self, reason: str = "stop requested") -> None:
        if self.shutdown.requested.is_set():
            return
        log.info(
            "stopping: finishing the in-flight batch",
            extra={"reason": reason, "grace_s": self.settings.shutdown_grace_s},
        )
        self.shutdown.request()

    def start_watchdog(self) -> None:
        """Exit the process if a requested stop outlives the grace period (signals only)."""

        def watch() -> None:
            self.shutdown.requested.wait()
            while not self.shutdown.expired():
                time.sleep(0.2)
            log.error(
                "shutdown grace expired; exiting without finishing the batch "
                "(it was not committed and will be replayed)"
            )
            logging.shutdown()
            os._exit(1)

        threading.Thread(target=watch, name="vaeguard-watchdog", daemon=True).start()

    def run(self) -> None:
        """Run until stopped. Raises VaeguardError subclasses for failures an operator must fix."""
        s = self.settings
        log.info("vaeguard daemon starting", extra={"version": __version__, "settings": s.redacted()})
        alert_layer = self._alert_layer or make_alert_layer(
            s.alerts, kafka_config=s.kafka.client_config()
        )
        self.pipeline = Pipeline(
            s, self.provider, alert_layer, self.shutdown, on_batch=self._on_batch
        )
        self.provider.start()
        try:
            if s.http.enabled:
                try:
                    self.http = OpsServer(s.http.host, s.http.port, self.pipeline.readiness).start()
                except OSError as exc:
                    raise ConfigError(
                        f"invalid setting http.port: cannot listen on {s.http.host}:{s.http.port} "
                        f"({exc.strerror or exc})"
                    ) from None
            self.started.set()
            self.pipeline.run()
            stats = self.pipeline.stats
            log.info(
                "vaeguard daemon stopped",
                extra={
                    "consumed": stats.consumed,
                    "scored": stats.scored,
                    "anomalous": stats.anomalous,
                    "dead_lettered": stats.dead_lettered,
                },
            )
        finally:
            self.started.set()
            self.provider.close()
            try:
                alert_layer.close()
            except Exception as exc:
                log.warning("alert layer close failed", extra={"error": str(exc)})
            if self.http is not None:
                self.http.stop()


def _provider_for(settings: Settings) -> ModelProvider:
    from vaeguard.bundle import read_manifest

    path = settings.model.path
    if path is None:
        raise ConfigError(
            "missing setting model.path: set it in the config file or VAEGUARD_MODEL__PATH"
        )
    if not path.exists():
        raise ConfigError(f"invalid setting model.path: {path} does not exist")
    read_manifest(path)  # a clear BundleError now rather than after connecting
    return BundleModelProvider(path, settings.model.device, settings.model.reload_interval_s)
