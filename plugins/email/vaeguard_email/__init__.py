"""vaeguard-email: vaeguard alerts as email over SMTP (STARTTLS or implicit TLS, with auth).

Install ``pip install vaeguard-email`` (or ``pip install -e plugins/email``) and configure::

    alerts:
      sinks:
        - name: ops-mail
          type: email
          host: smtp.example.com
          port: 587                 # STARTTLS; use 465 with tls: implicit
          username: alerts@example.com
          password: app-password    # a secret
          from_addr: vaeguard <alerts@example.com>
          to_addrs: [oncall@example.com]

One message per alert, ``multipart/alternative`` with a plain-text and an HTML body, the
subject ``[vaeguard] [FIRING critical] cpu_util on host-7``, and ``Message-ID`` / ``References``
headers derived from the alert id so a mail client threads an episode's firing, repeats and
resolve together. TLS is required by default (``tls: starttls``) and certificates are
verified (``ca_file`` for a private CA). ``tls: none`` is meant for a loopback relay: with a
login to any other host it is a config error unless ``allow_plaintext_login: true``, and
without TLS to a non-loopback host the sink warns at start. SMTP 4xx answers and network
errors are retried; 5xx answers (a rejected sender or recipient, failed authentication) are
permanent.

Every header built from alert data is one line of at most `SUBJECT_MAX` characters (control
characters and line breaks become spaces): an entity key with a newline cannot inject a
header, nor make the message unbuildable and hold up the alerts behind it.
"""

from __future__ import annotations

import html
import ipaddress
import logging
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from pydantic import FilePath, SecretStr, field_validator, model_validator

from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import (
    PermanentSinkError,
    RetryableSinkError,
    Sink,
    SinkSettings,
    UndeliverableAlertError,
)
from vaeguard.alerts.text import has_unsafe, header_value, one_line

__version__ = "0.1.0"

#: Longest Subject (characters): a mail client shows ~80; the rest is in the body anyway.
SUBJECT_MAX = 200
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9.-]")

log = logging.getLogger("vaeguard.alerts.sink.email")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1). No DNS lookup: a name that
    merely resolves to loopback today is not trusted with a password in clear."""
    name = host.strip().rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def plaintext_login_refused(settings: EmailSettings) -> bool:
    """The login would cross the network in clear (``tls: none``, a non-loopback host) and
    ``allow_plaintext_login`` does not say that is wanted."""
    return (
        settings.tls == "none"
        and settings.username is not None
        and settings.password is not None
        and not is_loopback(settings.host)
        and not settings.allow_plaintext_login
    )


class EmailSettings(SinkSettings):
    host: str
    port: int = 587
    #: ``starttls`` (upgrade a plain connection, port 587), ``implicit`` (TLS from the first
    #: byte, port 465) or ``none`` (loopback relays only).
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    #: With ``tls: none`` and a host other than loopback, the login (username + password) is
    #: refused at config load unless this says sending it in clear is intended.
    allow_plaintext_login: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_addr: str
    to_addrs: list[str]
    subject_prefix: str = "[vaeguard]"
    #: CA bundle for a private certificate authority; ``verify_tls: false`` only for tests.
    ca_file: FilePath | None = None
    verify_tls: bool = True

    @model_validator(mode="after")
    def _no_login_in_clear(self) -> EmailSettings:
        if plaintext_login_refused(self):
            raise ValueError(
                f"tls: none would send the SMTP password in clear to {self.host}: use tls: "
                "starttls or implicit (or set allow_plaintext_login: true)"
            )
        return self

    @field_validator("to_addrs")
    @classmethod
    def _recipients(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one recipient")
        return v

    @field_validator("host", "from_addr", "to_addrs", "subject_prefix")
    @classmethod
    def _one_line(cls, v: str | list[str]) -> str | list[str]:
        # These become header lines (and SMTP commands): a line break would inject one.
        for item in [v] if isinstance(v, str) else v:
            if has_unsafe(item):
                raise ValueError("must not contain line breaks or control characters")
        return v


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


def text_body(alert: Alert) -> str:
    line = one_line  # a field's line breaks must not fake other fields
    lines = [line(alert.summary), ""]
    if alert.score is not None:
        lines.append(
            f"Score:     {_fmt(alert.score)} (threshold {_fmt(alert.threshold)}, peak {_fmt(alert.peak_score)})"
        )
    lines += [
        f"Status:    {alert.status} ({line(alert.severity)})",
        f"Stream:    {line(alert.stream)}",
        f"Entity:    {line(alert.entity or '-')}",
        f"First:     {alert.first_seen.isoformat()}",
        f"Last:      {alert.last_seen.isoformat()}",
    ]
    if alert.resolved_at:
        lines.append(f"Resolved:  {alert.resolved_at.isoformat()}")
    if alert.top_features:
        lines += ["", "Top features (observed vs expected):"]
        lines += [
            f"  {line(c.feature)}: {_fmt(c.observed)} vs {_fmt(c.expected)}"
            for c in alert.top_features
        ]
    lines += ["", f"Alert id: {line(alert.id)}", f"Model: {line(alert.model_version or '-')}"]
    return "\n".join(lines) + "\n"


def html_body(alert: Alert) -> str:
    def e(text: str) -> str:
        return html.escape(one_line(text))

    color = {"critical": "#b00020", "major": "#e65100", "warning": "#f9a825"}.get(
        alert.severity, "#555"
    )
    if alert.status == "resolved":
        color = "#2e7d32"
    rows = "".join(
        f"<tr><td>{e(c.feature)}</td><td>{e(_fmt(c.observed))}</td><td>{e(_fmt(c.expected))}</td></tr>"
        for c in alert.top_features
    )
    table = (
        "<table border='1' cellpadding='4' cellspacing='0'><tr><th>feature</th><th>observed</th>"
        f"<th>expected</th></tr>{rows}</table>"
        if rows
        else ""
    )
    return (
        f"<html><body><h2 style='color:{color}'>{e(alert.title)}</h2>"
        f"<p>{e(alert.summary)}</p>{table}"
        f"<p style='color:#777'>alert {e(alert.id)} · model {e(alert.model_version or '-')}</p>"
        "</body></html>"
    )


class EmailSink(Sink):
    """SMTP: one multipart (text + HTML) message per alert, over STARTTLS with auth."""

    Settings = EmailSettings
    max_batch = 1

    def __init__(self, settings: EmailSettings, context):
        super().__init__(settings, context)
        if settings.tls == "none" and not is_loopback(settings.host):
            login = settings.username is not None and settings.password is not None
            log.warning(
                "email sink without TLS to a non-loopback host: alerts"
                + (" and the SMTP password" if login else "")
                + " cross the network in clear",
                extra={"sink": context.name, "host": settings.host},
            )

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if not s.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def message(self, alert: Alert) -> EmailMessage:
        s = self.settings
        msg = EmailMessage()
        msg["Subject"] = header_value(f"{s.subject_prefix} {alert.title}", SUBJECT_MAX)
        msg["From"] = s.from_addr
        msg["To"] = ", ".join(s.to_addrs)
        msg["Date"] = formatdate(localtime=False)
        domain = s.from_addr.rpartition("@")[2].strip("> ") or "vaeguard.local"
        ident = _NOT_TOKEN.sub("_", alert.id)[:128] or "alert"
        msg["Message-ID"] = make_msgid(idstring=f"{ident}.{alert.status}", domain=domain)
        thread = f"<{ident}@{domain}>"
        msg["References"] = thread
        msg["In-Reply-To"] = thread
        msg["X-Vaeguard-Alert-Id"] = header_value(alert.id, 128)
        msg.set_content(text_body(alert))
        msg.add_alternative(html_body(alert), subtype="html")
        return msg

    def send(self, alerts: list[Alert]) -> None:
        s = self.settings
        timeout = self.context.timeout_s
        try:  # before connecting: an alert that cannot become a message is no network matter
            messages = [self.message(alert) for alert in alerts]
        except (ValueError, TypeError) as exc:
            raise UndeliverableAlertError(
                f"cannot build the email: {type(exc).__name__}: {exc}"
            ) from None
        try:
            if s.tls == "implicit":
                smtp = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=timeout, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=timeout)
            with smtp:
                if s.tls == "starttls":
                    smtp.starttls(context=self._tls_context())
                if s.username is not None and s.password is not None:
                    smtp.login(s.username, s.password.get_secret_value())
                for message in messages:
                    smtp.send_message(message)
        except smtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.smtp_code} from {s.host}:{s.port}: {_text(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise RetryableSinkError(detail) from None
            raise PermanentSinkError(detail) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            detail = f"every recipient refused by {s.host}:{s.port} (SMTP {codes})"
            if all(400 <= c < 500 for c in codes):
                raise RetryableSinkError(detail) from None
            raise PermanentSinkError(detail) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentSinkError(f"{s.host}:{s.port}: {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            raise PermanentSinkError(
                f"TLS certificate of {s.host}:{s.port} not trusted: {exc.verify_message}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise RetryableSinkError(
                f"cannot send through {s.host}:{s.port}: {type(exc).__name__}: {exc}"
            ) from None
        except (ValueError, TypeError) as exc:
            # The messages are built: this is the session (e.g. a password smtplib cannot
            # encode), the same for every alert. Parked, not dead-lettered.
            raise PermanentSinkError(
                f"cannot send through {s.host}:{s.port}: {type(exc).__name__}"
            ) from None


def _text(raw: bytes | str) -> str:
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))[:200]
