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
from vaeguard.daemon.drift import DriftMonitor
from vaeguard.daemon.http import OpsServer
from vaeguard.daemon.model_provider import (
    BundleModelProvider,
    ModelProvider,
    RegistryModelProvider,
)
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
        heartbeat=None,
    ):
        self.settings = settings
        #: Called from the pipeline's loop, idle or not (a supervised worker's liveness).
        self._heartbeat = heartbeat
        self.shutdown = Shutdown(settings.shutdown_grace_s)
        self.provider = provider or _provider_for(settings)
        self._alert_layer = alert_layer
        self._on_batch = on_batch
        self.pipeline: Pipeline | None = None
        self.http: OpsServer | None = None
        self.retraining = None  # a vaeguard.retrain.service.RetrainService when enabled
        self.started = threading.Event()
        if settings.retrain.enabled and not isinstance(self.provider, RegistryModelProvider):
            raise ConfigError(
                "invalid setting retrain.enabled: retraining in the daemon needs model.path to "
                "be a model registry (create one with `vaeguard train --registry DIR`)"
            )

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
        log.info(
            "vaeguard daemon starting", extra={"version": __version__, "settings": s.redacted()}
        )
        alert_layer = self._alert_layer or make_alert_layer(
            s.alerts, kafka_config=s.kafka.client_config()
        )
        if s.retrain.enabled:
            from vaeguard.retrain.service import RetrainService

            self.retraining = RetrainService(
                s, alert_layer, on_promoted=getattr(self.provider, "poke", None)
            )
        drift = DriftMonitor.from_settings(
            s.retrain, on_drift=self.retraining.trigger if self.retraining else None
        )
        user_on_batch = self._on_batch

        def on_batch(scored, dead) -> None:
            model = self.pipeline._model  # the model that scored this batch
            if scored and model is not None:
                drift.observe(
                    model.version,
                    model.serving.score_reference,
                    [r.score for r in scored],
                )
            if user_on_batch is not None:
                user_on_batch(scored, dead)

        self.pipeline = Pipeline(
            s,
            self.provider,
            alert_layer,
            self.shutdown,
            on_batch=on_batch,
            heartbeat=self._heartbeat,
        )
        self.provider.start()
        try:
            if self.retraining is not None:
                self.retraining.start()
            if s.http.enabled:
                try:
                    self.http = OpsServer(
                        s.http.host,
                        s.http.port,
                        self.pipeline.readiness,
                        request_timeout_s=s.http.request_timeout_s,
                        max_connections=s.http.max_connections,
                    ).start()
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
            if self.retraining is not None:
                self.retraining.stop()
            self.provider.close()
            try:
                alert_layer.close()
            except Exception as exc:
                log.warning("alert layer close failed", extra={"error": str(exc)})
            if self.http is not None:
                self.http.stop()


def _provider_for(settings: Settings) -> ModelProvider:
    from vaeguard.bundle import read_manifest
    from vaeguard.registry import ModelRegistry, is_registry

    path = settings.model.path
    if path is None:
        raise ConfigError(
            "missing setting model.path: set it in the config file or VAEGUARD_MODEL__PATH"
        )
    options = settings.model.registry_options()
    remote = isinstance(path, str)  # an s3:// registry (config keeps only URIs as text)
    if not remote and not path.exists():
        raise ConfigError(f"invalid setting model.path: {path} does not exist")
    if remote and not is_registry(path, options["storage_options"]):
        raise ConfigError(f"invalid setting model.path: no model registry at {path}")
    if is_registry(path, options["storage_options"]):
        registry = ModelRegistry(path, **options)
        current = registry.current()
        if current is None:
            raise ConfigError(f"invalid setting model.path: registry {path} has no current version")
        read_manifest(registry.path_of(current))  # a clear BundleError now, not after connecting
        provider = RegistryModelProvider
    else:
        read_manifest(path)  # a clear BundleError now rather than after connecting
        provider = BundleModelProvider
    extra = {"registry_options": options} if provider is RegistryModelProvider else {}
    return provider(
        path,
        settings.model.device,
        settings.model.reload_interval_s,
        alert_budget=settings.model.alert_budget,
        follow_normal=settings.model.follow_normal,
        **extra,
    )
