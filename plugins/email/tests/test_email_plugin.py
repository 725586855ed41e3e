"""The email sink against a real SMTP server (aiosmtpd) with STARTTLS and authentication,
its certificate issued by a throw-away CA made in the test."""

from __future__ import annotations

import email
import email.policy
import logging
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaeguard.alerts.spool import Spool
from vaeguard.alerts.testing import free_port, layer_for, make_record


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            (envelope, email.message_from_bytes(envelope.content, policy=email.policy.default))
        )
        return "250 OK"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    import trustme

    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.fixture
def smtp(ca):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    authority, _ = ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"alerts",
            b"smtp-pass",
        )
        return AuthResult(success=ok, handled=False)

    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        auth_require_tls=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def sink(port: int, ca_file, **extra) -> dict:
    return {
        "name": "ops-mail",
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "username": "alerts",
        "password": "smtp-pass",
        "from_addr": "vaeguard <alerts@example.com>",
        "to_addrs": ["oncall@example.com", "sre@example.com"],
        "ca_file": str(ca_file),
        **extra,
    }


def test_starttls_auth_and_text_plus_html(smtp, ca, tmp_path):
    controller, inbox = smtp
    with layer_for(
        [sink(controller.port, ca[1])], tmp_path / "spool", resolve_after_records=1
    ) as layer:
        layer.process([make_record("db-1", True)])
        layer.process([make_record("db-1", False)])
    (envelope, firing), (_, resolved) = inbox.messages
    assert envelope.mail_from == "alerts@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "sre@example.com"]
    assert firing["Subject"] == "[vaeguard] [FIRING critical] cpu_util on db-1"
    assert resolved["Subject"] == "[vaeguard] [RESOLVED critical] cpu_util on db-1"
    assert firing.get_content_type() == "multipart/alternative"
    text = firing.get_body(("plain",)).get_content()
    html = firing.get_body(("html",)).get_content()
    assert "cpu_util anomalous on db-1: score 41.2 > 12.0 (critical)" in text
    assert "cpu_user: 97 vs 41" in text
    assert "<td>cpu_user</td><td>97</td><td>41</td>" in html
    assert firing["X-Vaeguard-Alert-Id"] == resolved["X-Vaeguard-Alert-Id"]
    assert firing["References"] == resolved["References"]  # threaded per episode


def test_wrong_password_is_a_permanent_failure(smtp, ca, tmp_path):
    controller, inbox = smtp
    with layer_for([sink(controller.port, ca[1], password="nope")], tmp_path / "spool") as layer:
        layer.process([make_record("h1", True)])
    assert not inbox.messages
    [parked] = Spool(tmp_path / "spool", "ops-mail").pending()
    assert parked.reason.startswith("rejected: PermanentSinkError: SMTP 535")
    assert "nope" not in parked.reason


def test_untrusted_certificate_is_refused(smtp, tmp_path):
    controller, inbox = smtp
    config = sink(controller.port, None)
    del config["ca_file"]
    with layer_for([config], tmp_path / "spool") as layer:
        layer.process([make_record("h1", True)])
    assert not inbox.messages
    [parked] = Spool(tmp_path / "spool", "ops-mail").pending()
    assert "not trusted" in parked.reason


HEADER_LIMIT = 998  # RFC 5322: a header line's limit, folding included


def test_a_newline_in_an_entity_key_injects_no_header_and_blocks_nothing(smtp, ca, tmp_path):
    controller, inbox = smtp
    evil = "db-1\r\nBcc: attacker@example.com\r\nX-Evil: 1"
    with layer_for([sink(controller.port, ca[1])], tmp_path / "spool") as layer:
        layer.process([make_record(evil, True), make_record("db-2", True)])
    (envelope, first), (_, second) = inbox.messages
    assert envelope.rcpt_tos == ["oncall@example.com", "sre@example.com"]
    assert first["Bcc"] is None and first["X-Evil"] is None
    assert first["Subject"] == (
        "[vaeguard] [FIRING critical] cpu_util on db-1 Bcc: attacker@example.com X-Evil: 1"
    )
    text = first.get_body(("plain",)).get_content()
    assert "Entity:    db-1 Bcc: attacker@example.com X-Evil: 1" in text.splitlines()
    assert second["Subject"].endswith("cpu_util on db-2")
    spool = Spool(tmp_path / "spool", "ops-mail")
    assert not spool.pending() and not spool.dead()


def test_an_alert_that_cannot_become_an_email_is_dead_lettered(smtp, ca, tmp_path, monkeypatch):
    """Whatever still makes `email` raise dead-letters that one alert; the next are sent."""
    from vaeguard_email import EmailSink

    build = EmailSink.message

    def message(self, alert):
        if alert.entity == "bad":
            raise ValueError("Header values may not contain linefeed or carriage return")
        return build(self, alert)

    monkeypatch.setattr(EmailSink, "message", message)
    controller, inbox = smtp
    with layer_for([sink(controller.port, ca[1])], tmp_path / "spool") as layer:
        layer.process([make_record("bad", True), make_record("good", True)])
        layer.process([make_record("later", True)])
        health = layer.health()["sinks"]["ops-mail"]
    assert [m["Subject"].rsplit(" ", 1)[1] for _, m in inbox.messages] == ["good", "later"]
    spool = Spool(tmp_path / "spool", "ops-mail")
    [dead] = spool.dead()
    assert not spool.pending() and dead.alert.entity == "bad"
    assert dead.reason.startswith("UndeliverableAlertError: cannot build the email: ValueError")
    assert health["dead_lettered"] == 1 and health["spool_backlog"] == 0


def test_header_settings_with_line_breaks_are_config_errors(ca):
    from vaeguard.alerts.settings import AlertsSettings
    from vaeguard.errors import ConfigError

    for field, value in (
        ("subject_prefix", "[x]\r\nBcc: a@b"),
        ("from_addr", "a@b\nBcc: c@d"),
        ("to_addrs", ["ok@example.com", "x@y\r\nBcc: z@w"]),
    ):
        with pytest.raises(ConfigError, match=rf"sinks\[ops-mail\]\.{field}.*line breaks"):
            AlertsSettings.from_mapping({"sinks": [sink(25, ca[1], **{field: value})]})


#: Any text, leaning on what breaks headers: line breaks, controls, surrogates, format chars.
NASTY = st.one_of(
    st.characters(),
    st.characters(categories=["Cc", "Cs", "Cf", "Zl", "Zp"]),
    st.sampled_from('\r\n\x00\x0b\x85\u2028:<>@,;"'),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entity=st.text(NASTY, max_size=300),
    stream=st.text(NASTY, max_size=60),
    severity=st.text(NASTY, min_size=1, max_size=20),
    alert_id=st.text(NASTY, min_size=1, max_size=80),
    feature=st.text(NASTY, max_size=40),
)
def test_any_alert_text_makes_a_well_formed_message(entity, stream, severity, alert_id, feature):
    from vaeguard_email import SUBJECT_MAX, EmailSettings, EmailSink

    from vaeguard.alerts.model import FeatureContribution
    from vaeguard.alerts.sink import SinkContext
    from vaeguard.alerts.testing import sample_alert

    alert = sample_alert(
        entity,
        stream=stream,
        severity=severity,
        id=alert_id,
        summary=f"{stream} anomalous on {entity}",
        top_features=[FeatureContribution(feature=feature, observed=1.0, expected=0.0)],
    )
    settings_ = EmailSettings(host="127.0.0.1", from_addr="a@example.com", to_addrs=["b@x.org"])
    message = EmailSink(settings_, SinkContext("m")).message(alert)
    raw = message.as_bytes()  # what smtplib sends: must not raise
    for name, value in message.items():
        assert "\r" not in str(value) and "\n" not in str(value), name
    assert len(message["Subject"]) <= SUBJECT_MAX
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert sorted(parsed.keys()) == sorted(message.keys())  # no header smuggled in
    for line in raw.split(b"\r\n" if b"\r\n" in raw else b"\n"):
        assert len(line) <= HEADER_LIMIT


# -- a login in clear ---------------------------------------------------------------------------
# Decided from the settings alone: these tests never connect, least of all to a remote host.


def plain(host: str, **extra) -> dict:
    return {**sink(25, None, host=host, tls="none", **extra), "ca_file": None}


def own(entry: dict) -> dict:
    """A sink entry's own settings (what `EmailSettings` validates)."""
    return {k: v for k, v in entry.items() if k not in ("name", "type")}


@pytest.mark.parametrize(
    "host", ["smtp.example.com", "10.0.0.5", "192.0.2.7", "::2", "localhost.example"]
)
def test_a_login_in_clear_to_a_remote_host_is_refused_at_config_load(host):
    from vaeguard.alerts.settings import AlertsSettings
    from vaeguard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sinks\[ops-mail\]: tls: none would send the SMTP password in clear") as err:  # fmt: skip
        AlertsSettings.from_mapping({"sinks": [plain(host)]})
    assert "smtp-pass" not in str(err.value) and "allow_plaintext_login" in str(err.value)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST."]
)
def test_loopback_relays_may_take_a_login_without_tls_quietly(host, caplog):
    from vaeguard_email import EmailSettings, EmailSink

    from vaeguard.alerts.sink import SinkContext

    with caplog.at_level(logging.WARNING):
        EmailSink(EmailSettings.model_validate(own(plain(host))), SinkContext("ops-mail"))
    assert not caplog.records


def test_an_allowed_login_in_clear_is_warned_about_at_start(caplog):
    from vaeguard_email import EmailSettings, EmailSink

    from vaeguard.alerts.sink import SinkContext

    allowed = EmailSettings.model_validate(
        own(plain("smtp.example.com", allow_plaintext_login=True))
    )
    anonymous = EmailSettings.model_validate(
        own({**plain("smtp.example.com"), "username": None, "password": None})
    )
    with caplog.at_level(logging.WARNING):
        EmailSink(allowed, SinkContext("ops-mail"))
        EmailSink(anonymous, SinkContext("relay"))
    first, second = caplog.records
    assert (first.sink, second.sink) == ("ops-mail", "relay")
    assert "the SMTP password cross the network in clear" in first.getMessage()
    assert "password" not in second.getMessage() and "in clear" in second.getMessage()
    assert "smtp-pass" not in caplog.text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.ip_addresses().map(str)))
def test_is_loopback_takes_any_host(host):
    import ipaddress

    from vaeguard_email import is_loopback

    result = is_loopback(host)
    assert result is True or result is False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    assert result == address.is_loopback
