"""The CPU kernels (rankers/kernels) against the formulas they replace, the ops timed alone.

    .venv/bin/python -m benchmarks.kernels [--repeats 10]

- attention: AutoInt's self-attention over field tokens at its benchmark shapes (batch 4096, 2
  heads of dim 8; T = 39 tokens with the numeric fields, 26 without), from the QKV projection's
  output (B, T, 3, H, d) to the (B, T, H, d) output and back: the reference formulas (heads folded
  into the batch, batched matmuls and softmax, `rankers.kernels.attention.reference_attention`)
  against the fused kernel.
- gru: DIEN's two recurrences at UserBehavior's shape (batch 1024, histories up to 50, half at the
  cap, mean about 37; W = 32: item and category vectors of 16): the interest extractor (GRU, every
  state) and the evolving AUGRU (final state), forward and backward, step by step in torch ops
  (`JaggedGRU` with the fused op switched off) against the packed op.

Two threads, float32, the median of `--repeats` timings after 3 warm-up passes; forward and
backward timed apart. Run on an idle machine: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch

from benchmarks._common import header, latest_run, load_average, markdown_table, record, run_readme
from rankers.backbones.dien import JaggedGRU
from rankers.kernels.attention import field_attention, fused_applies, reference_attention
from rankers.kernels.gru import fused_applies as gru_applies

Pass = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (output to differentiate, its gradient)


def _time(run: Pass, repeats: int) -> tuple[float, float]:
    """Median forward and backward milliseconds of `run`."""
    fwd, bwd = [], []
    for i in range(3 + repeats):
        t0 = time.perf_counter()
        out, grad = run()
        t1 = time.perf_counter()
        out.backward(grad)
        t2 = time.perf_counter()
        if i >= 3:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    return statistics.median(fwd), statistics.median(bwd)


def attention_passes(batch: int, tokens: int) -> dict[str, Pass]:
    qkv = torch.randn(batch, tokens, 3, 2, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    grad = torch.ones(batch, tokens, 2, 8)
    return {
        "reference": lambda: (reference_attention(qkv, 1.0), grad),
        "fused": lambda: (field_attention(qkv, 1.0), grad),
    }


def gru_passes(batch: int) -> dict[str, Pass]:
    g = torch.Generator().manual_seed(0)
    length, width = 50, 32
    lengths = torch.where(
        torch.rand(batch, generator=g) < 0.5,
        torch.full((batch,), length),
        torch.randint(1, length, (batch,), generator=g),
    )
    mask = torch.arange(length) < lengths.unsqueeze(1)
    x = (torch.randn(batch, length, width, generator=g) * mask.unsqueeze(2)).requires_grad_()
    scores = torch.rand(batch, length, generator=g).requires_grad_()
    extractor, evolving = JaggedGRU(width), JaggedGRU(width, "AUGRU")

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        states, _ = extractor(x, mask)
        _, final = evolving(states, mask, scores, all_states=False)
        out = states.sum() + final.sum()
        return out, torch.ones_like(out)

    def steps() -> tuple[torch.Tensor, torch.Tensor]:
        with mock.patch("rankers.backbones.dien.packed_fused_applies", lambda _: False):
            return both()

    return {"reference": steps, "fused": both}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per case, >= 1 (default 10)")
    parser.add_argument(
        "--attention-batch", type=int, default=4096, help="examples per attention pass (default 4096)"
    )
    parser.add_argument("--gru-batch", type=int, default=1024, help="rows per GRU pass (default 1024)")
    args = parser.parse_args()
    if min(args.repeats, args.attention_batch, args.gru_batch) < 1:
        parser.error("--repeats, --attention-batch and --gru-batch must be >= 1")
    torch.set_num_threads(2)
    if not (fused_applies(torch.zeros(1, 1, 3, 1, 8)) and gru_applies(torch.zeros(1))):
        parser.error("the kernels are not available here (see the warning above); nothing to compare")
    command = shlex.join(["python", "-m", "benchmarks.kernels", *sys.argv[1:]])
    run = f"kernels-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    cases = [
        (
            "attention",
            f"B {args.attention_batch}, T 39, 2 heads x 8",
            attention_passes(args.attention_batch, 39),
        ),
        (
            "attention",
            f"B {args.attention_batch}, T 26, 2 heads x 8",
            attention_passes(args.attention_batch, 26),
        ),
        ("gru", f"B {args.gru_batch}, L 50 (mean 37), W 32, GRU + AUGRU", gru_passes(args.gru_batch)),
    ]
    for kernel, shape, passes in cases:
        load = load_average()
        times = {name: _time(p, args.repeats) for name, p in passes.items()}
        row: dict[str, Any] = {"kernel": kernel, "shape": shape, "run": run, "load_before": load}
        for name, (fwd, bwd) in times.items():
            row |= {f"{name}_forward_ms": fwd, f"{name}_backward_ms": bwd}
        row["load_after"] = load_average()
        ref, fused = sum(times["reference"]), sum(times["fused"])
        print(
            f"{kernel} ({shape}): reference {ref:.1f} ms, fused {fused:.1f} ms, {ref / fused:.2f}x",
            flush=True,
        )
        record({"benchmark": "kernels", **row}, command)
    run_readme()


def _pair(row: dict[str, Any], kind: str) -> str:
    return f"{row[f'{kind}_forward_ms']:.1f} + {row[f'{kind}_backward_ms']:.1f}"


def render(rows: list[dict[str, Any]]) -> str:
    """The README's section: the latest run."""
    rows = latest_run(rows, "kernels-")
    if not rows:
        return ""
    table = []
    for r in rows:
        ref, fused = (r[f"{k}_forward_ms"] + r[f"{k}_backward_ms"] for k in ("reference", "fused"))
        table.append(
            {
                "kernel": r["kernel"],
                "shape": r["shape"],
                **{f"{k} ms (forward + backward)": _pair(r, k) for k in ("reference", "fused")},
                "speed-up": f"{ref / fused:.2f}x",
                "load before/after": f"{r['load_before']:.2f} / {r['load_after']:.2f}",
            }
        )
    return (
        f"## The CPU kernels against the formulas they replace (benchmarks/kernels.py)\n\n{header(rows)}"
        "2 threads, float32, medians; the ops timed alone (see the script's docstring).\n\n"
        f"{markdown_table(table, list(table[0]))}\n"
    )


if __name__ == "__main__":
    main()
