"""Throughput: reader rows/s on one core, Criteo TSV conversion rows/s, and training examples/s.

    .venv/bin/python -m benchmarks.throughput [--rows 1000000] [--models mlp,autoint] [--precisions fp32]

Data: Criteo-shaped synthetic rows (13 dense, 26 categorical, cardinalities of Criteo Kaggle capped
at 1M, 5.6M table rows in all). Training: the shapes of a typical side-by-side (benchmarks/quality.py
MODELS: embedding dim 16, MLP (256, 128); AutoInt 3 layers x 2 heads x dim 16, AutoInt+ adding a
(256, 128) DNN; FinalMLP streams (256, 128), gates (256,), 2 heads), batch 4096, two torch threads,
tables through DMP with fused rowwise Adagrad, in fp32 and under bf16 autocast. "bare step" times
the sharded model on batches already in memory, so the difference to "train" (the training loop,
reading included, over the first steps of an epoch) is the loop's overhead. Each model's dense
FLOPs per example (forward and backward, torch.utils.flop_counter) over the machine's measured
fp32 matmul rate gives the share of the ceiling a step reaches. Run on an idle machine: the load
average before and after is recorded with each figure.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from benchmarks._common import (
    figure,
    header,
    latest_run,
    load_average,
    loads,
    markdown_table,
    record,
    run_readme,
)
from benchmarks.quality import MODELS as QUALITY_MODELS
from features.datasets.criteo import CriteoConfig, convert_criteo
from features.datasets.synthetic import SyntheticConfig, write_synthetic, write_synthetic_tsv
from features.reader import ParquetBatches
from features.schema import Schema
from rankers._quiet import quiet_torchrec
from rankers.config import RankerConfig, TrainConfig
from rankers.distributed import shard_ranker, single_process_group
from rankers.ranker import build_ranker
from rankers.train import train, train_step

MODELS = QUALITY_MODELS


def reader_rows_per_s(path: Path, shuffle_buffer: int, passes: int = 3) -> float:
    """Best of `passes` full passes (the first warms the page cache), pinned to one core."""
    best = 0.0
    for _ in range(passes):
        t0, rows = time.perf_counter(), 0
        for batch in ParquetBatches(path, batch_size=4096, shuffle_buffer=shuffle_buffer):
            rows += len(batch)
        best = max(best, rows / (time.perf_counter() - t0))
    return best


def bare_step_examples_per_s(
    data: Path, ranker_config: RankerConfig, precision: str, steps: int = 30
) -> float:
    """The sharded model's optimizer step alone, on 10 batches held in memory."""
    torch.manual_seed(0)
    single_process_group()
    ranker = build_ranker(Schema.load(data), ranker_config, device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, lr=1e-3, weight_decay=0.0, embedding_lr=0.05)
    batches = [b for _, b in zip(range(10), ParquetBatches(data / "train", batch_size=4096), strict=False)]
    for b in batches[:3]:
        train_step(model, ranker, optimizer, b, precision=precision)
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(model, ranker, optimizer, batches[i % len(batches)], precision=precision)
    return steps * 4096 / (time.perf_counter() - t0)


def batch_check_cost(data: Path, ranker_config: RankerConfig, steps: int = 30) -> tuple[float, float]:
    """(seconds of the Batch check alone, seconds of a whole training step that includes it) per
    4096-row batch: the medians over `steps` steps on 10 batches held in memory, each batch built
    afresh (a KJT caches its per-key lengths once computed) so the check pays for them."""
    from features.batch import BatchCheck

    torch.manual_seed(0)
    single_process_group()
    schema = Schema.load(data)
    ranker = build_ranker(schema, ranker_config, device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, lr=1e-3, weight_decay=0.0, embedding_lr=0.05)
    check = BatchCheck(schema)
    files = ParquetBatches(data / "train", batch_size=4096)
    tables = [b for _, b in zip(range(10), files, strict=False)]
    for b in tables[:3]:
        train_step(model, ranker, optimizer, b)
    fresh = [b for _, b in zip(range(steps), ParquetBatches(data / "train", batch_size=4096), strict=False)]
    check_s, step_s = [], []
    for b in fresh:
        t0 = time.perf_counter()
        check(b)
        check_s.append(time.perf_counter() - t0)
    for i in range(steps):
        t0 = time.perf_counter()
        train_step(model, ranker, optimizer, tables[i % len(tables)])
        step_s.append(time.perf_counter() - t0)
    return statistics.median(check_s), statistics.median(step_s)


def dense_flops_per_example(data: Path, ranker_config: RankerConfig) -> float:
    """Matmul FLOPs of the backbone's forward and backward per example (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from rankers.backbones import Embedded, InputSpec, build_backbone

    spec = InputSpec.from_schema(Schema.load(data), ranker_config.embedding_dim or 16)
    backbone = build_backbone(ranker_config.backbone, spec, ranker_config.backbone_config, ("ctr",))
    n = 256
    fields = torch.randn(n, len(spec.field_names), spec.embedding_dim, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = backbone(Embedded(torch.rand(n, spec.n_dense), fields, spec.field_names))
        out.logits["ctr"].sum().backward()
    return counter.get_total_flops() / n


def matmul_gflops(threads: int = 2) -> float:
    """The machine's fp32 matrix-multiply rate: best of 5 (4096 x 1024) @ (1024 x 1024) products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 1024), torch.randn(1024, 1024)
    a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 4096 * 1024 * 1024 / (time.perf_counter() - t0))
    return best / 1e9


def train_throughput(
    data: Path, work: Path, models: list[str], precisions: list[str], repeats: int, common: dict, command: str
) -> None:
    """Bare step and training loop examples/s per model and precision, repeats interleaved so
    drifts of the host show in all of them."""
    torch.set_num_threads(2)
    load = load_average()
    peak = matmul_gflops()
    print(f"fp32 matmul ceiling: {peak:.0f} GFLOP/s (2 threads)", flush=True)
    record(
        {**common, "benchmark": "matmul", "model": "-", "gflops": peak, "load_after": load_average()}, command
    )
    flops = {m: dense_flops_per_example(data, MODELS[m]) for m in models}
    for i in range(repeats):
        for m in models:
            for precision in precisions:
                config = MODELS[m]
                extra = {"model": m, "precision": precision, "repeat": i, "flops_per_example": flops[m]}
                load = load_average()
                bare = bare_step_examples_per_s(data, config, precision)
                share = bare * flops[m] / (peak * 1e9)
                print(
                    f"{m} {precision} bare step: {bare:,.0f} ex/s ({share:.0%} of the matmul ceiling)",
                    flush=True,
                )
                record(
                    {
                        **common,
                        **extra,
                        "benchmark": "train_bare_step",
                        "examples_per_s": bare,
                        "ceiling_share": share,
                        "load_before": load,
                        "load_after": load_average(),
                        "config": config.to_dict(),
                    },
                    command,
                )
                tc = TrainConfig(
                    epochs=1, batch_size=4096, threads=2, progress=False, max_steps=60, precision=precision
                )
                load = load_average()
                result = train(data, work / "ckpt", config, tc, overwrite=True)
                rate = result["history"][0]["examples_per_s"]
                print(f"{m} {precision} training loop: {rate:,.0f} ex/s", flush=True)
                record(
                    {
                        **common,
                        **extra,
                        "benchmark": "train",
                        "examples_per_s": rate,
                        "ceiling_share": rate * flops[m] / (peak * 1e9),
                        "load_before": load,
                        "load_after": load_average(),
                        "config": {"ranker": config.to_dict(), "train": tc.__dict__},
                    },
                    command,
                )


def batch_checks(data: Path, repeats: int, common: dict, command: str) -> None:
    """The API's batch checks (ids within their tables, finite dense values) against the MLP's
    training step, `repeats` times (a run of its own: `--only checks`)."""
    torch.set_num_threads(2)
    run = f"batchcheck-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    for i in range(repeats):
        load = load_average()
        check_s, step_s = batch_check_cost(data, MODELS["mlp"])
        print(f"batch check: {check_s * 1e6:,.0f} us of a {step_s * 1e3:.1f} ms MLP step", flush=True)
        row = {"check_us": check_s * 1e6, "step_ms": step_s * 1e3, "share": check_s / step_s}
        row |= {"load_before": load, "load_after": load_average(), "repeat": i}
        record({**common, "run": run, "benchmark": "batch_check", "model": "mlp", **row}, command)


REFERENCE = {
    "reader": "target >= 1,000,000 rows/s on one core",
    "convert": "FuxiCTR preprocessing about 19,000 rows/s here; target >= 190,000",
}
# FuxiCTR 2.3.10 at the same shapes on this machine class (fp32), and the targets set against it.
FUXICTR = {
    "mlp": "FuxiCTR DNN about 70,000 ex/s; target >= 91,000 (1.3x)",
    "autoint": "FuxiCTR AutoInt about 9,600 ex/s; target >= 19,200 (2x)",
    "finalmlp": "FuxiCTR FinalMLP about 16,900 ex/s; target >= 25,350 (1.5x)",
}


def _training_row(what: str, model: str, precision: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """A training figure: median examples/s over repeats, and its share of the matmul ceiling."""
    flops = rs[0].get("flops_per_example")
    share = statistics.median(r["ceiling_share"] for r in rs) if "ceiling_share" in rs[0] else None
    return {
        "model": model,
        "precision": precision or "fp32",
        "benchmark": what,
        "examples/s": figure(rs, "examples_per_s", ""),
        "MFLOP/example": flops / 1e6 if flops else None,
        "share of fp32 matmul ceiling": f"{share:.0%}" if share is not None else None,
        "reference": FUXICTR.get(model, "") if precision in ("", "fp32") else "",
        "load before/after": loads(rs),
    }


def _figure_key(r: dict[str, Any]) -> tuple[str, str, str]:
    """What a throughput row measures: the benchmark (with its shuffle buffer), model, precision."""
    buffer = f" (shuffle buffer {r['shuffle_buffer']:,})" if "shuffle_buffer" in r else ""
    return r["benchmark"] + buffer, r.get("model", "-"), r.get("precision") or "fp32"


def _latest_per_figure(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each figure's rows from the latest run that measured it: a run of some figures only
    (`--only convert`) replaces those and leaves the others' latest runs in the table."""
    runs = [r for r in rows if str(r.get("run", "")).startswith("throughput-")]
    last = {_figure_key(r): r["run"] for r in runs}
    return [r for r in runs if last[_figure_key(r)] == r["run"]]


def _render_throughput(rows: list[dict[str, Any]]) -> str:
    """The Throughput section: reading and conversion rows/s, then training examples/s; one
    header per run the figures come from (a row's run: its `measured` time)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[_figure_key(r)].append(r)
    several = len({r["run"] for r in rows}) > 1
    io, training, peak = [], [], None
    for (what, model, precision), rs in groups.items():
        if what == "matmul":
            peak = rs[0]["gflops"]
        elif "rows_per_s" in rs[0]:
            io.append(
                {
                    "benchmark": what,
                    "figure": figure(rs, "rows_per_s", "rows/s"),
                    "reference": REFERENCE.get(what.split(" ")[0], ""),
                    "load before/after": loads(rs),
                }
                | ({"measured": rs[0]["time"]} if several else {})
            )
        else:
            training.append(
                _training_row(what, model, precision, rs) | ({"measured": rs[0]["time"]} if several else {})
            )
    runs = dict.fromkeys(r["run"] for r in rows)
    headers = "\n".join(header([r for r in rows if r["run"] == run]) for run in runs)
    out = f"## Throughput\n\n{headers}Data: {rows[0]['dataset']}\n\n"
    if io:
        out += markdown_table(io, list(io[0])) + "\n\n"
    if training:
        if peak:
            out += f"Training, batch 4096, 2 threads; fp32 matmul ceiling measured {peak:.0f} GFLOP/s.\n\n"
        out += markdown_table(training, list(training[0])) + "\n"
    return out


def _render_batch_checks(rows: list[dict[str, Any]]) -> str:
    """The Batch checks section: the API's batch checks against the MLP's training step."""
    share = statistics.median(r["share"] for r in rows)
    table = [
        {
            "repeat": r["repeat"],
            "check per 4096-row batch": f"{r['check_us']:,.0f} us",
            "MLP training step": f"{r['step_ms']:.1f} ms",
            "share": f"{r['share']:.2%}",
            "load before/after": f"{r['load_before']:.2f} / {r['load_after']:.2f}",
        }
        for r in rows
    ]
    return (
        "## Batch checks\n\n"
        "Every batch the Predictor, training and evaluation take is checked as the parquet reader\n"
        "checks files (ids within their tables, finite dense values: `features.batch.BatchCheck`).\n"
        f"Its median cost is {share:.2%} of the MLP's training step (target under 2%): the check\n"
        "alone on freshly read batches, against whole training steps (which include it) of the\n"
        "MLP at the throughput shapes, batch 4096.\n\n"
        f"{header(rows)}Data: {rows[0]['dataset']}\n\n" + markdown_table(table, list(table[0])) + "\n"
    )


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Throughput and Batch checks sections, each from its latest run."""
    throughput, checks = _latest_per_figure(rows), latest_run(rows, "batchcheck-")
    sections = [_render_throughput(throughput) if throughput else ""]
    sections.append(_render_batch_checks(checks) if checks else "")
    return "\n".join(s for s in sections if s)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="training measurements (median reported)")
    parser.add_argument(
        "--only",
        choices=["reader", "convert", "train", "checks"],
        action="append",
        help="measure only these (repeatable); default reader, convert and train; checks: the batch "
        "checks' share of the MLP step (a run of its own)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, of fp32, bf16")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    precisions = [p for p in args.precisions.split(",") if p]
    only = set(args.only or ["reader", "convert", "train"])
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run = f"throughput-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    common = {"run": run, "dataset": f"synthetic criteo-shaped {args.rows:,} rows"}
    with tempfile.TemporaryDirectory() as tmp, quiet_torchrec():
        work = Path(tmp)
        config = SyntheticConfig(rows=args.rows, max_vocab=1_000_000, split=(0.9, 0.05, 0.05))
        data = write_synthetic(work / "data", config, progress=False)
        if "reader" in only:
            load = load_average()
            all_cores = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(all_cores)})
            pa.set_cpu_count(1)
            pa.set_io_thread_count(1)
            torch.set_num_threads(1)
            for buffer in (0, 262_144):
                rate = reader_rows_per_s(data / "train", buffer)
                print(f"reader (1 core, shuffle buffer {buffer:,}): {rate:,.0f} rows/s", flush=True)
                record(
                    {
                        **common,
                        "benchmark": "reader",
                        "model": "-",
                        "shuffle_buffer": buffer,
                        "rows_per_s": rate,
                        "load_before": load,
                        "load_after": load_average(),
                    },
                    command,
                )
            os.sched_setaffinity(0, all_cores)
            pa.set_cpu_count(len(all_cores))
        if "convert" in only:
            tsv = write_synthetic_tsv(work / "criteo.tsv", config, progress=False)
            load = load_average()
            t0 = time.perf_counter()
            convert_criteo(tsv, work / "converted", CriteoConfig(), progress=False)
            rate = args.rows / (time.perf_counter() - t0)
            print(f"convert criteo TSV -> parquet: {rate:,.0f} rows/s ({tsv.stat().st_size / 2**20:.0f} MiB)")
            record(
                {
                    **common,
                    "benchmark": "convert",
                    "model": "-",
                    "rows_per_s": rate,
                    "bytes": tsv.stat().st_size,
                    "load_before": load,
                    "load_after": load_average(),
                },
                command,
            )
        if "train" in only:
            train_throughput(data, work, models, precisions, args.repeats, common, command)
        if "checks" in only:
            batch_checks(data, args.repeats, common, command)
    run_readme()


if __name__ == "__main__":
    main()
