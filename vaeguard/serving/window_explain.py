"""Window-mode explanations by metric and moment: a window's slot terms rolled up to metrics.

A window score sums per-slot terms over every channel of the window (``cpu[t-3]``,
``cpu_seasonal[t]``, …), but an operator asks which metric and when. Per row, each metric's
positive excess nats over the scored slots (its value channel plus the channels derived from it,
such as its seasonal residual) rank the metrics; each listed metric names the shortest run of
slots holding most of its excess and the observed vs expected values at its worst slot.
Vectorized over the batch: per-row Python work is only building the output dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vaeguard.contributions import FLOAT_MAX, finite
from vaeguard.errors import DataError

#: ``slots`` is the shortest run of consecutive slots holding at least this share of a metric's
#: positive excess: most of it, without the small positive terms that noise leaves on every
#: slot (which would stretch every run to the whole window).
RUN_SHARE = 0.8


def metric_contributions(
    excess: np.ndarray,
    observed: np.ndarray,
    expected: np.ndarray,
    valid: np.ndarray | None,
    channels: Sequence[str],
    metric_of: Mapping[str, str],
    window: int,
    top_k: int,
    *,
    score_slots: int | None = None,
    lead: Sequence[Any] | np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """Per row, the ``top_k`` metrics by positive excess nats over the scored slots.

    ``excess``, ``observed``, ``expected`` and ``valid`` are rows × (channels · W), metric-major
    blocks of W slots, oldest first (observed / expected in the metric's units); ``valid``
    (None: all) marks observed slots, the only ones that carry excess. ``metric_of`` maps a
    derived channel to its source metric (``cpu_seasonal`` → ``cpu``; unlisted channels are
    metrics). ``score_slots``: the newest slots that count in the score (None: all).

    Each item: ``feature`` and ``metric`` (the metric's name), ``contribution`` (its positive
    excess nats summed over the scored slots of all its channels), ``share`` (of the row's
    positive excess), ``slots`` ([first, last] offsets, ≤ 0, of the shortest run holding
    `RUN_SHARE` of its excess), ``slot`` (the worst slot's offset; the newest valid scored slot
    by excess when it has none), ``observed`` / ``expected`` there, from the value channel
    unless a derived one carries more of the excess at that slot (then ``channel`` names it).
    A metric with no observed slot in the window is not listed.

    ``lead`` (per row: a metric's index or name, or None / −1): that metric is listed first
    whatever its excess (the detector's decision names it). ``rows``: explain only these
    rows (the others get no contributions).
    """
    excess = np.asarray(excess)
    n = excess.shape[0] if excess.ndim else 0
    if lead is not None and len(lead) != n:
        raise DataError(f"lead: one entry per row expected, got {len(lead)} for {n} rows")
    if rows is not None:
        out: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        rows = np.asarray(rows, dtype=np.intp)
        if len(rows):
            sub = metric_contributions(
                excess[rows], np.asarray(observed)[rows], np.asarray(expected)[rows],
                None if valid is None else np.asarray(valid)[rows], channels, metric_of,
                window, top_k, score_slots=score_slots,
                lead=None if lead is None else [lead[i] for i in rows.tolist()],
            )  # fmt: skip
            for i, explained_row in zip(rows.tolist(), sub, strict=True):
                out[i] = explained_row
        return out

    c, w = len(channels), int(window)
    if w < 1:
        raise DataError(f"window: must be at least 1 slot, got {window}")
    for name, a in (("excess", excess), ("observed", observed), ("expected", expected)):
        if np.ndim(a) != 2 or np.shape(a) != (n, c * w):
            raise DataError(f"{name}: expected shape ({n}, {c * w}), got {np.shape(a)}")
    if valid is not None and np.shape(valid) != (n, c * w):
        raise DataError(f"valid: expected shape ({n}, {c * w}), got {np.shape(valid)}")
    s = w if score_slots is None else int(score_slots)
    if not 1 <= s <= w:
        raise DataError(f"score_slots: must be between 1 and the window ({w}), got {score_slots}")
    source = [metric_of.get(ch, ch) for ch in channels]
    metrics = list(dict.fromkeys(source))
    m = len(metrics)
    k = min(int(top_k), m)
    if n == 0 or k <= 0:
        return [[] for _ in range(n)]

    # per channel and slot; a cap keeps every sum below FLOAT_MAX (a finite JSON number)
    cap = FLOAT_MAX / (2.0 * c * w)
    e = np.clip(finite(excess), -cap, cap).reshape(n, c, w)
    ok = np.ones((n, c, w), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    ok = ok.reshape(n, c, w)
    scored = np.arange(w) >= w - s
    pos = np.where(ok & scored, np.maximum(e, 0.0), 0.0)

    # per metric and slot: all its channels
    of = np.asarray([metrics.index(x) for x in source], dtype=np.intp)
    per_slot = np.zeros((n, m, w))
    signed = np.zeros((n, m, w))
    seen = np.zeros((n, m, w), dtype=bool)
    for j in range(c):
        per_slot[:, of[j]] += pos[:, j]
        signed[:, of[j]] += np.where(ok[:, j], e[:, j], 0.0)
        seen[:, of[j]] |= ok[:, j]
    totals = per_slot.sum(axis=2)
    row_total = totals.sum(axis=1, keepdims=True)
    shares = np.divide(totals, row_total, out=np.zeros_like(totals), where=row_total > 0)
    listed_m = seen.any(axis=2)

    # the ranking: the lead first, then by excess; metrics never observed last (not listed)
    rank = np.where(listed_m, totals, -np.inf)
    if lead is not None:
        first = _lead_index(lead, metrics, metric_of)
        has = np.flatnonzero(first >= 0)
        has = has[listed_m[has, first[has]]]
        rank[has, first[has]] = np.inf
    order = np.argsort(-rank, axis=1, kind="stable")[:, :k]  # n × k
    listed = np.take_along_axis(listed_m, order, 1)
    contribution = np.take_along_axis(totals, order, 1)
    share = np.take_along_axis(shares, order, 1)
    ps = np.take_along_axis(per_slot, order[:, :, None], 1)  # n × k × w
    sg = np.take_along_axis(signed, order[:, :, None], 1)
    sn = np.take_along_axis(seen, order[:, :, None], 1)

    # the worst slot: most positive excess; else the largest excess of a valid scored slot,
    # else of any valid slot, else the newest (ties: the newest)
    key_scored = np.where(sn & scored, sg, -np.inf)
    key_any = np.where(sn, sg, -np.inf)
    worst = np.where(
        contribution > 0,
        _argmax_newest(ps),
        np.where(
            (sn & scored).any(axis=2),
            _argmax_newest(key_scored),
            np.where(sn.any(axis=2), _argmax_newest(key_any), w - 1),
        ),
    )
    start, length = _shortest_run(ps)
    empty = ~(contribution > 0)
    start = np.where(empty, worst, start)
    length = np.where(empty, 1, length)

    # which channel of the metric speaks for it at the worst slot
    groups = [[j for j in range(c) if of[j] == i] for i in range(m)]
    for i, g in enumerate(groups):  # the value channel first: it wins ties
        g.sort(key=lambda j, i=i: channels[j] != metrics[i])
    width = max(len(g) for g in groups)
    chans = np.full((m, width), -1, dtype=np.intp)
    for i, g in enumerate(groups):
        chans[i, : len(g)] = g
    cand = chans[order]  # n × k × width
    r_idx = np.arange(n)[:, None, None]
    at = (r_idx, np.maximum(cand, 0), worst[:, :, None])
    # an observed channel by its excess there, an unobserved one after it, padding never
    cand_key = np.where(ok[at], np.maximum(e[at], 0.0), -1.0)
    cand_key = np.where(cand >= 0, cand_key, -np.inf)
    pick = np.take_along_axis(cand, np.argmax(cand_key, axis=2)[:, :, None], 2)[:, :, 0]
    rk = np.arange(n)[:, None]
    obs = finite(np.asarray(observed, dtype="float64").reshape(n, c, w)[rk, pick, worst])
    exp = finite(np.asarray(expected, dtype="float64").reshape(n, c, w)[rk, pick, worst])
    value_channel = np.asarray(
        [[channels[j] == metrics[i] for j in range(c)] for i in range(m)], dtype=bool
    )
    derived = ~value_channel[order[:, :, None], pick[:, :, None]][:, :, 0]

    offset = w - 1
    names = np.asarray(metrics, dtype=object)[order].tolist()
    out = [
        [
            {
                "feature": f,
                "metric": f,
                "slot": sl,
                "slots": [a, a + ln - 1],
                "observed": o,
                "expected": x,
                "contribution": ct,
                "share": sh,
            }
            for f, sl, a, ln, o, x, ct, sh in zip(*row, strict=True)
        ]
        for row in zip(
            names,
            (worst - offset).tolist(),
            (start - offset).tolist(),
            length.tolist(),
            obs.tolist(),
            exp.tolist(),
            contribution.tolist(),
            np.clip(share, 0.0, 1.0).tolist(),
            strict=True,
        )
    ]
    counts = listed.sum(axis=1)
    for i in np.flatnonzero(counts < k).tolist():
        out[i] = out[i][: counts[i]]
    for i, j in zip(*np.nonzero(derived & listed), strict=True):
        out[i][j]["channel"] = channels[pick[i, j]]
    return out


def _argmax_newest(a: np.ndarray) -> np.ndarray:
    """Index of the largest value along the last axis, ties to the newest (last) slot."""
    w = a.shape[-1]
    return w - 1 - np.argmax(a[..., ::-1], axis=-1)


def _shortest_run(ps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first slot, length) of the shortest run of consecutive slots holding `RUN_SHARE` of the
    non-negative ``ps`` (… × w) along the last axis; of those, the one holding the most (ties:
    the newest). A longer run never holds less, so the length is found by bisection."""
    w = ps.shape[-1]
    prefix = np.concatenate([np.zeros((*ps.shape[:-1], 1)), np.cumsum(ps, axis=-1)], axis=-1)
    target = RUN_SHARE * prefix[..., -1]
    a = np.arange(w + 1)

    def sums(length: np.ndarray) -> np.ndarray:
        end = a + length[..., None]
        inside = end <= w
        held = np.take_along_axis(prefix, np.minimum(end, w), -1) - prefix
        return np.where(inside, held, -np.inf)

    lo = np.ones(ps.shape[:-1], dtype=np.intp)
    hi = np.full(ps.shape[:-1], w, dtype=np.intp)
    while (lo < hi).any():
        mid = (lo + hi) // 2
        enough = sums(mid).max(axis=-1) >= target
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid + 1)
    return _argmax_newest(sums(lo)), lo


def _lead_index(lead: Sequence[Any] | np.ndarray, metrics: list[str], metric_of) -> np.ndarray:
    """Each row's lead as a metric index (−1: none); a name may be a metric or a channel."""
    index = {name: i for i, name in enumerate(metrics)}
    for channel, metric in metric_of.items():
        if metric in index:
            index.setdefault(channel, index[metric])
    out = np.full(len(lead), -1, dtype=np.intp)
    for r, v in enumerate(lead.tolist() if isinstance(lead, np.ndarray) else lead):
        if isinstance(v, str):
            out[r] = index.get(v, -1)
        elif isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 <= v < len(metrics):
            out[r] = int(v)
    return out
