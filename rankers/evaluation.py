"""Evaluation: predicting over batches, the funnel's per-task rules, metrics per task and the
label prior. Training (every epoch and at the end), the Predictor and bidding all go through here.

The funnel's per-task rules (which rows and labels each task is scored on) are `rankers.funnel`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm import tqdm

from features.batch import Batch
from features.reader import ParquetBatches, parquet_files
from features.schema import Schema
from rankers.backbones.shapes import fixed_shapes
from rankers.devices import model_device, pinned, to_device
from rankers.distributed import gather_arrays
from rankers.embedding import EmbeddingArch
from rankers.funnel import task_labels
from rankers.metrics import binary_metrics

Scores = tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]


def label_counts(path: Path, schema: Schema) -> dict[str, tuple[int, int]]:
    """(rows, positives) per task over a split, on the rows where the task is measured: with click
    (ctr) and conversion (cvr) labels, cvr over the clicked rows and ctcvr over every row."""
    sums, rows = dict.fromkeys(schema.tasks, 0), 0
    for f in parquet_files(path):
        table = pq.read_table(f, columns=[lab.name for lab in schema.labels])
        rows += table.num_rows
        for lab in schema.labels:
            sums[lab.task] += int(np.asarray(table.column(lab.name)).sum())
    counts = {t: (rows, s) for t, s in sums.items()}
    if "ctr" in sums and "cvr" in sums:
        counts["ctcvr"] = (rows, sums["cvr"])
        counts["cvr"] = (sums["ctr"], sums["cvr"])
    return counts


def label_prior(path: Path, schema: Schema) -> dict[str, float]:
    """Mean of each label over a split (`label_counts`): the constant-prior baseline's prediction."""
    return {t: pos / rows if rows else 0.0 for t, (rows, pos) in label_counts(path, schema).items()}


def task_metrics(
    probs: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    prior: dict[str, float],
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """`binary_metrics` per predicted task against its label on its rows (see `task_labels`)."""
    out: dict[str, dict[str, float | int | None]] = {}
    for task, (y, rows) in task_labels(probs, labels).items():
        if not rows.any():  # no clicked rows to measure CVR on
            out[task] = {"auc": None, "logloss": None, "rows": 0, "positive_rate": None}
            continue
        g = None if groups is None else groups[rows]
        out[task] = binary_metrics(y[rows], probs[task][rows], prior.get(task), g)
    return out


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[Batch],
    progress: bool = False,
    desc: str = "eval",
    device: torch.device | None = None,
) -> Scores:
    """Probabilities and labels per task over `batches` (model put in eval mode and back), and the
    batches' user ids (for gAUC) when they carry them, else None.

    Each batch is validated on the host first (`EmbeddingArch.check`: ids within their tables,
    finite dense values), then moved to `device` (default: the model's, `model_device`). The
    outputs stay there until every batch is scored: one finiteness check and one copy to the host
    per task. A non-finite output raises ValueError naming the task and the row (its index in the
    returned arrays) instead of passing off a NaN probability. Labels and user ids are the host
    batch's own.
    """
    device = model_device(model) if device is None else device
    was_training = model.training
    model.eval()
    check = _batch_check(model)
    logits: dict[str, list[torch.Tensor]] = {}
    probs: dict[str, list[torch.Tensor]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    groups: list[np.ndarray] = []
    total = len(batches) if isinstance(batches, Sized) else None
    try:
        with tqdm(total=total, unit="batch", desc=desc, disable=not progress, leave=False) as bar:
            for i, batch in enumerate(pinned(iter(batches), device)):
                if check is not None:
                    check(batch, f"batch {i + 1}")
                with fixed_shapes(device.type != "cpu"):  # no host syncs on a GPU
                    out = model(to_device(batch, device))
                for t, logit in out.logits.items():
                    logits.setdefault(t, []).append(logit)
                    probs.setdefault(t, []).append(torch.sigmoid(logit.float()))  # per batch, as before
                for t, y in batch.labels.items():
                    labels.setdefault(t, []).append(y.cpu().numpy())
                if batch.groups is not None:
                    groups.append(batch.groups.cpu().numpy())
                bar.update()
    finally:
        model.train(was_training)
    for t, parts in logits.items():
        _check_output(t, torch.cat(parts), 0)
    return (
        {t: torch.cat(v).cpu().numpy() for t, v in probs.items()},
        {t: np.concatenate(v) for t, v in labels.items()},
        np.concatenate(groups) if groups else None,
    )


def _batch_check(model: nn.Module) -> Callable[[Batch, str], None] | None:
    """The batch check of the ranker inside `model` (plain, or wrapped by DistributedModelParallel)."""
    return next((m.check for m in model.modules() if isinstance(m, EmbeddingArch)), None)


def _check_output(task: str, logit: torch.Tensor, first_row: int) -> None:
    """Raises ValueError naming `task` and the first row (counted from `first_row`) of a NaN or
    infinite logit: a model with NaN weights must not pass off NaN probabilities. One host sync
    where every logit is finite."""
    if not logit.numel():
        return
    if bool(torch.isfinite(logit.detach()).all()):
        return
    row = int((~torch.isfinite(logit)).nonzero()[0])
    raise ValueError(
        f"task {task!r}: the model's output (logit) is {float(logit[row])} at row {first_row + row}, "
        "expected finite values (are the checkpoint's weights NaN or infinite?)"
    )


def evaluate_batches(
    model: nn.Module,
    batches: ParquetBatches,
    prior: dict[str, float],
    progress: bool = False,
    desc: str = "eval",
    device: torch.device | None = None,
) -> dict[str, dict[str, Any]]:
    """AUC, LogLoss and the prior's LogLoss per task, and gAUC when the schema names a user column.
    Each rank predicts its own rows on `device` (default: the model's, `predict`); the metrics are
    over all of them, the same on every rank."""
    probs, labels, groups = predict(model, batches, progress=progress, desc=desc, device=device)
    gathered = gather_arrays(
        {
            **{f"p_{t}": v for t, v in probs.items()},
            **{f"y_{t}": v for t, v in labels.items()},
            "groups": groups,
        }
    )
    probs = {t: gathered[f"p_{t}"] for t in probs}
    labels = {t: gathered[f"y_{t}"] for t in labels}
    return task_metrics(probs, labels, prior, gathered["groups"])


def calibrated_and_raw(
    predictor: Any, rows: Any, batch_size: int = 65_536, raw: bool = False
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics per task (`task_metrics`) of a `rankers.predictor.Predictor` on labeled `rows`:
    {"calibrated": ..., "raw": ...} where it holds a calibration and not `raw`, else {"raw": ...}
    (the model's own probabilities). The model scores the rows once, `batch_size` per forward pass,
    and the calibration maps its probabilities, as `Predictor.evaluate` does."""
    probs, labels, groups = predictor.predict_labeled(rows, batch_size, raw=True)
    own = task_metrics(probs, labels, predictor.prior, groups)
    if raw or predictor.calibration is None:
        return {"raw": own}
    calibrated = predictor.calibration.transform(probs)
    return {"calibrated": task_metrics(calibrated, labels, predictor.prior, groups), "raw": own}
