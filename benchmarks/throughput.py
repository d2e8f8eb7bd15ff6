"""Throughput: reader rows/s on one core, Criteo TSV conversion rows/s, and training examples/s.

    .venv/bin/python benchmarks/throughput.py [--rows 1000000]

Data: Criteo-shaped synthetic rows (13 dense, 26 categorical, cardinalities of Criteo Kaggle capped
at 1M, 5.6M table rows in all). Training: MLP (256, 128), embedding dim 16, batch 4096, two torch
threads, tables through DMP with fused rowwise Adagrad; "bare step" times the same sharded model
on batches already in memory, so the difference is the loop's overhead (reading included).
Run on an idle machine: the load average before and after is recorded with each figure.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import load_average, record
from benchmarks.readme import write_readme
from features.criteo import CriteoConfig, convert_criteo
from features.reader import ParquetBatches
from features.schema import Schema
from features.synthetic import SyntheticConfig, write_synthetic, write_synthetic_tsv
from rankers.distributed import shard_ranker, single_process_group
from rankers.ranker import RankerConfig, build_ranker
from rankers.train import TrainConfig, train, train_step

MLP = RankerConfig(backbone="mlp", embedding_dim=16, backbone_config={"hidden_units": (256, 128)})


def reader_rows_per_s(path: Path, shuffle_buffer: int, passes: int = 3) -> float:
    """Best of `passes` full passes (the first warms the page cache), pinned to one core."""
    best = 0.0
    for _ in range(passes):
        t0, rows = time.perf_counter(), 0
        for batch in ParquetBatches(path, batch_size=4096, shuffle_buffer=shuffle_buffer):
            rows += len(batch)
        best = max(best, rows / (time.perf_counter() - t0))
    return best


def bare_step_examples_per_s(data: Path, steps: int = 60) -> float:
    """The sharded model's optimizer step alone, on 20 batches held in memory."""
    torch.manual_seed(0)
    single_process_group()
    ranker = build_ranker(Schema.load(data), MLP, device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, lr=1e-3, weight_decay=0.0, embedding_lr=0.05)
    batches = [b for _, b in zip(range(20), ParquetBatches(data / "train", batch_size=4096), strict=False)]

    for b in batches[:5]:
        train_step(model, ranker, optimizer, b)
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(model, ranker, optimizer, batches[i % len(batches)])
    return steps * 4096 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="training measurements (median reported)")
    parser.add_argument("--only", choices=["reader", "convert", "train"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["reader", "convert", "train"])
    command = "python benchmarks/throughput.py " + shlex.join(sys.argv[1:])
    run = f"throughput-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    common = {"run": run, "dataset": f"synthetic criteo-shaped {args.rows:,} rows"}
    with tempfile.TemporaryDirectory() as tmp:
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
            torch.set_num_threads(2)
            tc = TrainConfig(epochs=1, batch_size=4096, threads=2, progress=False)
            for i in range(args.repeats):  # interleaved, so drifts of the host show in both
                load = load_average()
                bare = bare_step_examples_per_s(data)
                print(f"bare DMP step: {bare:,.0f} examples/s", flush=True)
                record(
                    {
                        **common,
                        "benchmark": "train_bare_step",
                        "model": "mlp",
                        "examples_per_s": bare,
                        "repeat": i,
                        "load_before": load,
                        "load_after": load_average(),
                        "config": MLP.to_dict(),
                    },
                    command,
                )
                load = load_average()
                result = train(data, work / "ckpt", MLP, tc, overwrite=True)
                rate = result["history"][0]["examples_per_s"]
                print(f"training loop (reader, DMP, fused Adagrad, Adam): {rate:,.0f} examples/s", flush=True)
                record(
                    {
                        **common,
                        "benchmark": "train",
                        "model": "mlp",
                        "examples_per_s": rate,
                        "repeat": i,
                        "load_before": load,
                        "load_after": load_average(),
                        "config": {"ranker": MLP.to_dict(), "train": tc.__dict__},
                    },
                    command,
                )
    write_readme()


if __name__ == "__main__":
    main()
