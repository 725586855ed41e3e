"""Secrets stay out of logs and out of plugins that do not need them: redaction of URLs,
headers and secret-named settings, and in sinks of every header value and URL path; Kafka
credentials only for sinks that produce to Kafka."""

from __future__ import annotations

import logging
from urllib.parse import quote

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vaeguard.alerts.layer import build_workers
from vaeguard.alerts.settings import AlertsSettings, redact_sink
from vaeguard.redaction import MASK, redact, redact_text, redact_url

HOSTS = st.sampled_from(["hooks.example.com", "127.0.0.1:8443", "[::1]:9093", "am"])
PATHS = st.sampled_from(["", "/", "/api/v2/alerts", "/hook/x@y", "/a;b"])
USERS = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
#: Passwords as typed into a URL: anything but the delimiters RFC 3986 makes them encode.
RAW = st.text(st.characters(exclude_characters="/?#@"), min_size=4, max_size=30)


@settings(max_examples=500, deadline=None)
@given(user=USERS, password=st.text(min_size=4, max_size=30), host=HOSTS, path=PATHS)
def test_userinfo_is_masked_in_any_url(user, password, host, path):
    encoded = quote(password, safe="")
    url = f"https://{user}:{encoded}@{host}{path}"
    assert redact_url(url) == f"https://{MASK}@{host}{path}"  # all of the userinfo gone


@settings(max_examples=500, deadline=None)
@given(user=USERS, password=RAW, host=HOSTS, path=PATHS, extra=st.text(max_size=20))
def test_a_raw_password_never_survives(user, password, host, path, extra):
    url = f"https://{user}:{password}@{host}{path}"
    for text in (url, f"{url}?{extra}", f"{url}#{extra}"):
        assume(password not in text.replace(f"{user}:{password}@", "", 1))  # only there
        assert password not in redact_text(text)


@settings(max_examples=500, deadline=None)
@given(
    name=st.sampled_from(
        ["token", "access_token", "api_key", "apikey", "key", "secret", "password", "sig",
         "signature", "X-Amz-Signature", "client_secret", "auth"]
    ),
    value=st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.~%", min_size=6, max_size=40),
    before=st.sampled_from(["", "a=1&", "a=1;"]),
    where=st.sampled_from(["?", "#"]),
)  # fmt: skip
def test_secret_query_and_fragment_parameters_are_masked(name, value, before, where):
    url = f"https://example.com/hook{where}{before}{name}={value}&page=2"
    assume(value not in url.replace(f"{name}={value}", "", 1))  # e.g. "exampl": in the host
    out = redact_url(url)
    assert value not in out and f"{name}={MASK}" in out and out.endswith("&page=2")


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=200))
def test_redaction_never_raises_on_any_text(text):
    assert isinstance(redact_text(text), str)
    assert isinstance(redact({"url": text, "headers": {"Authorization": text}}), dict)


def test_plain_urls_and_settings_are_left_alone():
    for url in (
        "https://hooks.example.com/vaeguard",
        "http://127.0.0.1:9093/api/v2/alerts?page=2",
        "https://[::1]:8443/x#top",
    ):
        assert redact_url(url) == url
    data = {"session_timeout_ms": 6000, "ssl_keyfile": "/k.pem", "sasl_plain_username": "svc"}
    assert redact(data) == data


def test_sink_settings_are_logged_without_credentials(sink_plugins):
    alerts = AlertsSettings.from_mapping(
        {
            "sinks": [
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": "https://bot:hunter2@hooks.example.com/in?token=t0k3n&team=sre",
                    "headers": {
                        "X-Team": "sre",
                        "Authorization": "Bearer b3ar3r",
                        "X-Api-Key": "k3y",
                    },
                    "secret_headers": {"X-Other": "0th3r"},
                    "secret": "hm4c",
                },
                {
                    "name": "am",
                    "type": "alertmanager",
                    "url": "http://am-user:am-pass@127.0.0.1:9093",
                    "bearer_token": "am-t0k",
                },
                {
                    "name": "pd",
                    "type": "pagerduty",
                    "routing_key": "R0UT1NG",
                    "client_url": "https://grafana.example.com/d/x?auth_token=gr4f",
                },
            ]
        }
    )
    for dumped in (alerts.redacted(), _daemon_settings(alerts).redacted()):
        text = repr(dumped)
        for secret in ("hunter2", "t0k3n", "b3ar3r", "k3y", "0th3r", "hm4c", "am-pass", "am-t0k", "R0UT1NG", "gr4f"):  # fmt: skip
            assert secret not in text, secret
        # Where a sink points stays visible; its path, query and every header value do not.
        assert "'url': 'https://***@hooks.example.com/***'" in text
        assert "'X-Team': '***'" in text and "'url': 'http://***@127.0.0.1:9093'" in text
    # What is sent is untouched: only the logged copy is masked.
    assert "hunter2" in str(alerts.sinks[0].settings.url)


def _daemon_settings(alerts: AlertsSettings):
    from vaeguard.config import Settings

    return Settings(alerts=alerts)


def test_the_start_up_log_masks_kafka_and_sink_secrets(monkeypatch, caplog):
    from vaeguard.config import load_settings

    monkeypatch.setenv("VAEGUARD_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("VAEGUARD_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("VAEGUARD_KAFKA__SASL_PLAIN_USERNAME", "svc")
    monkeypatch.setenv("VAEGUARD_KAFKA__SASL_PLAIN_PASSWORD", "kafka-pw")
    s = load_settings(
        alerts={"sinks": [{"name": "w", "type": "webhook", "url": "https://u:url-pw@h/x"}]}
    )
    with caplog.at_level(logging.INFO):
        logging.getLogger("vaeguard.daemon").info("starting", extra={"settings": s.redacted()})
    logged = repr([r.__dict__ for r in caplog.records])
    assert "kafka-pw" not in logged and "url-pw" not in logged and "'svc'" in logged


DAEMON_KAFKA = {
    "bootstrap_servers": ["127.0.0.1:9092"],
    "client_id": "vaeguard",
    "security_protocol": "SASL_SSL",
    "request_timeout_ms": 10000,
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "svc",
    "sasl_plain_password": "kafka-pw",
    "ssl_cafile": "/ca.pem",
    "ssl_check_hostname": True,
    "ssl_certfile": "/client.pem",
    "ssl_keyfile": "/client.key",
    "ssl_password": "key-pw",
}


def test_only_the_kafka_sink_gets_the_clusters_credentials(sink_plugins, tmp_path):
    alerts = AlertsSettings.from_mapping(
        {
            "spool_dir": str(tmp_path / "spool"),
            "sinks": [
                {"name": "k", "type": "kafka", "topic": "alerts"},
                {"name": "memo", "type": "acme-memo", "path": str(tmp_path / "memo")},
                {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:1/x"},
            ],
        }
    )
    workers = build_workers(alerts, kafka_config=DAEMON_KAFKA, start=False)
    try:
        kafka_sink = workers["k"].sink
        assert kafka_sink.context.kafka_config == DAEMON_KAFKA  # it produces to the cluster
        assert kafka_sink.config["sasl_plain_password"] == "kafka-pw"
        public = {
            "bootstrap_servers": ["127.0.0.1:9092"],
            "client_id": "vaeguard",
            "security_protocol": "SASL_SSL",
            "request_timeout_ms": 10000,
            "sasl_mechanism": "SCRAM-SHA-512",
            "ssl_cafile": "/ca.pem",
            "ssl_check_hostname": True,
        }
        for name in ("memo", "hook"):  # a third party's plugin, a built-in without Kafka
            assert workers[name].sink.context.kafka_config == public
    finally:
        for w in workers.values():
            w.close(timeout=1.0)


def test_error_messages_quoting_a_url_are_masked():
    from vaeguard.alerts.delivery import describe_error

    error = RuntimeError("Client error '401' for url 'https://bot:pw1@h.example/x?api_key=k2'")
    text = describe_error(error)
    assert "pw1" not in text and "k2" not in text and "h.example/x?api_key=***" in text


def leaves(data) -> list[str]:
    """Every string in JSON-like data, keys included."""
    if isinstance(data, dict):
        return [*data, *(s for v in data.values() for s in leaves(v))]
    if isinstance(data, list | tuple):
        return [s for v in data for s in leaves(v)]
    return [data] if isinstance(data, str) else []


def logged(alerts: AlertsSettings) -> list[list[str]]:
    """What reaches a log: the section's own dump and the daemon's start-up one."""
    return [leaves(alerts.redacted()), leaves(_daemon_settings(alerts).redacted())]


#: RFC 9110 header names and the visible ASCII a header value may hold.
HEADER_NAMES = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=30
)
HEADER_VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=6)
#: What a token in a URL path is made of (RFC 3986 unreserved characters).
TOKENS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=8)
URL_SHAPES = st.sampled_from(
    [
        ("https://hooks.slack.com/services/T000/B000/{}", "https://hooks.slack.com/***"),
        ("https://ops.example.com/api/{}/alerts", "https://ops.example.com/***"),
        ("https://ops.example.com:8443/hook?{}", "https://ops.example.com:8443/***"),
        ("http://127.0.0.1:9093/in#{}", "http://127.0.0.1:9093/***"),
        ("https://bot:{}@ops.example.com/in", "https://***@ops.example.com/***"),
    ]
)


@settings(max_examples=100, deadline=None)
@given(name=HEADER_NAMES, value=HEADER_VALUES)
def test_every_sink_header_value_is_masked_whatever_its_name(sink_plugins, name, value):
    base = {"name": "hook", "type": "webhook", "url": "https://hooks.example.com/in"}
    plain = AlertsSettings.from_mapping({"sinks": [base]})
    assume(value not in f"{name}-2")  # header names are logged, by design
    assume(not any(value in s for dump in logged(plain) for s in dump))  # only in the header
    alerts = AlertsSettings.from_mapping(
        {"sinks": [{**base, "headers": {name: value}, "secret_headers": {f"{name}-2": value}}]}
    )
    for dump in logged(alerts):
        assert not any(value in s for s in dump)
    [sink] = alerts.redacted()["sinks"]
    assert sink["headers"] == {name: MASK}  # the name is kept: it tells what was sent


@settings(max_examples=100, deadline=None)
@given(token=TOKENS, shape=URL_SHAPES)
def test_a_token_anywhere_in_a_sink_url_is_masked(sink_plugins, token, shape):
    template, expected = shape

    def configure(url: str) -> AlertsSettings:
        return AlertsSettings.from_mapping(
            {
                "sinks": [
                    {"name": "hook", "type": "webhook", "url": url},
                    {"name": "am", "type": "alertmanager", "url": url, "generator_url": url},
                    {"name": "pd", "type": "pagerduty", "routing_key": "r" * 32, "client_url": url},
                ]
            }
        )

    plain = configure(template.format("t"))
    assume(not any(token in s for dump in logged(plain) for s in dump))  # only in the URL
    alerts = configure(template.format(token))
    for dump in logged(alerts):
        assert not any(token in s for s in dump)
    hook, am, pd = alerts.redacted()["sinks"]
    assert hook["url"] == am["url"] == am["generator_url"] == pd["client_url"] == expected


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
))  # fmt: skip
def test_sink_redaction_never_raises(data):
    assert isinstance(redact_sink(redact({"x": data})), dict)


def test_header_and_url_examples_from_real_services(sink_plugins):
    alerts = AlertsSettings.from_mapping(
        {
            "sinks": [
                {
                    "name": "azure",
                    "type": "webhook",
                    "url": "https://fn.example.net/api/notify/0123abcd?code=c0de",
                    "headers": {
                        "X-Functions-Key": "fn-k3y",
                        "Ocp-Apim-Subscription-Key": "ap1m-k3y",
                        "X-Custom": "cust0m",
                    },
                },
                {
                    "name": "slack-like",
                    "type": "webhook",
                    "url": "https://hooks.slack.com/services/T000/B000/XXXXsl4ck",
                },
            ]
        }
    )
    for dump in logged(alerts):
        text = " ".join(dump)
        for secret in ("fn-k3y", "ap1m-k3y", "cust0m", "0123abcd", "c0de", "XXXXsl4ck", "T000"):
            assert secret not in text, secret
        assert "https://fn.example.net/***" in dump and "https://hooks.slack.com/***" in dump
    # Only the logged copy is masked: the sink sends the real values.
    assert alerts.sinks[0].settings.headers["X-Custom"] == "cust0m"
