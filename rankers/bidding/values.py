"""`BidValues`: what a bidding agent takes per opportunity, a value and its uncertainty.

value is P(conversion | exposure) (pCTCVR from ESMM, or pCTR x pCVR), or P(click) for a click goal,
optionally times a value per conversion (money); sigma is its standard error (see
rankers.bidding.calibration for how it is estimated). These are AuctionNet's `pValues` and
`pValueSigmas`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankers.funnel import goal_tasks

GOALS = ("conversion", "click")


def check_array(name: str, a: np.ndarray, where: str = "") -> None:
    """ValueError naming the first NaN, infinite or negative entry of `a` (and `where` it came from)."""
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where + ': ' if where else ''}{name}[{i}] = {float(a[i])}: expected finite values >= 0 "
            f"({int(bad.sum())} such entries)"
        )


@dataclass(frozen=True)
class BidValues:
    """value (n,) >= 0 and sigma (n,) >= 0, both finite; checked on construction."""

    value: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        value = np.asarray(self.value, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if value.ndim != 1 or value.shape != sigma.shape:
            raise ValueError(
                f"value {value.shape} and sigma {sigma.shape} must be one-dimensional, one shape"
            )
        check_array("value", value)
        check_array("sigma", sigma)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "sigma", sigma)

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, index: Any) -> BidValues:
        return BidValues(self.value[index], self.sigma[index])

    def times(self, factor: float) -> BidValues:
        """Values in money: both scaled by a value per conversion (or click)."""
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"value per conversion {factor} must be finite and > 0")
        return BidValues(self.value * factor, self.sigma * factor)


def values_from_probs(
    probs: dict[str, np.ndarray], sigmas: dict[str, np.ndarray], goal: str = "conversion"
) -> BidValues:
    """Bid values from per-task probabilities and their sigmas.

    goal "click": ctr. goal "conversion": ctcvr when present, else ctr x cvr with the delta
    method's sigma (independent errors): the funnel's rule (`rankers.funnel.goal_tasks`).
    `sigmas` needs only the tasks the goal uses.
    """
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r}: expected one of {GOALS}")
    have = sorted(probs)
    if goal == "click":
        if "ctr" not in probs:
            raise ValueError(f"goal 'click' needs a ctr task; the predictor has {have}")
        return BidValues(probs["ctr"], sigmas["ctr"])
    if "ctcvr" in probs:
        return BidValues(probs["ctcvr"], sigmas["ctcvr"])
    if "ctr" in probs and "cvr" in probs:
        ctr, cvr = probs["ctr"], probs["cvr"]
        sigma = np.sqrt((cvr * sigmas["ctr"]) ** 2 + (ctr * sigmas["cvr"]) ** 2)
        return BidValues(ctr * cvr, sigma)
    raise ValueError(f"goal 'conversion' needs ctcvr, or ctr and cvr tasks; the predictor has {have}")


def bid_values(
    predictor: Any, rows: str | Path | Any, goal: str = "conversion", value_per_conversion: float = 1.0
) -> BidValues:
    """Calibrated bid values of `rows` (a parquet path, a pyarrow Table or a Batch) from a
    `Predictor` whose checkpoint holds a calibration (`rankers calibrate`)."""
    calibration = predictor.calibration
    if calibration is None:
        raise ValueError(
            f"{predictor.path}: no calibration in the checkpoint; bid values need calibrated "
            "probabilities and their sigma (run `rankers calibrate --checkpoint DIR`)"
        )
    raw = predictor.predict_proba(rows, raw=True)
    probs = calibration.transform(raw)
    needed = {t: probs[t] for t in goal_tasks(list(probs), goal) if t in probs}
    values = values_from_probs(probs, calibration.sigma(needed), goal)
    return values if value_per_conversion == 1.0 else values.times(value_per_conversion)
