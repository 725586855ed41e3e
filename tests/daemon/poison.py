"""Malformed records of the kinds real producers send, with the reason each must get."""

from __future__ import annotations

import json


def tabular_poison(good: dict) -> list[tuple[bytes | None, str]]:
    """(message value, dead-letter reason) for a model with features a..d, host, hour."""

    def with_(**fields) -> bytes:
        return json.dumps({**good, **fields}).encode()

    def raw(field: str, literal: str) -> bytes:
        body = json.dumps({k: v for k, v in good.items() if k != field})
        return (body[:-1] + f', "{field}": {literal}}}').encode()

    return [
        (raw("a", "1e400"), "non_finite"),
        (raw("b", "-1e400"), "non_finite"),
        (raw("c", "NaN"), "non_finite"),
        (raw("a", "9" * 400), "non_finite"),
        (raw("a", "1" * 5000), "integer_too_long"),
        (with_(ts="nan"), "invalid_timestamp"),
        (with_(ts=1e300), "invalid_timestamp"),
        (with_(ts="9999-12-31T23:59:59"), "invalid_timestamp"),
        (with_(ts=True), "invalid_timestamp"),
        (with_(ts=-1e12 * 1e9), "invalid_timestamp"),
        (with_(a="12,5"), "non_numeric_feature"),
        (with_(a={"nested": 1}), "non_numeric_feature"),
        (with_(a="inf"), "non_finite"),
        (with_(hour="nan"), "non_finite"),
        (with_(host=None), "missing_feature"),
        ({k: v for k, v in good.items() if k != "d"}, "missing_feature"),
        (b"[" * 100_000, "too_deep"),
        (b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", "too_deep"),
        (b"\xff\xfe not utf-8", "invalid_utf8"),
        (b'{"a": 1,', "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b"null", "not_an_object"),
        (b"", "empty_value"),
        (None, "empty_value"),
        (b'{"pad": "' + b"x" * 300_000 + b'"}', "oversize"),
    ]


def fix_values(items: list[tuple]) -> list[tuple[bytes | None, str]]:
    return [(json.dumps(v).encode() if isinstance(v, dict) else v, r) for v, r in items]
