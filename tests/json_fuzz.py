"""Arbitrary JSON for fuzzing files vaeguard reads (manifests, state files): values, tokens
that no Python value dumps to (``1e400``, ``NaN``), and every place in a document to put them."""

from __future__ import annotations

import json
import re

from hypothesis import strategies as st


class Raw(str):
    """A JSON token written as is: ``1e400``, ``NaN``, ``-Infinity``, a 40-digit integer."""


RAW = st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e308", "-0.0"]).map(
    Raw
) | st.integers(min_value=-(10**40), max_value=10**40).map(lambda n: Raw(str(n)))
#: Counts a reader must bound before it allocates or loops over them (drawn often, not by chance).
SIZES = st.sampled_from([10**8, 2**31 - 1, 10**12])
BASE_SCALARS = (
    st.none()
    | st.booleans()
    | SIZES
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | RAW
)


def json_values(scalars=BASE_SCALARS):
    """Nested JSON values (a few leaves) built from ``scalars``."""
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    )


def dump(value) -> str:
    """JSON text with the `Raw` tokens written raw."""
    raws: list[str] = []

    def mark(v):
        if isinstance(v, Raw):
            raws.append(str(v))
            return f"\x00{len(raws) - 1}\x00"
        if isinstance(v, list):
            return [mark(x) for x in v]
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        return v

    text = json.dumps(mark(value))
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: raws[int(m.group(1))], text)


def paths(value, prefix=()):
    """Every place in a document (long lists: their first and last items)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i in sorted({0, len(value) - 1}) if value else []:
            yield from paths(value[i], (*prefix, i))


def replace(document, path, value):
    """``document`` with ``value`` at ``path`` (in place; the root path replaces it whole)."""
    if not path:
        return value
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document
