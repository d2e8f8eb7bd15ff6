"""Conversion by spec against the dedicated Criteo converter (the target: within 20% of its rows/s,
with and without hashing).

    .venv/bin/python -m benchmarks.conversion [--rows 1000000] [--repeats 2]

The input is one Criteo-format TSV of teacher-generated rows (`write_synthetic_tsv`, vocabularies
up to 1,000,000 per column). Three roads convert it, interleaved, `--repeats` times each:
`rankers convert criteo` (defaults), `rankers convert table` with `examples/criteo/spec.toml` (the
same dataset, a test holds it), and the same spec with every categorical column hashed into 2^20
buckets (no vocabulary pass). Each figure is rows over the whole conversion's wall time (both passes,
writing, dataset.json). Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._common import header, latest_run, load_average, markdown_table, record, run_readme

ROOT = Path(__file__).resolve().parents[1]
HASH_BUCKETS = 1 << 20
ROADS = {
    "criteo": "`rankers convert criteo` (defaults)",
    "spec": "`rankers convert table`, examples/criteo/spec.toml",
    "spec_hashed": f"the same spec, C1..C26 hashed into {HASH_BUCKETS:,} buckets",
}
TARGET = 0.8  # of the Criteo converter's rows/s


def convert_once(road: str, tsv: Path, out: Path) -> float:
    """Seconds of one conversion of `tsv` by `road` into `out`."""
    from features.datasets.criteo import convert_criteo
    from features.datasets.table import convert_table
    from features.spec import load_spec

    spec = load_spec(ROOT / "examples/criteo/spec.toml")
    if road == "spec_hashed":
        hashed = tuple(
            replace(c, hash_buckets=HASH_BUCKETS) if c.role == "categorical" else c for c in spec.columns
        )
        spec = replace(spec, columns=hashed)
    start = time.perf_counter()
    if road == "criteo":
        convert_criteo(tsv, out, overwrite=True, progress=False)
    else:
        convert_table(tsv, spec, out, overwrite=True, progress=False)
    return time.perf_counter() - start


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Conversion by spec section: the latest run."""
    rows = latest_run(rows, "conversion-")
    if not rows:
        return ""
    rates = {road: statistics.median(r["rows_per_s"] for r in rows if r["road"] == road) for road in ROADS}
    table = [
        {
            "road": text,
            "rows/s (median)": f"{rates[road]:,.0f}",
            "of convert criteo": f"{rates[road] / rates['criteo']:.2f}x",
            f"within {1 - TARGET:.0%}": "-"
            if road == "criteo"
            else "yes"
            if rates[road] >= TARGET * rates["criteo"]
            else "**no**",
            "load before/after": ", ".join(
                f"{r['load_before']:.2f}/{r['load_after']:.2f}" for r in rows if r["road"] == road
            ),
        }
        for road, text in ROADS.items()
    ]
    return (
        f"## Conversion by spec\n\n{header(rows)}Data: {rows[0]['dataset']}, "
        f"{rows[0]['repeats']} interleaved runs per road\n\n{markdown_table(table, list(table[0]))}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.conversion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the TSV; default 1,000,000")
    parser.add_argument("--repeats", type=int, default=2, help="conversions per road, interleaved; default 2")
    args = parser.parse_args()
    from features.datasets.synthetic import SyntheticConfig, write_synthetic_tsv

    command = f"{parser.prog} {shlex.join(sys.argv[1:])}".strip()
    run = f"conversion-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dataset = f"synthetic criteo-shaped {args.rows:,} rows (TSV)"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = SyntheticConfig(rows=args.rows, max_vocab=1_000_000, split=(0.9, 0.05, 0.05))
        tsv = write_synthetic_tsv(work / "criteo.tsv", config, progress=False)
        for repeat in range(args.repeats):
            for road in ROADS:
                load = load_average()
                seconds = convert_once(road, tsv, work / road)
                row: dict[str, Any] = {
                    "run": run,
                    "benchmark": "conversion",
                    "dataset": dataset,
                    "model": "-",
                }
                row["road"] = road
                row |= {"rows_per_s": args.rows / seconds, "seconds": seconds, "repeat": repeat}
                row |= {"repeats": args.repeats, "bytes": tsv.stat().st_size}
                row |= {"load_before": load, "load_after": load_average()}
                print(f"{road}: {row['rows_per_s']:,.0f} rows/s ({seconds:.1f} s)", flush=True)
                record(row, command)
    run_readme()


if __name__ == "__main__":
    main()
