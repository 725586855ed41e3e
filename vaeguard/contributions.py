"""Top-k feature contributions of scored rows: which features made each row unlikely, with
observed and expected values. One ranking for the Python API (`ScoreResult.top_contributions`)
and every serving class, so it sits below both (`vaeguard.serving.explain` re-exports it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Largest finite float64: what a non-finite number in a score record is clamped to.
FLOAT_MAX = float(np.finfo("float64").max)


def finite(values: np.ndarray) -> np.ndarray:
    """NaN → 0, ±inf → ±FLOAT_MAX: JSON has no non-finite numbers."""
    return np.nan_to_num(
        np.asarray(values, dtype="float64"), nan=0.0, posinf=FLOAT_MAX, neginf=-FLOAT_MAX
    )


def top_contributions(
    contributions: np.ndarray,
    observed: np.ndarray,
    expected: np.ndarray,
    names: Sequence[str],
    top_k: int,
    *,
    valid: np.ndarray | None = None,
    columns: Sequence[dict[str, Any]] | None = None,
    score_drop: np.ndarray | None = None,
    blame: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """Per row, the ``top_k`` features by excess nats with observed / expected values.

    ``valid`` (rows × features, bool) excludes cells from ranking and shares (unobserved window
    slots); ``columns`` adds fixed fields per feature (a window slot's metric and offset).

    A row explained by counterfactuals (``blame``: rows × rounds of feature indices, most
    responsible first, −1 where none; ``score_drop``: rows × features) lists its blamed
    features in that order instead, each with its ``score_drop`` (nats) and, as ``share``, its
    part of the row's positive score drops.

    ``rows``: explain only these rows (the others get no contributions).
    """
    if rows is not None:
        out: list[list[dict[str, Any]]] = [[] for _ in range(contributions.shape[0])]
        if len(rows):
            pick = lambda a: None if a is None else a[rows]  # noqa: E731
            sub = top_contributions(
                contributions[rows], observed[rows], expected[rows], names, top_k,
                valid=pick(valid), columns=columns, score_drop=pick(score_drop), blame=pick(blame),
            )  # fmt: skip
            for i, explained_row in zip(rows.tolist(), sub, strict=True):
                out[i] = explained_row
        return out
    n, d = contributions.shape
    k = min(top_k, d)
    if n == 0 or k == 0:
        return [[] for _ in range(n)]
    contributions = finite(contributions)
    ranked = contributions if valid is None else np.where(valid, contributions, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    positive = np.clip(contributions, 0.0, None)
    if valid is not None:
        positive = np.where(valid, positive, 0.0)
    total = positive.sum(axis=1, keepdims=True)
    share = np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)
    ok = np.take_along_axis(valid, order, 1) if valid is not None else np.ones((n, k), dtype=bool)
    explained = None
    if blame is not None and score_drop is not None and blame.shape[1]:
        explained = blame[:, 0] >= 0
        if not explained.any():
            explained = None
    if explained is not None:
        width = min(k, blame.shape[1])
        cf_order = np.full((n, k), 0, dtype="int64")
        cf_ok = np.zeros((n, k), dtype=bool)
        cf_order[:, :width] = np.maximum(blame[:, :width], 0)
        cf_ok[:, :width] = blame[:, :width] >= 0
        drops = finite(np.nan_to_num(score_drop, nan=0.0))
        blamed = np.zeros((n, d), dtype=bool)
        hit_rows, hit_cols = np.nonzero(blame >= 0)
        blamed[hit_rows, blame[hit_rows, hit_cols]] = True
        drop_pos = np.where(blamed, np.clip(drops, 0.0, None), 0.0)
        drop_total = drop_pos.sum(axis=1, keepdims=True)
        drop_share = np.divide(
            drop_pos, drop_total, out=np.zeros_like(drop_pos), where=drop_total > 0
        )
        rows = explained[:, None]
        order = np.where(rows, cf_order, order)
        ok = np.where(rows, cf_ok, ok)
        share = np.where(rows, drop_share, share)
        drop_top = np.take_along_axis(drops, order, 1).tolist()
        explained_l = explained.tolist()
    top = [
        np.take_along_axis(a, order, 1).tolist()
        for a in (contributions, share, finite(observed), finite(expected))
    ]
    ok_l = ok.tolist()
    order_l = order.tolist()
    out: list[list[dict[str, Any]]]
    if columns is None:
        # The daemon's hot loop: every row as if all its top k were ranked and none explained
        # by counterfactuals, in comprehensions; the rows that are not are redone below.
        name_l = np.asarray(names, dtype=object)[order].tolist()
        out = [
            [
                {"feature": f, "observed": o, "expected": e, "contribution": c, "share": s}
                for f, c, s, o, e in zip(*row, strict=True)
            ]
            for row in zip(name_l, *top, strict=True)
        ]
        special = ~ok.all(axis=1)
        if explained is not None:
            special |= explained
        redo = np.flatnonzero(special).tolist()
    else:
        out = [[] for _ in range(n)]
        redo = range(n)
    for i in redo:
        row = []
        cf = explained is not None and explained_l[i]
        for rank, (j, c, s, o, e, good) in enumerate(
            zip(order_l[i], top[0][i], top[1][i], top[2][i], top[3][i], ok_l[i], strict=True)
        ):
            if not good:
                break
            item = {"feature": names[j]}
            if columns is not None:
                item.update(columns[j])
            item.update(observed=o, expected=e, contribution=c, share=s)
            if cf:
                item["score_drop"] = drop_top[i][rank]
            row.append(item)
        out[i] = row
    return out
