"""The benchmark report: PNG figures from benchmarks/results.jsonl, then benchmarks/README.md.

    .venv/bin/pip install -e '.[plots]'
    .venv/bin/python -m benchmarks.report

Figures (benchmarks/figures/, linked from the README where they exist): training examples/s of
ours and the peers per dataset and model, and their test AUC after each epoch where a run has
several (benchmarks/compare.py); the paced, linear and constant agents' share of the hindsight
optimum against the budget on iPinYou, and the reliability of the model-value runs' predictions
before and after calibration (benchmarks/bidding.py). Without matplotlib only the README is
rewritten.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks._common import FIGURES, latest_per_dataset, latest_run, results
from benchmarks.readme import write_readme

COLORS = {"rankers": "C0", "rankers_adam": "C2", "deepctr_torch": "C1", "torch_rechub": "C3"}


def _save(fig: Any, name: str, plt: Any) -> Path:
    fig.tight_layout()
    path = FIGURES / name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _throughput(rows: list[dict[str, Any]], plt: Any) -> Path | None:
    rs = latest_per_dataset([r for r in rows if r.get("benchmark") == "compare"], "compare-")
    if not rs:
        return None
    speed: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for key in {(r["dataset"], r["model"], r["library"]) for r in rs}:
        group = [r["examples_per_s"] for r in rs if (r["dataset"], r["model"], r["library"]) == key]
        speed[key[:2]][key[2]] = statistics.median(group)
    labels = sorted(speed)
    libraries = ["rankers", "deepctr_torch", "torch_rechub"]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 1.1), 4.5))
    width = 0.8 / len(libraries)
    for i, lib in enumerate(libraries):
        xs = [j + i * width for j, k in enumerate(labels) if lib in speed[k]]
        ys = [speed[k][lib] for k in labels if lib in speed[k]]
        ax.bar(xs, ys, width, label=lib)
    ax.set_xticks([j + width for j in range(len(labels))])
    ax.set_xticklabels([f"{d}\n{m}" for d, m in labels], fontsize=7)
    ax.set_ylabel("training examples/s (median)")
    ax.set_title("Training throughput, same data and shapes (benchmarks/compare.py)")
    ax.legend()
    return _save(fig, "compare_throughput.png", plt)


def _bidding(rows: list[dict[str, Any]], plt: Any) -> Path | None:
    rs = latest_run([r for r in rows if r.get("benchmark") == "bidding_ipinyou"], "bidding-")
    if not rs:
        return None
    share: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rs:
        if r["agent"] != "hindsight optimum":
            share[r["agent"]][r["fraction"]].append(r["of_optimum"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for agent, by in share.items():
        fractions = sorted(by)
        ax.plot(fractions, [statistics.mean(by[f]) for f in fractions], "o-", label=agent)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget (share of the traffic's cost)")
    ax.set_ylabel("expected clicks / hindsight optimum")
    ax.set_title("iPinYou, 6 campaigns, episodes 51-100")
    ax.axhline(0.85, color="grey", lw=1, ls="--")
    ax.legend()
    return _save(fig, "bidding_ipinyou.png", plt)


def _auc_epochs(rows: list[dict[str, Any]], plt: Any) -> Path | None:
    """Test AUC after each epoch, mean over seeds, one panel per (dataset, model) trained for
    more than one epoch, a line per library."""
    rs = latest_per_dataset([r for r in rows if r.get("benchmark") == "compare"], "compare-")
    curves: dict[tuple[str, str], dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rs:
        if len(r.get("epoch_auc") or ()) > 1:
            curves[(r["dataset"], r["model"])][r["library"]].append(r["epoch_auc"])
    if not curves:
        return None
    panels = sorted(curves)
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels, strict=False):
        for library, runs in sorted(curves[key].items()):
            mean = [statistics.mean(epoch) for epoch in zip(*runs, strict=True)]
            label = f"{library} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            ax.plot(range(1, len(mean) + 1), mean, "o-", color=COLORS.get(library), label=label)
        ax.set(title=f"{key[0]}: {key[1]}", xlabel="epoch", ylabel="test AUC (mean over seeds)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _save(fig, "compare_auc_epochs.png", plt)


def _reliability(rows: list[dict[str, Any]]) -> Path | None:
    """Reliability of the model-value runs' click predictions on the synthetic test split, raw and
    calibrated (rankers.bidding.reliability.plot_reliability, a panel per model)."""
    from rankers.bidding.reliability import plot_reliability

    rs = latest_run([r for r in rows if r.get("benchmark") == "bidding_model_value"], "bidding-")
    tasks = {r["model"]: r["calibration"] for r in rs if "calibration" in r}
    return plot_reliability({"tasks": tasks}, FIGURES / "calibration_synthetic.png") if tasks else None


def main() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): README only", file=sys.stderr)
    else:
        FIGURES.mkdir(exist_ok=True)
        rows = results()
        for made in (_throughput(rows, plt), _auc_epochs(rows, plt), _bidding(rows, plt), _reliability(rows)):
            if made:
                print(f"wrote {made}")
    print(write_readme())


if __name__ == "__main__":
    main()
