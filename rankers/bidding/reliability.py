"""How well probabilities are calibrated, and the calibration report: reliability tables over
equal-count bins, expected calibration error (ECE), the report as markdown and as a reliability
diagram. `rankers.bidding.calibration` fits and checks the maps; this module only measures and
shows (`rankers calibrate` writes calibration.md and calibration.png through it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Rows of equal-count bins of predicted probability: range, rows, mean predicted, observed rate."""
    order = np.argsort(probs, kind="stable")
    rows = []
    for part in np.array_split(order, bins):
        if len(part):
            p, y = probs[part], labels[part]
            rows.append(
                {
                    "low": float(p.min()),
                    "high": float(p.max()),
                    "rows": len(part),
                    "predicted": float(p.mean()),
                    "observed": float(y.mean()),
                }
            )
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-count bins: the row-weighted mean |mean predicted - observed rate|."""
    return _table_ece(
        reliability(np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64), bins)
    )


def _table_ece(table: list[dict[str, Any]]) -> float:
    total = sum(r["rows"] for r in table)
    return float(sum(r["rows"] * abs(r["predicted"] - r["observed"]) for r in table) / total)


def _arrow(raw: float | None, calibrated: float | None) -> str:
    return "-" if raw is None or calibrated is None else f"{raw:.4f} -> {calibrated:.4f}"


def _candidates(ece: dict[str, float] | None) -> str:
    """` (isotonic 0.0397, platt 0.0265)`: each map's held-out ECE, where "auto" compared them."""
    shown = [f"{m} {v:.4f}" for m, v in (ece or {}).items() if m != "identity"]
    return f" ({', '.join(shown)})" if shown else ""


def report_markdown(report: dict[str, Any]) -> str:
    """The calibration report as markdown: the check and ECE per task, then the reliability tables."""
    from rankers.metrics import markdown_table

    status = {
        "saved": "saved",
        "forced": "saved with --force although tasks failed the check",
        "refused": "refused, nothing saved (--force saves it anyway)",
    }[report["status"]]
    head = (
        f"Calibration ({report['method']}) fitted on {report['fitted_on']}: {status}.\n\n"
        f"Held-out ECE: {report['folds']}-fold cross-validation on those rows (fewer folds where a "
        "class has fewer rows), each fold calibrated by a map fitted on the other folds; the saved "
        f"map is fitted on all of them. A map is saved if it was fitted on at least "
        f"{report['min_positives']} positives and {report['min_negatives']} negatives and its "
        f"held-out ECE is not worse. Test ECE on {report['measured_on'] or 'no test rows'}."
    )
    if report["method"] == "auto":
        head += (
            "\n\nauto: per task the map (isotonic or Platt) with the lower held-out ECE where it is "
            "below the raw one, else the model's own probabilities (identity)."
        )
    rows = [
        {
            "task": t,
            "map": r["method"] + _candidates(r.get("candidates")),
            **{k: r[k] for k in ("rows", "positives", "folds", "check")},
            "held-out ECE raw -> calibrated": _arrow(r["heldout_ece_raw"], r["heldout_ece_calibrated"]),
            "test rows": r.get("test_rows"),
            "test ECE raw -> calibrated": _arrow(r.get("test_ece_raw"), r.get("test_ece_calibrated")),
        }
        for t, r in report["tasks"].items()
    ]
    columns = ["task", "map", "rows", "positives", "folds", "held-out ECE raw -> calibrated", "test rows"]
    parts = [head, markdown_table(rows, [*columns, "test ECE raw -> calibrated", "check"])]
    for t, r in report["tasks"].items():
        for kind in ("raw", "calibrated") if "reliability_raw" in r else ():
            parts.append(f"Reliability of {t} on {r['reliability_on']} rows, {kind}:")
            parts.append(
                markdown_table(r[f"reliability_{kind}"], ["low", "high", "rows", "predicted", "observed"])
            )
    return "\n\n".join(parts) + "\n"


def plot_reliability(report: dict[str, Any], path: str | Path) -> Path | None:
    """A reliability diagram per task that has reliability tables (PNG), where matplotlib is
    installed (the `plots` extra); None otherwise."""
    tasks = [t for t, r in report["tasks"].items() if "reliability_raw" in r]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        r = report["tasks"][t]
        top = max(
            max(b["predicted"], b["observed"]) for k in ("raw", "calibrated") for b in r[f"reliability_{k}"]
        )
        ax.plot([0, top], [0, top], color="grey", lw=1)
        for kind in ("raw", "calibrated"):
            b = r[f"reliability_{kind}"]
            label = f"{kind} (ECE {_table_ece(b):.4f})"
            ax.plot([x["predicted"] for x in b], [x["observed"] for x in b], "o-", label=label)
        title = f"{t} on {r['reliability_on']} rows" if "reliability_on" in r else t
        if "folds" in r:
            title += f"\n{r['rows']:,} valid rows, {r['positives']:,} positives, {r['folds']} folds"
            title += f"\nheld-out ECE {_arrow(r['heldout_ece_raw'], r['heldout_ece_calibrated'])}"
        ax.set(title=title, xlabel="mean predicted", ylabel="observed rate")
        ax.legend()
    if "status" in report:
        fig.suptitle(f"{report['method']} calibration: {report['status']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
