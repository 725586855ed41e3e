"""Fixtures for alerting tests: real servers on loopback, fast delivery settings, a clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vaeguard.alerts.layer import build_alert_layer
from vaeguard.alerts.settings import AlertsSettings
from vaeguard.alerts.testing import FAST_DELIVERY, HTTPCapture

FAST = FAST_DELIVERY


class Clock:
    """A settable wall clock for repeat intervals and resolve timeouts."""

    def __init__(self, now: float = 1_767_268_800.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def capture():
    with HTTPCapture() as server:
        yield server


@pytest.fixture
def make_layer(tmp_path):
    """Build alert layers from an ``alerts:`` mapping (spool in tmp_path); closed after the test."""
    layers = []

    def make(config: dict[str, Any], **kwargs):
        config = dict(config)
        config.setdefault("spool_dir", str(tmp_path / "spool"))
        config["delivery"] = {**FAST, **config.get("delivery", {})}
        layer = build_alert_layer(AlertsSettings.from_mapping(config), **kwargs)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        layer.close()


def file_sink(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"name": name, "type": "file", "path": str(tmp_path / f"{name}.jsonl")}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
