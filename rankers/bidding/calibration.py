"""Calibration of predicted probabilities (scikit-learn's isotonic regression or Platt scaling),
their uncertainty, expected calibration error and reliability tables.

Sigma (the uncertainty of a calibrated value v) is the binomial standard error of the
calibration bin it falls in: the validation rows are binned by calibrated value in equal-width
bins of logit(v); a bin holding n of them gives sigma = sqrt(v' (1 - v') / n), the error of a
rate measured on n rows, with v' = (v n + 1) / (n + 2) so that a value of 0 or 1 is not
certain. Where validation data is scarce (the tails, rare high values) n is small and sigma
large. It covers the noise of the data the calibration was fitted on, not a systematic misfit of
the calibration map itself (tests/rankers/test_calibration.py measures its coverage).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

METHODS = ("isotonic", "platt")
CALIBRATION_FILE = "calibration.json"
_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class TaskCalibration:
    """One task's calibration map and the bins that give sigma.

    isotonic: `x`, `y` are the fitted step function's knots (interpolated linearly between, flat
    outside); platt: `x` = (a, b) with v = sigmoid(a logit(p) + b). `edges` are the inner bin
    edges on logit(v), `counts` the validation rows per bin.
    """

    method: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def transform(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            a, b = self.x
            return expit(a * logit(np.clip(p, _EPS, 1 - _EPS)) + b)
        return np.interp(p, self.x, self.y)

    def sigma(self, v: np.ndarray) -> np.ndarray:
        """Binomial standard error of calibrated values `v` from their bin's validation count."""
        v = np.asarray(v, dtype=np.float64)
        n = np.maximum(
            np.asarray(self.counts)[np.searchsorted(self.edges, logit(np.clip(v, _EPS, 1 - _EPS)))], 1
        )
        smoothed = (v * n + 1) / (n + 2)  # Laplace: a rate of 0 measured on n rows is not certain
        return np.sqrt(smoothed * (1 - smoothed) / n)


def fit_task(
    probs: np.ndarray, labels: np.ndarray, method: str = "isotonic", bins: int = 20
) -> TaskCalibration:
    """Fits `method` on raw probabilities and 0/1 labels (a validation split)."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(probs) != len(labels) or len(probs) < 2 or len(np.unique(labels)) < 2:
        raise ValueError(
            f"calibration needs rows of both classes; got {len(probs)} rows, labels {np.unique(labels)}"
        )
    if method == "platt":
        model = LogisticRegression(C=1e6).fit(logit(np.clip(probs, _EPS, 1 - _EPS))[:, None], labels)
        x: tuple[float, ...] = (float(model.coef_[0, 0]), float(model.intercept_[0]))
        y: tuple[float, ...] = ()
    else:
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(probs, labels)
        x, y = tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_))
    partial = TaskCalibration(method, x, y, (), (0,))
    z = logit(np.clip(partial.transform(probs), _EPS, 1 - _EPS))
    inner = np.linspace(z.min(), z.max(), bins + 1)[1:-1] if z.max() > z.min() else np.array([])
    counts = np.bincount(np.searchsorted(inner, z), minlength=len(inner) + 1)
    return TaskCalibration(method, x, y, tuple(map(float, inner)), tuple(map(int, counts)))


@dataclass(frozen=True)
class Calibration:
    """Per-task calibrations, saved beside a checkpoint's weights as `calibration.json`."""

    tasks: dict[str, TaskCalibration]

    def transform(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated probabilities of the tasks that have a calibration (others unchanged)."""
        return {t: self.tasks[t].transform(p) if t in self.tasks else p for t, p in probs.items()}

    def sigma(self, calibrated: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(calibrated) - set(self.tasks))
        if missing:
            raise ValueError(f"no calibration for tasks {missing}; calibrated: {sorted(self.tasks)}")
        return {t: self.tasks[t].sigma(v) for t, v in calibrated.items()}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CALIBRATION_FILE
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps({t: asdict(c) for t, c in self.tasks.items()}, indent=1))
        tmp.rename(path)  # a reader sees the old file or the new one
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Calibration | None:
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            tasks = {
                t: TaskCalibration(
                    c["method"], tuple(c["x"]), tuple(c["y"]), tuple(c["edges"]), tuple(c["counts"])
                )
                for t, c in raw.items()
            }
            return cls(tasks)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: not a calibration written by `rankers calibrate` ({e})") from e


def fit_calibration(
    probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], method: str = "isotonic", bins: int = 20
) -> Calibration:
    """One calibration per task, each on the rows where its label is defined (the caller passes
    cvr's probabilities and labels on clicked rows only)."""
    return Calibration({t: fit_task(probs[t], labels[t], method, bins) for t in probs if t in labels})


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
    table = reliability(np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64), bins)
    total = sum(r["rows"] for r in table)
    return float(sum(r["rows"] * abs(r["predicted"] - r["observed"]) for r in table) / total)


def calibrate(
    predictor: Any,
    valid: str | Path,
    test: str | Path | None = None,
    method: str = "isotonic",
    bins: int = 20,
) -> tuple[Calibration, dict[str, Any]]:
    """Fits a calibration of `predictor` (a rankers.predictor.Predictor) on the labeled rows of
    `valid`, each task on the rows where its label is defined (rankers.metrics.task_labels).
    Returns it with a report per task: ECE before and after on `test` (or `valid`), and the
    reliability table of both there."""
    from rankers.metrics import task_labels

    probs, labels, _ = predictor.predict_labeled(valid, raw=True)
    fit = {t: (probs[t][rows], y[rows]) for t, (y, rows) in task_labels(probs, labels).items() if rows.any()}
    calibration = Calibration({t: fit_task(p, y, method, bins) for t, (p, y) in fit.items()})
    where = test if test is not None else valid
    if test is not None:
        probs, labels, _ = predictor.predict_labeled(test, raw=True)
    report: dict[str, Any] = {
        "method": method,
        "fitted_on": str(valid),
        "measured_on": str(where),
        "tasks": {},
    }
    for t, (y, rows) in task_labels(probs, labels).items():
        if t not in calibration.tasks or not rows.any():
            continue
        raw = probs[t][rows].astype(np.float64)
        cal = calibration.tasks[t].transform(raw)
        report["tasks"][t] = {
            "rows": int(rows.sum()),
            "ece_raw": expected_calibration_error(raw, y[rows]),
            "ece_calibrated": expected_calibration_error(cal, y[rows]),
            "reliability_raw": reliability(raw, y[rows]),
            "reliability_calibrated": reliability(cal, y[rows]),
        }
    return calibration, report


def report_markdown(report: dict[str, Any]) -> str:
    """The calibration report as markdown: ECE per task, then each task's reliability tables."""
    from rankers.metrics import markdown_table

    head = (
        f"Calibration ({report['method']}) fitted on {report['fitted_on']}, "
        f"measured on {report['measured_on']}."
    )
    ece = [
        {"task": t, "rows": r["rows"], "ECE raw": r["ece_raw"], "ECE calibrated": r["ece_calibrated"]}
        for t, r in report["tasks"].items()
    ]
    parts = [head, markdown_table(ece, ["task", "rows", "ECE raw", "ECE calibrated"])]
    for t, r in report["tasks"].items():
        for kind in ("raw", "calibrated"):
            parts.append(f"Reliability of {t}, {kind}:")
            parts.append(
                markdown_table(r[f"reliability_{kind}"], ["low", "high", "rows", "predicted", "observed"])
            )
    return "\n\n".join(parts) + "\n"


def plot_reliability(report: dict[str, Any], path: str | Path) -> Path | None:
    """A reliability diagram per task (PNG) where matplotlib is installed (the `plots` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        r = report["tasks"][t]
        top = max(
            max(b["predicted"], b["observed"]) for k in ("raw", "calibrated") for b in r[f"reliability_{k}"]
        )
        ax.plot([0, top], [0, top], color="grey", lw=1)
        for kind in ("raw", "calibrated"):
            b = r[f"reliability_{kind}"]
            ece = r[f"ece_{kind}"]
            ax.plot(
                [x["predicted"] for x in b], [x["observed"] for x in b], "o-", label=f"{kind} (ECE {ece:.4f})"
            )
        ax.set(title=t, xlabel="mean predicted", ylabel="observed rate")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
