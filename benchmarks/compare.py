"""Side by side with DeepCTR-Torch 0.3.0 and torch-rechub 0.9.0: same parquet data and splits, same
shapes, one run.

    .venv/bin/pip install -e '.[compare]'     # the peers (never a core dependency)
    .venv/bin/python -m benchmarks.compare [--datasets criteo_head10k,synthetic_1m] [--models mlp]

Every (library, model, dataset, seed) trains in its own process (its peak RSS is that run's), with
2 torch threads, embedding dim 16, MLP (256, 128), batch 4096 (256 on Criteo head10k, 1024 on
UserBehavior), Adam lr 1e-3 on the dense layers, a fixed number of epochs (no early stopping). The
test split is scored after every epoch, outside the timed loop (its AUC against the epoch is kept);
the figures are the last epoch's. Steady examples/s is taken over the last epoch (every
library's own training loop, reading included; ours leaves out the first min(10, steps / 5) steps
of the epoch, the peers' rate is over the whole epoch). The models:
- mlp: ours the MLP over the concatenated field vectors and dense features; DeepCTR-Torch's
  DeepFM(use_fm=False) (a DNN plus a linear part), torch-rechub's WideDeep (dense features wide, all
  fields deep): the nearest plain DNN each offers.
- autoint_plus: 3 interacting layers x 2 heads (attention dim 16, residual) beside a (256, 128) DNN,
  numeric features as tokens: ours and torch-rechub's AutoInt. autoint_plus_fields: the same with
  only the categorical fields attending and the numeric values in the DNN's input: ours
  (`numeric_tokens=False`) and DeepCTR-Torch's AutoInt.
- din, din_dice, dien, dien_dice (_dice: a Dice DNN, torch-rechub's fixed choice) on UserBehavior
  (the 650-user sample, histories up to 50) and on 200k rows of DIN-shaped synthetic data
  (features/datasets/synthetic_sequences.py: histories up to 50, mean 17, a teacher whose signal is the
  history matched against the target); esmm (MLP towers) on a
  300k-row synthetic funnel's 26 categorical fields (torch-rechub's ESMM takes no dense features,
  so no library gets the 13), scored by its ctcvr AUC.
- torch-rechub's DIEN needs negative histories for its auxiliary loss: it gets the positive ones
  and weight 0 (as ours and DeepCTR-Torch's run without it); the loss is still computed.
Tables: ours are fused rowwise Adagrad (lr 0.02) through DistributedModelParallel, the library's
design (fbgemm has no fused Adam on CPU); the peers train their tables with Adam. The row "ours, Adam
tables" makes the optimizer identical (tables data-parallel, trained by the same Adam), for quality.
Data: Criteo head10k (first 7,200 rows train, next 800 valid, last 2,000 test, rare values below 10
counts share an id) and 1M Criteo-shaped synthetic rows (features/datasets/synthetic.py). The peers read
the same parquet files into numpy arrays (their preprocessing is not timed).
Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._libraries import LIBRARIES, MODELS, SEQUENCE_MODELS, SUPPORTS, worker

SEQUENCE_DATASETS = ("userbehavior", "synthetic_seq")
DATASETS = {
    "criteo_head10k": {"batch": 256, "epochs": 3, "seeds": 3},
    "synthetic_1m": {"batch": 4096, "epochs": 1, "seeds": 1},
    # two epochs: its test AUC moves little after the second (the third cost 5 minutes of the 30)
    "userbehavior": {"batch": 1024, "epochs": 2, "seeds": 3},
    "synthetic_seq": {"batch": 4096, "epochs": 1, "seeds": 1},
    "synthetic_funnel": {"batch": 4096, "epochs": 1, "seeds": 1},
}
# Tables trained by dense Adam are a quality check of the optimizer (Criteo head10k's MLP, the
# funnel), not for the 5.6M rows of the 1M set nor worth more runs elsewhere in the default set
# (the default set must run in under 30 minutes). (dataset, library, model); None: every model.
SKIP = {
    ("synthetic_1m", "rankers_adam", None),
    ("userbehavior", "rankers_adam", None),
    ("synthetic_seq", "rankers_adam", None),
    ("criteo_head10k", "rankers_adam", "autoint_plus"),
    ("criteo_head10k", "rankers_adam", "autoint_plus_fields"),
}
# DIEN's libraries take about 5 minutes a seed on UserBehavior: one seed keeps the default set
# under 30 minutes (DIN, the question there, takes three).
SEEDS = {("userbehavior", "dien"): 1, ("userbehavior", "dien_dice"): 1}


def _teacher_auc(data: Path, model: str) -> float | None:
    """The teacher's test AUC on a synthetic set (ctcvr's for ESMM): the best any model can reach;
    None for data without a teacher."""
    from features.dataset import dataset_info

    test = dataset_info(data).get("teacher", {}).get("test", {})
    return test.get("tasks", {}).get("ctcvr", {}).get("auc") if model == "esmm" else test.get("auc")


def _categorical_only(data: Path, out: Path) -> Path:
    """A copy of a dataset without its dense features (same rows, ids and labels)."""
    import pyarrow.parquet as pq

    from features.dataset import DatasetWriter, dataset_info
    from features.reader import find_schema, parquet_files

    schema = find_schema(data)
    dense = [f.name for f in schema.dense]
    info = dataset_info(data)
    with DatasetWriter(out, replace(schema, dense=())) as writer:
        for split in ("train", "valid", "test"):
            writer.write(split, pq.read_table(parquet_files(data / split)).drop_columns(dense))
        return writer.commit({k: v for k, v in info.items() if k in ("converter", "config", "teacher")})


def _dataset(name: str, tmp: Path) -> Path:
    if name == "userbehavior":
        from benchmarks._common import SHARED_DATA
        from features.datasets.userbehavior import UserBehaviorConfig, convert_userbehavior

        source = SHARED_DATA / "taobao" / "UserBehavior_head_650users.csv"
        return convert_userbehavior(
            source, tmp / name, UserBehaviorConfig(negatives=1, max_len=50), progress=False
        )
    if name == "synthetic_funnel":
        from features.datasets.synthetic import SyntheticConfig, write_synthetic

        funnel = SyntheticConfig(rows=300_000, min_count=10, funnel=True)
        return _categorical_only(write_synthetic(tmp / "funnel", funnel, progress=False), tmp / name)
    if name == "synthetic_seq":
        from features.datasets.synthetic_sequences import SequenceSyntheticConfig, write_synthetic_sequences

        return write_synthetic_sequences(tmp / name, SequenceSyntheticConfig(rows=200_000))
    if name == "criteo_head10k":
        from benchmarks._common import SHARED_DATA
        from features.datasets.criteo import CriteoConfig, convert_criteo

        config = CriteoConfig(min_count=10, split=(0.72, 0.08, 0.2), split_by="order")
        return convert_criteo(
            SHARED_DATA / "criteo" / "train_head10k.tsv", tmp / name, config, progress=False
        )
    from features.datasets.synthetic import SyntheticConfig, write_synthetic

    return write_synthetic(tmp / name, SyntheticConfig(rows=1_000_000, min_count=10), progress=False)


# Which of our rows a peer's is compared with (the same model shape).
OURS_FOR = {
    "deepctr_torch": {m: m for m in ("mlp", "autoint_plus_fields", "din", "dien", "esmm")},
    "torch_rechub": {m: m for m in ("mlp", "autoint_plus", "din_dice", "dien_dice", "esmm")},
}
INTRO = (
    "## Against DeepCTR-Torch and torch-rechub (benchmarks/compare.py)\n\n"
    "Same parquet splits, embedding dim 16, MLP (256, 128), Adam 1e-3 on the dense layers, fixed "
    "epochs, the last one's test figures (Criteo head10k: batch 256, 3 epochs, 3 seeds; synthetic "
    "1M: batch 4096, 1 epoch), 2 "
    "threads, one process per run (peak RSS is that run's). `rankers`: tables fused rowwise "
    "Adagrad (lr 0.02); `rankers_adam`: tables data-parallel, trained by the same Adam as the "
    "peers (identical optimizer). Ours is the steady rate after the first steps of the last "
    "epoch; the peers' the whole last epoch (their own loops, reading included). mlp is "
    "DeepCTR-Torch's DeepFM without FM and torch-rechub's WideDeep (each a DNN plus a linear "
    "part); autoint_plus has numeric features as tokens (ours, torch-rechub), "
    "autoint_plus_fields only the categorical fields attending (ours with numeric_tokens off, "
    "DeepCTR-Torch). UserBehavior (the 650-user sample, one catalogue negative per positive, "
    "histories up to 50; batch 1024, 2 epochs, 3 seeds, DIEN 1 seed) and DIN-shaped synthetic data "
    "(features/datasets/synthetic_sequences.py, 200k rows, histories up to 50 with mean 17; batch 4096, 1 "
    "epoch): din is ours and DeepCTR-Torch's DIN (DNN "
    "relu, attention unit (64, 16) with Dice, no softmax; DeepCTR-Torch attends over item and "
    "category jointly, ours per sequence), din_dice the same with a Dice DNN (torch-rechub's fixed "
    "choice), dien AUGRU (attention unit (64, 16) relu, softmax over the history) without the "
    "auxiliary loss (DeepCTR-Torch without negative sampling), dien_dice the same with a Dice DNN "
    "against torch-rechub's DIEN (its auxiliary loss at weight 0, its attention a bilinear form "
    "with softmax). "
    "Synthetic funnel (300k rows, its 26 categorical fields: torch-rechub's ESMM takes no dense "
    "features; batch 4096, 1 epoch): esmm with MLP (256, 128) towers; its AUC and LogLoss are "
    "ctcvr's (click and conversion over every row). The teacher's AUC is the best any model can "
    "reach on that synthetic test split. "
    "The ratio column compares our row of the same shape with the peer's.  \n"
)


def _compare_row(
    groups: dict[tuple[str, str, str], list[dict[str, Any]]], key: tuple[str, str, str]
) -> dict[str, Any]:
    """One (dataset, model, library): mean over seeds, median speed, and ours against it."""
    from benchmarks._common import loads, mean_sd

    def speed(key: tuple[str, str, str]) -> float:
        return statistics.median(r["examples_per_s"] for r in groups[key])

    dataset, model, library = key
    g = groups[key]
    aucs = [r["auc"] for r in g]
    ours = OURS_FOR.get(library, {}).get(model)
    ratio = "-"
    if ours and (dataset, ours, "rankers") in groups:
        ratio = f"{speed((dataset, ours, 'rankers')) / speed(key):.2f}x"
        mine = statistics.mean(r["auc"] for r in groups[(dataset, ours, "rankers")])
        ratio += f", AUC {mine - statistics.mean(aucs):+.4f}"
    return {
        "dataset": dataset,
        "model": model,
        "library": library,
        "seeds": len(g),
        "test AUC": mean_sd(aucs),
        "teacher AUC": g[0].get("teacher_auc") or "-",
        "test LogLoss": statistics.mean(r["logloss"] for r in g),
        "ex/s (median)": speed(key),
        "peak RSS MB": round(max(r["peak_rss_mb"] for r in g)),
        "ours vs this: speed, AUC": ratio,
        "load before / after": loads(g),
    }


def render(rows: list[dict[str, Any]]) -> str:
    """The README's section against the peers: per dataset its latest run."""
    from benchmarks._common import figure_link, header, latest_per_dataset, markdown_table

    rs = latest_per_dataset([r for r in rows if r.get("benchmark") == "compare"], "compare-")
    if not rs:
        return ""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[(r["dataset"], r["model"], r["library"])].append(r)
    table = [_compare_row(groups, key) for key in sorted(groups)]
    runs = dict.fromkeys(r["run"] for r in rs)
    return (
        INTRO
        + "".join(header([r for r in rs if r["run"] == run]) for run in runs)
        + "\n"
        + markdown_table(table, list(table[0]))
        + "\n"
        + figure_link("compare_throughput.png", "training examples/s, ours and the peers")
        + figure_link("compare_auc_epochs.png", "test AUC after each epoch, ours and the peers")
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma-separated, of {list(DATASETS)} (default: all)"
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated, of {list(MODELS)} (default: all; each runs on the datasets of its kind)",
    )
    parser.add_argument(
        "--libraries",
        default=",".join(LIBRARIES),
        help=f"comma-separated, of {list(LIBRARIES)} (default: all; a peer runs only the models it has)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return
    from benchmarks._common import ROOT, load_average, record, run_readme

    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run = f"compare-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            data = _dataset(dataset, Path(tmp))
            spec = DATASETS[dataset]
            for model in args.models.split(","):
                for library in args.libraries.split(","):
                    skip = {(dataset, library, None), (dataset, library, model)} & SKIP
                    if model not in SUPPORTS[library] or skip:
                        continue
                    if (model in SEQUENCE_MODELS) != (dataset in SEQUENCE_DATASETS):
                        continue
                    if (model == "esmm") != (dataset == "synthetic_funnel"):
                        continue
                    teacher = _teacher_auc(data, model)
                    for seed in range(SEEDS.get((dataset, model), spec["seeds"])):
                        job = {"library": library, "model": model, "data": str(data), "seed": seed, **spec}
                        load = load_average()
                        done = subprocess.run(
                            [sys.executable, "-m", "benchmarks.compare", "--worker", json.dumps(job)],
                            cwd=ROOT,
                            env=env,
                            capture_output=True,
                            text=True,
                            check=False,
                        )
                        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                        if done.returncode or not lines:
                            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                            raise SystemExit(f"{library} {model} {dataset} seed {seed} failed")
                        result = json.loads(lines[-1][len("RESULT ") :])
                        row = {"benchmark": "compare", "run": run, "dataset": dataset, **job, **result}
                        row |= {"load_before": load, "load_after": load_average(), "teacher_auc": teacher}
                        record(row, command)
                        print(
                            f"{dataset} {model} {library} seed {seed}: AUC {result['auc']:.4f} "
                            f"{result['examples_per_s']:,.0f} ex/s {result['peak_rss_mb']:,.0f} MB",
                            flush=True,
                        )
    run_readme()


if __name__ == "__main__":
    main()
