"""What every benchmark records (the machine, versions, git sha; JSON lines) and the helpers its
README section is rendered with."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rankers.metrics import markdown_table as markdown_table  # for the scripts' sections

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"
README = HERE / "README.md"
SHARED_DATA = HERE.parent.parent / "shared" / "data"


def machine() -> str:
    """Cores, CPU model, its widest vector and bf16 units (figures differ most by these), memory."""
    cpu, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    units = [
        u
        for f, u in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"))
        if f in flags
    ]
    simd = ", ".join(units) if units else "AVX2, no AVX-512" if "avx2" in flags else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores {cpu}{f' ({simd})' if simd else ''}, {mem:.0f} GiB"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "pyarrow", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except Exception:  # not installed under that name
            continue
    return out


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> float:
    return os.getloadavg()[0]


def record(row: dict[str, Any], command: str) -> dict[str, Any]:
    """Appends one JSON line with the common fields to results.jsonl and returns it."""
    full = {
        **row,
        "device": "cpu",
        "machine": machine(),
        "versions": versions(),
        "git_sha": git_sha(),
        "command": command,
        "load_before": row.get("load_before", load_average()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with RESULTS.open("a") as f:
        f.write(json.dumps(full, default=float) + "\n")
    return full


def results() -> list[dict[str, Any]]:
    if not RESULTS.is_file():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


# The README sections: what every script's `render` shares.

ROOT = HERE.parent
FIGURES = HERE / "figures"  # written by benchmarks/report.py (matplotlib)
_PATH_SPELLING = re.compile(r"\bpython benchmarks/(\w+)\.py\b")


def run_readme() -> None:
    """Rewrites benchmarks/README.md from results.jsonl in a fresh process (`python -m
    benchmarks.readme`), as every script does after appending its lines: readme imports the
    scripts for their sections, so a script calling it in-process would import itself back."""
    subprocess.run([sys.executable, "-m", "benchmarks.readme"], cwd=ROOT, check=True)


def module_command(command: str) -> str:
    """A recorded command as it is run now: lines recorded before the benchmarks ran as modules say
    `python benchmarks/x.py ...`, the same script and flags as `python -m benchmarks.x ...`."""
    return _PATH_SPELLING.sub(r"python -m benchmarks.\1", command)


def latest_run(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The rows of the latest run whose id starts with `prefix`."""
    runs = [r for r in rows if str(r.get("run", "")).startswith(prefix)]
    if not runs:
        return []
    last = runs[-1]["run"]
    return [r for r in runs if r["run"] == last]


def latest_per_dataset(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """For each dataset, its rows from the latest run that measured it."""
    runs = [r for r in rows if str(r.get("run", "")).startswith(prefix)]
    last = {r["dataset"]: r["run"] for r in runs}
    return [r for r in runs if last[r["dataset"]] == r["run"]]


def latest_per_model(rows: list[dict[str, Any]], benchmark: str) -> list[dict[str, Any]]:
    """For each model, its `benchmark` rows from the latest run that measured it."""
    rs = [r for r in rows if r.get("benchmark") == benchmark]
    last = {r["model"]: r["run"] for r in rs}
    return [r for r in rs if last[r["model"]] == r["run"]]


def header(rows: list[dict[str, Any]]) -> str:
    """The command, machine, versions, git sha, time and load of a run (its first row)."""
    r = rows[0]
    v = r["versions"]
    stack = ", ".join(f"{k} {v[k]}" for k in ("torch", "torchrec", "fbgemm-gpu-cpu", "pyarrow") if k in v)
    return (
        f"Command: `{module_command(r['command'])}`  \nMachine: {r['machine']}; {stack}; git {r['git_sha']}; "
        f"{r['time']}; load average before {r['load_before']:.2f}\n"
    )


def mean_sd(values: list[float]) -> str:
    """`mean ± sample sd` to 4 places; the mean alone for one value."""
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{sd}"


def figure(rs: list[dict[str, Any]], field: str, unit: str) -> str:
    """The median of `field` over repeats, with every repeat's value when there are several."""
    values = sorted(r[field] for r in rs)
    out = f"{statistics.median(values):,.0f} {unit}".strip()
    if len(values) > 1:
        out += f" (median of {len(values)}: {', '.join(f'{v:,.0f}' for v in values)})"
    return out


def loads(rs: list[dict[str, Any]]) -> str:
    """`lowest load before / highest load after` over repeats."""
    return f"{min(r['load_before'] for r in rs):.2f} / {max(r.get('load_after', 0.0) for r in rs):.2f}"


def figure_link(name: str, alt: str) -> str:
    """A markdown image of figures/<name> when report.py has drawn it, else nothing."""
    return f"\n![{alt}](figures/{name})\n" if (FIGURES / name).is_file() else ""


Part = tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], Callable[[list[dict[str, Any]]], str]]


def section(rows: list[dict[str, Any]], prefix: str, title: str, parts: list[Part]) -> str:
    """A README section of a script whose run ids start with `prefix` ("" without such runs): the
    title, then each part's rendering of the rows it selects (a part selecting none is left out)."""
    if not any(str(r.get("run", "")).startswith(prefix) for r in rows):
        return ""
    out = f"## {title}\n\n"
    for select, render in parts:
        chosen = select(rows)
        out += render(chosen) if chosen else ""
    return out


def latest_of(benchmark: str, prefix: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Selects the `benchmark` rows of the latest run (id starting with `prefix`) that has them."""
    return lambda rows: latest_run([r for r in rows if r.get("benchmark") == benchmark], prefix)


def per_model(benchmark: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Selects, for each model, its `benchmark` rows from the latest run that measured it."""
    return lambda rows: latest_per_model(rows, benchmark)
