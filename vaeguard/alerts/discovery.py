"""Sink discovery, only through the ``vaeguard.sinks`` entry-point group.

Built-in sinks are registered in vaeguard's own pyproject.toml, so a built-in and a third
party's plugin are found, loaded and listed the same way.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from dataclasses import dataclass
from typing import Any

from vaeguard.errors import ConfigError

GROUP = "vaeguard.sinks"
CORE_DISTRIBUTION = "vaeguard"


@dataclass(frozen=True)
class SinkPlugin:
    """One registered sink type."""

    name: str
    value: str
    package: str | None
    version: str | None

    @property
    def builtin(self) -> bool:
        return _normalize(self.package or "") == CORE_DISTRIBUTION

    def load(self) -> type:
        from vaeguard.alerts.sink import Sink

        try:
            obj = md.EntryPoint(name=self.name, value=self.value, group=GROUP).load()
        except Exception as exc:
            raise ConfigError(
                f"sink type {self.name!r} ({self.value}, from {self.package or 'unknown package'}) "
                f"cannot be imported: {type(exc).__name__}: {exc}"
            ) from None
        if not (isinstance(obj, type) and issubclass(obj, Sink)):
            raise ConfigError(
                f"sink type {self.name!r} ({self.value}) is not a subclass of vaeguard.alerts.sink.Sink"
            )
        return obj

    def describe(self) -> dict[str, Any]:
        """Name, package, version, builtin, entry point and the first line of the docstring."""
        out: dict[str, Any] = {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "builtin": self.builtin,
            "entry_point": self.value,
        }
        try:
            cls = self.load()
        except ConfigError as exc:
            out["error"] = str(exc)
        else:
            doc = (cls.__doc__ or "").strip().splitlines()
            out["description"] = doc[0] if doc else ""
            out["settings"] = sorted(cls.Settings.model_fields)
        return out


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


_cache: tuple[tuple[str, ...], dict[str, list[SinkPlugin]]] | None = None


def _scan() -> dict[str, list[SinkPlugin]]:
    # Scanning every distribution's metadata takes tens of milliseconds in a big environment;
    # the result only changes when sys.path does (tests install plugins at run time).
    global _cache
    key = tuple(sys.path)
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    found: dict[str, list[SinkPlugin]] = {}
    seen: set[tuple[str, str, str | None]] = set()
    for ep in md.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        package = dist.name if dist is not None else None
        version = dist.version if dist is not None else None
        ident = (ep.name, ep.value, package and _normalize(package))
        if ident in seen:
            continue
        seen.add(ident)
        found.setdefault(ep.name, []).append(SinkPlugin(ep.name, ep.value, package, version))
    _cache = (key, found)
    return found


def plugins() -> list[SinkPlugin]:
    """Every registered sink type, sorted by name (duplicates included, for `plugins list`)."""
    return [p for name in sorted(_scan()) for p in _scan()[name]]


def sink_types() -> list[str]:
    return sorted(_scan())


def find(type_name: str) -> SinkPlugin:
    """The plugin registered as ``type_name``, or a `ConfigError` listing the installed types."""
    candidates = _scan().get(type_name, [])
    if not candidates:
        installed = ", ".join(sink_types()) or "none"
        raise ConfigError(
            f"unknown sink type {type_name!r}; installed sink types: {installed} "
            f"(plugins register under the entry-point group {GROUP!r})"
        )
    if len(candidates) > 1:
        who = ", ".join(f"{p.package} ({p.value})" for p in candidates)
        raise ConfigError(f"sink type {type_name!r} is registered by more than one package: {who}")
    return candidates[0]


def load_sink_class(type_name: str) -> type:
    return find(type_name).load()
