"""HTTP for sinks: one pooled client, status codes mapped to retryable / permanent failures.

Error messages name only the target's origin (scheme, host, port): webhook URLs often carry
tokens (Slack's do), and an error message ends up in logs.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from vaeguard._version import __version__
from vaeguard.alerts.sink import PermanentSinkError, RetryableSinkError, UndeliverableAlertError

USER_AGENT = f"vaeguard/{__version__}"

# httpx logs every request's full URL at INFO, and a webhook URL can be a credential (Slack's
# is): keep its loggers to warnings and up, whatever the root level.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)
#: Statuses worth another attempt: timeouts, "too early", rate limits and server errors.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: Statuses that reject this request's payload (bad request, too large, unprocessable): the
#: alert is dead-lettered. Other 4xx (401, 403, 404, ...) point at the sink's settings.
UNDELIVERABLE_STATUSES = frozenset({400, 413, 422})


def origin(url: str) -> str:
    """``https://hooks.example.com:443``: enough to say where, never a path or query token."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_status(response: httpx.Response, where: str) -> None:
    """Raise the right `SinkError` for a non-2xx response."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = response.text[:200].strip().replace("\n", " ")
    detail = f"HTTP {status} from {where}" + (f": {text}" if text else "")
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableSinkError(detail, retry_after=retry_after(response))
    if status in UNDELIVERABLE_STATUSES:
        raise UndeliverableAlertError(detail)
    raise PermanentSinkError(detail)


class HttpPoster:
    """A small wrapper of `httpx.Client` for sinks that POST."""

    def __init__(
        self,
        timeout_s: float,
        *,
        verify_tls: bool = True,
        ca_file: Path | str | None = None,
        headers: dict[str, str] | None = None,
    ):
        verify: Any = verify_tls
        if verify_tls and ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self.timeout_s = timeout_s
        self.client = httpx.Client(
            timeout=timeout_s,
            verify=verify,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
        )

    def post(
        self, url: str, *, content: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        where = origin(url)
        try:
            response = self.client.post(url, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise RetryableSinkError(
                f"no answer from {where} within {self.timeout_s:g}s ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise RetryableSinkError(f"cannot reach {where}: {type(exc).__name__}: {exc}") from None
        check_status(response, where)
        return response

    def close(self) -> None:
        self.client.close()
