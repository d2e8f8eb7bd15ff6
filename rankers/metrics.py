"""AUC, LogLoss and the constant-prior baseline (scikit-learn), and markdown tables of results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def binary_metrics(y: np.ndarray, p: np.ndarray, prior: float | None = None) -> dict[str, float | int | None]:
    """AUC (None with one class only), LogLoss, rows, positive rate, and the LogLoss of the
    constant `prior` (the training base rate, as scikit-learn's DummyClassifier(strategy="prior")).
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
    return out


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
