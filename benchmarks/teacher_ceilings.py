"""Ceilings of the synthetic teachers: what parts of the teacher's logit alone reach on the test rows.

    .venv/bin/python -m benchmarks.teacher_ceilings [--teachers synthetic_250k,synthetic_pairs_250k]

For each teacher of benchmarks/quality.py, on its test rows: the AUC of the full logit, of the
logit without the pairwise terms (a perfect first-order model), of the pairwise terms alone, and of
the logit with every value seen fewer than `min_count` times in train replaced by the count-weighted
mean effect of such values (what the rare-id mapping leaves learnable). Lifts are (AUC - 0.5) over
the teacher's. Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import uuid
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks._common import header, latest_per_dataset, markdown_table, record, run_readme
from benchmarks.quality import TEACHERS
from features.datasets.synthetic import CHUNK_ROWS, N_CAT, SyntheticConfig, Teacher


def _collapsed(table: np.ndarray, counts: np.ndarray, ids: np.ndarray, min_count: int) -> np.ndarray:
    """table[ids], with the rows of values seen fewer than min_count times replaced by their
    count-weighted mean (values never seen keep that mean too)."""
    rare = counts < min_count
    seen = rare & (counts > 0)
    weights = counts[seen].astype(float)
    mean = (table[seen] * (weights[:, None] if table.ndim == 2 else weights)).sum(0) / max(weights.sum(), 1)
    out = table[ids].copy()
    out[rare[ids]] = mean
    return out


def ceilings(config: SyntheticConfig) -> dict[str, float]:
    if config.rows > CHUNK_ROWS:
        raise ValueError(f"{config.rows:,} rows: this diagnostic reads one chunk ({CHUNK_ROWS:,} rows)")
    teacher = Teacher(config)
    x, c, z = teacher.draw(config.rows, chunk=0)
    p = 1 / (1 + np.exp(-z))
    y = np.random.default_rng([config.seed, 2, 0]).random(config.rows) < p  # as Teacher.chunks
    n_train = round(config.rows * config.split[0])
    test = slice(n_train + round(config.rows * config.split[1]), config.rows)
    t = np.nan_to_num(np.sign(x) * np.log1p(np.abs(x)))
    pairs = sum(np.einsum("nk,nk->n", teacher.u[f][c[f]], teacher.u[g][c[g]]) for f, g in teacher.pairs)
    counts = [np.bincount(c[f][:n_train], minlength=len(teacher.w[f])) for f in range(N_CAT)]
    zc = teacher.bias + (t - teacher.mu) @ teacher.a
    for f in range(N_CAT):
        zc = zc + _collapsed(teacher.w[f], counts[f], c[f], config.min_count)
    for f, g in teacher.pairs:
        uf = _collapsed(teacher.u[f], counts[f], c[f], config.min_count)
        ug = _collapsed(teacher.u[g], counts[g], c[g], config.min_count)
        zc = zc + np.einsum("nk,nk->n", uf, ug)
    h = teacher.h_field
    zc = (
        zc
        + teacher.h
        * (t[:, 0] - teacher.mu[0])
        * _collapsed(teacher.wh, counts[h], c[h], config.min_count)
        / 2
    )

    def auc(score: np.ndarray) -> float:
        return float(roc_auc_score(y[test], score[test]))

    out = {"teacher_auc": auc(z), "first_order_auc": auc(z - pairs), "pairs_auc": auc(pairs)}
    out["rare_collapsed_auc"] = auc(zc)
    for k in ("first_order", "pairs", "rare_collapsed"):
        out[f"{k}_lift"] = (out[f"{k}_auc"] - 0.5) / (out["teacher_auc"] - 0.5)
    return out


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Teacher ceilings section: per teacher its latest run."""
    rows = latest_per_dataset(rows, "ceilings-")
    if not rows:
        return ""
    table = [
        {
            "teacher": r["dataset"],
            "teacher AUC": r["teacher_auc"],
            "first-order terms alone": f"{r['first_order_auc']:.4f} (lift {r['first_order_lift']:.3f})",
            "pairwise terms alone": f"{r['pairs_auc']:.4f} (lift {r['pairs_lift']:.3f})",
            "rare values collapsed": f"{r['rare_collapsed_auc']:.4f} (lift {r['rare_collapsed_lift']:.3f})",
        }
        for r in rows
    ]
    return f"## Teacher ceilings (test rows)\n\n{header(rows)}\n{markdown_table(table, list(table[0]))}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.teacher_ceilings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teachers", default="synthetic_250k,synthetic_pairs_250k")
    args = parser.parse_args()
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run = f"ceilings-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    for name in args.teachers.split(","):
        row = {"run": run, "dataset": name, "model": "-", **ceilings(TEACHERS[name])}
        print(name, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}, flush=True)
        record(row, command)
    run_readme()


if __name__ == "__main__":
    main()
