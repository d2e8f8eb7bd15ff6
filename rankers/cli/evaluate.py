"""`rankers evaluate`: AUC/LogLoss of a checkpoint on labeled rows."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELP = "AUC/LogLoss of a checkpoint on labeled rows"
RAW_HELP = "score with the model's own probabilities, not the checkpoint's calibration (default: calibrated)"


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    p.add_argument("--data", help="split directory or parquet file (default: the training data's test split)")
    p.add_argument("--raw", action="store_true", help=RAW_HELP)


def run(args: argparse.Namespace) -> None:
    from features.dataset import dataset_info
    from rankers.checkpoint import CheckpointDir
    from rankers.predictor import Predictor
    from rankers.results import describe_probabilities, results_table

    predictor = Predictor.load(args.checkpoint)
    data = Path(args.data) if args.data else Path(CheckpointDir(args.checkpoint).settings().data) / "test"
    split = data.name if data.name in ("train", "valid", "test") else "rows"
    result: dict[str, Any] = {split: predictor.evaluate(data, raw=args.raw)}
    teacher = dataset_info(data.parent).get("teacher", {})
    if teacher.get(data.name):
        result["teacher"] = {split: teacher[data.name]}
    print(
        f"{data}: {describe_probabilities(predictor, args.raw)}\n\n"
        + results_table(result, "checkpoint", splits=(split,))
    )
