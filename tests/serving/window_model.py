"""One small window-mode bundle (two views, a seasonal channel, a likelihood) and a daemon
state snapshot of it, built once per test process for the fuzz tests of what is read from disk
(`tests/serving/test_state_restore_fuzz.py`, `tests/bundle/test_bundle_manifest_fuzz.py`)."""

from __future__ import annotations

import atexit
import collections
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PARAMS = {
    "window": {
        "window": 8,
        "interval": "auto",
        "conditions": ["hour_of_day"],
        "seasonal": {"period": 1800.0, "periods": 2, "tolerance": 120.0},
    },
    "views": {
        "latent_dim": 2,
        "hidden": [8],
        "train_steps": 10,
        "retrain_steps": 5,
        "batch_size": 32,
        "mc_samples": 2,
        "score_slots": 4,
    },
    "likelihood": {"history": 100, "min_history": 10, "suppress": 0, "decades": 4.0},
    "schedule": {"retrain_growth": None},
}
N = 120


def records(n: int = N, entity: str = "web-1") -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    return [
        {
            "key": entity,
            "ts": 1_600_000_000 + 60.0 * i,
            "value": 10 + 3 * math.sin(2 * math.pi * i / 30) + 0.3 * float(rng.standard_normal()),
        }
        for i in range(n)
    ]


@functools.cache
def window_bundle() -> Path:
    """The saved bundle (read-only for the tests: copy it before changing it)."""
    from vaeguard.apps.nab import NAB_PARAMS
    from vaeguard.apps.online import run_online
    from vaeguard.timeseries.views import ViewSet, merge_config

    views = ViewSet.from_params(merge_config(NAB_PARAMS, PARAMS))
    run_online(views, records(), first_fit=80)
    root = Path(tempfile.mkdtemp(prefix="vaeguard-window-bundle-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    views.save(root / "bundle")
    return root / "bundle"


@functools.cache
def _snapshot_text() -> str:
    from vaeguard.apps.online import TOPIC, as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    serving = load_serving(window_bundle(), "v1")
    messages = as_records(records() + records(40, "web-2"))  # offsets 0 … 159
    process(serving, messages, step_settings())
    serving.advance({TP(TOPIC, 0): len(messages)})
    serving._serving_refit(1)  # as after one online refit: the snapshot carries the weights
    state = serving.snapshot()
    assert state["refit"] is not None and state["likelihood"] is not None
    state["committed"] = {f"{TOPIC}:0": len(messages)}
    return json.dumps(state, allow_nan=False)


def snapshot() -> dict[str, Any]:
    """A fresh copy of a valid daemon window-state (with a refit, two entities, offsets)."""
    return json.loads(_snapshot_text())


TP = collections.namedtuple("TP", "topic partition")
