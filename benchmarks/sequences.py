"""Behaviour-sequence models: quality on Taobao UserBehavior, and training throughput.

    .venv/bin/python -m benchmarks.sequences [--seeds 3] [--skip-quality] [--skip-throughput]

Quality: ../shared/data/taobao/UserBehavior_head_650users.csv (read in place) converted with
`convert_userbehavior` defaults (histories up to 50, one uniform catalogue negative per positive,
2017-12-02 valid, 2017-12-03 test, Beijing days). DIN and DIEN against the same MLP on the fields
without the history (user_id, item_id, cate_id), the click task only; test AUC, gAUC, LogLoss.

Throughput: the issue's setting: embedding dim 16, batch 4096, MLP (256, 128), attention units
(64, 16), two aligned histories (item, category) up to 50 long with mean about 17 (geometric
lengths), random ids (200,000 rows). Steady training-loop examples/s (after 10 warm-up steps).
Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from benchmarks._common import (
    SHARED_DATA,
    Part,
    figure,
    header,
    latest_of,
    load_average,
    loads,
    markdown_table,
    mean_sd,
    per_model,
    record,
    run_readme,
    section,
)
from features.dataset import DatasetWriter
from features.datasets.userbehavior import convert_userbehavior
from features.schema import CategoricalFeature, Label, Schema, SequenceFeature
from rankers._quiet import quiet_torchrec
from rankers.config import RankerConfig, TrainConfig
from rankers.train import train

DNN = {"hidden_units": (256, 128)}
SEQ = {"dnn_units": (256, 128), "attention_units": (64, 16)}
MODELS = {
    "mlp (no history)": RankerConfig(backbone="mlp", embedding_dim=16, backbone_config=DNN, tasks=("ctr",)),
    "din": RankerConfig(backbone="din", embedding_dim=16, backbone_config=SEQ, tasks=("ctr",)),
    # the paper's sum pooling against scores normalised over the history (measured far better here)
    "din (softmax)": RankerConfig(
        backbone="din", embedding_dim=16, backbone_config=SEQ | {"attention_softmax": True}, tasks=("ctr",)
    ),
    "dien": RankerConfig(backbone="dien", embedding_dim=16, backbone_config=SEQ, tasks=("ctr",)),
}
QUALITY_TRAIN = TrainConfig(epochs=10, batch_size=512, patience=2, progress=False)


def quality(seeds: int, work: Path, command: str, run: str, models: list[str]) -> None:
    data = convert_userbehavior(
        SHARED_DATA / "taobao" / "UserBehavior_head_650users.csv", work / "ub", progress=False
    )
    common = {
        "dataset": "userbehavior_650users",
        "split": "by day: last day test, the day before valid",
        "run": run,
    }
    for name in models:
        ranker = MODELS[name]
        for seed in range(seeds):
            config = replace(QUALITY_TRAIN, seed=seed)
            result = train(data, work / "ckpt", ranker, config, overwrite=True)
            test = result["test"]["ctr"]
            print(
                f"{name} seed {seed}: AUC {test['auc']:.4f} gAUC {test['gauc']:.4f} "
                f"LogLoss {test['logloss']:.4f}"
            )
            record(
                {
                    **common,
                    "benchmark": "sequence_quality",
                    "model": name,
                    "seed": seed,
                    "auc": test["auc"],
                    "gauc": test["gauc"],
                    "logloss": test["logloss"],
                    "prior_logloss": test["prior_logloss"],
                    "best_epoch": result["best_epoch"],
                    "examples_per_s": result["history"][0]["examples_per_s"],
                    "config": {"train": asdict(config), "ranker": ranker.to_dict()},
                },
                command,
            )


def sequence_data(out: Path, rows: int, seed: int = 0) -> tuple[Path, float]:
    """Random ids with geometric history lengths (mean about 17, at most 50); returns the mean."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 18.5, rows), 50)
    items, cates = rng.integers(0, 100_000, lengths.sum()), rng.integers(0, 1_000, lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    schema = Schema(
        categorical=(
            CategoricalFeature("user_id", 10_000),
            CategoricalFeature("item_id", 100_000),
            CategoricalFeature("cate_id", 1_000),
        ),
        sequences=(
            SequenceFeature("hist_item_id", 100_000, 50, "item_id"),
            SequenceFeature("hist_cate_id", 1_000, 50, "cate_id"),
        ),
        labels=(Label("click", "ctr"),),
        group="user_id",
    )
    table = pa.table(
        {
            "user_id": rng.integers(0, 10_000, rows),
            "item_id": rng.integers(0, 100_000, rows),
            "cate_id": rng.integers(0, 1_000, rows),
            "hist_item_id": pa.ListArray.from_arrays(offsets, items),
            "hist_cate_id": pa.ListArray.from_arrays(offsets, cates),
            "click": rng.integers(0, 2, rows).astype(np.int8),
        }
    )
    with DatasetWriter(out, schema, splits=("train",)) as w:
        w.write("train", table)
        w.commit({"source": "benchmarks/sequences.py random sequences"})
    return out, float(lengths.mean())


def throughput(work: Path, command: str, run: str, repeats: int, precisions: list[str]) -> None:
    torch.set_num_threads(2)
    data, mean_len = sequence_data(work / "seq", 200_000)
    common = {"dataset": f"random sequences (mean length {mean_len:.1f}, max 50)", "run": run}
    for i in range(repeats):
        for name in ("din", "dien"):
            for precision in precisions:
                ranker = replace(MODELS[name], tasks=())
                config = TrainConfig(
                    epochs=1, batch_size=4096, threads=2, progress=False, max_steps=40, precision=precision
                )
                load = load_average()
                rate = train(data, work / "ckpt", ranker, config, overwrite=True)["history"][0][
                    "examples_per_s"
                ]
                print(f"{name} {precision} training loop: {rate:,.0f} ex/s (load {load:.2f})", flush=True)
                record(
                    {
                        **common,
                        "benchmark": "sequence_train",
                        "model": name,
                        "precision": precision,
                        "repeat": i,
                        "examples_per_s": rate,
                        "load_before": load,
                        "load_after": load_average(),
                        "config": {"ranker": ranker.to_dict(), "train": asdict(config)},
                    },
                    command,
                )


# Peers at the shapes on this machine class (fp32, batch 4096), and the targets set against them.
PEERS = {
    "din": "FuxiCTR 2.3.10 about 8,300 ex/s, DeepCTR-Torch about 5,000; target >= 24,900 (3x FuxiCTR)",
    "dien": "FuxiCTR about 4,600 ex/s, DeepCTR-Torch about 4,700, torch-rechub about 6,500; "
    "target >= 9,200 (2x FuxiCTR)",
}


def _render_quality(quality: list[dict[str, Any]]) -> str:
    """Each model's mean over seeds (its latest run), beside the constant prior."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in quality:
        groups[r["model"]].append(r)
    table: list[dict[str, Any]] = [
        {
            "model": model,
            "seeds": len(rs),
            "test AUC": mean_sd([r["auc"] for r in rs]),
            "test gAUC": statistics.mean(r["gauc"] for r in rs),
            "test LogLoss": statistics.mean(r["logloss"] for r in rs),
            "best epochs": ", ".join(str(r["best_epoch"]) for r in rs),
        }
        for model, rs in groups.items()
    ]
    prior = {"model": "constant prior", "seeds": "-", "test AUC": "0.5000", "test gAUC": 0.5}
    table.append(prior | {"test LogLoss": quality[0]["prior_logloss"]})
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in quality:
        runs[r["run"]].append(r)
    headers = "".join(
        f"{', '.join(sorted({r['model'] for r in rs}))}:  \n{header(rs)}" for rs in runs.values()
    )
    return (
        f"Quality: {quality[0]['dataset']}, split {quality[0]['split']}, click task.\n\n"
        f"{headers}\n{markdown_table(table, list(table[0]))}\n\n"
    )


def _render_speed(speed: list[dict[str, Any]]) -> str:
    """Training-loop examples/s per model and precision (median over repeats)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in speed:
        groups[(r["model"], r["precision"])].append(r)
    table = [
        {
            "model": model,
            "precision": precision,
            "training loop": figure(rs, "examples_per_s", "ex/s"),
            "load before / after": loads(rs),
            "peers and target": PEERS.get(model, "") if precision == "fp32" else "",
        }
        for (model, precision), rs in groups.items()
    ]
    return f"Throughput: {speed[0]['dataset']}.  \n{header(speed)}\n{markdown_table(table, list(table[0]))}\n"


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Behaviour sequences section: quality per model from its latest run, and the
    latest throughput run."""
    parts: list[Part] = [(per_model("sequence_quality"), _render_quality)]
    parts.append((latest_of("sequence_train", "sequences-"), _render_speed))
    return section(rows, "sequences-", "Behaviour sequences (benchmarks/sequences.py)", parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sequences",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="throughput repeats, interleaved")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--models", default=",".join(MODELS), help=f"quality models, of {list(MODELS)}")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run = f"sequences-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    print(f"load average before: {load_average():.2f}")
    with tempfile.TemporaryDirectory() as tmp, quiet_torchrec():
        if not args.skip_throughput:
            throughput(Path(tmp), command, run, args.repeats, args.precisions.split(","))
        if not args.skip_quality:
            quality(args.seeds, Path(tmp), command, run, args.models.split(","))
    print(f"load average after: {load_average():.2f}")
    run_readme()


if __name__ == "__main__":
    main()
