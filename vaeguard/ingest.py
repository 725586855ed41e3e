"""The ingestion contract: one decoder and one set of value rules for every way records come in.

The daemon (Kafka messages), retraining (the recent window of the input topics) and the CLI
(`vaeguard score` on CSV / JSONL files) all read records with this module, so they accept and
reject exactly the same things. A refused record is a `Rejection` value (a `Reason` code plus a
human-readable detail), never an exception that escapes:

* bytes → `decode`: UTF-8, at most ``max_bytes``, one JSON object, nesting at most
  `MAX_DEPTH` deep, integer literals within Python's digit limit, every number a finite
  float64 (``NaN``, ``Infinity`` and literals that overflow, such as ``1e400``, are refused
  here, at parse time, not after scoring; an integer beyond 64 bits becomes a float). orjson
  parses the common case; the standard library's parser, with the checks above as hooks, is
  the reference that names the reason of a refusal (a property test holds the two together);
* a message's envelope → `check_envelope`: its key at most ``max_key_bytes`` and its headers
  at most ``max_bytes`` in all; a decoded record's entity → `check_entity`: at most
  ``max_key_bytes`` once written as text (a score record is keyed by the entity and carries it,
  so an unbounded one would make a score record larger than the producer can send);
* a field → `to_number`: JSON numbers, booleans (as 1 / 0) and decimal strings (``"12.5"``, as
  CSV cells always are); an empty string or null is *missing*; anything else is not a number;
* a timestamp → `to_timestamp`: epoch seconds (a number too large to be seconds in range is
  read as milliseconds, microseconds or nanoseconds) or ISO 8601 (naive = UTC), finite and
  between the years 1900 and 2200, so that window arithmetic never sees NaN, ±inf or an
  overflow.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

try:
    import orjson
except ImportError:  # optional: the reference decoder applies the same contract
    orjson = None

__all__ = [
    "MAX_DEPTH",
    "TIMESTAMP_RANGE",
    "Reason",
    "Rejection",
    "check_entity",
    "check_envelope",
    "check_record",
    "check_size",
    "decode",
    "entity_text",
    "loads",
    "short_repr",
    "to_number",
    "to_timestamp",
]


class Reason(StrEnum):
    """Why a record was refused: the ``reason`` label of the dead-letter metric and header."""

    EMPTY = "empty_value"
    OVERSIZE = "oversize"
    OVERSIZE_KEY = "oversize_key"
    OVERSIZE_HEADERS = "oversize_headers"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    TOO_DEEP = "too_deep"
    INTEGER_TOO_LONG = "integer_too_long"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FEATURE = "missing_feature"
    NON_NUMERIC = "non_numeric_feature"
    NON_FINITE = "non_finite"
    INVALID_FIELD = "invalid_field"
    INVALID_TIMESTAMP = "invalid_timestamp"
    LATE_RECORD = "late_record"
    PROCESSING_ERROR = "processing_error"
    #: The record was scored, but its score record is larger than the producer or the broker
    #: takes: it goes to the dead-letter topic instead of stalling the partition.
    OVERSIZE_OUTPUT = "oversize_output"


#: Kafka Connect's "stage" of a failure: decoding the value, or the task refusing its content.
STAGE_DECODE = "VALUE_CONVERTER"
STAGE_VALIDATE = "TASK_PUT"
STAGE_KEY = "KEY_CONVERTER"
STAGE_HEADERS = "HEADER_CONVERTER"
STAGE_PRODUCE = "KAFKA_PRODUCE"


@dataclass(slots=True)
class Rejection:
    """A refused record: ``reason`` (a `Reason`), the exception class a Java consumer of the
    dead-letter topic would expect to see, and a one-line ``detail`` naming the field."""

    reason: Reason
    error_class: str
    detail: str
    stage: str = STAGE_VALIDATE
    #: The record's position in the batch it came in (set by whoever splits a batch).
    index: int = -1

    def at(self, index: int) -> Rejection:
        self.index = index
        return self


#: Deepest JSON nesting accepted; far below the interpreter's recursion limit on any platform.
MAX_DEPTH = 64
#: Epoch seconds of 1900-01-01 and 2200-01-01 (UTC): the plausible range of a timestamp.
TIMESTAMP_RANGE = (-2_208_988_800.0, 7_258_118_400.0)
_MAX_DETAIL = 500


class _Refused(Exception):
    def __init__(self, rejection: Rejection):
        self.rejection = rejection


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(
            Rejection(
                Reason.NON_FINITE,
                "ValueError",
                f"the number {short_repr(text)} overflows a 64-bit float",
                STAGE_DECODE,
            )
        )
    return value


def _digit_limit() -> int:
    get = getattr(sys, "get_int_max_str_digits", None)
    limit = get() if get is not None else 0
    return limit or 4300


def _parse_int(text: str) -> int:
    digits = len(text) - (text[:1] == "-")
    if digits > _digit_limit():
        raise _Refused(
            Rejection(
                Reason.INTEGER_TOO_LONG,
                "ValueError",
                f"an integer literal has {digits} digits, more than the limit of {_digit_limit()}",
                STAGE_DECODE,
            )
        )
    value = int(text)
    if -(2**63) <= value < 2**64:
        return value
    return _int_as_float(value, f"the integer {short_repr(text)}")


def _int_as_float(value: int, what: str) -> float:
    """An integer beyond 64 bits as a float, as orjson decodes it; refused past a float's range."""
    try:
        return float(value)
    except OverflowError:
        raise _Refused(
            Rejection(
                Reason.NON_FINITE, "ValueError", f"{what} overflows a 64-bit float", STAGE_DECODE
            )
        ) from None


def _parse_constant(name: str):
    raise _Refused(
        Rejection(
            Reason.NON_FINITE,
            "ValueError",
            f"{name} is not a JSON number (NaN and ±Infinity are not allowed)",
            STAGE_DECODE,
        )
    )


#: Checks every number literal in Python: only for text that may hold one that overflows.
_STRICT = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)


def _depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (cheap pre-check)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def loads(text: str) -> Any | Rejection:
    """Parse JSON text under the contract's number and nesting rules (any JSON value)."""
    if _depth_exceeds(text, MAX_DEPTH):
        return _too_deep()
    try:
        return _STRICT.decode(text)
    except _Refused as refused:
        return refused.rejection
    except RecursionError:
        return Rejection(Reason.TOO_DEEP, "RecursionError", "JSON nested too deep", STAGE_DECODE)
    except ValueError as exc:  # json.JSONDecodeError and int() refusals
        if "digits" in str(exc) and not isinstance(exc, json.JSONDecodeError):
            return Rejection(
                Reason.INTEGER_TOO_LONG,
                "ValueError",
                f"an integer literal is longer than the limit of {_digit_limit()} digits",
                STAGE_DECODE,
            )
        return Rejection(
            Reason.INVALID_JSON, f"json.{type(exc).__name__}", short_detail(str(exc)), STAGE_DECODE
        )


def decode(value: bytes | bytearray | memoryview | None, max_bytes: int) -> dict | Rejection:
    """A message value → its JSON object, or the reason it is refused."""
    if value is None or len(value) == 0:
        return Rejection(Reason.EMPTY, "ValueError", "the message has no value", STAGE_DECODE)
    if len(value) > max_bytes:
        return check_size(len(value), max_bytes)
    value = bytes(value)
    if orjson is not None:  # the fast path: orjson applies the same rules, in C
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass  # the reference decoder below says precisely why (or accepts it)
        else:
            if type(obj) is dict and (
                value.count(b"[") + value.count(b"{") <= MAX_DEPTH
                or not _depth_exceeds(value.decode("utf-8"), MAX_DEPTH)
            ):
                return obj
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(Reason.INVALID_UTF8, "UnicodeDecodeError", str(exc), STAGE_DECODE)
    return _object(loads(text))


def check_size(size: int, max_bytes: int) -> Rejection | None:
    """None when a record of ``size`` bytes is within ``max_bytes``, else the refusal."""
    if size <= max_bytes:
        return None
    return Rejection(
        Reason.OVERSIZE,
        "ValueError",
        f"the value is {size} bytes, more than scoring.max_record_bytes={max_bytes}",
        STAGE_DECODE,
    )


def check_record(obj: Any) -> dict | Rejection:
    """A record that came decoded (a CSV row, a Python dict) → the record `decode` would give
    for its JSON text, or the reason it is refused: the same rules, without the text.

    A dict with string names, whose values are null, booleans, strings, finite numbers (an
    integer beyond 64 bits becomes a float, as in JSON), lists or tuples (arrays) and dicts,
    nested at most `MAX_DEPTH` deep (a dict that holds itself is too deep). A subclass of one of
    these types becomes the type itself, as its JSON would; any other value is refused
    (``invalid_field``). The dict is returned as it is when nothing needs converting.
    """
    if type(obj) is dict:  # the common case first: flat, every value a JSON scalar already
        for key, value in obj.items():
            kind = type(value)
            if type(key) is not str or not (
                kind in _SCALARS
                or (kind is float and value - value == 0.0)  # finite
                or (kind is int and _INT_LOW <= value < _INT_HIGH)
            ):
                break
        else:
            return obj
    elif not isinstance(obj, dict):
        return _object(obj)
    try:
        return _plain_dict(obj, 1, None)
    except _Refused as refused:
        return refused.rejection
    except RecursionError:  # only where the interpreter's limit is below MAX_DEPTH frames
        return Rejection(Reason.TOO_DEEP, "RecursionError", "record nested too deep", STAGE_DECODE)


_SCALARS = frozenset({str, bool, type(None)})
_INT_LOW, _INT_HIGH = -(2**63), 2**64  # an integer literal decodes to an int in this range


def _plain_dict(obj: dict, depth: int, name: str | None) -> dict:
    if depth > MAX_DEPTH:
        raise _Refused(_too_deep())
    out = None if type(obj) is dict else {}
    for i, (key, value) in enumerate(obj.items()):
        text = key
        if type(key) is not str:
            if not isinstance(key, str):
                raise _Refused(
                    Rejection(
                        Reason.INVALID_FIELD,
                        "TypeError",
                        f"a field name is not a string: {short_repr(key)}",
                        STAGE_DECODE,
                    )
                )
            text = str.__str__(key)
        plain = _plain(value, depth, text if name is None else name)
        if out is None and (plain is not value or text is not key):
            out = dict(itertools.islice(obj.items(), i))
        if out is not None:
            out[text] = plain
    return obj if out is None else out


def _plain(value: Any, depth: int, name: str) -> Any:
    """A value as its JSON would decode (the same object when it already is), or _Refused."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise _Refused(
            Rejection(
                Reason.NON_FINITE,
                "ValueError",
                f"field {short_repr(name)} is {value} (NaN and ±Infinity are not allowed)",
                STAGE_DECODE,
            )
        )
    if kind is int:
        return value if _INT_LOW <= value < _INT_HIGH else _big_int(value, name)
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _Refused(_too_deep())
        items = [_plain(v, depth + 1, name) for v in value]
        same = kind is list and all(a is b for a, b in zip(items, value, strict=True))
        return value if same else items
    if isinstance(value, dict):
        return _plain_dict(value, depth + 1, name)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return _plain(int.__int__(value), depth, name)
    if isinstance(value, float):
        return _plain(float.__float__(value), depth, name)
    if isinstance(value, list | tuple):
        return _plain(list(value), depth, name)
    raise _Refused(
        Rejection(
            Reason.INVALID_FIELD,
            "TypeError",
            f"field {short_repr(name)} holds a {type(value).__name__}, not a JSON value",
            STAGE_DECODE,
        )
    )


def _big_int(value: int, name: str) -> float:
    """An integer beyond 64 bits, as its literal would decode (`_parse_int`)."""
    if abs(value) >= _ten_to_digit_limit():
        raise _Refused(
            Rejection(
                Reason.INTEGER_TOO_LONG,
                "ValueError",
                f"field {short_repr(name)} is an integer of more than {_digit_limit()} digits",
                STAGE_DECODE,
            )
        )
    return _int_as_float(value, f"field {short_repr(name)} is an integer that")


_TEN_TO: dict[int, int] = {}


def _ten_to_digit_limit() -> int:
    """10 ** the digit limit: the smallest integer with more digits than a literal may have."""
    limit = _digit_limit()
    if limit not in _TEN_TO:
        _TEN_TO[limit] = 10**limit
    return _TEN_TO[limit]


def _too_deep() -> Rejection:
    return Rejection(
        Reason.TOO_DEEP,
        "ValueError",
        f"JSON nested deeper than {MAX_DEPTH} levels",
        STAGE_DECODE,
    )


def check_envelope(
    key: bytes | bytearray | memoryview | None,
    headers: Any,
    max_key_bytes: int,
    max_header_bytes: int,
) -> Rejection | None:
    """None when the message key and headers are within their limits, else the refusal.

    Headers count their names (UTF-8) and values; a header that is not a (name, bytes) pair
    is refused too, since it could not be carried to the dead-letter topic as it is.
    """
    if key is not None and len(key) > max_key_bytes:
        return Rejection(
            Reason.OVERSIZE_KEY,
            "ValueError",
            f"the message key is {len(key)} bytes, more than scoring.max_key_bytes={max_key_bytes}",
            STAGE_KEY,
        )
    if not headers:
        return None
    size = 0
    try:
        for name, value in headers:
            size += len(name.encode("utf-8", "replace")) + (0 if value is None else len(value))
    except (TypeError, ValueError, AttributeError):
        return Rejection(
            Reason.INVALID_FIELD,
            "TypeError",
            "the message headers are not (name, bytes) pairs",
            STAGE_HEADERS,
        )
    if size > max_header_bytes:
        return Rejection(
            Reason.OVERSIZE_HEADERS,
            "ValueError",
            f"the message headers are {size} bytes, more than "
            f"scoring.max_record_bytes={max_header_bytes}",
            STAGE_HEADERS,
        )
    return None


def check_entity(record: dict, field: str, max_key_bytes: int) -> Rejection | None:
    """None when the record's entity field is absent or at most ``max_key_bytes`` as text."""
    value = record.get(field)
    if value is None:
        return None
    if type(value) is str:
        if len(value) * 4 <= max_key_bytes:  # UTF-8 takes at most 4 bytes a character
            return None
        size = len(value.encode("utf-8", "replace"))
    elif type(value) is float or type(value) is bool:  # short whatever their value
        return None
    else:
        try:
            size = len(entity_text(value).encode("utf-8", "replace"))
        except (TypeError, ValueError, RecursionError):
            size = max_key_bytes + 1
    if size <= max_key_bytes:
        return None
    return Rejection(
        Reason.OVERSIZE_KEY,
        "ValueError",
        f"the entity field {short_repr(field)} is {size} bytes as text, more than "
        f"scoring.max_key_bytes={max_key_bytes}",
    )


def _object(obj: Any) -> dict | Rejection:
    if isinstance(obj, Rejection) or type(obj) is dict:
        return obj
    return Rejection(
        Reason.NOT_AN_OBJECT,
        "TypeError",
        f"expected a JSON object, got {_json_type(obj)}",
        STAGE_DECODE,
    )


def _json_type(obj: Any) -> str:
    named = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj)
    )
    if named is not None:
        return named
    return "a number" if isinstance(obj, int | float) else f"a {type(obj).__name__}"


_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE_WORDS = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}  # fmt: skip


def to_number(value: Any, what: str) -> float | Rejection | None:
    """A field's value as a finite float; None when it is missing (null or empty string).

    ``what`` names the field in the rejection ("feature 'cpu'").
    """
    if value is None:
        return None
    if type(value) is float:
        if math.isfinite(value):
            return value
        return Rejection(
            Reason.NON_FINITE, "ValueError", f"{what} is {value} (NaN and ±inf are not allowed)"
        )
    if isinstance(value, bool | int):
        try:
            number = float(value)
        except OverflowError:
            return Rejection(Reason.NON_FINITE, "ValueError", f"{what} overflows a 64-bit float")
        return number
    if isinstance(value, float):  # a float subclass (numpy.float64)
        return to_number(float(value), what)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if len(text) <= 64 and _DECIMAL.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
            return Rejection(
                Reason.NON_FINITE,
                "ValueError",
                f"{what} {short_repr(value)} overflows a 64-bit float",
            )
        if text.lower() in _NON_FINITE_WORDS:
            return Rejection(
                Reason.NON_FINITE,
                "ValueError",
                f"{what} is {short_repr(value)} (NaN and ±inf are not allowed)",
            )
    return Rejection(
        Reason.NON_NUMERIC, "TypeError", f"{what} is not a number: {short_repr(value)}"
    )


def to_timestamp(value: Any, what: str = "timestamp") -> float | Rejection:
    """A timestamp (epoch seconds / ms / µs / ns, or ISO 8601) as epoch seconds in range."""
    if isinstance(value, bool) or value is None:
        return Rejection(
            Reason.INVALID_TIMESTAMP,
            "ValueError",
            f"{what} must be epoch seconds or an ISO 8601 string, got {short_repr(value)}",
        )
    seconds: float | None = None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    elif isinstance(value, str):
        text = value.strip()
        if len(text) <= 64 and text[4:5] == "-":  # 2026-12-01…: skip the number check
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=dt.UTC)
                seconds = parsed.timestamp()
            except (ValueError, OverflowError, OSError):
                seconds = None
        elif len(text) <= 64 and _DECIMAL.fullmatch(text):
            seconds = float(text)
        elif len(text) <= 64:
            try:
                parsed = dt.datetime.fromisoformat(
                    text.replace("Z", "+00:00").replace("z", "+00:00")
                )
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=dt.UTC)
                seconds = parsed.timestamp()
            except (ValueError, OverflowError, OSError):
                seconds = None
        if seconds is None:
            return Rejection(
                Reason.INVALID_TIMESTAMP,
                "ValueError",
                f"{what} {short_repr(value)} is not ISO 8601 nor epoch seconds",
            )
    else:
        return Rejection(
            Reason.INVALID_TIMESTAMP,
            "TypeError",
            f"{what} must be epoch seconds or an ISO 8601 string, got {_json_type(value)}",
        )
    low, high = TIMESTAMP_RANGE
    numeric = not isinstance(value, str) or _DECIMAL.fullmatch(value.strip()) is not None
    if numeric and math.isfinite(seconds) and not low <= seconds <= high:
        # Too large to be seconds in range: milliseconds, microseconds or nanoseconds
        # (the ranges do not overlap, so the unit is not a guess).
        for unit in (1e3, 1e6, 1e9):
            if low <= seconds / unit <= high:
                return seconds / unit
    if not (math.isfinite(seconds) and low <= seconds <= high):
        return Rejection(
            Reason.INVALID_TIMESTAMP,
            "ValueError",
            f"{what} {short_repr(value)} is outside the years 1900-2200",
        )
    return seconds


def entity_text(key: Any) -> str:
    """An entity key as text: strings as they are, other JSON values in canonical JSON."""
    if isinstance(key, str):
        return key
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def short_repr(value: Any, limit: int = 60) -> str:
    """A value for an error line: its repr (so no newline gets through), cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_detail(text: str) -> str:
    """A detail line capped at a length a Kafka header and a log line can carry."""
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
