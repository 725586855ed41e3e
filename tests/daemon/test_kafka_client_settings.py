"""kafka-python client settings: the passthrough maps (kafka.client / consumer / producer),
SASL mechanisms, compression, and a daemon whose broker is away (one line per retry, /readyz
not ready with the reason, ready once the broker is up)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.net.sasl.oauth import AbstractTokenProvider

from tests.conftest import wait_for
from tests.daemon.conftest import Collector, daemon_env, unique
from vaeguard.config import Settings, load_settings
from vaeguard.errors import ConfigError
from vaeguard.kafka_options import KAFKA_OWNED


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("VAEGUARD_"):
            monkeypatch.delenv(name)


def _codec_missing(name: str) -> bool:
    import kafka.codec

    return not getattr(kafka.codec, f"has_{name}")()


# -- the passthrough maps -----------------------------------------------------------------------


def test_each_map_reaches_its_clients_over_vaeguards_defaults():
    s = load_settings(
        kafka={
            "client": {"metadata_max_age_ms": 60000, "bootstrap_timeout_ms": 2000},
            "consumer": {"fetch_max_bytes": "2097152", "isolation_level": "read_committed"},
            "producer": {"compression_type": "gzip", "linger_ms": 20},
        }
    )
    consumer = s.kafka.consumer_config(bootstrap_timeout_ms=5000, group_id="g")
    producer = s.kafka.producer_config(linger_ms=5, acks="all")
    assert (
        consumer["fetch_max_bytes"] == 2097152 and consumer["isolation_level"] == "read_committed"
    )
    assert consumer["metadata_max_age_ms"] == 60000 and consumer["group_id"] == "g"
    # A user's setting wins over vaeguard's tunable default; a client map reaches both kinds.
    assert consumer["bootstrap_timeout_ms"] == 2000
    assert producer["linger_ms"] == 20 and producer["compression_type"] == "gzip"
    assert producer["metadata_max_age_ms"] == 60000 and producer["acks"] == "all"
    assert "fetch_max_bytes" not in producer and "compression_type" not in consumer


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        (
            "consumer",
            {"fetch_max_byte": 1},
            "kafka.consumer.fetch_max_byte: not a kafka-python consumer setting; "
            "did you mean fetch_max_bytes?",
        ),
        ("producer", {"fetch_max_bytes": 1}, "kafka.producer.fetch_max_bytes: a consumer-only"),
        ("client", {"compression_type": "gzip"}, "put it under kafka.producer"),
        ("client", {"group_id": "x"}, "kafka.client.group_id: has a setting of its own"),
        ("consumer", {"enable_auto_commit": True}, "kafka.consumer.enable_auto_commit: set by"),
        ("producer", {"acks": 1}, "kafka.producer.acks: set by vaeguard: offsets are committed"),
        ("producer", {"value_serializer": "json"}, "raw bytes itself"),
        ("client", {"sasl_oauth_token_provider": "x"}, "set kafka.oauth"),
        ("consumer", {"fetch_max_bytes": -1}, "kafka.consumer.fetch_max_bytes: must be a whole"),
        ("consumer", {"check_crcs": "perhaps"}, "kafka.consumer.check_crcs: must be true or false"),
        ("consumer", {"isolation_level": "dirty"}, "is not one of read_uncommitted"),
        ("client", {"selector": "epoll"}, "kafka.client.selector: takes a Python object"),
        ("client", {"api_version": "three"}, "kafka.client.api_version: must be a broker version"),
        ("consumer", {"partition_assignment_strategy": ["best"]}, "must list assignors by name"),
        ("consumer", {"connections_max_idle_ms": 5000}, "must exceed request_timeout_ms"),
        ("producer", [1, 2], "kafka.producer"),
    ],
)
def test_a_bad_passthrough_setting_is_one_line_naming_it(section, values, expected):
    with pytest.raises(ConfigError) as err:
        load_settings(kafka={section: values})
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_the_passthrough_maps_come_from_the_environment_too(monkeypatch):
    monkeypatch.setenv("VAEGUARD_KAFKA__CONSUMER__FETCH_MAX_BYTES", "1048576")
    monkeypatch.setenv("VAEGUARD_KAFKA__PRODUCER__COMPRESSION_TYPE", "gzip")
    monkeypatch.setenv("VAEGUARD_KAFKA__CLIENT__METADATA_MAX_AGE_MS", "60000")
    monkeypatch.setenv("VAEGUARD_KAFKA__CONSUMER__PARTITION_ASSIGNMENT_STRATEGY", "sticky,range")
    s = load_settings()
    assert s.kafka.consumer["fetch_max_bytes"] == 1048576
    assert s.kafka.producer == {"compression_type": "gzip"}
    assert s.kafka.client == {"metadata_max_age_ms": 60000}
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    strategy = s.kafka.consumer_config()["partition_assignment_strategy"]
    assert strategy[1] is RangePartitionAssignor and len(strategy) == 2
    monkeypatch.setenv("VAEGUARD_KAFKA__CONSUMER__FETCH_MAX_BYTE", "1")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(
        "invalid setting kafka.consumer.fetch_max_byte (from environment variable "
        "VAEGUARD_KAFKA__CONSUMER__FETCH_MAX_BYTE): not a kafka-python consumer setting"
    )


def test_a_bad_passthrough_setting_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "vaeguard.yaml"
    path.write_text("kafka:\n  producer:\n    linger_ms: soon\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"invalid setting kafka.producer.linger_ms (in {path}): must")


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_a_compression_codec_without_its_library_is_refused_at_start(codec):
    if not _codec_missing(codec):
        pytest.skip(f"{codec}'s library is installed here")
    with pytest.raises(ConfigError, match=rf"kafka.producer.compression_type: {codec} .*pip"):
        load_settings(kafka={"producer": {"compression_type": codec}})


def test_secrets_in_the_passthrough_and_oauth_stay_secret(monkeypatch):
    monkeypatch.setenv("VAEGUARD_KAFKA__CLIENT__PROXY_URL", "http://u:hunter2@proxy:3128")
    monkeypatch.setenv("VAEGUARD_KAFKA__OAUTH__TOKEN_ENDPOINT", "http://127.0.0.1:1/token")
    monkeypatch.setenv("VAEGUARD_KAFKA__OAUTH__CLIENT_ID", "svc")
    monkeypatch.setenv("VAEGUARD_KAFKA__OAUTH__CLIENT_SECRET", "s3cr3t-value")
    s = load_settings()
    for text in (repr(s), str(s), json.dumps(s.redacted()), repr(s.kafka.client)):
        assert "hunter2" not in text and "s3cr3t-value" not in text
    assert s.kafka.client_config()["proxy_url"] == "http://u:hunter2@proxy:3128"


# -- SASL mechanisms --------------------------------------------------------------------------


def test_oauthbearer_needs_a_token_source():
    with pytest.raises(ConfigError, match=r"kafka.oauth: sasl_mechanism OAUTHBEARER needs"):
        load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"})
    with pytest.raises(ConfigError, match=r"kafka.oauth.client_secret: token_endpoint needs it"):
        load_settings(
            kafka={"oauth": {"token_endpoint": "https://idp.example/token", "client_id": "x"}}
        )
    with pytest.raises(ConfigError, match=r"kafka.oauth.provider: cannot import no_such_mod"):
        load_settings(kafka={"oauth": {"provider": "no_such_mod:Tokens"}})


class _TokenEndpoint(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).requests.append(
            {"form": urllib.parse.parse_qs(body), "auth": self.headers["Authorization"]}
        )
        payload = json.dumps({"access_token": "tok-1", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_oauthbearer_fetches_a_client_credentials_token_once_and_reuses_it():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _TokenEndpoint.requests = []
    try:
        s = load_settings(
            kafka={
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "OAUTHBEARER",
                "oauth": {
                    "token_endpoint": f"http://127.0.0.1:{server.server_port}/token",
                    "client_id": "vaeguard",
                    "client_secret": "pw",
                    "scope": "kafka",
                    "extensions": {"logicalCluster": "lkc-1"},
                },
            }
        )
        consumer, producer = s.kafka.consumer_config(), s.kafka.producer_config()
        provider = consumer["sasl_oauth_token_provider"]
        assert isinstance(provider, AbstractTokenProvider)
        assert producer["sasl_oauth_token_provider"] is provider  # one token for every client
        assert provider.token() == "tok-1" and provider.token() == "tok-1"
        assert provider.extensions() == {"logicalCluster": "lkc-1"}
        assert len(_TokenEndpoint.requests) == 1
        request = _TokenEndpoint.requests[0]
        assert request["form"] == {"grant_type": ["client_credentials"], "scope": ["kafka"]}
        assert request["auth"] == "Basic dmFlZ3VhcmQ6cHc="  # vaeguard:pw
        assert "pw" not in repr(provider) and "sasl_plain_password" not in consumer
    finally:
        server.shutdown()
        server.server_close()


class StaticTokens(AbstractTokenProvider):
    """A token provider entry point (``kafka.oauth.provider``)."""

    def token(self):
        return "static"


def test_oauthbearer_takes_a_provider_entry_point():
    s = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "oauth": {"provider": f"{__name__}:StaticTokens"},
        }
    )
    assert s.kafka.client_config()["sasl_oauth_token_provider"].token() == "static"
    s = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "oauth": {"provider": "json:dumps"},
        }
    )
    with pytest.raises(ConfigError, match=r"kafka.oauth.provider: json:dumps failed: TypeError"):
        s.kafka.client_config()
    s = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "oauth": {"provider": "json:JSONDecoder"},
        }
    )
    with pytest.raises(ConfigError, match=r"json:JSONDecoder gave a JSONDecoder, not a kafka"):
        s.kafka.client_config()


def test_gssapi_without_its_library_is_a_clear_config_error():
    import importlib.util

    if importlib.util.find_spec("gssapi") is not None:
        pytest.skip("gssapi is installed here")
    with pytest.raises(ConfigError, match=r"kafka.sasl_mechanism: GSSAPI .*pip install gssapi"):
        load_settings(kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"})


def test_aws_msk_iam_needs_sasl_ssl():
    pytest.importorskip("botocore")
    with pytest.raises(ConfigError, match=r"kafka.security_protocol: sasl_mechanism AWS_MSK_IAM"):
        load_settings(
            kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "AWS_MSK_IAM"}
        )
    s = load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "AWS_MSK_IAM"})
    config = s.kafka.client_config()
    assert config["sasl_mechanism"] == "AWS_MSK_IAM" and "sasl_plain_password" not in config


# -- arbitrary input --------------------------------------------------------------------------

_KEYS = st.one_of(
    st.sampled_from(
        [
            *sorted(set(Settings().kafka.client_config()) | set(KAFKA_OWNED)),
            *("fetch_max_bytes", "compression_type", "linger_ms", "api_version", "retries"),
            *("partition_assignment_strategy", "proxy_url", "ssl_crlfile", "socket_options"),
            *("isolation_level", "check_crcs", "client_rack", "fetch.max.bytes", "selector"),
        ]
    ),
    st.text(max_size=20),
)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["gzip", "zstd", "sticky", "3.6", "1048576", "true", "read_committed"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(["client", "consumer", "producer"]),
    values=st.dictionaries(_KEYS, _VALUES, max_size=4) | _VALUES,
)
def test_any_passthrough_map_loads_or_is_refused_naming_it(section, values):
    try:
        s = load_settings(kafka={section: values})
    except ConfigError as exc:
        assert f"kafka.{section}" in str(exc) and "\n" not in str(exc)
        return
    # What loads is what kafka-python takes: known keys, none of vaeguard's own.
    config = s.kafka.consumer_config() if section != "producer" else s.kafka.producer_config()
    assert not set(getattr(s.kafka, section)) & set(KAFKA_OWNED)
    assert set(getattr(s.kafka, section)) <= set(config)


# -- every client vaeguard opens ----------------------------------------------------------------


def test_the_daemons_clients_take_the_passthrough_settings(broker):
    """The score producer and the group consumer are built with kafka.producer / consumer."""
    from kafka import KafkaConsumer

    from vaeguard.daemon.pipeline import Pipeline, Shutdown

    s = load_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "producer": {"compression_type": "gzip", "linger_ms": 25},
            "consumer": {"fetch_max_bytes": 2_000_000},
        }
    )
    pipeline = Pipeline(s, provider=None, alert_layer=None, shutdown=Shutdown(grace_s=5))
    producer = pipeline._new_producer()
    consumer = KafkaConsumer(**s.kafka.consumer_config(**pipeline.consumer_options()))
    try:
        assert producer.config["compression_type"] == "gzip" and producer.config["linger_ms"] == 25
        assert producer.config["acks"] in ("all", -1)
        assert consumer.config["fetch_max_bytes"] == 2_000_000
        assert consumer.config["enable_auto_commit"] is False
        topic = unique("gzip")
        producer.send(topic, b'{"a": 1}').get(timeout=30)
        collector = Collector(broker.bootstrap_servers, topic)
        assert collector.wait_count(1, timeout=30, message="the gzip record")[0].value == (
            b'{"a": 1}'
        )
    finally:
        producer.close(timeout=5)
        consumer.close()


def test_the_kafka_alert_sink_takes_the_daemons_full_client_settings(broker, tmp_path):
    """The daemon's client options carry request_timeout_ms (and kafka.client's settings):
    the sink's own timing must replace them, not collide with them."""
    from vaeguard.alerts.layer import build_workers
    from vaeguard.alerts.settings import AlertsSettings

    topic = unique("alerts")
    s = load_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "client": {"metadata_max_age_ms": 60000},
        }
    )
    alerts = AlertsSettings.from_mapping(
        {"sinks": [{"name": "k", "type": "kafka", "topic": topic}], "spool_dir": str(tmp_path)}
    )
    workers = build_workers(alerts, kafka_config=s.kafka.client_config(), start=False)
    sink = workers["k"].sink
    try:
        producer = sink._producer()
        assert producer.config["metadata_max_age_ms"] == 60000
        assert producer.config["request_timeout_ms"] == max(
            int(sink.context.timeout_s * 1000), 1000
        )
    finally:
        sink.close()


def test_replay_takes_the_kafka_settings_from_the_environment(monkeypatch):
    from vaeguard.apps.replay import replay

    monkeypatch.setenv("VAEGUARD_KAFKA__PRODUCER__LINGER_MS", "later")
    with pytest.raises(ConfigError, match=r"kafka.producer.linger_ms"):
        replay([{"a": 1}], "t", "127.0.0.1:9")


# -- a broker that is away ------------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_broker_is_one_line_per_retry_and_not_ready_until_it_is_up(
    daemons, small_bundle
):
    from vaeguard.broker import EmbeddedBroker

    port = _closed_port()
    group = unique("away")
    env = daemon_env(f"127.0.0.1:{port}", small_bundle, [f"{group}.in"], group)
    # Each connection attempt gives up after 1 s (kafka.client passes it to both clients).
    env["VAEGUARD_KAFKA__CLIENT__BOOTSTRAP_TIMEOUT_MS"] = "1000"
    d = daemons("away", env).start()

    def retries() -> list[dict]:
        return [line for line in d.log_lines() if "unreachable" in str(line.get("msg"))]

    wait_for(lambda: len(retries()) >= 3, timeout=60, message="three connection retries logged")
    code, body = d.readyz()
    assert code == 503 and body["broker_reachable"] is False
    assert f"Kafka broker 127.0.0.1:{port} unreachable" in body["reason"]
    lines = retries()
    assert [line["attempt"] for line in lines] == list(range(1, len(lines) + 1))
    assert all("retrying in" in line["msg"] and line.get("cause") for line in lines)
    # The refused connection is named where kafka-python got as far as trying it within the
    # attempt's second (under load an attempt can end first: its cause is then the client's
    # own NoBrokersAvailable).
    assert any("ECONNREFUSED" in line["msg"] for line in lines), lines
    # kafka-python's own lines (several per attempt before) are kept out.
    assert not [line for line in d.log_lines() if str(line.get("logger", "")).startswith("kafka")]

    with EmbeddedBroker(port=port):
        d.wait_ready(timeout=60)
        code, body = d.readyz()
        assert code == 200 and body["reason"] is None

    # The broker goes away while the daemon runs: one line, and /readyz says why.
    def lost() -> list[dict]:
        return [line for line in d.log_lines() if "not answering" in str(line.get("msg"))]

    wait_for(lambda: lost(), timeout=60, message="the lost broker logged")
    code, body = d.readyz()
    assert code == 503 and "not answering: KafkaConnectionError" in body["reason"]
    assert len(lost()) == 1
    assert not [line for line in d.log_lines() if str(line.get("logger", "")).startswith("kafka")]


def test_a_supervisors_readiness_says_which_worker_is_not_ready(tmp_path, monkeypatch):
    from vaeguard.daemon.supervisor import Supervisor

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    supervisor = Supervisor(load_settings(), None, 2)
    ready, details = supervisor.readiness()
    assert not ready and details["reason"] == "worker 0 not running; worker 1 not running"
    supervisor.stopping.set()
    assert supervisor.readiness()[1]["reason"].startswith("stopping; worker 0")
