"""Credentials masked out of settings before they are logged.

`SecretStr` fields are masked by pydantic already. This catches what a plain string setting
can carry: a password in a URL's userinfo (``https://user:pass@host``), a token in its query
or fragment (``?token=...``, ``#access_token=...``), and the value of a key that names a
secret, such as an ``Authorization`` or ``X-Api-Key`` entry of a sink's ``headers``. It errs
on the side of masking: a log loses a detail rather than leaks a credential.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"

#: Key, header and parameter names whose values are secrets (matched anywhere in the name,
#: case-insensitively): ``password``, ``client_secret``, ``X-Auth-Token``, ``Authorization``...
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|auth|cookie|credential|"
    r"private[-_]?key|access[-_]?key|signature|session[-_]?id|bearer|dsn",
    re.IGNORECASE,
)
#: Query parameters that are secrets only by their short, whole name (``?key=``, ``?sig=``).
_SECRET_PARAM = re.compile(r"key|sig|code|jwt|hmac", re.IGNORECASE)
#: A URL inside a longer text: a scheme, ``://`` and everything up to whitespace.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_STARTS_WITH_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
#: A well-formed authority without userinfo: host (or [IPv6]) and an optional numeric port.
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(:\d+)?")


def is_secret_name(name: str) -> bool:
    """True for a key or header name whose value is a credential."""
    return _SECRET_NAME.search(name) is not None


def _param(part: str) -> str:
    name, eq, _value = part.partition("=")
    decoded = unquote_plus(name)
    if eq and (is_secret_name(decoded) or _SECRET_PARAM.fullmatch(decoded)):
        return f"{name}={MASK}"
    return part


def _params(text: str) -> str:
    # '&' and ';' both separate parameters; the separators are kept as they were.
    return "".join(_param(p) for p in re.split(r"([&;])", text))


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret query / fragment parameters masked.

    Never raises. A password holding a raw ``/``, ``?`` or ``#`` (not a valid URL, but typed
    that way) is masked too: when what precedes the first of them is no ``host[:port]``,
    everything up to the last ``@`` counts as userinfo.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    authority = rest[:end]
    if "@" in authority:
        rest = f"{MASK}@{rest[authority.rindex('@') + 1 :]}"
    elif "@" in rest and not _HOST_PORT.fullmatch(authority):
        rest = f"{MASK}@{rest[rest.rindex('@') + 1 :]}"
    before_fragment, hash_, fragment = rest.partition("#")
    head, qmark, query = before_fragment.partition("?")
    out = f"{scheme}://{head}"
    if qmark:
        out += "?" + _params(query)
    if hash_:
        out += "#" + (_params(fragment) if "=" in fragment else fragment)
    return out


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (the whole string when it is one URL)."""
    if "://" not in text:
        return text
    if _STARTS_WITH_URL.match(text):  # a URL setting: whole, even with a raw space in it
        return redact_url(text)
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact(data: Any, *, secret: bool = False) -> Any:
    """A copy of JSON-like ``data`` (dicts, lists, strings) with credentials masked: values of
    keys named like secrets, and URLs' credentials everywhere else."""
    if isinstance(data, dict):
        return {k: redact(v, secret=secret or is_secret_name(str(k))) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact(v, secret=secret) for v in data]
    if isinstance(data, str):
        if secret and data:
            return MASK
        return redact_text(data)
    return data
