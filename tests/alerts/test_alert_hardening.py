"""Hardening of the alert path: the spool survives short and failing writes, what the spool
and the file sink write is private to the daemon's user, the webhook signature check takes
any input, and insecure sink settings are called out at start."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.alerts import spool as spool_module
from vaeguard.alerts.delivery import new_nid
from vaeguard.alerts.layer import build_workers
from vaeguard.alerts.settings import AlertsSettings
from vaeguard.alerts.sink import SinkContext
from vaeguard.alerts.sinks.file import FileSettings, FileSink
from vaeguard.alerts.sinks.webhook import sign, verify_signature
from vaeguard.alerts.spool import Spool, SpoolError
from vaeguard.alerts.testing import sample_alert
from vaeguard.errors import VaeguardError

_real_write = os.write


def short_writes(limit: int):
    """``os.write`` as a full disk, a quota or a signal make it: fewer bytes than asked."""

    def write(fd: int, data) -> int:
        return _real_write(fd, bytes(data[:limit]))

    return write


def failing_after(first: int):
    """``os.write`` that writes ``first`` bytes, then fails: the disk filled mid-record."""
    calls = []

    def write(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return _real_write(fd, bytes(data[:first]))
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


@contextlib.contextmanager
def os_write(fake):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spool_module.os, "write", fake)
        yield


@settings(max_examples=40, deadline=None)
@given(limit=st.integers(1, 300), batches=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_short_writes_lose_no_acknowledged_alert(limit, batches):
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(tmp, "hook")
        added = []
        for size in batches:
            items = [(new_nid(), sample_alert(f"h{len(added) + i}")) for i in range(size)]
            with os_write(short_writes(limit)):
                spool.add(items, "HTTP 503")
                spool.ack([items[0][0]])
            added += [nid for nid, _ in items[1:]]
        assert [e.nid for e in spool.pending()] == added
        assert Path(spool.path).read_bytes().endswith(b"\n")


@pytest.mark.parametrize("op", ["add", "bury"])
def test_a_write_failing_midway_raises_and_leaves_no_torn_record(tmp_path, op):
    spool = Spool(tmp_path, "hook")
    write = getattr(spool, op)
    read = spool.pending if op == "add" else spool.dead
    path = spool.path if op == "add" else spool.dead_path
    kept = new_nid()
    write([(kept, sample_alert("kept"))], "HTTP 503")
    before = path.read_bytes()
    with os_write(failing_after(40)), pytest.raises(SpoolError, match="No space left"):
        write([(new_nid(), sample_alert("torn"))], "HTTP 503")
    assert path.read_bytes() == before  # truncated back to the record boundary
    later = new_nid()
    write([(later, sample_alert("later"))], "HTTP 503")
    assert [e.nid for e in read()] == [kept, later]
    assert issubclass(SpoolError, VaeguardError)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_spool_files_and_folders_are_private(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "COMPACT_AFTER_ACKS", 1)  # so compact() rewrites
    with umask(0o022):
        spool = Spool(tmp_path / "spool", "hook")
        items = [(new_nid(), sample_alert(f"h{i}")) for i in range(3)]
        spool.add(items, "HTTP 503")
        spool.ack([items[0][0]])
        assert spool.compact() == 2  # the file was rewritten through a temporary one
        spool.bury(items[1:2], "HTTP 400")
        with spool.redelivery():
            pass
    root = tmp_path / "spool"
    assert mode(root) == 0o700 and mode(root / "dead") == 0o700
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"hook.spool.jsonl", "hook.jsonl", "hook.lock"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_a_spool_file_left_readable_is_made_private_on_the_next_write(tmp_path):
    spool = Spool(tmp_path, "hook")
    spool.add([(new_nid(), sample_alert())], "HTTP 503")
    spool.path.chmod(0o644)
    spool.add([(new_nid(), sample_alert())], "HTTP 503")
    assert mode(spool.path) == 0o600


def test_file_sink_files_are_private_rotated_ones_too(tmp_path):
    path = tmp_path / "out" / "alerts.jsonl"
    sink = FileSink(FileSettings(path=path, max_bytes=1024, backups=2), SinkContext("f"))
    with umask(0o022):
        for i in range(6):
            sink.send([sample_alert(f"h{i}")])
    written = sorted(path.parent.iterdir())
    assert [p.name for p in written] == ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]
    assert [mode(p) for p in written] == [0o600] * 3


# -- the webhook signature check --------------------------------------------------------------

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300),
    st.floats(),
    st.text(),
    st.binary(),
    st.just("9" * 5000),
    st.just("１７６７２６８８００"),  # full-width digits: int() takes them
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
NOW = 1_767_268_800.0


@settings(max_examples=1000, deadline=None)
@given(
    secret=ANYTHING,
    timestamp=ANYTHING,
    body=ANYTHING,
    signature=ANYTHING,
    tolerance_s=ANYTHING,
    now=ANYTHING,
)
def test_verify_signature_takes_any_input_and_answers_a_bool(
    secret, timestamp, body, signature, tolerance_s, now
):
    result = verify_signature(secret, timestamp, body, signature, tolerance_s=tolerance_s, now=now)
    assert result is False or result is True


@settings(max_examples=300, deadline=None)
@given(
    secret=st.one_of(st.text(st.characters(exclude_categories=["Cs"])), st.binary()),
    body=st.binary(),
    skew=st.integers(-300, 300),
    as_bytes=st.booleans(),
)
def test_a_correct_signature_still_verifies(secret, body, skew, as_bytes):
    timestamp = str(int(NOW) + skew)
    signature = sign(secret, timestamp, body)
    if as_bytes:  # header values as some frameworks hand them over
        timestamp, signature = timestamp.encode(), signature.encode()
    assert verify_signature(secret, timestamp, body, signature, now=NOW) is True
    assert verify_signature(secret, timestamp, bytearray(body), signature, now=NOW) is True


@pytest.mark.parametrize(
    ("now", "tolerance_s"), [(math.nan, 300.0), (NOW, math.nan), (math.inf, 300.0)]
)
def test_a_nan_clock_or_tolerance_fails_closed(now, tolerance_s):
    timestamp = str(int(NOW))
    signature = sign("k", timestamp, b"{}")
    assert not verify_signature("k", timestamp, b"{}", signature, now=now, tolerance_s=tolerance_s)


@pytest.mark.parametrize(
    "timestamp",
    [" 1767268800", "+1767268800", "1_767_268_800", "１７６７２６８８００", "1767268800\n"],
)
def test_only_a_plain_digit_timestamp_is_accepted(timestamp):
    # The sender writes ASCII digits; a receiver should not accept what int() merely tolerates.
    signature = sign("k", timestamp, b"{}")
    assert not verify_signature("k", timestamp, b"{}", signature, now=NOW)


# -- start-up warnings --------------------------------------------------------------------------


def test_a_sink_that_does_not_verify_tls_is_named_at_start(sink_plugins, tmp_path, caplog):
    alerts = AlertsSettings.from_mapping(
        {
            "spool_dir": str(tmp_path / "spool"),
            "sinks": [
                {"name": "trusting", "type": "webhook", "url": "https://127.0.0.1:1/x",
                 "verify_tls": False},
                {"name": "careful", "type": "webhook", "url": "https://127.0.0.1:1/y"},
                {"name": "am", "type": "alertmanager", "url": "https://127.0.0.1:1",
                 "verify_tls": False},
            ],
        }
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vaeguard.alerts"):
        workers = build_workers(alerts, start=False)
    for w in workers.values():
        w.close(timeout=1.0)
    warned = [r.sink for r in caplog.records if "verify_tls: false" in r.getMessage()]
    assert warned == ["trusting", "am"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if hasattr(r, "sink"))
