"""Placeholder for the `alerts:` section of the settings (the sinks issue replaces it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AlertsSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
