"""Severity bands: how far above the threshold a score lies, in nats.

The score is a negative log-likelihood, so score − threshold is a log-ratio: a margin of m
nats means the row is e^m times less likely than the least likely normal row we accept.
That is scale-free, unlike score / threshold (a threshold can be zero or negative).
"""

from __future__ import annotations

from collections.abc import Sequence

NORMAL = "normal"
#: (name, minimum margin in nats), ascending. A score above the threshold has at least the first.
DEFAULT_BANDS: tuple[tuple[str, float], ...] = (
    ("warning", 0.0),
    ("major", 5.0),
    ("critical", 15.0),
)


def severity(
    score: float, threshold: float, bands: Sequence[tuple[str, float]] = DEFAULT_BANDS
) -> str:
    """The band of a score: "normal" at or below the threshold, else the highest band reached."""
    if not score > threshold:
        return NORMAL
    margin = score - threshold
    name = bands[0][0]
    for band, minimum in bands:
        if margin >= minimum:
            name = band
    return name


def rank(name: str, bands: Sequence[tuple[str, float]] = DEFAULT_BANDS) -> int:
    """Order of a severity name (normal = 0), for routing rules such as "major or worse"."""
    names = [NORMAL, *(b for b, _ in bands)]
    if name not in names:
        raise ValueError(f"unknown severity {name!r}; known: {', '.join(names)}")
    return names.index(name)
