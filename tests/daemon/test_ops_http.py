"""The ops listener under abuse: stalled and trickling clients are dropped after the request
timeout, and connections beyond the bound get a quick 503 instead of a thread each."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import wait_for
from vaeguard.daemon.http import HANDLER_THREAD, OpsServer


@pytest.fixture
def make_server():
    servers = []

    def make(**kwargs) -> OpsServer:
        server = OpsServer("127.0.0.1", 0, lambda: (True, {}), **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def get(server: OpsServer, path: str = "/healthz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def connect(server: OpsServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(10)
    return sock


def handler_threads() -> int:
    return sum(t.name == HANDLER_THREAD for t in threading.enumerate())


def test_a_client_that_sends_nothing_is_dropped_while_healthz_answers(make_server):
    server = make_server(request_timeout_s=0.5, max_connections=4)
    idle = connect(server)
    started = time.monotonic()
    assert get(server) == 200  # served meanwhile, by another thread
    assert idle.recv(1024) == b""  # the server closed it (recv waits at most 10 s)
    assert time.monotonic() - started < 5
    idle.close()
    wait_for(lambda: handler_threads() == 0, timeout=5, message="the handler thread to end")


def test_a_trickling_client_does_not_extend_its_deadline(make_server):
    """Slowloris: a byte every 0.1 s keeps each read short, never the whole request."""
    server = make_server(request_timeout_s=0.6, max_connections=4)
    sock = connect(server)
    started = time.monotonic()
    request = iter(b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 10_000)
    closed = False
    while time.monotonic() - started < 10:
        readable, _, _ = select.select([sock], [], [], 0.1)  # the condition, polled
        if readable:
            closed = sock.recv(1024) == b""
            break
        try:
            sock.send(bytes([next(request)]))
        except OSError:  # reset by the server: dropped too
            closed = True
            break
    sock.close()
    assert closed and time.monotonic() - started < 5


def test_more_idle_connections_than_the_bound_get_503_and_no_threads(make_server):
    server = make_server(request_timeout_s=30, max_connections=3)
    before = handler_threads()
    held = [connect(server) for _ in range(3)]
    wait_for(lambda: handler_threads() == before + 3, timeout=5, message="3 handler threads")
    extra = [connect(server) for _ in range(7)]
    for sock in extra:  # each answered at once, by the accept loop, without a thread
        answer = sock.recv(1024)
        assert answer.startswith(b"HTTP/1.0 503"), answer
    assert handler_threads() == before + 3
    assert get(server) == 503  # no slot for a probe either: the bound holds
    for sock in held + extra:
        sock.close()
    wait_for(lambda: get(server) == 200, timeout=10, message="slots to free up")
    wait_for(lambda: handler_threads() == before, timeout=5, message="the threads to end")


def test_metrics_count_dropped_connections(make_server):
    from prometheus_client import REGISTRY

    def dropped(reason: str) -> float:
        return REGISTRY.get_sample_value(
            "vaeguard_http_connections_dropped_total", {"reason": reason}
        )

    busy, timeout = dropped("busy"), dropped("timeout")
    server = make_server(request_timeout_s=0.3, max_connections=1)
    idle = connect(server)
    wait_for(lambda: handler_threads() >= 1, timeout=5, message="the idle connection's thread")
    assert get(server) == 503
    assert idle.recv(1024) == b""
    idle.close()
    wait_for(lambda: dropped("timeout") == timeout + 1, timeout=5, message="a timeout counted")
    assert dropped("busy") == busy + 1
