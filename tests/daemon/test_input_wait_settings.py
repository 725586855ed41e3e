"""input.max_wait_s against scoring.stall_after_s: a row waiting for its features holds its
partition's commit (tests/daemon/test_input_formats_daemon.py), so settings that let a row wait
as long as the stall detector allows a partition to stand still are refused, naming both."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.config import load_settings
from vaeguard.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VAEGUARD_"):
            monkeypatch.delenv(name)


def test_a_row_may_not_wait_as_long_as_a_stall(tmp_path, monkeypatch):
    cfg = tmp_path / "vaeguard.yaml"
    cfg.write_text("input:\n  format: prometheus\n  max_wait_s: 120\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert text.startswith(f"invalid setting input.max_wait_s (in {cfg}): 120 s plus"), text
    assert "scoring.stall_after_s (120 s)" in text and "scoring.batch_max_wait_ms" in text
    assert "\n" not in text
    # raised from the environment: named as such
    monkeypatch.setenv("VAEGUARD_SCORING__STALL_AFTER_S", "200")
    assert load_settings(cfg).input.max_wait_s == 120
    monkeypatch.setenv("VAEGUARD_INPUT__MAX_WAIT_S", "199.99")
    with pytest.raises(ConfigError, match=r"input\.max_wait_s \(from environment variable"):
        load_settings(cfg)
    # the flat format assembles no rows: nothing waits
    monkeypatch.delenv("VAEGUARD_INPUT__MAX_WAIT_S")
    monkeypatch.delenv("VAEGUARD_SCORING__STALL_AFTER_S")
    assert load_settings(input={"max_wait_s": 3600}).input.max_wait_s == 3600


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(["flat", "telegraf", "prometheus", "otlp-json"]),
    max_wait_s=st.floats(0.001, 3600),
    batch_ms=st.integers(0, 60_000),
    stall_s=st.floats(1, 86_400),
)
def test_any_wait_and_stall_load_consistently_or_are_refused_naming_both(
    fmt, max_wait_s, batch_ms, stall_s
):
    try:
        s = load_settings(
            input={"format": fmt, "max_wait_s": max_wait_s},
            scoring={
                "batch_max_wait_ms": batch_ms,
                "stall_after_s": stall_s,
                "state_interval_s": 0,
            },
        )
    except ConfigError as exc:
        text = str(exc)
        assert fmt != "flat" and max_wait_s + batch_ms / 1000 >= stall_s
        assert "input.max_wait_s" in text and "scoring.stall_after_s" in text
        assert "\n" not in text
    else:
        held = s.input.max_wait_s + s.scoring.batch_max_wait_ms / 1000
        assert fmt == "flat" or held < s.scoring.stall_after_s
