"""Model selection: which validation score picks the epoch, and which regularisation defaults, so
that the selected model's test LogLoss is below the constant prior's without losing AUC.

    .venv/bin/python -m benchmarks.selection [--seeds 3] [--variants monitor=auc,monitor=auc-logloss]

Data (../shared/data, read in place): Criteo head10k in row order (first 7,200 train, 800 valid,
2,000 test; values seen fewer than 10 times share the rare id), the settings of
benchmarks/quality.py (batch 256, embedding lr 0.02, up to 10 epochs); UserBehavior's 650 users by
day (benchmarks/sequences.py: batch 512, up to 10 epochs, click task). Models: each script's
shapes. A variant changes one setting against the library's defaults: `monitor=M` the
validation score (TrainConfig.monitor_metric), `dropout=P` the backbone's DNN dropout,
`l2=X` the embedding L2 (RankerConfig.embedding_l2); `+` joins several (`dropout=0.1+l2=1e-5`);
`default` is the library's defaults. Appends JSON lines to benchmarks/results.jsonl and rewrites
benchmarks/README.md.
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

from benchmarks._common import SHARED_DATA, header, load_average, markdown_table, mean_sd, record, run_readme
from benchmarks.quality import CRITEO_TRAIN
from benchmarks.quality import MODELS as CRITEO_MODELS
from benchmarks.sequences import MODELS as SEQUENCE_MODELS
from benchmarks.sequences import QUALITY_TRAIN
from features.datasets.criteo import CriteoConfig, convert_criteo
from features.datasets.userbehavior import convert_userbehavior
from rankers._quiet import quiet_torchrec
from rankers.config import MONITOR_METRICS, RankerConfig, TrainConfig
from rankers.train import train

# The DNN dropout field of each backbone's config.
DROPOUT_FIELDS = {
    "mlp": ("dropout",),
    "autoint": ("dropout",),
    "autoint_plus": ("dropout",),
    "finalmlp": ("mlp1_dropout", "mlp2_dropout"),
    "din": ("dnn_dropout",),
    "dien": ("dnn_dropout",),
}
DATASETS = ("criteo_head10k", "userbehavior_650users")


def apply_variant(
    variant: str, ranker: RankerConfig, config: TrainConfig
) -> tuple[RankerConfig, TrainConfig]:
    """The model and training settings of `variant` (see the module doc) over the given ones."""
    if variant == "default":
        return ranker, config
    for part in variant.split("+"):
        key, _, value = part.partition("=")
        if key == "monitor":
            if value not in MONITOR_METRICS:
                raise ValueError(f"variant {part!r}: expected a monitor in {MONITOR_METRICS}")
            config = replace(config, monitor_metric=value)
        elif key == "dropout":
            fields = DROPOUT_FIELDS[ranker.backbone]
            ranker = replace(
                ranker, backbone_config=vars(ranker.backbone_config) | dict.fromkeys(fields, float(value))
            )
        elif key == "l2":
            ranker = replace(ranker, embedding_l2=float(value))
        else:
            raise ValueError(f"variant {part!r}: expected monitor=, dropout= or l2=, joined by +")
    return ranker, config


def datasets(
    work: Path, which: list[str]
) -> dict[str, tuple[Path, dict[str, RankerConfig], TrainConfig, str]]:
    """name -> (dataset directory, models, base training settings, split description)."""
    out = {}
    if "criteo_head10k" in which:
        data = convert_criteo(
            SHARED_DATA / "criteo" / "train_head10k.tsv",
            work / "criteo",
            CriteoConfig(min_count=10, split=(0.72, 0.08, 0.2), split_by="order"),
            progress=False,
        )
        out["criteo_head10k"] = (
            data,
            CRITEO_MODELS,
            CRITEO_TRAIN,
            "first 7.2k train, 0.8k valid, last 2k test",
        )
    if "userbehavior_650users" in which:
        data = convert_userbehavior(
            SHARED_DATA / "taobao" / "UserBehavior_head_650users.csv", work / "ub", progress=False
        )
        out["userbehavior_650users"] = (
            data,
            SEQUENCE_MODELS,
            QUALITY_TRAIN,
            "by day: last day test, the day before valid",
        )
    return out


def run(
    seeds: range, variants: list[str], which: list[str], models: list[str] | None, work: Path, command: str
) -> None:
    stamp = f"selection-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    for dataset, (data, model_set, base, split) in datasets(work, which).items():
        for name, ranker in model_set.items():
            if models and name not in models:
                continue
            for variant in variants:
                r, c = apply_variant(variant, ranker, base)
                for seed in seeds:
                    before = load_average()
                    with quiet_torchrec():
                        result = train(
                            data, work / "ckpt", r, replace(c, seed=seed, progress=False), overwrite=True
                        )
                    test, valid = result["test"]["ctr"], result.get("valid", {}).get("ctr", {})
                    row: dict[str, Any] = {
                        "benchmark": "selection",
                        "run": stamp,
                        "dataset": dataset,
                        "split": split,
                        "model": name,
                        "variant": variant,
                        "seed": seed,
                        "auc": test["auc"],
                        "logloss": test["logloss"],
                        "prior_logloss": test["prior_logloss"],
                        "valid_auc": valid.get("auc"),
                        "valid_logloss": valid.get("logloss"),
                        "best_epoch": result["best_epoch"],
                        "epochs": len(result["history"]),
                        "load_before": before,
                        "config": {"train": asdict(replace(c, seed=seed)), "ranker": r.to_dict()},
                    }
                    record(row, command)
                    print(
                        f"{dataset} {name} {variant} seed {seed}: test AUC {test['auc']:.4f} LogLoss "
                        f"{test['logloss']:.4f} (prior {test['prior_logloss']:.4f}), best epoch "
                        f"{result['best_epoch']} of {len(result['history'])}",
                        flush=True,
                    )


# Test AUC before model selection weighed LogLoss (benchmarks/README.md at git bc1fe3b: quality.py
# with 5 seeds on Criteo, sequences.py with 3 on UserBehavior), the reference of the selection table.
BEFORE = {
    ("criteo_head10k", "mlp"): 0.7353,
    ("criteo_head10k", "autoint"): 0.7275,
    ("criteo_head10k", "autoint_plus"): 0.7291,
    ("criteo_head10k", "finalmlp"): 0.7327,
    ("userbehavior_650users", "mlp (no history)"): 0.6182,
    ("userbehavior_650users", "din"): 0.6628,
    ("userbehavior_650users", "din (softmax)"): 0.7809,
    ("userbehavior_650users", "dien"): 0.7909,
}
INTRO = (
    "## Model selection (benchmarks/selection.py)\n\n"
    "Which validation score selects the epoch (`--monitor-metric`), and which regularisation, so\n"
    "that the selected model's test LogLoss is below the constant prior's. Criteo head10k (first\n"
    "7.2k rows train, 0.8k valid, last 2k test) and UserBehavior's 650 users (by day), each with\n"
    "its benchmark's shapes and settings; `AUC - before` is against the test AUC these models had\n"
    "when the epoch was chosen by AUC alone (quality.py, sequences.py at git bc1fe3b).\n\n"
)


def _selection_row(dataset: str, model: str, variant: str, g: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's mean over seeds: test AUC against before, LogLoss against the prior's."""
    aucs = [r["auc"] for r in g]
    before = BEFORE.get((dataset, model))
    return {
        "dataset": dataset,
        "model": model,
        "variant": variant,
        "seeds": len(g),
        "test AUC": mean_sd(aucs),
        "AUC - before": None if before is None else statistics.mean(aucs) - before,
        "test LogLoss": statistics.mean(r["logloss"] for r in g),
        "prior LogLoss": g[0]["prior_logloss"],
        "below prior": f"{sum(r['logloss'] < r['prior_logloss'] for r in g)} of {len(g)}",
        "best epochs": ", ".join(str(r["best_epoch"]) for r in g),
    }


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Model selection section: per dataset, model and variant (each seed's latest
    row), test AUC and LogLoss against the prior's."""
    # each seed's latest row (seeds of one variant may come from runs in several processes)
    latest = {
        (r["dataset"], r["model"], r["variant"], r["seed"]): r
        for r in rows
        if r.get("benchmark") == "selection"
    }
    if not latest:
        return ""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for (dataset, model, variant, _), r in sorted(latest.items(), key=lambda kv: kv[0][3]):
        groups[(dataset, model, variant)].append(r)
    table = [_selection_row(*key, g) for key, g in groups.items()]
    table.sort(key=lambda r: (r["dataset"], r["model"], r["variant"]))
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in groups.values():
        for r in g:
            runs[r["run"]].append(r)
    headers = "".join(header(r) for r in runs.values())
    return INTRO + headers + "\n" + markdown_table(table, list(table[0])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.selection", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model and variant (default 3)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the first seed (default 0), to split seeds over processes"
    )
    parser.add_argument(
        "--variants",
        default="monitor=auc,monitor=auc-logloss,monitor=logloss",
        help="comma-separated variants (see the module doc); default: the three monitors",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated of {', '.join(DATASETS)} (default both)",
    )
    parser.add_argument("--models", help="comma-separated model names of each dataset's set (default all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    with tempfile.TemporaryDirectory() as tmp:
        run(
            range(args.first_seed, args.first_seed + args.seeds),
            args.variants.split(","),
            args.datasets.split(","),
            args.models.split(",") if args.models else None,
            Path(tmp),
            command,
        )
    run_readme()


if __name__ == "__main__":
    main()
