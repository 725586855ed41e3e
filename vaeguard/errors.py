"""Exception types: every failure a user can cause maps to one of these and one clear line."""

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
