"""Exported artifacts (`rankers export`): latency, size, memory and the AUC of quantized tables.

    .venv/bin/python -m benchmarks.serving [--models mlp,finalmlp,din,dien] [--repeats 300]

MLP and FinalMLP train on the Criteo head10k sample (`rankers convert criteo`, first 8,000 rows
train/valid by order, last 2,000 test; 3 epochs, batch 256), DIN and DIEN on the UserBehavior
sample (`rankers convert userbehavior`: one catalogue negative per positive, histories up to 50,
the last day test; 2 epochs, batch 512); embedding dim 16 and the library's default shapes. Each
is exported at fp32 (`--quantize none`) and int8, and scored:
- test AUC of the Predictor, the fp32 and the int8 artifact;
- latency on one thread: p50 and p99 over `--repeats` calls (after 20 warm-up calls) at batch 1,
  16, 256 and 4096 (rows of the train split), of each artifact (`torch.jit` module on its tensors)
  and of `Predictor.predict_proba` on a `Batch` (its checks and calibration included);
- artifact file size, table bytes (packed rows) against fp32, and the resident memory a fresh
  process adds by loading the artifact and scoring 4096 rows (after importing torch and fbgemm).
Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks._common import header, latest_run, load_average, markdown_table, record, run_readme

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 16, 256, 4096)
RSS = """
import resource, sys, torch, fbgemm_gpu
def rss(): return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
before = rss()
m = torch.jit.load(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
with torch.inference_mode():
    m(x["dense"], x["values"], x["lengths"])
print(rss() - before)
"""


def latency(call: Any, repeats: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of `call()` over `repeats` calls after 20 warm-up calls."""
    for _ in range(20):
        call()
    took = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        took.append((time.perf_counter() - start) * 1e3)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(0.99 * len(took)))]


SEQUENCES = ("din", "dien")  # trained on UserBehavior; the others on Criteo


def measure(model: str, data: Path, work: Path, repeats: int) -> list[dict[str, Any]]:
    """Every figure of one model (module doc)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from features.reader import ParquetBatches
    from rankers.config import RankerConfig, TrainConfig
    from rankers.predictor import Predictor
    from rankers.serving.export import export
    from rankers.serving.loader import load
    from rankers.train import train

    run = work / model
    settings = (
        TrainConfig(epochs=2, batch_size=512, progress=False)
        if model in SEQUENCES
        else TrainConfig(epochs=3, batch_size=256, progress=False)
    )
    train(data, run, RankerConfig(backbone=model, tasks=("ctr",)), settings)
    predictor = Predictor.load(run)
    probs, labels, _ = predictor.predict_labeled(data / "test")
    rows: list[dict[str, Any]] = [{"what": "predictor", "auc": roc_auc_score(labels["ctr"], probs["ctr"])}]
    test = next(
        iter(ParquetBatches(data / "test", batch_size=1 << 20, labels=False, schema=predictor.schema))
    )
    train_rows = next(
        iter(ParquetBatches(data / "train", batch_size=4096, labels=False, schema=predictor.schema))
    )
    for quantize in ("none", "int8"):
        path = export(run, work / f"{model}.{quantize}.pt", quantize)
        served = load(path)
        auc = roc_auc_score(labels["ctr"], served.score(test)["ctr"])
        bytes_ = sum(served.info["table_bytes"].values()) / sum(served.info["fp32_table_bytes"].values())
        inputs = {
            "dense": train_rows.dense,
            "values": train_rows.sparse.values(),
            "lengths": train_rows.sparse.lengths().int(),
        }
        torch.save(inputs, work / "inputs.pt")
        rss = subprocess.run(
            [sys.executable, "-c", RSS, str(path), str(work / "inputs.pt")],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(
            {
                "what": f"artifact {quantize if quantize != 'none' else 'fp32'}",
                "auc": auc,
                "file_bytes": path.stat().st_size,
            }
            | {"table_share": bytes_, "rss_bytes": int(rss.stdout.strip().splitlines()[-1])}
        )
    torch.set_num_threads(1)
    modules = {
        r["what"]: load(work / f"{model}.{q}.pt").module
        for r, q in zip(rows[1:], ("none", "int8"), strict=True)
    }
    for b in BATCHES:
        batch = next(
            iter(ParquetBatches(data / "train", batch_size=b, labels=False, schema=predictor.schema))
        )
        args = (batch.dense, batch.sparse.values(), batch.sparse.lengths().int())
        for r in rows:
            call = (
                partial(predictor.predict_proba, batch)
                if r["what"] == "predictor"
                else partial(_score, modules[r["what"]], args)
            )
            p50, p99 = latency(call, repeats if b < 4096 else max(30, repeats // 10))
            r[f"p50_ms_{b}"], r[f"p99_ms_{b}"] = p50, p99
    return [r | {"model": model} for r in rows]


def _score(module: Any, args: tuple[Any, ...]) -> Any:
    import torch

    with torch.inference_mode():
        return module(*args)


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Serving section: the latest run."""
    rows = latest_run(rows, "serving-")
    if not rows:
        return ""
    table = []
    for r in rows:
        line = {
            "model": r["model"],
            "data": r["dataset"],
            "scored by": r["what"],
            "test AUC": f"{r['auc']:.4f}",
        }
        line |= {
            f"batch {b} p50 / p99 ms": f"{r[f'p50_ms_{b}']:.3f} / {r[f'p99_ms_{b}']:.3f}" for b in BATCHES
        }
        line["file MiB"] = f"{r['file_bytes'] / 2**20:.2f}" if "file_bytes" in r else "-"
        line["tables vs fp32"] = f"{r['table_share']:.0%}" if "table_share" in r else "-"
        line["RSS added MiB"] = f"{r['rss_bytes'] / 2**20:.1f}" if "rss_bytes" in r else "-"
        table.append(line)
    return (
        f"## Serving (exported artifacts)\n\n{header(rows)}One thread; "
        f"p50/p99 over {rows[0]['repeats']} calls (batch 4096: a tenth)\n\n"
        f"{markdown_table(table, list(table[0]))}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default="mlp,finalmlp,din,dien",
        help="comma-separated backbones (din and dien train on UserBehavior); default mlp,finalmlp,din,dien",
    )
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per batch size; default 300")
    args = parser.parse_args()
    from features.datasets.criteo import CriteoConfig, convert_criteo
    from features.datasets.userbehavior import convert_userbehavior

    command = f"{parser.prog} {shlex.join(sys.argv[1:])}".strip()
    run = f"serving-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    sample = ROOT.parent / "shared/data/criteo/train_head10k.tsv"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = CriteoConfig(min_count=10, split=(0.72, 0.08, 0.2), split_by="order")
        criteo = convert_criteo(sample, work / "criteo", config, progress=False)
        behaviours = ROOT.parent / "shared/data/taobao/UserBehavior_head_650users.csv"
        ub = convert_userbehavior(behaviours, work / "ub", progress=False)
        for model in [m for m in args.models.split(",") if m]:
            load = load_average()
            data, name = (ub, "UserBehavior 650 users") if model in SEQUENCES else (criteo, "Criteo head10k")
            for row in measure(model, data, work, args.repeats):
                row |= {"run": run, "benchmark": "serving", "dataset": name}
                row |= {"repeats": args.repeats, "load_before": load, "load_after": load_average()}
                print({k: v for k, v in row.items() if k.startswith(("what", "auc", "p50"))}, flush=True)
                record(row, command)
    run_readme()


if __name__ == "__main__":
    main()
