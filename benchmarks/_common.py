"""What every benchmark records: the machine, versions, git sha; JSON lines; the README tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"
README = HERE / "README.md"
SHARED_DATA = HERE.parent.parent / "shared" / "data"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores {cpu}, {mem:.0f} GiB"


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
