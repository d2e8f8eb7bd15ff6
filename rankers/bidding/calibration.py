"""Calibration of predicted probabilities (scikit-learn's isotonic regression or Platt scaling),
its cross-validated check and their uncertainty (the reliability tables, ECE and the report:
`rankers.bidding.reliability`).

Held-out ECE: the valid split's rows are cut into K stratified folds; each fold is calibrated by
a map fitted on the other folds, so ECE raw and calibrated are both measured on rows the map did
not see. The saved map is then fitted on the whole split. `calibrate` refuses (ValueError, unless
`force`) a map whose held-out ECE is worse than the raw one, or one fitted on fewer than
`MIN_POSITIVES` positive or `MIN_NEGATIVES` negative rows: below about 50 events the ten ECE bins
hold some 5 events each, whose binomial error (about 45% of the rate) hides any calibration gain,
and an isotonic map is then a few steps fitted on a handful of events.

Bounds: a calibrated value is never exactly 0 or 1. Each isotonic step's rate is smoothed as
(positives + 2 r) / (n + 2), r the base rate of the n fitting rows (the posterior mean of the
step's rate under a Beta prior worth two rows at the base rate; with r = 1/2 it is Laplace's
(positives + 1) / (n + 2)), and the smoothed steps are made monotone again (weighted pool
adjacent violators). No step can then be more extreme than a step holding all n rows and none
(or all) of the positives: [2 r / (n + 2), 1 - 2 (1 - r) / (n + 2)]. Platt values are clipped to
the same bounds.

Sigma (the uncertainty of a calibrated value v) is the binomial standard error of the
calibration bin it falls in: the validation rows are binned by calibrated value in equal-width
bins of logit(v); a bin holding n of them gives sigma = sqrt(v' (1 - v') / n), the error of a
rate measured on n rows, with v' = (v n + 1) / (n + 2) so that a value of 0 or 1 is not
certain. Where validation data is scarce (the tails, rare high values) n is small and sigma
large. It covers the noise of the data the calibration was fitted on, not a systematic misfit of
the calibration map itself (tests/rankers/test_calibration.py measures its coverage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from rankers.bidding.reliability import expected_calibration_error, reliability, report_markdown
from rankers.calibration import EPS, Calibration, TaskCalibration, logit
from rankers.funnel import task_labels

# "auto" keeps, per task, whichever of isotonic and Platt lowers the held-out ECE most, or the
# model's own probabilities ("identity", bounded away from 0 and 1) where neither lowers it.
METHODS = ("auto", "isotonic", "platt", "identity")
MAPS = ("isotonic", "platt", "identity")  # what a saved TaskCalibration holds
FOLDS = 5  # of the held-out check: each map is fitted on 80% of the valid rows
MIN_POSITIVES = 50  # fewest positive fitting rows of a saved map (see above)
MIN_NEGATIVES = 50  # and negative ones: the same argument for a rate near 1
log = logging.getLogger(__name__)


def _smoothed_isotonic(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the isotonic map whose steps' rates are smoothed as (positives + 2 r) / (n + 2)."""
    iso = IsotonicRegression(out_of_bounds="clip").fit(probs, labels)
    steps, step = np.unique(iso.predict(probs), return_inverse=True)  # each row's step
    n, positives = np.bincount(step), np.bincount(step, weights=labels)
    smoothed = (positives + 2 * labels.mean()) / (n + 2)
    # a small step pulled toward the base rate can cross its neighbour: pool them again
    smoothed = IsotonicRegression().fit(steps, smoothed, sample_weight=n + 2).predict(steps)
    return iso.X_thresholds_, np.interp(iso.y_thresholds_, steps, smoothed)


def fit_task(
    probs: np.ndarray, labels: np.ndarray, method: str = "isotonic", bins: int = 20
) -> TaskCalibration:
    """Fits `method` on raw probabilities and 0/1 labels (a validation split); its values lie
    strictly inside (0, 1), within the bounds of the module docstring."""
    if method not in MAPS:
        raise ValueError(f"calibration method {method!r}: expected one of {MAPS}")
    if bins < 1:
        raise ValueError(f"bins={bins}: expected 1 or more")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(probs) != len(labels) or len(probs) < 2 or len(np.unique(labels)) < 2:
        raise ValueError(
            f"calibration needs rows of both classes; got {len(probs)} rows, labels {np.unique(labels)}"
        )
    rate, n = labels.mean(), len(labels)
    low, high = float(2 * rate / (n + 2)), float(1 - 2 * (1 - rate) / (n + 2))
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    if method == "platt":
        model = LogisticRegression(C=1e6).fit(logit(np.clip(probs, EPS, 1 - EPS))[:, None], labels)
        x = (float(model.coef_[0, 0]), float(model.intercept_[0]))
        if x[0] < 0:  # scores ranked against the labels: a calibration map never reverses the order,
            x = (0.0, float(np.log(rate) - np.log1p(-rate)))  # so the best monotone one is the base rate
    elif method == "isotonic":
        knots = _smoothed_isotonic(probs, labels)
        x, y = tuple(map(float, knots[0])), tuple(map(float, knots[1]))
    partial = TaskCalibration(method, x, y, (), (0,), low, high)
    z = logit(np.clip(partial.transform(probs), EPS, 1 - EPS))
    inner = np.linspace(z.min(), z.max(), bins + 1)[1:-1] if z.max() > z.min() else np.array([])
    counts = np.bincount(np.searchsorted(inner, z), minlength=len(inner) + 1)
    return TaskCalibration(method, x, y, tuple(map(float, inner)), tuple(map(int, counts)), low, high)


@dataclass(frozen=True)
class HeldOut:
    """One task's fitting rows and its held-out ECE, raw and calibrated: None where a class has
    fewer than 2 rows (`folds` is then 0)."""

    task: str
    rows: int
    positives: int
    folds: int
    ece_raw: float | None = None
    ece_calibrated: float | None = None
    method: str = "isotonic"

    @property
    def negatives(self) -> int:
        return self.rows - self.positives

    def problems(self, min_positives: int = MIN_POSITIVES, min_negatives: int = MIN_NEGATIVES) -> list[str]:
        """Why this task's map must not be saved (none if it may)."""
        why = []
        if self.positives < min_positives or self.negatives < min_negatives:
            why.append(f"below the minimum of {min_positives} positives and {min_negatives} negatives")
        elif self.ece_raw is None or self.ece_calibrated is None:
            why.append("held-out ECE not measured (two folds need 2 rows of each class)")
        raw, calibrated = self.ece_raw, self.ece_calibrated
        # the model's own probabilities are never "worse" (their bounds only keep them off 0 and 1)
        if raw is not None and calibrated is not None and calibrated > raw and self.method != "identity":
            why.append(f"held-out ECE worse: {raw:.5f} raw -> {calibrated:.5f} calibrated")
        return why

    def refusal(self, min_positives: int = MIN_POSITIVES, min_negatives: int = MIN_NEGATIVES) -> str | None:
        """`problems` in one line naming the task and its counts; None if there are none."""
        why = self.problems(min_positives, min_negatives)
        counts = f"{self.task}: {self.rows} rows, {self.positives} positives, {self.negatives} negatives"
        return ", ".join([counts, *why]) if why else None


def held_out(
    task: str,
    probs: np.ndarray,
    labels: np.ndarray,
    method: str = "isotonic",
    bins: int = 20,
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[HeldOut, np.ndarray | None]:
    """K-fold check of one task's calibration: each fold is calibrated by a map fitted on the
    other folds (stratified, shuffled with `seed`). K is `folds`, or the rows of the rarer class
    where fewer (each fold then holds both classes). Returns the check and the held-out
    calibrated values (None where K would be below 2)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    positives = int(labels.sum())
    k = min(folds, positives, len(labels) - positives)
    if k < 2:
        return HeldOut(task, len(labels), positives, 0, method=method), None
    out = np.empty(len(probs))
    for fit_rows, rows in StratifiedKFold(k, shuffle=True, random_state=seed).split(probs, labels):
        out[rows] = fit_task(probs[fit_rows], labels[fit_rows], method, bins).transform(probs[rows])
    ece = expected_calibration_error(probs, labels), expected_calibration_error(out, labels)
    return HeldOut(task, len(labels), positives, k, *ece, method=method), out


def held_out_auto(
    task: str, probs: np.ndarray, labels: np.ndarray, bins: int = 20, folds: int = FOLDS, seed: int = 0
) -> tuple[HeldOut, np.ndarray | None, dict[str, float]]:
    """`held_out` of isotonic and Platt on the same folds; the one with the lower held-out ECE where
    it is below the raw one, else the model's own probabilities ("identity"). Also returns each
    candidate's held-out ECE."""
    results = {m: held_out(task, probs, labels, m, bins, folds, seed) for m in MAPS}
    candidates = {m: c.ece_calibrated for m, (c, _) in results.items() if c.ece_calibrated is not None}
    raw = results["identity"][0].ece_raw
    best = min(("isotonic", "platt"), key=lambda m: candidates.get(m, np.inf))
    chosen = best if raw is not None and candidates.get(best, np.inf) < raw else "identity"  # or unmeasured
    return (*results[chosen], candidates)


def fit_calibration(
    probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], method: str = "isotonic", bins: int = 20
) -> Calibration:
    """One calibration per task, each on the rows where its label is defined (the caller passes
    cvr's probabilities and labels on clicked rows only)."""
    return Calibration({t: fit_task(probs[t], labels[t], method, bins) for t in probs if t in labels})


def _task_rows(
    predictor: Any, rows: str | Path, batch_size: int = 65_536
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw probabilities and labels per task, on the rows where its label is defined (scored
    `batch_size` rows per forward pass)."""
    probs, labels, _ = predictor.predict_labeled(rows, batch_size, raw=True)
    return {
        t: (probs[t][m].astype(np.float64), y[m].astype(np.float64))
        for t, (y, m) in task_labels(probs, labels).items()
    }


def _reliability(raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, on: str) -> dict[str, Any]:
    return {
        "reliability_on": on,
        "reliability_raw": reliability(raw, labels),
        "reliability_calibrated": reliability(calibrated, labels),
    }


def calibrate(
    predictor: Any,
    valid: str | Path,
    test: str | Path | None = None,
    method: str = "auto",
    bins: int = 20,
    folds: int = FOLDS,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
    force: bool = False,
    seed: int = 0,
    batch_size: int = 65_536,
) -> tuple[Calibration, dict[str, Any]]:
    """Fits a calibration of `predictor` (a rankers.predictor.Predictor) on the labeled rows of
    `valid`, each task on the rows where its label is defined (rankers.evaluation.task_labels), once
    every task passes its held-out check (`held_out`, `HeldOut.refusal`). Returns it with a report:
    its status ("saved": every task passed; "forced"), per task its rows, positives, folds, check,
    held-out ECE raw and calibrated, ECE raw and calibrated on `test` where given, and reliability
    tables (on `test`, else on the held-out values). The model scores `batch_size` rows per forward
    pass.

    Raises:
        ValueError: a task fails its check and not `force` (nothing is fitted; every failing task
            is named), or a task has rows of one class only (nothing to fit, even forced).
    """
    _check_options(method, folds, min_positives, min_negatives)
    fit = _task_rows(predictor, valid, batch_size)
    if not fit:
        raise ValueError(f"{valid}: no labels of the predictor's tasks to calibrate on")
    if method == "auto":
        auto = {t: held_out_auto(t, p, y, bins, folds, seed) for t, (p, y) in fit.items()}
        checks = {t: (c, values) for t, (c, values, _) in auto.items()}
        candidates = {t: ece for t, (_, _, ece) in auto.items()}
    else:
        checks = {t: held_out(t, p, y, method, bins, folds, seed) for t, (p, y) in fit.items()}
        candidates = {}
    refused = {t: why for t, (c, _) in checks.items() if (why := c.refusal(min_positives, min_negatives))}
    report: dict[str, Any] = {
        "method": method,
        "folds": folds,
        "min_positives": min_positives,
        "min_negatives": min_negatives,
        "fitted_on": str(valid),
        "measured_on": None,  # the test rows, once measured
        "status": ("forced" if force else "refused") if refused else "saved",
        "tasks": {
            t: _check_row(c, c.problems(min_positives, min_negatives), force)
            | {"candidates": candidates.get(t)}
            for t, (c, _) in checks.items()
        },
    }
    if refused and not force:
        log.info(report_markdown(report))
        raise ValueError(
            f"calibration refused, nothing saved: {'; '.join(refused.values())} (--force saves it anyway)"
        )
    one_class = [c for c, _ in checks.values() if c.positives in (0, c.rows)]
    if one_class:
        named = "; ".join(f"{c.task}: {c.rows} rows, {c.positives} positives" for c in one_class)
        raise ValueError(f"cannot calibrate {named}: a map needs rows of both classes, even forced")
    calibration = Calibration({t: fit_task(p, y, checks[t][0].method, bins) for t, (p, y) in fit.items()})
    for t, (_, values) in checks.items():
        if values is not None:
            report["tasks"][t] |= _reliability(fit[t][0], values, fit[t][1], "held-out valid")
    if test is not None:
        _measure(report, calibration, _task_rows(predictor, test, batch_size))
        report["measured_on"] = str(test)
    return calibration, report


def _check_options(method: str, folds: int, min_positives: int, min_negatives: int) -> None:
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")
    if folds < 2:
        raise ValueError(f"folds={folds}: expected 2 or more")
    if min(min_positives, min_negatives) < 0:
        raise ValueError(f"minimums {min_positives} positives, {min_negatives} negatives: expected >= 0")


def _check_row(check: HeldOut, problems: list[str], force: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"method": check.method, "rows": check.rows, "positives": check.positives}
    row["folds"] = check.folds
    row |= {"heldout_ece_raw": check.ece_raw, "heldout_ece_calibrated": check.ece_calibrated}
    verdict = ("forced: " if force else "refused: ") + ", ".join(problems) if problems else "passed"
    return row | {"check": verdict}


def _measure(
    report: dict[str, Any], calibration: Calibration, rows: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Adds test ECE raw and calibrated, and the reliability tables there, to `report`'s tasks."""
    for t, (p, y) in rows.items():
        if t in calibration.tasks and len(y):
            v = calibration.tasks[t].transform(p)
            ece = {"test_ece_raw": expected_calibration_error(p, y)}
            ece["test_ece_calibrated"] = expected_calibration_error(v, y)
            report["tasks"][t] |= {"test_rows": len(y), **ece, **_reliability(p, v, y, "test")}
