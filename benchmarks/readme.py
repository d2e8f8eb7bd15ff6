"""Rewrites benchmarks/README.md from results.jsonl: the latest run of each benchmark script.

.venv/bin/python benchmarks/readme.py
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import README, results
from rankers.metrics import markdown_table

INTRO = """# Benchmarks

Run by hand on an idle machine (check `uptime` first); each script appends JSON lines to
`results.jsonl` and rewrites this file from the latest run of each script. Figures are not
comparable across machines. Regenerate without running: `.venv/bin/python benchmarks/readme.py`.
"""


def _latest_run(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    runs = [r for r in rows if str(r.get("run", "")).startswith(prefix)]
    if not runs:
        return []
    last = runs[-1]["run"]
    return [r for r in runs if r["run"] == last]


def _header(rows: list[dict[str, Any]]) -> str:
    r = rows[0]
    v = r["versions"]
    stack = ", ".join(f"{k} {v[k]}" for k in ("torch", "torchrec", "fbgemm-gpu-cpu", "pyarrow") if k in v)
    return (
        f"Command: `{r['command']}`  \nMachine: {r['machine']}; {stack}; git {r['git_sha']}; {r['time']}; "
        f"load average before {r['load_before']:.2f}\n"
    )


def _quality(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"])].append(r)
    table = []
    for (dataset, model), rs in groups.items():
        aucs, lls = [r["auc"] for r in rs], [r["logloss"] for r in rs]
        sd = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
        table.append(
            {
                "dataset": dataset,
                "split": rs[0]["split"],
                "model": model,
                "seeds": len(rs),
                "test AUC": f"{statistics.mean(aucs):.4f}{sd}",
                "test LogLoss": statistics.mean(lls),
                "lift vs teacher": statistics.mean(r["lift"] for r in rs) if "lift" in rs[0] else None,
            }
        )
        if model == "mlp":
            table.append(
                {
                    "dataset": dataset,
                    "split": rs[0]["split"],
                    "model": "constant prior",
                    "seeds": "-",
                    "test AUC": "0.5000",
                    "test LogLoss": rs[0]["prior_logloss"],
                }
            )
            if "teacher_auc" in rs[0]:
                table.append(
                    {
                        "dataset": dataset,
                        "split": rs[0]["split"],
                        "model": "teacher (best achievable)",
                        "seeds": "-",
                        "test AUC": f"{rs[0]['teacher_auc']:.4f}",
                        "test LogLoss": rs[0]["teacher_logloss"],
                    }
                )
    cols = ["dataset", "split", "model", "seeds", "test AUC", "test LogLoss", "lift vs teacher"]
    return "## Quality\n\n" + _header(rows) + "\n" + markdown_table(table, cols) + "\n"


REFERENCE = {
    "reader": "target >= 1,000,000 rows/s on one core",
    "convert": "FuxiCTR preprocessing about 19,000 rows/s here; target >= 190,000",
    "train_bare_step": "bare DMP + fused rowwise Adagrad step measured about 110,000 ex/s here before",
    "train": "FuxiCTR 2.3.10 DNN about 70,000 ex/s here; target >= 91,000 (1.3x)",
}


def _throughput(rows: list[dict[str, Any]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        key = r["benchmark"] + (f" (shuffle buffer {r['shuffle_buffer']:,})" if "shuffle_buffer" in r else "")
        groups[key].append(r)
    table = []
    for what, rs in groups.items():
        unit, field = ("rows/s", "rows_per_s") if "rows_per_s" in rs[0] else ("examples/s", "examples_per_s")
        values = sorted(r[field] for r in rs)
        figure = f"{statistics.median(values):,.0f} {unit}"
        if len(values) > 1:
            figure += f" (median of {len(values)}: {', '.join(f'{v:,.0f}' for v in values)})"
        loads = f"{min(r['load_before'] for r in rs):.2f} / {max(r.get('load_after', 0.0) for r in rs):.2f}"
        table.append(
            {
                "benchmark": what,
                "figure": figure,
                "reference": REFERENCE.get(rs[0]["benchmark"], ""),
                "load before/after": loads,
            }
        )
    cols = ["benchmark", "figure", "reference", "load before/after"]
    return (
        f"## Throughput\n\n{_header(rows)}Data: {rows[0]['dataset']}\n\n" + markdown_table(table, cols) + "\n"
    )


def write_readme() -> Path:
    rows = results()
    parts = [INTRO]
    quality, throughput = _latest_run(rows, "quality-"), _latest_run(rows, "throughput-")
    if quality:
        parts.append(_quality(quality))
    if throughput:
        parts.append(_throughput(throughput))
    notes = README.with_name("NOTES.md")
    if notes.is_file():
        parts.append(notes.read_text())
    README.write_text("\n".join(parts))
    return README


if __name__ == "__main__":
    print(write_readme())
