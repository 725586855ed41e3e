"""Output modes and `vaeguard run --workers N` against the real broker."""

from __future__ import annotations

import json
import os
import signal

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    Producer,
    committed,
    create_topic,
    daemon_env,
    good_record,
    unique,
)


def anomalous_record(i: int) -> dict:
    return {**good_record(i), "a": 80.0, "b": -80.0}


def test_output_mode_anomalies_writes_only_anomalies_and_still_commits_everything(
    broker, small_bundle, daemons
):
    bs = broker.bootstrap_servers
    topic, group = unique("anom-in"), unique("anom")
    create_topic(bs, topic, 2)
    env = daemon_env(bs, small_bundle, [topic], group, VAEGUARD_OUTPUT__MODE="anomalies")
    daemon = daemons("anomalies", env).start()
    daemon.wait_ready()
    producer = Producer(bs)
    bad = set(range(7, 300, 37))
    for i in range(300):
        producer.send(topic, anomalous_record(i) if i in bad else good_record(i))
    end = producer.flush()
    wait_for(
        lambda: daemon.metric("vaeguard_records_scored_total") == 300,
        timeout=60,
        message="every record scored",
    )
    scores = Collector(bs, f"{group}.scores")
    n_anomalous = daemon.metric("vaeguard_records_anomalous_total")
    scores.wait_count(int(n_anomalous), 30, "the anomalies' score records")
    records = scores.json()
    assert records and all(r["is_anomaly"] for r in records)
    inputs = Collector(bs, topic)
    inputs.wait_count(300, 30, "the input records")
    id_of = {(m.partition, m.offset): json.loads(m.value)["id"] for m in inputs.messages}
    flagged = {id_of[(r["source"]["partition"], r["source"]["offset"])] for r in records}
    assert len(flagged) == len(records) == n_anomalous
    assert flagged >= bad, "every planted anomaly has its score record"
    assert daemon.terminate() == 0, daemon.log()[-3000:]
    assert committed(bs, group, topic, end) == end


def test_supervised_workers_share_the_group_survive_a_kill_and_stop_cleanly(
    broker, small_bundle, daemons
):
    from tests.daemon.test_delivery import PacedProducer, _all_offsets, _sources

    bs = broker.bootstrap_servers
    topic, group = unique("workers-in"), unique("workers")
    create_topic(bs, topic, 4)
    env = daemon_env(bs, small_bundle, [topic], group, VAEGUARD_KAFKA__CLIENT_ID="scorer")
    supervisor = daemons("supervisor", env)
    supervisor.start_args = ["--workers", "2"]
    supervisor.start()

    def split_evenly() -> bool:
        code, body = supervisor.readyz()
        return code == 200 and [w["partitions_assigned"] for w in body["workers"]] == [2, 2]

    wait_for(
        split_evenly, timeout=90, interval=0.2, message="both workers ready, 2 partitions each"
    )
    workers = supervisor.readyz()[1]["workers"]
    assert [w["instance_id"] for w in workers] == [None, None]

    stream = PacedProducer(bs, topic, n=4000, rate=800)
    stream.start()
    scores = Collector(bs, f"{group}.scores")
    scores.wait_count(800, timeout=30, message="both workers scoring")
    victim = workers[1]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (
            supervisor.readyz()[0] == 200
            and supervisor.readyz()[1]["workers"][1]["pid"] not in (None, victim)
        ),
        timeout=60,
        interval=0.2,
        message="the killed worker restarted and ready",
    )
    assert supervisor.readyz()[1]["workers"][1]["restarts"] == 1
    stream.join(60)
    # A liveness deadline: after the kill the group rebalances twice (the dead member's session
    # expires, the restarted one joins), and a join phase may last up to the rebalance timeout
    # (max_poll_interval_ms, 60 s) on a busy machine.
    try:
        wait_for(
            lambda: scores.drain() and _sources(scores) >= _all_offsets(stream.end),
            timeout=150,
            message="a score record for every input record",
        )
    except BaseException:
        print("readyz:", supervisor.readyz(), "\nlog:", supervisor.log()[-4000:])
        raise
    # one /metrics for both workers: the consumed total covers the whole stream
    assert supervisor.metric("vaeguard_records_consumed_total") >= stream.total()
    pids = [w["pid"] for w in supervisor.readyz()[1]["workers"]]
    assert supervisor.terminate() == 0, supervisor.log()[-3000:]
    for pid in pids:
        assert not _alive(pid), "a worker outlived its supervisor"
    assert committed(bs, group, topic, stream.end) == stream.end


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours does not count
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_workers_do_not_outlive_a_killed_supervisor(broker, small_bundle, daemons):
    bs = broker.bootstrap_servers
    topic, group = unique("orphan-in"), unique("orphan")
    create_topic(bs, topic, 2)
    supervisor = daemons("supervisor", daemon_env(bs, small_bundle, [topic], group))
    supervisor.start_args = ["--workers", "2"]
    supervisor.start()
    wait_for(
        lambda: all(w.get("pid") for w in supervisor.readyz()[1].get("workers", [{}])),
        timeout=60,
        interval=0.2,
        message="both workers started",
    )
    pids = [w["pid"] for w in supervisor.readyz()[1]["workers"]]
    # each worker got its share of the cores for TensorFlow's and OpenMP's thread pools
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for pid in pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(
                item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item
            )
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            assert environ.get(name) == share, (name, environ.get(name))
    supervisor.kill()  # SIGKILL: no chance to forward anything
    wait_for(
        lambda: not any(_alive(pid) for pid in pids),
        timeout=30,
        interval=0.1,
        message="the workers of a killed supervisor to exit",
    )


def test_supervisor_gives_each_worker_a_share_of_the_cores_unless_set(monkeypatch):
    from vaeguard.config import Settings
    from vaeguard.daemon import supervisor as sup

    assert [sup.threads_per_worker(n, cores=8) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(sup.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    for name in sup.THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-not-used")
    s = sup.Supervisor(Settings(), None, 2)
    env = s._env(s.workers[1])
    assert {v: env[v] for v in sup.THREAD_VARS} == dict.fromkeys(sup.THREAD_VARS, "2")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")  # the operator's own value wins
    s = sup.Supervisor(Settings(), None, 2)
    env = s._env(s.workers[0])
    assert env["TF_NUM_INTRAOP_THREADS"] == "3" and env["OMP_NUM_THREADS"] == "2"
