"""`rankers evaluate`: AUC/LogLoss of a checkpoint on labeled rows; where the checkpoint holds a
calibration, of its calibrated probabilities and of the model's own, from one pass of the model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankers.cli._compute import add_compute_flags, apply_compute_flags

HELP = "AUC/LogLoss of a checkpoint on labeled rows"
RAW_HELP = "score with the model's own probabilities, not the checkpoint's calibration (default: calibrated)"
EVALUATE_RAW_HELP = (
    "only the model's own probabilities (default: where the checkpoint holds a calibration, rows for the "
    "calibrated probabilities and for the model's own)"
)


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    p.add_argument("--data", help="split directory or parquet file (default: the training data's test split)")
    p.add_argument("--raw", action="store_true", help=EVALUATE_RAW_HELP)
    add_compute_flags(p)


def run(args: argparse.Namespace) -> None:
    from features.dataset import dataset_info
    from rankers.checkpoint import CheckpointDir
    from rankers.evaluation import calibrated_and_raw
    from rankers.predictor import Predictor
    from rankers.results import describe_probabilities, results_table

    batch_size, device = apply_compute_flags(args)
    predictor = Predictor.load(args.checkpoint, device)
    data = Path(args.data) if args.data else Path(CheckpointDir(args.checkpoint).settings().data) / "test"
    split = data.name if data.name in ("train", "valid", "test") else "rows"
    metrics = calibrated_and_raw(predictor, data, batch_size, raw=args.raw)
    both = len(metrics) == 2  # the calibrated probabilities' row, then the model's own
    model = "checkpoint, calibrated" if both else "checkpoint"
    result: dict[str, Any] = {split: next(iter(metrics.values()))}
    teacher = dataset_info(data.parent).get("teacher", {})
    if teacher.get(data.name):
        result["teacher"] = {split: teacher[data.name]}
    others = {"checkpoint, raw": {split: metrics["raw"]}} if both else {}
    table = results_table(result, model, splits=(split,), others=others)
    print(f"{data}: {describe_probabilities(predictor, args.raw, both=both)}\n\n{table}")
