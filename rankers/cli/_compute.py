"""`--threads`, `--batch-size` and `--device` of the commands that score rows (evaluate, predict,
calibrate, bid): added to a parser by `add_compute_flags`, checked and applied by
`apply_compute_flags` before any work. Nothing here imports torch until the flags are applied, so
`--help` stays fast."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Rows per forward pass: `rankers.predictor.Predictor`'s default (a test holds them equal).
BATCH_SIZE = 65_536
DEVICE = "auto"  # --device's default


def add_compute_flags(parser: argparse.ArgumentParser, scored: str = "") -> None:
    """Adds `--threads N` (torch intra-op threads), `--batch-size N` (rows scored per forward
    pass) and `--device` (where the model scores them) to `parser`, in a group of their own.

    Args:
        parser: the command's parser.
        scored: what the command scores, said after the batch size's help (e.g. "with --predictor").
    """
    group = parser.add_argument_group("compute")
    group.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="torch intra-op threads used to score rows, >= 0 (0: keep torch's setting, from "
        "OMP_NUM_THREADS or the number of cores) (default: %(default)s)",
    )
    where = f" {scored}" if scored else ""
    group.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        metavar="N",
        help=f"rows scored per forward pass{where}, >= 1: memory grows with it; the probabilities "
        "are the same up to float rounding (default: %(default)s)",
    )
    group.add_argument(
        "--device",
        default=DEVICE,
        metavar="DEVICE",
        help="where the model scores rows: auto (cuda where torch sees a GPU, else cpu), cpu, cuda (this "
        "process's GPU) or cuda:N; the probabilities are the same up to float rounding "
        "(default: %(default)s)",
    )


def check_compute_flags(threads: int, batch_size: int) -> None:
    """ValueError naming `--threads` or `--batch-size` and its value when it is out of range."""
    if threads < 0:
        raise ValueError(
            f"--threads {threads}: expected an integer >= 0 (torch intra-op threads; 0 keeps the current "
            "setting)"
        )
    if batch_size < 1:
        raise ValueError(
            f"--batch-size {batch_size}: expected an integer >= 1 (rows scored per forward pass)"
        )


def apply_compute_flags(args: argparse.Namespace) -> tuple[int, torch.device]:
    """Checks `args.threads` and `args.batch_size` (`check_compute_flags`) and `args.device`
    (`rankers.devices.resolve_device`), sets torch's intra-op threads to `args.threads` unless 0,
    and returns the batch size and the device to score with.

    Raises:
        ValueError: naming the flag and its value (a GPU this machine lacks: the device and why),
            before anything is loaded or set.
    """
    check_compute_flags(args.threads, args.batch_size)
    from rankers.devices import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return int(args.batch_size), device
