"""`rankers calibrate`: a calibration map per task fitted on the valid split, checked by
cross-validation, and saved in the checkpoint (`rankers.bidding.fit.calibrate_checkpoint`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rankers.bidding.fit import CalibrateOptions
from rankers.cli._compute import add_compute_flags, apply_compute_flags

HELP = "fit isotonic or Platt calibration, checked by cross-validation; saved in the checkpoint"
DESCRIPTION = (
    "Fits a calibration map per task on the valid split and saves it in the checkpoint "
    "(calibration.json, with calibration.md and a PNG), unless a task's map makes held-out ECE "
    "worse or was fitted on too few positive or negative rows: then it exits 2 and writes nothing."
)


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    d = CalibrateOptions()
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to calibrate (and save into)")
    p.add_argument("--valid", help="labeled rows to fit on (default: the training data's valid split)")
    p.add_argument("--test", help="labeled rows to measure ECE on (default: the training data's test split)")
    p.add_argument(
        "--method",
        choices=["auto", "isotonic", "platt", "identity"],
        default=d.method,
        help="auto (per task, whichever of isotonic and platt lowers the held-out ECE most, else the "
        "model's own probabilities), isotonic (a monotone step map, for a few thousand rows or more), "
        "platt (a logistic map of the logit: two parameters, steadier on small splits) or identity (the "
        "model's own probabilities, kept off 0 and 1, with their sigma) (default: %(default)s)",
    )
    help_ = "calibration bins that give each value's sigma (default: %(default)s)"
    p.add_argument("--bins", type=int, default=d.bins, metavar="N", help=help_)
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        default=d.folds,
        help="K of the K-fold check: each fold calibrated by a map fitted on the others, for held-out ECE; "
        "2 or more, fewer used where a class has fewer rows (default: %(default)s)",
    )
    p.add_argument(
        "--min-positives",
        type=int,
        metavar="N",
        default=d.min_positives,
        help="refuse a task whose valid rows hold fewer positives (cvr: clicked rows that converted) "
        "(default: %(default)s)",
    )
    help_ = "refuse a task whose valid rows hold fewer negatives (default: %(default)s)"
    p.add_argument("--min-negatives", type=int, metavar="N", default=d.min_negatives, help=help_)
    p.add_argument(
        "--force",
        action="store_true",
        help="save even when a task fails the check (too few rows, worse held-out ECE); the report says "
        "forced (default: refuse)",
    )
    add_compute_flags(p)


def run(args: argparse.Namespace) -> None:
    from rankers.bidding.fit import calibrate_checkpoint

    batch_size, device = apply_compute_flags(args)
    fields = ("method", "bins", "folds", "min_positives", "min_negatives", "force")
    options = CalibrateOptions(**{k: getattr(args, k) for k in fields}, batch_size=batch_size)
    text, saved = calibrate_checkpoint(args.checkpoint, args.valid, args.test, options, device)
    print(text + "\nsaved " + ", ".join(map(str, saved)))
