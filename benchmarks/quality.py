"""Quality: test AUC/LogLoss of every backbone on the real Criteo sample and on teacher data.

    .venv/bin/python -m benchmarks.quality [--seeds 5] [--synthetic-seeds 3] [--models mlp,finalmlp]

Criteo head10k (../shared/data, read in place): rows in file order, the first 7,200 train, the next
800 validate (early stopping), the last 2,000 test; values seen fewer than 10 times in train share
the rare id. Synthetic: 250,000 teacher rows (200,000 train) from each of TEACHERS, the teacher's
AUC beside the model's. Models: MODELS, the shapes of a typical side-by-side.
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
import pyarrow.parquet as pq

from benchmarks._common import (
    SHARED_DATA,
    header,
    latest_per_dataset,
    load_average,
    markdown_table,
    mean_sd,
    record,
    run_readme,
)
from features.dataset import dataset_info
from features.datasets.criteo import CriteoConfig, convert_criteo
from features.datasets.synthetic import SyntheticConfig, write_synthetic
from rankers._quiet import quiet_torchrec
from rankers.config import RankerConfig, TrainConfig
from rankers.train import train

CRITEO_TRAIN = TrainConfig(epochs=10, batch_size=256, embedding_lr=0.02, progress=False)
# Up to 10 epochs: early stopping decides (interaction terms take longer to learn than field effects).
SYNTHETIC_TRAIN = TrainConfig(epochs=10, batch_size=1024, embedding_lr=0.02, progress=False)
# The default teacher, and one whose signal is mostly pairwise with values seen often enough to be
# learned: its vocabularies are capped at 1,000 and its interaction terms are 3x stronger.
TEACHERS = {
    "synthetic_250k": SyntheticConfig(rows=250_000, min_count=10),
    "synthetic_pairs_250k": SyntheticConfig(rows=250_000, min_count=10, max_vocab=1000, pair_scale=0.6),
    # The default teacher with 10x the rows: how much of the gap to the teacher is sample size.
    "synthetic_2500k": SyntheticConfig(rows=2_500_000, min_count=10),
}
# The shapes of a typical side-by-side (see benchmarks/throughput.py), the same on both datasets.
MODELS = {
    "mlp": RankerConfig(backbone="mlp", embedding_dim=16, backbone_config={"hidden_units": (256, 128)}),
    "autoint": RankerConfig(
        backbone="autoint",
        embedding_dim=16,
        backbone_config={"attention_layers": 3, "num_heads": 2, "attention_dim": 16},
    ),
    "autoint_plus": RankerConfig(
        backbone="autoint_plus",
        embedding_dim=16,
        backbone_config={"attention_layers": 3, "num_heads": 2, "attention_dim": 16, "dnn_units": (256, 128)},
    ),
    "finalmlp": RankerConfig(
        backbone="finalmlp",
        embedding_dim=16,
        backbone_config={
            "mlp1_units": (256, 128),
            "mlp2_units": (256, 128),
            "fs_units": (256,),
            "num_heads": 2,
        },
    ),
}


def _logistic_regression(data: Path) -> dict[str, float]:
    """Reference: scikit-learn logistic regression on one-hot ids and the dense columns."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    def xy(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = pq.read_table(data / split)
        cats = [c for c in t.column_names if c.startswith("C")]
        dense = [c for c in t.column_names if c.startswith("I")]

        def cols(names: list[str]) -> np.ndarray:
            return np.stack([t[c].to_numpy() for c in names], axis=1)

        return cols(cats), cols(dense), t["label"].to_numpy()

    c_train, d_train, y_train = xy("train")
    c_test, d_test, y_test = xy("test")
    enc = OneHotEncoder(handle_unknown="ignore").fit(c_train)
    from scipy.sparse import hstack

    model = LogisticRegression(C=0.1, max_iter=2000).fit(hstack([enc.transform(c_train), d_train]), y_train)
    p = model.predict_proba(hstack([enc.transform(c_test), d_test]))[:, 1]
    return {"auc": float(roc_auc_score(y_test, p)), "logloss": float(log_loss(y_test, p))}


def _seeds(
    data: Path, base: TrainConfig, seeds: int, models: list[str], common: dict, command: str, work: Path
) -> None:
    """Trains each model once per seed and records its test metrics (and the teacher's, if known)."""
    for name in models:
        ranker = MODELS[name]
        for seed in range(seeds):
            config = replace(base, seed=seed)
            result = train(data, work / f"{common['dataset']}_{name}_{seed}", ranker, config, overwrite=True)
            test = result["test"]["ctr"]
            row = {
                **common,
                "model": name,
                "seed": seed,
                "auc": test["auc"],
                "logloss": test["logloss"],
                "prior_logloss": test["prior_logloss"],
                "best_epoch": result["best_epoch"],
                "config": {"train": asdict(config), "ranker": ranker.to_dict()},
            }
            if "teacher" in result:
                teacher = result["teacher"]["test"]
                row |= {
                    "teacher_auc": teacher["auc"],
                    "teacher_logloss": teacher["logloss"],
                    "lift": (test["auc"] - 0.5) / (teacher["auc"] - 0.5),
                }
            print(
                f"{common['dataset']} {name} seed {seed}: AUC {test['auc']:.4f} LogLoss {test['logloss']:.4f}"
                + (f" lift vs teacher {row['lift']:.3f}" if "lift" in row else ""),
                flush=True,
            )
            record(row, command)


def criteo(seeds: int, models: list[str], work: Path, command: str, run: str, with_lr: bool) -> None:
    data = convert_criteo(
        SHARED_DATA / "criteo" / "train_head10k.tsv",
        work / "criteo",
        CriteoConfig(min_count=10, split=(0.72, 0.08, 0.2), split_by="order"),
        progress=False,
    )
    split = "first 8k (7.2k train, 0.8k valid) / last 2k test"
    common = {"dataset": "criteo_head10k", "split": split, "run": run}
    _seeds(data, CRITEO_TRAIN, seeds, models, common, command, work)
    if not with_lr:
        return
    lr = _logistic_regression(data)
    print(f"criteo logistic regression: {lr}", flush=True)
    record({**common, "model": "logistic regression (sklearn, one-hot)", "seed": 0, **lr}, command)


def synthetic(
    seeds: int, models: list[str], work: Path, command: str, run: str, with_lr: bool, teacher: str
) -> None:
    data = write_synthetic(work / teacher, TEACHERS[teacher], progress=False)
    config = TEACHERS[teacher]
    split = " / ".join(
        f"{config.rows * fraction / 1000:,.0f}k {name}"
        for name, fraction in zip(("train", "valid", "test"), config.split, strict=True)
    )
    common = {"dataset": teacher, "split": split, "run": run}
    _seeds(data, SYNTHETIC_TRAIN, seeds, models, common, command, work)
    if not with_lr:
        return
    lr = _logistic_regression(data)
    lr["lift"] = (lr["auc"] - 0.5) / (dataset_info(data)["teacher"]["test"]["auc"] - 0.5)
    print(f"{teacher} logistic regression: {lr}", flush=True)
    record({**common, "model": "logistic regression (sklearn, one-hot)", "seed": 0, **lr}, command)


def _quality_rows(dataset: str, model: str, rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One model's row (mean over seeds); after the MLP's, the constant prior's and the teacher's."""
    split = rs[0]["split"]
    table = [
        {
            "dataset": dataset,
            "split": split,
            "model": model,
            "seeds": len(rs),
            "test AUC": mean_sd([r["auc"] for r in rs]),
            "test LogLoss": statistics.mean(r["logloss"] for r in rs),
            "lift vs teacher": statistics.mean(r["lift"] for r in rs) if "lift" in rs[0] else None,
        }
    ]
    if model != "mlp":
        return table
    shared = {"dataset": dataset, "split": split, "seeds": "-"}
    prior = rs[0]["prior_logloss"]
    table.append(shared | {"model": "constant prior", "test AUC": "0.5000", "test LogLoss": prior})
    if "teacher_auc" in rs[0]:
        auc, logloss = f"{rs[0]['teacher_auc']:.4f}", rs[0]["teacher_logloss"]
        table.append(
            shared | {"model": "teacher (best achievable)", "test AUC": auc, "test LogLoss": logloss}
        )
    return table


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Quality section: per dataset its latest run, each model's mean over seeds."""
    rows = latest_per_dataset(rows, "quality-")
    if not rows:
        return ""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"])].append(r)
    table = [row for (dataset, model), rs in groups.items() for row in _quality_rows(dataset, model, rs)]
    cols = ["dataset", "split", "model", "seeds", "test AUC", "test LogLoss", "lift vs teacher"]
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        runs[r["run"]].append(r)
    headers = "\n".join(
        f"{', '.join(sorted({r['dataset'] for r in rs}))}:  \n{header(rs)}" for rs in runs.values()
    )
    return "## Quality\n\n" + headers + "\n" + markdown_table(table, cols) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds on Criteo head10k")
    parser.add_argument(
        "--synthetic-seeds", type=int, default=3, help="seeds on the synthetic data (0 skips)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument(
        "--teachers", default=",".join(TEACHERS), help=f"comma-separated, of {list(TEACHERS)}"
    )
    parser.add_argument("--skip-criteo", action="store_true", help="synthetic data only")
    parser.add_argument("--no-lr", action="store_true", help="skip the logistic-regression reference")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {list(MODELS)}")
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run = f"quality-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    print(f"load average before: {load_average():.2f}")
    with tempfile.TemporaryDirectory() as tmp, quiet_torchrec():
        if not args.skip_criteo:
            criteo(args.seeds, models, Path(tmp), command, run, not args.no_lr)
        for teacher in [t for t in args.teachers.split(",") if t]:
            if args.synthetic_seeds:
                synthetic(args.synthetic_seeds, models, Path(tmp), command, run, not args.no_lr, teacher)
    print(f"load average after: {load_average():.2f}")
    run_readme()


if __name__ == "__main__":
    main()
