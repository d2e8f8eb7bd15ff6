"""One process against two: training examples/s, peak memory per process and table bytes per rank.

    .venv/bin/python -m benchmarks.scaling [--rows 1000000] [--max-vocab 2500000] [--steps 120]

Data: synthetic Criteo-shaped rows (features/datasets/synthetic.py) with the 26 tables' cardinalities
capped at `--max-vocab` (2.5M: about 12.8M table rows in all), embedding dim 64, so the tables
(about 3.3 GB) are what sharding is for. Each configuration runs `rankers train` in fresh
processes (`--nproc`, torchrun) for `--steps` steps of a 4096-row global batch, MLP (256, 128),
table-wise sharding. Two CPU cores bound what scaling can show here: two processes get one core
each where one process gets two threads.
Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

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
from features.datasets.synthetic import SyntheticConfig, write_synthetic


def run(data: Path, out: Path, nproc: int, steps: int) -> dict:
    threads = 2 // nproc  # the machine's two cores, shared out
    command = [
        sys.executable,
        "-m",
        "rankers",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--overwrite",
    ]
    command += [
        "--nproc",
        str(nproc),
        "--embedding-dim",
        "64",
        "--hidden-units",
        "256,128",
        "--batch-size",
        "4096",
    ]
    command += ["--epochs", "1", "--max-steps", str(steps), "--threads", str(threads), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def render(rows: list[dict[str, Any]]) -> str:
    """The README's One process against two section, from the latest run."""
    rs = latest_run([r for r in rows if r.get("benchmark") == "scaling"], "scaling-")
    if not rs:
        return ""
    by: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        by[r["processes"]].append(r)
    table = [
        {
            "processes": n,
            "training loop": figure(group, "examples_per_s", "ex/s"),
            "peak RSS per process (MB)": ", ".join(f"{m:,.0f}" for m in group[-1]["peak_rss_mb"]),
            "table bytes per rank (plan)": ", ".join(f"{b:,}" for b in group[-1]["table_bytes_per_rank"]),
            "load before / after": loads(group),
        }
        for n, group in sorted(by.items())
    ]
    return (
        f"## One process against two (benchmarks/scaling.py)\n\n{rs[0]['dataset']}.  \n{header(rs)}\n"
        + markdown_table(table, list(table[0]))
        + "\n\nTwo CPU cores bound what scaling can show here: two processes get one core each where one "
        "process gets two threads, so the gain to look for is memory per process (the tables split "
        "table-wise), not speed. No GPU machine was lent to this session.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-vocab", type=int, default=2_500_000)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run_id = f"scaling-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        config = SyntheticConfig(rows=args.rows, max_vocab=args.max_vocab, split=(1.0, 0.0, 0.0))
        data = write_synthetic(Path(tmp) / "data", config, progress=False)
        table_rows = sum(config.cardinalities)
        for i in range(args.repeats):
            for nproc in (1, 2):
                load = load_average()
                metrics = run(data, Path(tmp) / "ckpt", nproc, args.steps)
                plan = metrics["sharding_plan"]
                per_rank = [sum(row.get(f"bytes rank {r}", 0) for row in plan) for r in range(nproc)]
                rate = metrics["history"][0]["examples_per_s"] * nproc  # rank 0's rows, times the ranks
                print(f"{nproc} process(es): {rate:,.0f} ex/s, peak RSS {metrics['peak_rss_mb']} MB, "
                      f"table bytes per rank {per_rank}", flush=True)  # fmt: skip
                record(
                    {
                        "benchmark": "scaling",
                        "dataset": f"synthetic {args.rows:,} rows, {table_rows:,} table rows, dim 64",
                        "run": run_id,
                        "model": "mlp",
                        "processes": nproc,
                        "repeat": i,
                        "examples_per_s": rate,
                        "peak_rss_mb": metrics["peak_rss_mb"],
                        "table_bytes_per_rank": per_rank,
                        "load_before": load,
                        "load_after": load_average(),
                    },
                    command,
                )
    run_readme()


if __name__ == "__main__":
    main()
