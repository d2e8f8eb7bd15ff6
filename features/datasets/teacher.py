"""What the synthetic generators share: fitting a teacher's bias, its figures on a split, and the
`Plan` that writes its rows split by row order.

A generator (`features.datasets.synthetic`, `features.datasets.synthetic_sequences`) draws rows from
a known teacher, and every row carries its true probability, so the teacher's AUC and LogLoss on a
split are the best any model can reach there. `teacher_plan` hands the generator's rows to
`features.convert.convert`: one pass (the generator's ids are final, no vocabulary to count), rows
split by row order (`row_splits`), and dataset.json's `teacher`: the teacher's figures per split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from features.convert import SPLITS, Block, Plan, SplitAssigner
from features.schema import Schema


def fit_bias(z: np.ndarray, target: float, weight: np.ndarray | None = None) -> float:
    """The bias b (bisection on [-10, 10]) with mean sigmoid(z + b) = target, weighted by `weight`
    where given (the plain mean otherwise, so the CTR bias is bit for bit what it always was)."""
    lo, hi = -10.0, 10.0
    for _ in range(50):
        b = (lo + hi) / 2
        p = sigmoid(z + b)
        mean = p.mean() if weight is None else np.average(p, weights=weight)
        lo, hi = (b, hi) if mean < target else (lo, b)
    return b


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def row_splits(rows: int, split: tuple[float, float, float]) -> list[tuple[str, int, int]]:
    """(split, first row, end row) of `rows` rows split by row order into the `split` fractions."""
    n_train = round(rows * split[0])
    n_valid = round(rows * split[1])
    return [
        ("train", 0, n_train),
        ("valid", n_train, n_train + n_valid),
        ("test", n_train + n_valid, rows),
    ]


def teacher_plan(
    config: Any,
    schema: Schema,
    chunks: Iterable[tuple[pa.Table, dict[str, np.ndarray]]],
    info: dict[str, Any] | None = None,
) -> Plan:
    """The `Plan` of a generator's `config.rows` rows, split by row order into `config.split`.

    Args:
        config: the generator's config dataclass (`rows`, `split`); its settings give the ids
            their meaning (the fingerprint).
        schema: the dataset's features and labels.
        chunks: the rows in row order, read once: (the rows' columns, the schema's and the true
            probabilities; what the teacher's figures need of them: `p` and `y`, for a funnel also
            `q` and `v`, as `teacher_figures` reads them).
        info: dataset.json keys before `teacher` (the teacher's figures per split that has rows).
    """
    ends = [min(end, config.rows) for _, _, end in row_splits(config.rows, config.split)]
    counts = (ends[0], ends[1] - ends[0], ends[2] - ends[1])
    parts: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in SPLITS}

    def blocks(_: int) -> Iterator[Block]:
        assign = SplitAssigner(counts, "order", seed=0)
        for table, scored in chunks:
            yield Block(table, assign.take(table.num_rows), source=scored)

    def map_(block: Block, _: Any) -> pa.Table:
        for s, name in enumerate(SPLITS):
            rows = block.split == s
            if rows.any():
                parts[name].append({k: v[rows] for k, v in block.source.items()})
        return block.batch

    return Plan(
        rows=config.rows,
        blocks=blocks,
        schema=lambda _: schema,
        map=map_,
        inputs=None,
        identity=asdict(config),
        info=lambda: (info or {}) | {"teacher": {s: teacher_figures(p) for s, p in parts.items() if p}},
    )


def teacher_scores(p: np.ndarray, y: np.ndarray) -> dict[str, float | int | None]:
    """AUC (None with one class) and LogLoss (None without rows) of probabilities p for labels y."""
    from sklearn.metrics import log_loss, roc_auc_score

    return {
        "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "logloss": float(log_loss(y, p, labels=[0, 1])) if len(y) else None,
        "rows": len(y),
    }


def teacher_figures(parts: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The teacher's figures on one split from what `teacher_plan` kept of its chunks: AUC, LogLoss
    and click rate; with `q` (pCVR) and `v` (conversions) also, under `tasks`, AUC and LogLoss for
    ctr, cvr (clicked rows) and ctcvr (pCTR * pCVR), and under `rates` the click and conversion rates
    and the mean pCVR over clicked and over all rows."""
    cols = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    p, y = cols["p"].astype(np.float64), cols["y"]
    ctr = teacher_scores(p, y)
    out: dict[str, Any] = ctr | {"ctr": float(y.mean())}
    if "q" not in cols:
        return out
    q, v = cols["q"].astype(np.float64), cols["v"]
    clicked = y == 1
    out["tasks"] = {
        "ctr": ctr,
        "cvr": teacher_scores(q[clicked], v[clicked]),
        "ctcvr": teacher_scores(p * q, v),
    }
    out["rates"] = {
        "click": float(y.mean()),
        "conversion_per_click": float(v[clicked].mean()) if clicked.any() else None,
        "conversion": float(v.mean()),
        "mean_pcvr_clicked": float(q[clicked].mean()) if clicked.any() else None,
        "mean_pcvr_all": float(q.mean()),
    }
    return out
