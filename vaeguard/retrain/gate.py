"""The validation gate a retrained candidate must pass before it replaces the current model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def _target_rate(detector) -> float:
    th = detector.threshold_rule_
    if th.method == "contamination":
        return float(th.params.get("contamination", detector.contamination))
    if th.method == "budget":
        return float(th.params.get("budget", detector.budget)) / 1000.0
    if th.method == "spot":
        return float(th.params.get("risk", detector.risk))
    return float(th.params.get("target_fpr", detector.target_fpr))


def check_candidate(
    candidate,
    current,
    x_holdout: np.ndarray,
    c_candidate=None,
    c_current=None,
    *,
    fpr_tolerance: float,
    score_margin: float,
) -> GateResult:
    """Three checks on the held-out (most recent) normal rows.

    1. every number is finite (threshold, training losses, holdout scores);
    2. the candidate's false-positive rate on them is within tolerance of its target;
    3. its median score is not worse than the current model's by more than `score_margin` nats
       (both models scored on the same rows: the candidate must explain recent normal data at
       least about as well as the model it replaces).
    """
    reasons: list[str] = []
    cand = candidate.score_matrix(x_holdout, c_candidate).scores
    curr = current.score_matrix(x_holdout, c_current).scores if current is not None else None
    n = int(cand.size)
    losses = [v for values in candidate.history_.values() for v in values]
    finite = (
        bool(np.isfinite(cand).all())
        and math.isfinite(candidate.threshold)
        and all(math.isfinite(v) for v in losses)
    )
    if not finite:
        reasons.append("non-finite numbers in the candidate (scores, threshold or training losses)")
    target = _target_rate(candidate)
    fpr = float((cand > candidate.threshold).mean()) if n else math.nan
    allowed = target * (1.0 + fpr_tolerance) + 2.0 * math.sqrt(target * (1.0 - target) / max(n, 1))
    if not fpr <= allowed:
        reasons.append(
            f"false-positive rate on the holdout {fpr:.4f} exceeds the allowed {allowed:.4f} (target {target:g})"
        )
    metrics: dict[str, Any] = {
        "holdout_rows": n,
        "holdout_fpr": fpr,
        "allowed_fpr": allowed,
        "target_fpr": target,
        "candidate_threshold": candidate.threshold,
        "candidate_median_score": float(np.median(cand)) if n else math.nan,
    }
    if curr is not None:
        med_cand, med_curr = float(np.median(cand)), float(np.median(curr))
        metrics.update(
            current_median_score=med_curr,
            current_holdout_fpr=float((curr > current.threshold).mean()),
        )
        if not med_cand <= med_curr + score_margin:
            reasons.append(
                f"median holdout score {med_cand:.3f} is worse than the current model's {med_curr:.3f} by more than {score_margin} nats"
            )
    return GateResult(passed=not reasons, reasons=reasons, metrics=metrics)
