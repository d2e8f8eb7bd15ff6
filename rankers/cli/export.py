"""`rankers export`: a checkpoint -> one TorchScript file with quantized tables, for serving
(`rankers.serving.export`; loaded by `torch.jit.load` without this library, or `rankers.serving.load`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

HELP = "a checkpoint -> one TorchScript file (quantized tables) that scores rows without rankers"
QUANTIZE = ("none", "fp16", "int8", "int4")  # rankers.serving.export.QUANTIZE (a test holds them equal)


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    p.add_argument("--out", required=True, help="the artifact file to write (TorchScript, e.g. model.pt)")
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default="int8",
        help="embedding table precision: none (fp32), fp16, int8 (rowwise, fbgemm's kernels) or int4 "
        "(default: %(default)s)",
    )
    help_ = "replace an existing artifact at --out (default: refuse)"
    p.add_argument("--overwrite", action="store_true", help=help_)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from features.outputs import StagedOutput, check_apart
    from rankers.serving.export import export

    check_apart(args.out, [args.checkpoint])
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; expected the artifact file to write")
    with StagedOutput(args.out, "artifact", args.overwrite, inputs=[args.checkpoint]) as out:
        export(args.checkpoint, out.staging, args.quantize)
        out.commit()
    size = Path(args.out).stat().st_size
    print(
        f"wrote {args.out} ({size / 2**20:.1f} MiB, tables {args.quantize}); load it with torch.jit.load "
        "(import fbgemm_gpu first) or rankers.serving.load"
    )
