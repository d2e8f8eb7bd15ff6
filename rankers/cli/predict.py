"""`rankers predict`: probabilities per task for new rows, as a parquet file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rankers.cli.evaluate import RAW_HELP

HELP = "probabilities per task for new rows"


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    p.add_argument("--data", required=True, help="split directory or parquet file")
    p.add_argument("--out", required=True, help="parquet file to write (one column p_<task> per task)")
    p.add_argument("--raw", action="store_true", help=RAW_HELP)
    help_ = "replace an existing predictions file at --out (default: refuse)"
    p.add_argument("--overwrite", action="store_true", help=help_)


def run(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.outputs import PREDICTIONS_KEY, StagedOutput, check_apart
    from rankers.predictor import Predictor
    from rankers.results import describe_probabilities

    check_apart(args.out, [args.checkpoint, args.data])  # before anything else is said of --out
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; expected the parquet file to write")
    with StagedOutput(args.out, "predictions", args.overwrite, inputs=[args.checkpoint, args.data]) as out:
        predictor = Predictor.load(args.checkpoint)
        probs = predictor.predict_proba(args.data, raw=args.raw)
        meta = {
            PREDICTIONS_KEY: b"predictions",
            b"rankers.checkpoint": str(Path(args.checkpoint).absolute()).encode(),
            b"rankers.calibrated": b"true" if predictor.calibrated and not args.raw else b"false",
        }
        table = pa.table({f"p_{t}": p for t, p in probs.items()}).replace_schema_metadata(meta)
        try:
            pq.write_table(table, out.staging)
        except OSError as e:  # pyarrow's errors name no file
            raise OSError(e.errno, e.strerror or str(e), str(out.final)) from None
        out.commit()
    print(
        f"wrote {table.num_rows:,} predictions ({', '.join(table.column_names)}) to {args.out}: "
        + describe_probabilities(predictor, args.raw)
    )
