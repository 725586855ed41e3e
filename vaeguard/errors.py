"""Exception types: every failure a user can cause maps to one of these and one clear line.

Every public error of vaeguard is defined here, under `VaeguardError`; the modules that raise
them re-export them under their old names (``vaeguard.registry.RegistryError``,
``vaeguard.alerts.sink.SinkError``, ...), so existing imports keep working.
"""

from __future__ import annotations


class VaeguardError(Exception):
    """Base class; the CLI prints its message on one line and exits non-zero."""

    exit_code = 1


class DataError(VaeguardError, ValueError):
    """Input data is unusable: a missing column, a non-numeric cell, NaN or ±inf, an empty file."""


class NotFittedError(VaeguardError, RuntimeError):
    """A detector method that needs a trained model was called before `fit` or `load`."""


class BundleError(VaeguardError):
    """A model bundle is missing, corrupt, tampered with or written by an incompatible version."""


class ConfigError(VaeguardError):
    """A setting is invalid; the message names the field."""

    exit_code = 2


# -- model registry (vaeguard.registry) -------------------------------------------------------


class RegistryError(VaeguardError):
    """A registry operation cannot be done (unknown version, nothing to roll back to, …)."""


class VersionNameError(RegistryError):
    """A version name that the registry never uses (a usage error, like a bad setting)."""

    exit_code = 2


class LockHeld(RegistryError):
    """A registry lock taken without blocking is held by someone else (another process or
    thread), so callers can tell "busy" from a real failure by type."""


class RegistryConflict(RegistryError):
    """A conditional write to an object-store registry lost: the object already existed
    (If-None-Match) or had changed since it was read (If-Match)."""


class CorruptVersion(RegistryError):
    """A version in an object-store registry whose files do not match its COMPLETE record
    (missing, or another checksum): it will not heal by itself, so a reader need not fetch it
    again, unlike a store that is only unreachable."""


# -- daemon (vaeguard.daemon) -----------------------------------------------------------------


class StateRefused(DataError):
    """A state file that is not used: ``kind`` is unreadable, corrupt or unauthenticated."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


class ShutdownExpired(VaeguardError):
    """The shutdown grace ran out before the in-flight batch could be finished."""


# -- retraining (vaeguard.retrain) ------------------------------------------------------------


class RetrainRefused(VaeguardError):
    """The job would not train: too little data, too much of it anomalous, or already running."""

    exit_code = 3


class RetrainRejected(VaeguardError):
    """A candidate was trained but failed the validation gate; the current model stays."""

    exit_code = 4


# -- alerting (vaeguard.alerts) ---------------------------------------------------------------


class SinkError(VaeguardError):
    """A failed delivery. ``retryable`` tells the core whether another attempt may succeed."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        #: Seconds the target asked us to wait (HTTP Retry-After), if it said.
        self.retry_after = retry_after


class RetryableSinkError(SinkError):
    """Temporary: the target is down, overloaded (HTTP 5xx, 408, 429) or timed out."""


class PermanentSinkError(SinkError):
    """Retrying cannot help until the sink is fixed: bad credentials, a wrong URL.

    The alert is kept (parked) in the spool but not retried in the background; a restart or
    ``vaeguard spool flush`` tries it again (after fixing the config).
    """

    retryable = False


class UndeliverableAlertError(PermanentSinkError):
    """This alert, not the sink, is the problem: the target rejected its payload (HTTP 400,
    413, 422) or it cannot be turned into one.

    Kept in the spool it would be retried forever; it is dead-lettered instead (moved beside
    the spool, listed by ``vaeguard spool list``, requeued by ``vaeguard spool flush --dead``),
    so the alerts behind it are delivered.
    """


class SpoolError(VaeguardError):
    """The spool cannot take an alert (disk full, unwritable, over its size limit)."""


class AlertDeliveryError(VaeguardError):
    """Some alerts could neither be delivered nor spooled; the batch must not be committed."""
