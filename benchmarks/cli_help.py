"""How fast `rankers --help` and every command's `--help` answer (the target: under 1.5 s).

    .venv/bin/python -m benchmarks.cli_help [--repeats 5]

Each command runs as a fresh process (`rankers ... --help`), as a user types it; the figure is the
median wall time over the repeats, with the slowest beside it. Parsers are built without importing
torch, torchrec or scikit-learn (tests/cli/test_help.py checks that); the time is measured here,
not in a test. Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from benchmarks._common import header, latest_run, load_average, markdown_table, record, run_readme

COMMANDS = (
    "",
    "convert",
    "convert table",
    "convert criteo",
    "convert taobao-ad",
    "convert userbehavior",
    "convert aliexpress",
    "convert aliccp",
    "convert synthetic",
    "train",
    "train --backbone din",
    "train --backbone finalmlp_criteo_x1",
    "evaluate",
    "predict",
    "calibrate",
    "export",
    "bid",
    "demo",
)
TARGET_S = 1.5


def seconds(rankers: str, command: str, repeats: int) -> list[float]:
    """Wall seconds of `rankers <command> --help`, once per repeat."""
    took = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([rankers, *command.split(), "--help"], capture_output=True, check=True)
        took.append(time.perf_counter() - start)
    return took


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Command line section: the latest run."""
    rows = latest_run(rows, "cli-help-")
    if not rows:
        return ""
    table = [
        {
            "command": f"`{' '.join(['rankers', *r['dataset'].split(), '--help'])}`",
            "median s": f"{r['median_s']:.2f}",
            "slowest s": f"{r['max_s']:.2f}",
            f"under {TARGET_S} s": "yes" if r["max_s"] < TARGET_S else "**no**",
        }
        for r in rows
    ]
    return f"## Command line (`--help`)\n\n{header(rows)}\n{markdown_table(table, list(table[0]))}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cli_help",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; default 5")
    args = parser.parse_args()
    rankers = shutil.which("rankers") or str(sys.prefix + "/bin/rankers")
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}".strip()
    run = f"cli-help-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    for line in COMMANDS:
        load = load_average()
        took = seconds(rankers, line, args.repeats)
        row = {
            "run": run,
            "benchmark": "cli_help",
            "dataset": line,
            "model": "-",
            "median_s": statistics.median(took),
            "max_s": max(took),
            "repeats": args.repeats,
            "load_before": load,
            "load_after": load_average(),
        }
        print(
            f"rankers {line} --help: median {row['median_s']:.2f} s, slowest {row['max_s']:.2f} s", flush=True
        )
        record(row, command)
    run_readme()


if __name__ == "__main__":
    main()
