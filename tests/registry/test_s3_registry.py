"""The model registry on an object store (``s3://bucket/prefix``), against a real S3-protocol
server on loopback (moto's server mode, started here; dummy credentials, never AWS).

Covers what the directory registry guarantees: versions appear whole (COMPLETE last) or not at
all, CURRENT only names a complete version and is swapped with one conditional PUT, rollback,
prune, leases instead of flock, and the daemon's reload following the registry.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import wait_for
from vaeguard.errors import LockHeld, RegistryError

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from vaeguard.registry import (  # noqa: E402
    COMPLETE,
    CURRENT,
    ModelRegistry,
    ObjectStoreRegistry,
    is_registry,
)
from vaeguard.registry_store import ObjectStore, parse_uri  # noqa: E402


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1, and the AWS environment pointing at it only."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint
    server.stop()


@pytest.fixture
def uri(s3_endpoint):
    """A fresh bucket; the registry lives under a prefix in it."""
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    ObjectStore(f"s3://{bucket}").fs.call_s3("create_bucket", Bucket=bucket)
    return f"s3://{bucket}/models/prod"


@pytest.fixture(scope="module")
def detector(small_bundle):
    """The session's small model (trained once for the whole suite), as a detector."""
    from vaeguard.detector import load_bundle

    return load_bundle(small_bundle)


def open_registry(uri, tmp_path, name="cache", **kwargs):
    return ModelRegistry(uri, cache_dir=tmp_path / name, **kwargs)


def copy_version(reg, source: str, target: str) -> str:
    """Publish a copy of a version under a new name, COMPLETE last, as `register` does (the
    tests need distinct versions, not distinct models; this skips saving a Keras model)."""
    keys = sorted(reg.store.list(source + "/"), key=lambda k: k.endswith(COMPLETE))
    for key in keys:
        reg.store.put(target + "/" + key.partition("/")[2], reg.store.read(key))
    return target


def test_publish_promote_rollback_prune(detector, uri, tmp_path):
    assert not is_registry(uri)
    with pytest.raises(RegistryError, match="no model registry at s3://"):
        open_registry(uri, tmp_path)
    reg = open_registry(uri, tmp_path, create=True)
    assert isinstance(reg, ObjectStoreRegistry) and is_registry(uri)
    assert reg.current() is None
    assert reg.register(detector, {"source": "train"}) == "v0001"
    assert reg.current() == "v0001"
    v2 = reg.register(detector, {"source": "retrain", "validation": {"fpr": 0.01}})
    assert v2 == "v0002" and reg.current() == "v0001"
    keys = reg.store.list("v0002/")
    assert {"v0002/bundle.json", "v0002/model.keras", "v0002/lineage.json"} <= set(keys)
    reg.promote("2")
    assert reg.current() == "v0002"
    # another replica (its own cache) sees the same registry
    other = open_registry(uri, tmp_path, "other")
    assert other.current() == "v0002"
    assert other.info("v0002").lineage["parent"] == "v0001"
    assert other.info("v0002").metrics == {"fpr": 0.01}
    assert [v.current for v in other.versions()] == [False, True]
    assert reg.rollback() == "v0001"
    assert other.rollback() == "v0002"  # like `rollout undo`: undoing the undo
    loaded, version = other.load()
    assert version == "v0002" and loaded.feature_names_ == ["a", "b", "c", "d"]
    assert [p["reason"] for p in reg.promotions()] == [
        "register",
        "promote",
        "rollback",
        "rollback",
    ]
    entries = reg.promotions()
    assert all(a["to"] == b["from"] for a, b in itertools.pairwise(entries))
    # prune keeps the newest, the current one and its rollback target
    copy_version(reg, "v0001", "v0003")
    copy_version(reg, "v0001", "v0004")
    assert reg.prune(1) == ["v0003"]
    assert reg.version_names() == ["v0001", "v0002", "v0004"]
    assert not reg.store.list("v0003/").keys() - {"v0003/.claim"}
    assert reg.register(detector) == "v0005"  # a pruned number is never handed out again
    with pytest.raises(RegistryError, match="no version v0003"):
        reg.path_of("v0003")


def test_an_incomplete_or_corrupt_version_is_refused(detector, uri, tmp_path):
    reg = open_registry(uri, tmp_path, create=True)
    reg.register(detector)
    reg.register(detector)
    # v0003: files uploaded, COMPLETE never written (a publisher that died)
    for key in reg.store.list("v0002/"):
        if key != f"v0002/{COMPLETE}":
            reg.store.put("v0003/" + key.partition("/")[2], reg.store.read(key))
    assert reg.version_names() == ["v0001", "v0002"]
    with pytest.raises(RegistryError, match="no version v0003"):
        reg.promote("v0003")
    # a CURRENT written by hand naming it is not followed
    reg.store.put(CURRENT, b"v0003\n")
    with pytest.raises(RegistryError, match="not a complete version"):
        reg.current()
    # CURRENT written by hand naming a complete version: followed, and logged as such
    reg.store.put(CURRENT, b"v0002\n")
    assert reg.current() == "v0002"
    reg.promote("v0001")
    assert [(p["from"], p["to"], p["reason"]) for p in reg.promotions()] == [
        (None, "v0001", "register"),
        ("v0001", "v0002", "outside change"),
        ("v0002", "v0001", "promote"),
    ]
    # v0002's model changed after publication: its checksum no longer matches COMPLETE
    reg.store.put("v0002/model.keras", b"garbage")
    with pytest.raises(RegistryError, match=r"v0002 .* is corrupt: 'model\.keras'"):
        reg.promote("v0002")
    assert reg.current() == "v0001"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".incoming")]


def _polling_provider(uri, cache):
    """The daemon's model provider, polling the registry every 0.2 s on its own thread."""
    from vaeguard.daemon.model_provider import RegistryModelProvider

    provider = RegistryModelProvider(uri, "cpu", 0.2, registry_options={"cache_dir": cache})
    provider.start()
    assert provider.wait_ready(60) is not None
    return provider


def test_two_daemons_follow_one_registry(detector, uri, tmp_path, s3_endpoint, monkeypatch):
    from vaeguard.config import load_settings
    from vaeguard.daemon.app import _provider_for

    reg = open_registry(uri, tmp_path, "publisher", create=True)
    reg.register(detector)
    copy_version(reg, "v0001", "v0002")
    # daemon A: endpoint and credentials from its settings (none in its environment)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    settings = load_settings(
        model={
            "path": uri,
            "device": "cpu",
            "reload_interval_s": 0,
            "cache_dir": str(tmp_path / "a"),
            "s3": {
                "endpoint_url": s3_endpoint,
                "access_key_id": "testing",
                "secret_access_key": "testing",
            },
        }
    )
    assert settings.model.path == uri
    a = _provider_for(settings)
    a.start()
    monkeypatch.undo()
    # daemon B: from the standard AWS environment variables; it polls on its own thread
    b = _polling_provider(uri, tmp_path / "b")

    def b_serves(version):
        wait_for(lambda: b.current().version == version, message=f"daemon B to serve {version}")

    try:
        assert a.wait_ready(60).version == b.current().version == "v0001"
        reg.promote("v0002")
        assert a.refresh()
        b_serves("v0002")
        assert a.current().version == "v0002"
        # a version corrupted in the store is refused; the current one keeps serving
        copy_version(reg, "v0001", "v0003")
        reg.store.put("v0003/model.keras", b"garbage")
        reg._set_current("v0003", "promote")  # as a publisher that skipped the check would
        assert not a.refresh()
        wait_for(lambda: "corrupt" in (b._last_error or ""), message="daemon B to refuse v0003")
        assert a.current().version == b.current().version == "v0002"
        # rolled back: both are already serving the version CURRENT names again
        assert reg.rollback() == "v0002"
        assert not a.refresh() and a._last_error is None
        wait_for(lambda: b._last_error is None, message="daemon B to follow the rollback")
        assert a.current().version == b.current().version == "v0002"
    finally:
        a.close()
        b.close()


def test_a_promotion_racing_a_reload_never_shows_a_half_written_version(detector, uri, tmp_path):
    """The publisher stops after its first file until the reader has looked, then promotes
    while the reader loads in a loop: the reader only ever sees complete versions."""
    publisher = open_registry(uri, tmp_path, "publisher", create=True)
    publisher.register(detector)
    reader = open_registry(uri, tmp_path, "reader")
    half_written, looked = threading.Event(), threading.Event()
    upload = publisher.store.upload

    def slow_upload(local, name):
        upload(local, name)
        if not half_written.is_set():
            half_written.set()
            assert looked.wait(30), "the reader never looked at the half-written version"

    publisher.store.upload = slow_upload
    errors: list[BaseException] = []

    def publish():
        try:
            publisher.register(detector, make_current=True)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    assert half_written.wait(30)
    # v0002 is half uploaded: not a version, not loadable, CURRENT untouched
    assert reader.version_names() == ["v0001"] and reader.current() == "v0001"
    with pytest.raises(RegistryError, match="no version v0002"):
        reader.path_of("v0002")
    looked.set()
    seen = []

    def loads_the_new_version():
        detector_, version = reader.load()
        assert detector_.feature_names_ == ["a", "b", "c", "d"]
        seen.append(version)
        return version == "v0002"

    wait_for(loads_the_new_version, timeout=60, message="the reader to load v0002")
    thread.join(30)
    assert not errors and not thread.is_alive()
    assert set(seen) <= {"v0001", "v0002"} and seen[-1] == "v0002"


def test_two_promoters_racing_both_take_effect_in_order(detector, uri, tmp_path):
    """If-Match on CURRENT: the promoter whose read went stale retries on top of the other."""
    a = open_registry(uri, tmp_path, "a", create=True)
    a.register(detector)
    copy_version(a, "v0001", "v0002")
    copy_version(a, "v0001", "v0003")
    b = open_registry(uri, tmp_path, "b")
    read = a._pointer
    raced = []

    def stale_read():
        pointer = read()
        if not raced:  # between A's read and A's write, B promotes
            raced.append(b.promote("v0003"))
        return pointer

    a._pointer = stale_read
    a._set_current("v0002", "promote")
    assert raced == ["v0003"] and a.current() == "v0002"
    assert [(p["from"], p["to"]) for p in a.promotions()] == [
        (None, "v0001"),
        ("v0001", "v0003"),
        ("v0003", "v0002"),
    ]
    assert a.rollback() == "v0003"


def test_leases_exclude_and_expire(uri, tmp_path):
    a = open_registry(uri, tmp_path, "a", create=True)
    b = open_registry(uri, tmp_path, "b")
    with a.lock("retrain", blocking=False):
        with (
            pytest.raises(LockHeld, match="the retrain lock is held by"),
            b.lock("retrain", blocking=False),
        ):
            pass
        with b.lock("registry", blocking=False):  # another name: independent
            pass
    with b.lock("retrain", blocking=False):  # released
        pass
    # a holder that died: its lease expires and is taken over
    a.store.put(".locks/retrain", json.dumps({"holder": "gone:1", "expires_at": 0}).encode())
    with b.lock("retrain", blocking=False):
        assert json.loads(b.store.read(".locks/retrain"))["holder"] != "gone:1"
    assert b.store.read(".locks/retrain") is None


def test_an_unreachable_store_or_missing_bucket_is_one_registry_error(
    s3_endpoint, tmp_path, monkeypatch
):
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    options = {"endpoint_url": closed, "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(RegistryError, match=r"registry s3://models/prod: registry\.json: "):
        ModelRegistry("s3://models/prod", storage_options=options)
    missing = f"s3://no-such-{uuid.uuid4().hex[:8]}/models"
    with pytest.raises(RegistryError) as info:
        open_registry(missing, tmp_path, create=True)
    assert str(info.value).startswith(f"registry {missing}: ") and "\n" not in str(info.value)


def test_a_held_lease_is_renewed(uri, tmp_path):
    a = open_registry(uri, tmp_path, "a", create=True)
    a.lease_ttl_s = 1.5  # renewed every half second while held

    def expiry():
        return json.loads(a.store.read(".locks/retrain"))["expires_at"]

    with a.lock("retrain"):
        first = expiry()
        wait_for(lambda: expiry() > first, timeout=30, message="the lease to be renewed")
    assert a.store.read(".locks/retrain") is None


def test_registry_credentials_are_secret(monkeypatch):
    from vaeguard.config import load_settings
    from vaeguard.errors import ConfigError

    monkeypatch.setenv("VAEGUARD_MODEL__PATH", "s3://models/prod")
    monkeypatch.setenv("VAEGUARD_MODEL__S3__ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("VAEGUARD_MODEL__S3__SECRET_ACCESS_KEY", "hunter2-secret")
    s = load_settings()
    assert "hunter2-secret" not in str(s.redacted()) and "hunter2-secret" not in repr(s)
    options = s.model.registry_options()["storage_options"]
    assert options == {"key": "AKIDEXAMPLE", "secret": "hunter2-secret"}
    monkeypatch.delenv("VAEGUARD_MODEL__S3__SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match=r"model\.s3"):
        load_settings()  # a key without its secret


def test_the_models_commands_take_an_s3_uri(detector, uri, tmp_path, monkeypatch):
    from vaeguard.cli.main import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    reg = open_registry(uri, tmp_path, create=True)
    reg.register(detector)
    copy_version(reg, "v0001", "v0002")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "promote", "v0002", "--registry", uri])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "list", "--registry", uri, "--json"])
    assert result.exit_code == 0, result.output
    assert reg.current() == "v0002"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(max_size=60).map(lambda t: "s3://" + t)))
def test_any_registry_uri_parses_or_is_refused_in_one_line(text):
    try:
        bucket, prefix = parse_uri(text)
    except RegistryError as exc:
        assert "\n" not in str(exc) and "invalid registry URI" in str(exc)
    else:
        assert text.startswith("s3:/") and bucket and ".." not in prefix.split("/")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60).map(lambda t: "s3://" + t))
def test_model_path_setting_takes_an_s3_uri_or_names_the_field(text):
    from vaeguard.config import load_settings
    from vaeguard.errors import ConfigError

    try:
        settings_ = load_settings(model={"path": text})
    except ConfigError as exc:
        assert "model.path" in str(exc)
    else:
        assert settings_.model.path == "s3://" + "/".join(p for p in parse_uri(text) if p)


def _cached(cache) -> list[str]:
    """The versions in a cache folder (its other entries are temporary)."""
    return sorted(p.name.partition("-")[0] for p in cache.iterdir() if not p.name.startswith("."))


def test_the_cache_keeps_the_current_the_serving_and_a_few_recent_versions(detector, uri, tmp_path):
    """Another user of the daemon's cache folder (retraining, a CLI, another daemon) fetches
    versions one after another: eviction never touches the version the daemon serves (pinned
    with a flock, whatever process holds it) nor the current one, and keeps `cache_keep`
    recent others; the serving one goes once the daemon moved on."""
    from vaeguard.daemon.model_provider import RegistryModelProvider

    publisher = open_registry(uri, tmp_path, "publisher", create=True)
    publisher.register(detector)
    for n in range(2, 7):
        copy_version(publisher, "v0001", f"v000{n}")
    cache = tmp_path / "shared"
    daemon = RegistryModelProvider(uri, "cpu", 0, registry_options={"cache_dir": cache})
    daemon.start()
    try:
        assert daemon.wait_ready(60).version == "v0001"
        publisher.promote("v0002")  # the daemon does not poll: it keeps serving v0001
        other = open_registry(uri, tmp_path, "shared")
        assert other.cache_keep == 2
        for n in range(2, 7):
            other.path_of(f"v000{n}")
        # v0001 serves, v0002 is current, v0006 was just fetched, v0005 and v0004 are recent
        assert _cached(cache) == ["v0001", "v0002", "v0004", "v0005", "v0006"]
        assert daemon.refresh() and daemon.current().version == "v0002"
        other.path_of("v0003")
        assert _cached(cache) == ["v0002", "v0003", "v0005", "v0006"]
        assert other.load("v0002")[0].feature_names_ == ["a", "b", "c", "d"]
    finally:
        daemon.close()


def test_opening_the_registry_removes_what_dead_downloads_left_in_the_cache(uri, tmp_path):
    import fcntl
    import os

    open_registry(uri, tmp_path, "publisher", create=True)
    cache = tmp_path / "cache"
    for name in (".incoming-dead", ".deleting-v0001-0123456789abcdef-1", ".incoming-live"):
        (cache / name / "bundle").mkdir(parents=True)
        (cache / name / "bundle" / "model.keras").write_bytes(b"partial")
        (cache / name / "bundle" / "model.keras").chmod(0o400)
    live = os.open(cache / ".incoming-live", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(live, fcntl.LOCK_EX)  # a download going on in another process
        open_registry(uri, tmp_path)
        assert [p.name for p in cache.iterdir()] == [".incoming-live"]
    finally:
        os.close(live)
    open_registry(uri, tmp_path)  # its process died: swept at the next start
    assert list(cache.iterdir()) == []


def test_a_corrupt_version_is_downloaded_and_refused_once(detector, uri, tmp_path, caplog):
    """The daemon's poll does not download a refused (version, upload) again; a store that is
    only unreachable refuses nothing; a new upload of the name, or another version, is tried."""
    from vaeguard.daemon import metrics
    from vaeguard.daemon.model_provider import RegistryModelProvider

    reg = open_registry(uri, tmp_path, "publisher", create=True)
    reg.register(detector)
    copy_version(reg, "v0001", "v0002")
    reg.store.put("v0002/model.keras", b"garbage")
    daemon = RegistryModelProvider(uri, "cpu", 0, registry_options={"cache_dir": tmp_path / "d"})
    fs = daemon.registry.store.fs
    get_file, fetched, failing = fs.get_file, [], []

    def counting_get_file(remote, local, *args, **kwargs):
        if failing:
            failing.pop()
            raise ConnectionError("the store is away")
        fetched.append(remote.rpartition("/models/prod/")[2])
        return get_file(remote, local, *args, **kwargs)

    fs.get_file = counting_get_file
    daemon.start()
    try:
        assert daemon.wait_ready(60).version == "v0001"
        failures = metrics.MODEL_LOAD_FAILURES._value.get()
        reg._set_current("v0002", "promote")  # as a publisher that skipped the check would
        with caplog.at_level(logging.ERROR, logger="vaeguard.daemon.model"):
            for _ in range(4):
                assert not daemon.refresh()
        first = [f for f in fetched if f.startswith("v0002/")]
        assert fetched.count("v0002/model.keras") == 1, fetched
        assert [r.message for r in caplog.records].count(
            "model refused; the current model keeps serving"
        ) == 1
        assert metrics.MODEL_LOAD_FAILURES._value.get() == failures + 1
        assert daemon.current().version == "v0001"
        # published again under the same name (a new COMPLETE, a new token): tried, loaded
        marker = json.loads(reg.store.read(f"v0002/{COMPLETE}"))
        reg.store.delete([f"v0002/{COMPLETE}"])
        reg.store.put("v0002/model.keras", reg.store.read("v0001/model.keras"))
        marker["token"] = uuid.uuid4().hex
        reg.store.put(f"v0002/{COMPLETE}", json.dumps(marker).encode())
        # ... but the store is away at first: not a refusal, the next poll tries again
        failing.append(True)
        assert not daemon.refresh()
        assert daemon.refresh() and daemon.current().version == "v0002"
        assert len([f for f in fetched if f.startswith("v0002/")]) > len(first)
    finally:
        daemon.close()
