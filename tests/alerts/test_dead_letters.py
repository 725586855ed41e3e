"""Alerts a sink can never deliver are dead-lettered: out of the queue and the spool, counted,
listed by `vaeguard spool list`, requeued by `vaeguard spool flush --dead`; the alerts behind
them are delivered."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from tests.conftest import wait_for
from vaeguard.alerts.delivery import SinkWorker, new_nid
from vaeguard.alerts.settings import DeliverySettings
from vaeguard.alerts.sink import Sink, SinkContext, SinkSettings
from vaeguard.alerts.spool import Spool, dead_sinks
from vaeguard.alerts.testing import FAST_DELIVERY, HTTPCapture, free_port, make_record, sample_alert

from .test_alert_plugins_cli import vaeguard, write_config


def dead_count(sink: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "vaeguard_sink_alerts_dead_lettered_total", {"sink": sink, "reason": reason}
    )
    return value or 0.0


class PickySink(Sink):
    """Takes batches, but cannot encode an alert whose entity is "bad" (raises ValueError)."""

    max_batch = 10

    def __init__(self, name: str):
        super().__init__(SinkSettings(), SinkContext(name))
        self.calls: list[list[str]] = []
        self.got: list[str] = []

    def send(self, alerts):
        self.calls.append([a.entity for a in alerts])
        if any(a.entity == "bad" for a in alerts):
            raise ValueError("cannot encode the entity")
        self.got += [a.entity for a in alerts]


def test_a_malformed_alert_in_a_batch_is_dead_lettered_and_the_rest_delivered(tmp_path):
    name = f"picky-{uuid.uuid4().hex[:8]}"
    sink = PickySink(name)
    worker = SinkWorker(sink, DeliverySettings(**FAST_DELIVERY), Spool(tmp_path, name)).start()
    try:
        job = worker.submit([(new_nid(), sample_alert(e)) for e in ("a", "bad", "b")])
        worker.wait(job, time.monotonic() + 10)
        assert job.outcome() == {"delivered": 2, "dead": 1}
        # The batch failed; one by one found the bad alert; the others went through in order.
        assert sink.calls == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]
        assert sink.got == ["a", "b"]
        later = worker.submit([(new_nid(), sample_alert("c"))])  # nothing queued behind it
        worker.wait(later, time.monotonic() + 10)
        assert later.outcome() == {"delivered": 1} and sink.got == ["a", "b", "c"]
        health = worker.health()
    finally:
        worker.close()
    spool = Spool(tmp_path, name)
    [dead] = spool.dead()
    assert dead.alert.entity == "bad" and dead.reason == "ValueError: cannot encode the entity"
    assert not spool.pending() and dead_sinks(tmp_path) == [name]
    assert dead_count(name, "malformed") == 1 and dead_count(name, "rejected") == 0
    assert health["dead_lettered"] == 1 and health["breaker"] == "closed"  # the sink is fine


def test_a_rejected_alert_is_dead_lettered_from_the_spool_and_unblocks_it(
    sink_plugins, tmp_path, make_layer, caplog
):
    """The issue's case: a spooled alert the target refuses must not hold the spool (and so
    every later alert to that sink) forever."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool_dir = tmp_path / "spool"
    name = f"hook-{uuid.uuid4().hex[:8]}"
    sink = {"name": name, "type": "webhook", "url": url + "/hook"}
    layer = make_layer({"sinks": [sink], "spool_dir": str(spool_dir)})
    layer.process([make_record("bad", True), make_record("good", True)])  # target down: spooled
    spool = Spool(spool_dir, name)
    assert [e.alert.entity for e in spool.pending()] == ["bad", "good"]

    # The first redelivered alert is refused for good.
    with HTTPCapture(port=port, fail_first=(422,)) as server, caplog.at_level(logging.ERROR):
        wait_for(lambda: len(server.received) == 1, message="the good alert to be redelivered")
        wait_for(
            lambda: layer.health()["sinks"][name]["spool_backlog"] == 0 and not spool.pending(),
            message="the spool to drain",
        )
        layer.process([make_record("later", True)])  # live again: no backlog to wait behind
        assert [r.json()["entity"] for r in server.received] == ["good", "later"]
        assert len(server.requests) == 3  # the refused one was not retried
    [dead] = spool.dead()
    assert dead.alert.entity == "bad" and "HTTP 422" in dead.reason
    assert dead_count(name, "rejected") == 1
    assert "alerts dead-lettered" in caplog.text
    health = layer.health()["sinks"][name]
    assert health["dead_lettered"] == 1 and health["spool_backlog"] == 0
    layer.close()

    cfg = Path(write_config(tmp_path, url, spool_dir))
    cfg.write_text(cfg.read_text().replace("name: hook", f"name: {name}"))
    env = {**sink_plugins.env(), "COLUMNS": "300"}  # rich wraps the table title otherwise
    listed = vaeguard(["spool", "list", "--config", cfg, "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["sink"], r["state"], r["entity"]) for r in rows] == [(name, "dead", "bad")]
    assert "HTTP 422" in rows[0]["reason"]
    table = vaeguard(["spool", "list", "--config", cfg], env, tmp_path)
    assert "0 alert(s) pending, 1 dead-lettered" in table.stdout

    with HTTPCapture(port=port) as server:  # the receiver was fixed: requeue and deliver
        flushed = vaeguard(["spool", "flush", "--config", cfg, "--dead"], env, tmp_path)
        assert flushed.returncode == 0, flushed.stderr
        assert f"{name}: 1 dead letter(s) requeued" in flushed.stdout
        assert [r.json()["entity"] for r in server.received] == ["bad"]
    assert not spool.dead() and not spool.pending()


def test_dead_letters_stay_within_their_size_limit(tmp_path):
    spool = Spool(tmp_path, "s", dead_max_bytes=4096)
    for i in range(40):
        spool.bury([(new_nid(), sample_alert(f"h{i}"))], "HTTP 400")
    files = sorted(p.name for p in (tmp_path / "dead").iterdir())
    assert files == ["s.jsonl", "s.jsonl.1"]
    assert all((tmp_path / "dead" / f).stat().st_size <= 4096 for f in files)
    entities = [e.alert.entity for e in spool.dead()]
    assert entities == sorted(entities, key=lambda e: int(e[1:])) and entities[-1] == "h39"


def test_text_no_encoder_takes_is_spooled_and_delivered(capture, make_layer, tmp_path):
    """A lone surrogate (JSON "\\ud800" in a record) has no UTF-8 form; it must not make the
    spool or a sink's payload raise."""
    layer = make_layer({"sinks": [{"name": "hook", "type": "webhook", "url": capture.url}]})
    layer.process([make_record("h\ud800", True, labels={"k": "v\udfff"})])
    [request] = capture.received
    body = request.json()
    assert body["entity"] == "h\ud800" and body["labels"] == {"k": "v\udfff"}
    spool = Spool(tmp_path / "s2", "x")
    spool.add([(new_nid(), sample_alert("h\ud800"))], "test")
    assert spool.pending()[0].alert.entity == "h\ud800"
