"""Shared fixtures: a real Kafka-protocol broker on loopback, a small trained model bundle."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import numpy as np
import pytest

from vaeguard.alerts.testing import wait_until

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Default state folders (the alert spool, the retraining job store) inside this run, shared by
# the daemons the tests start as subprocesses, never in the user's home.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="vaeguard-tests-state-")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One embedded Tansu broker for the session (topics are cheap: use unique names per test)."""
    from vaeguard.broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def fresh_broker(tmp_path):
    """A broker of the test's own, for tests that pause or kill it."""
    from vaeguard.broker import EmbeddedBroker

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        yield b


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
):
    """Poll until condition() is truthy; fail the test with `message` at the deadline."""
    try:
        return wait_until(condition, timeout, message, interval=interval)
    except AssertionError as exc:
        pytest.fail(str(exc))


def wait_for_progress(
    progress: Callable[[], int],
    target: int,
    *,
    stall: float = 60.0,
    cap: float = 600.0,
    interval: float = 0.25,
    message: str = "progress",
) -> None:
    """Poll until ``progress()`` reaches ``target``; fail the test when it has not risen for
    ``stall`` seconds (stuck, or something lost: it never gets there) or after ``cap`` seconds.
    For catching up on a backlog whose size depends on how busy the machine was before."""
    import time

    start = last_rise = time.monotonic()
    best = -1
    while True:
        now_at = progress()
        now = time.monotonic()
        if now_at >= target:
            return
        if now_at > best:
            best, last_rise = now_at, now
        if now - last_rise > stall:
            pytest.fail(f"{message}: stuck at {best} of {target} for {stall:.0f}s")
        if now - start > cap:
            pytest.fail(f"{message}: {best} of {target} after {cap:.0f}s")
        time.sleep(interval)


def make_normal_data(n: int = 2000, seed: int = 0, n_features: int = 4) -> np.ndarray:
    """Correlated Gaussian data: a 2-D latent factor mixed into n_features plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    mix = np.random.default_rng(1234).standard_normal((2, n_features))
    return z @ mix + 0.1 * rng.standard_normal((n, n_features))


#: A small, quickly trained tabular model (the `fitted` fixture's parameters).
FAST = {
    "epochs": 60,
    "hidden": (32, 16),
    "latent_dim": 2,
    "mc_samples": 16,
    "patience": 15,
    "seed": 0,
}


@pytest.fixture(scope="session")
def normal_data() -> np.ndarray:
    return make_normal_data(3000, seed=0, n_features=5)


@pytest.fixture(scope="session")
def fitted(normal_data):
    """A detector on 5 correlated features (2-D latent structure + noise), shared per session
    (a test that recalibrates it must not rely on its threshold afterwards)."""
    from vaeguard import VAEDetector

    return VAEDetector(**FAST).fit(normal_data)


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    """A quickly trained bundle on 4 correlated features named a, b, c, d."""
    from vaeguard import VAEDetector

    x = make_normal_data()
    data = {name: x[:, j] for j, name in enumerate("abcd")}
    det = VAEDetector(epochs=30, hidden=(32, 16), latent_dim=4, mc_samples=16, seed=0).fit(data)
    path = tmp_path_factory.mktemp("bundle") / "model"
    det.save(path)
    return path


@pytest.fixture
def measured(request) -> Callable[[str], None]:
    """Show a line a test measured (e.g. restart times) in the run's summary, so that CI's
    output carries it. Kept on the test's report, which reaches the summary from a worker
    process too (the suite runs under pytest-xdist)."""
    return lambda line: request.node.user_properties.append(("measured", line))


def pytest_terminal_summary(terminalreporter, config) -> None:
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for key, value in getattr(report, "user_properties", ())
        if key == "measured"
    ]
    if lines:
        terminalreporter.section("measured")
        for line in lines:
            terminalreporter.write_line(line)
