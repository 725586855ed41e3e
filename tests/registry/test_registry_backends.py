"""One scenario, both storage backends: a folder and an object store (moto's S3 server on
loopback) give the same observable results, because the registry's rules are written once over
the storage primitives. What differs by design (the cache, leases vs flock, upload tokens) is
covered by each backend's own tests."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vaeguard.errors import LockHeld, RegistryError
from vaeguard.files import write_atomic
from vaeguard.registry import CURRENT, ModelRegistry

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from tests.registry.test_s3_registry import s3_endpoint, uri  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def detector(small_bundle):
    from vaeguard.detector import load_bundle

    return load_bundle(small_bundle)


class Backend:
    """Opens registries on one root; writes CURRENT by hand as an operator (or an older
    vaeguard) would, in the backend's own way."""

    def __init__(self, root, tmp_path: Path):
        self.root, self.tmp_path, self.opened = root, tmp_path, 0

    def open(self, **kwargs) -> ModelRegistry:
        self.opened += 1
        if isinstance(self.root, Path):
            return ModelRegistry(self.root, **kwargs)
        return ModelRegistry(self.root, cache_dir=self.tmp_path / f"cache{self.opened}", **kwargs)

    def write_current_by_hand(self, reg: ModelRegistry, text: bytes) -> None:
        if isinstance(self.root, Path):
            write_atomic(self.root / CURRENT, text)
        else:
            reg.store.put(CURRENT, text)


@pytest.fixture(params=["folder", "s3"])
def backend(request, tmp_path):
    if request.param == "folder":
        return Backend(tmp_path / "reg", tmp_path)
    return Backend(request.getfixturevalue("uri"), tmp_path)


def _line(exc: BaseException, root) -> str:
    return str(exc).replace(str(root), "<root>")


def test_the_same_scenario_gives_the_same_results_on_both_backends(detector, backend):
    seen: list[tuple] = []

    def log(*what):
        seen.append(what)

    def switches(reg):
        return [(p["from"], p["to"], p["reason"]) for p in reg.promotions()]

    with pytest.raises(RegistryError) as info:
        backend.open()
    log("open", _line(info.value, backend.root))
    a = backend.open(create=True)
    b = backend.open()  # a second writer on the same registry
    log("register", a.register(detector, {"source": "train"}), a.current())
    with pytest.raises(RegistryError) as info:
        a.rollback()
    log("rollback", _line(info.value, backend.root))
    log("register", b.register(detector, {"source": "retrain"}), b.current())
    log("promote", a.promote("2"), b.current())
    log("rollback", b.rollback(), a.current())
    log("rollback", a.rollback(), b.current())
    log("register", a.register(detector), a.register(detector), a.version_names())
    info_ = {k: v for k, v in b.info("v0002").to_json().items() if k != "created_at"}
    threshold = b.info("v0001").threshold  # the same model: the same threshold
    log("info", info_, [v.current for v in b.versions()])

    # a concurrent writer: while A holds the registry lock, B cannot take it, and B's promote
    # waits and is applied on top of A's switch
    promoted: list[str] = []
    with a.lock():
        with pytest.raises(LockHeld) as info, b.lock(blocking=False):
            pass
        log("lock held", "the registry lock is held by" in str(info.value))
        waiter = threading.Thread(target=lambda: promoted.append(b.promote("v0004")))
        waiter.start()
        a._set_current("v0003", "promote")  # as a's promote does, under the lock it holds
        log("under the lock", a.current(), list(promoted))
    waiter.join(120)
    assert not waiter.is_alive()
    log("after", list(promoted), a.current(), switches(b)[-2:])

    # CURRENT moved by hand: followed, and logged as an outside change by the next switch.
    # (Not back to the last switch's "from": a folder's log-first order reads that as a switch
    # that never happened, by design.)
    backend.write_current_by_hand(a, b"v0001\n")
    log("by hand", b.current())
    log("promote", b.promote("v0004"), switches(a)[-3:])
    log("rollback", a.rollback())

    # prune keeps the newest, the current one and the versions it was switched to from
    log("prune", a.prune(1), b.version_names(), b.current())
    with pytest.raises(RegistryError) as info:
        a.path_of("v0003")
    log("pruned", _line(info.value, backend.root))
    log("register", a.register(detector, make_current=True), b.current(), b.version_names())

    assert seen == [
        (
            "open",
            "no model registry at <root> (create one with `vaeguard train --registry <root>`)",
        ),
        ("register", "v0001", "v0001"),
        ("rollback", "nothing to roll back to: v0001 has no previous current version"),
        ("register", "v0002", "v0001"),
        ("promote", "v0002", "v0002"),
        ("rollback", "v0001", "v0001"),
        ("rollback", "v0002", "v0002"),
        ("register", "v0003", "v0004", ["v0001", "v0002", "v0003", "v0004"]),
        (
            "info",
            {
                "version": "v0002",
                "current": True,
                "parent": "v0001",
                "source": "retrain",
                "threshold": threshold,
                "metrics": {},
                "training_window": None,
                "data_fingerprint": detector.training_info_.get("data_fingerprint"),
            },
            [False, True, False, False],
        ),
        ("lock held", True),
        ("under the lock", "v0003", []),
        (
            "after",
            ["v0004"],
            "v0004",
            [("v0002", "v0003", "promote"), ("v0003", "v0004", "promote")],
        ),
        ("by hand", "v0001"),
        (
            "promote",
            "v0004",
            [
                ("v0003", "v0004", "promote"),
                ("v0004", "v0001", "outside change"),
                ("v0001", "v0004", "promote"),
            ],
        ),
        ("rollback", "v0001"),
        ("prune", ["v0003"], ["v0001", "v0002", "v0004"], "v0001"),
        ("pruned", "no version v0003 in <root> (versions: v0001, v0002, v0004)"),
        ("register", "v0005", "v0005", ["v0001", "v0002", "v0004", "v0005"]),
    ]
