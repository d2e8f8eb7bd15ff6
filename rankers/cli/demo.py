"""`rankers demo`: synthetic data -> train -> evaluate -> calibrate -> bidding replay
(`rankers.demo.run_demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

HELP = "synthetic data -> train -> evaluate -> calibrate -> bidding replay"


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    help_ = "directory for the synthetic data and the checkpoint (default: %(default)s)"
    p.add_argument("--out", default="build/demo", help=help_)
    help_ = "synthetic rows in all, 80%% train, 10%% valid, 10%% test (default: %(default)s)"
    p.add_argument("--rows", type=int, default=250_000, help=help_)
    help_ = "replace the data and checkpoint of an earlier demo at --out (default: refuse)"
    p.add_argument("--overwrite", action="store_true", help=help_)


def run(args: argparse.Namespace) -> None:
    from rankers.demo import run_demo

    run_demo(args.out, args.rows, args.overwrite)
