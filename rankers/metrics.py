"""AUC, LogLoss and the constant-prior baseline (scikit-learn), gAUC, and markdown tables of results.

Per task, on the rows the funnel's rules say: `rankers.evaluation.task_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def binary_metrics(
    y: np.ndarray, p: np.ndarray, prior: float | None = None, groups: np.ndarray | None = None
) -> dict[str, float | int | None]:
    """AUC (None with one class only), LogLoss, rows, positive rate, the LogLoss of the constant
    `prior` (the training base rate, as scikit-learn's DummyClassifier(strategy="prior")), and with
    `groups` (the user of each row) the gAUC (`group_auc`).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} must be equal 1-d shapes")
    if len(y) == 0:
        raise ValueError("no rows to evaluate")
    out: dict[str, float | int | None] = {
        "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "logloss": float(log_loss(y, p, labels=[0, 1])),
        "rows": len(y),
        "positive_rate": float(y.mean()),
    }
    if prior is not None:
        out["prior_logloss"] = float(log_loss(y, np.full_like(y, prior), labels=[0, 1]))
    if groups is not None:
        out["gauc"] = group_auc(y, p, groups)
    return out


def group_auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float | None:
    """gAUC: the per-group AUC averaged with each group's impression count as its weight (Zhou et
    al., DIN, KDD 2018, eq. 1), over the groups (users) that have both classes; None if none has.

    Computed for all groups at once from within-group ranks (ties get their average rank, as in
    `roc_auc_score`), so millions of users cost one sort. Not torchrec's `GAUCMetric`: that one
    averages groups unweighted, needs each group's rows contiguous, and breaks ties by position.

    Args:
        y: (N,) labels in {0, 1}.
        p: (N,) scores.
        groups: (N,) group ids (any sortable dtype).
    """
    y, p, groups = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64), np.asarray(groups)
    if not y.shape == p.shape == groups.shape or y.ndim != 1:
        raise ValueError(
            f"labels {y.shape}, scores {p.shape} and groups {groups.shape} must be equal 1-d shapes"
        )
    n = len(y)
    if n == 0:
        return None
    order = np.lexsort((p, groups))  # by group, then score
    g, s, t = groups[order], p[order], y[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_of = np.cumsum(new_group) - 1  # (N,) 0-based group index of each sorted row
    group_start = np.flatnonzero(new_group)
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]  # runs of tied scores within a group
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n]
    run_rank = (run_start + run_end + 1) / 2 - group_start[group_of[run_start]]  # 1-based average
    rank = run_rank[np.cumsum(new_run) - 1]  # (N,)
    size = np.bincount(group_of).astype(np.float64)
    pos = np.bincount(group_of, weights=t)
    neg = size - pos
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return None
    rank_sum = np.bincount(group_of, weights=rank * t)
    auc = (rank_sum[both] - pos[both] * (pos[both] + 1) / 2) / (pos[both] * neg[both])
    return float(np.sum(size[both] * auc) / np.sum(size[both]))


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of `rows` (dicts) with the given columns; floats to 4 decimals."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
