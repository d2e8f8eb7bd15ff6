"""`rankers predict`: probabilities per task for new rows, as a parquet file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rankers.cli._compute import add_compute_flags, apply_compute_flags
from rankers.cli.evaluate import RAW_HELP

HELP = "probabilities per task for new rows"


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    help_ = (
        "rows to score: a converted split directory or parquet file, or, for a checkpoint trained on "
        "`rankers convert table` data, raw rows in the spec's format (CSV/TSV, gzip, parquet)"
    )
    p.add_argument("--data", required=True, help=help_)
    help_ = (
        "parquet file to write: the spec's pass-through keys and the --keep columns, then p_<task> per "
        "task, a row per input row"
    )
    p.add_argument("--out", required=True, help=help_)
    help_ = (
        "comma-separated columns of --data to copy beside the predictions, as read (raw rows: any "
        "column; a converted split: the keys its converter wrote) (default: the spec's keys only)"
    )
    p.add_argument("--keep", default="", metavar="COL,...", help=help_)
    p.add_argument("--raw", action="store_true", help=RAW_HELP)
    help_ = "replace an existing predictions file at --out (default: refuse)"
    p.add_argument("--overwrite", action="store_true", help=help_)
    add_compute_flags(p)


def run(args: argparse.Namespace) -> None:
    import json

    import pyarrow.parquet as pq

    from features.outputs import PREDICTIONS_KEY, StagedOutput, check_apart
    from rankers.predictor import Predictor
    from rankers.results import describe_probabilities

    batch_size, device = apply_compute_flags(args)
    check_apart(args.out, [args.checkpoint, args.data])  # before anything else is said of --out
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; expected the parquet file to write")
    with StagedOutput(args.out, "predictions", args.overwrite, inputs=[args.checkpoint, args.data]) as out:
        predictor = Predictor.load(args.checkpoint, device)
        keep = [c.strip() for c in args.keep.split(",") if c.strip()]
        table = predictor.predict_table(args.data, keep, batch_size, raw=args.raw)
        calibration = None if args.raw else predictor.calibration
        methods = {t: c.method for t, c in calibration.tasks.items()} if calibration else {}
        meta = {
            PREDICTIONS_KEY: b"predictions",
            b"rankers.checkpoint": str(Path(args.checkpoint).absolute()).encode(),
            b"rankers.calibrated": b"true" if calibration else b"false",
            b"rankers.calibration": json.dumps(methods).encode(),  # task -> method; {} uncalibrated
        }
        table = table.replace_schema_metadata(meta)
        try:
            pq.write_table(table, out.staging)
        except OSError as e:  # pyarrow's errors name no file
            raise OSError(e.errno, e.strerror or str(e), str(out.final)) from None
        out.commit()
    print(
        f"wrote {table.num_rows:,} predictions ({', '.join(table.column_names)}) to {args.out}: "
        + describe_probabilities(predictor, args.raw)
    )
