"""`webhook`: each alert's JSON POSTed to a URL, signed with HMAC-SHA256.

Headers: ``X-Vaeguard-Timestamp: <unix seconds>`` and ``X-Vaeguard-Signature: sha256=<hex>``
where the hex is HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed by the configured secret. A
receiver recomputes it over the raw body (`verify_signature`) and rejects old timestamps, so a
captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

from pydantic import Field, FilePath, HttpUrl, SecretStr, field_validator

from vaeguard.alerts.http import HttpPoster, origin
from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import Sink, SinkSettings
from vaeguard.alerts.text import has_unsafe, header_value

TIMESTAMP_HEADER = "X-Vaeguard-Timestamp"
SIGNATURE_HEADER = "X-Vaeguard-Signature"
ALERT_ID_HEADER = "X-Vaeguard-Alert-Id"
#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: A timestamp header as `send` writes it: unix seconds, ASCII digits (a bound keeps int()
#: and the age arithmetic finite).
_TIMESTAMP = re.compile(rb"[0-9]{1,18}")


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC of "<timestamp>.<body>">``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: str | bytes,
    body: bytes,
    signature: str | bytes,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Receiver side: the signature matches and the timestamp is within ``tolerance_s``.

    Its arguments come off the wire, so anything malformed (a missing or non-ASCII header, a
    timestamp that is no plain number, a ``str`` body, a NaN clock) is False, never an
    exception: a receiver cannot be crashed by a crafted request, and fails closed.
    """
    try:
        ts = _ascii(timestamp)
        sig = _ascii(signature)
        if ts is None or sig is None or not _TIMESTAMP.fullmatch(ts):
            return False
        if not isinstance(secret, str | bytes) or not isinstance(body, bytes | bytearray):
            return False
        clock = time.time() if now is None else float(now)
        if not abs(clock - int(ts)) <= float(tolerance_s):  # also False for a NaN
            return False
        key = secret.encode() if isinstance(secret, str) else secret
        expected = hmac.new(key, ts + b"." + bytes(body), hashlib.sha256).hexdigest()
        return hmac.compare_digest(b"sha256=" + expected.encode(), sig)
    except (TypeError, ValueError, OverflowError):  # a float() of junk, a lone surrogate
        return False


def _ascii(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode() if value.isascii() else None
    return bytes(value) if isinstance(value, bytes | bytearray) else None


class WebhookSettings(SinkSettings):
    url: HttpUrl
    #: HMAC key of the signature header; without it requests are unsigned.
    secret: SecretStr | None = None
    #: Extra headers sent with every request.
    headers: dict[str, str] = Field(default_factory=dict)
    #: Headers whose values are secrets (e.g. ``Authorization``): masked in logs and dumps.
    secret_headers: dict[str, SecretStr] = Field(default_factory=dict)
    verify_tls: bool = True
    #: CA bundle for a private certificate authority.
    ca_file: FilePath | None = None

    @field_validator("headers", "secret_headers")
    @classmethod
    def _headers(cls, v: dict[str, object]) -> dict[str, object]:
        # Checked here, not at the first send: a bad header would fail every request alike.
        for name, value in v.items():
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if has_unsafe(text) or not text.isascii():
                raise ValueError(
                    f"the value of {name} must be ASCII without line breaks or control characters"
                )
        return v


class WebhookSink(Sink):
    """HTTP POST of each alert's JSON, HMAC-signed; 5xx, 408, 429 and network errors retry."""

    Settings = WebhookSettings
    max_batch = 1

    def __init__(self, settings: WebhookSettings, context):
        super().__init__(settings, context)
        headers = {"Content-Type": "application/json", **settings.headers}
        headers.update({k: v.get_secret_value() for k, v in settings.secret_headers.items()})
        self.url = str(settings.url)
        self.http = HttpPoster(
            context.timeout_s,
            verify_tls=settings.verify_tls,
            ca_file=settings.ca_file,
            headers=headers,
        )

    def send(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            body = alert.json_bytes()
            timestamp = str(int(time.time()))
            alert_id = header_value(alert.id, 128, ascii_only=True)
            headers = {TIMESTAMP_HEADER: timestamp, ALERT_ID_HEADER: alert_id}
            if self.settings.secret is not None:
                headers[SIGNATURE_HEADER] = sign(
                    self.settings.secret.get_secret_value(), timestamp, body
                )
            self.http.post(self.url, content=body, headers=headers)

    def close(self) -> None:
        self.http.close()

    def health(self) -> dict[str, Any]:
        return {"target": origin(self.url)}
