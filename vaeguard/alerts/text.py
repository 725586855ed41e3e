"""Alert text made safe for the fields receivers parse: header lines, titles, capped fields.

Alert fields come from records (an entity is a Kafka key, labels are the producer's JSON), so
they can hold anything: a newline that ends an email header (and makes `email` raise, which
would hold up every later alert to that sink), a NUL, a lone surrogate that no UTF-8 encoder
takes, a bidi override that shows a reader other text than was sent, or a megabyte of it.
"""

from __future__ import annotations

import re

#: Control characters (C0, DEL, C1), line / paragraph separators, bidi embeddings, overrides
#: and isolates, and lone surrogates: never wanted inside one line of text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SPACES = re.compile(r"\s+")
ELLIPSIS = "…"


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, the cut marked with an ellipsis."""
    if len(text) <= max_chars:
        return text
    if max_chars <= len(ELLIPSIS):
        return text[:max_chars]
    return text[: max_chars - len(ELLIPSIS)].rstrip() + ELLIPSIS


def one_line(text: object, max_chars: int | None = None) -> str:
    """One line of printable text: unsafe characters and whitespace runs become one space."""
    clean = _SPACES.sub(" ", _UNSAFE.sub(" ", str(text))).strip()
    return clean if max_chars is None else truncate(clean, max_chars)


def header_value(text: object, max_chars: int = 200, *, ascii_only: bool = False) -> str:
    """A header field value built from alert data: one line, capped; with ``ascii_only``
    (HTTP headers) non-ASCII characters become backslash escapes (``\\xe9``)."""
    value = one_line(text, max_chars)
    if ascii_only:
        value = value.encode("ascii", "backslashreplace").decode("ascii")
    return value


def has_unsafe(text: str) -> bool:
    """True if ``text`` holds a character `one_line` would replace (for validating settings
    that become header lines)."""
    return _UNSAFE.search(text) is not None
