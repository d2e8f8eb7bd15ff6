"""`rankers`: one entry point with a subcommand per module of this package.

rankers convert criteo train.txt --out data/criteo --min-count 10
rankers convert synthetic --out data/synth --rows 1000000
rankers train --data data/criteo --out runs/mlp --backbone mlp --hidden-units 256,128
rankers train --backbone din --help        (the backbone's own flags)
rankers evaluate --checkpoint runs/mlp [--data data/criteo/test]
rankers predict --checkpoint runs/mlp --data data/new/test --out preds.parquet
rankers calibrate --checkpoint runs/mlp
rankers export --checkpoint runs/mlp --out mlp.pt --quantize int8
rankers bid --data data/criteo/test --predictor runs/mlp
rankers demo --out build/demo

Each subcommand module has `HELP` (its line in `rankers --help`), `configure(parser, argv)` (its
flags; only the command being run is configured, so `--help` imports nothing heavy) and `run(args)`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from rankers._quiet import quiet_torchrec
from rankers.cli import bid, calibrate, convert, demo, evaluate, export, predict, train

COMMANDS: dict[str, ModuleType] = {
    "convert": convert,
    "train": train,
    "evaluate": evaluate,
    "calibrate": calibrate,
    "bid": bid,
    "predict": predict,
    "export": export,
    "demo": demo,
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `rankers` parser; with `argv`, only the subcommand it names gets its flags (the others
    their help line), else every subcommand does."""
    parser = argparse.ArgumentParser(prog="rankers", description="CTR/CVR ranking on TorchRec embeddings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level (default: INFO)")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the full traceback instead of one line (also RANKERS_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if a in COMMANDS), None) if argv is not None else None
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", None))
        if argv is None or name == chosen:
            module.configure(p, argv)
            p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `rankers ARGV`; returns the exit code (2: the user's input or the machine, one line on
    stderr; 1: a bug of ours; 130: interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv
    # Epoch summaries (rankers.train logs them at INFO) and warnings (a converter's empty split,
    # an over-confident selected epoch) are part of the CLI's output, on stderr beside the bars.
    handler = logging.StreamHandler()
    handler.setFormatter(_Format("%(message)s"))
    loggers = [logging.getLogger("rankers"), logging.getLogger("features")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
            logger.setLevel(logging.WARNING)
    debug = args.debug or os.environ.get("RANKERS_DEBUG", "") not in ("", "0")
    try:
        with quiet_torchrec():
            args.func(args)
    except (ValueError, OSError) as e:  # the user's input or the machine: one line, exit 2
        if debug:
            raise
        print(f"rankers: error: {fault_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rankers: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line, with the way to the traceback
        if debug:
            raise
        print(
            f"rankers: internal error: {type(e).__name__}: {fault_line(e)} (rerun with --debug or "
            "RANKERS_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return 0


class _Format(logging.Formatter):
    """The message alone; a warning says that it is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def fault_line(e: BaseException) -> str:
    """One line for an error: an OS error as its path and cause (a full disk said as such)."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or "rankers"
        cause = e.strerror[0].lower() + e.strerror[1:]
        if e.errno == errno.ENOSPC:
            cause = "no space left on device (the disk is full)"
        elif e.errno in (errno.EACCES, errno.EPERM):
            cause = "permission denied (the path is not writable or readable by this user)"
        elif e.errno == errno.EROFS:
            cause = "read-only file system"
        return f"{where}: {cause}"
    text = " ".join(str(e).split())  # messages of other libraries may span lines
    return text or type(e).__name__
