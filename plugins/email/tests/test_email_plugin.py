"""The email sink against a real SMTP server (aiosmtpd) with STARTTLS and authentication,
its certificate issued by a throw-away CA made in the test."""

from __future__ import annotations

import email
import email.policy
import ssl

import pytest

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
