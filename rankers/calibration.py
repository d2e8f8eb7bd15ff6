"""A fitted calibration as a Predictor applies it: per-task maps of raw probabilities to calibrated
ones, and each calibrated value's sigma; saved in a checkpoint directory as `calibration.json`.

`rankers calibrate` fits and checks them (`rankers.bidding.calibration`, whose docstring gives the
maps' bounds and how sigma is estimated); here they are only applied, saved and loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before a logit


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def expit(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + exp(-z)) without overflow


@dataclass(frozen=True)
class TaskCalibration:
    """One task's calibration map and the bins that give sigma.

    isotonic: `x`, `y` are the fitted step function's knots (interpolated linearly between, flat
    outside); platt: `x` = (a, b) with v = sigmoid(a logit(p) + b); identity: v = p. Values are clipped to
    [`low`, `high`] (the bounds of the module docstring). `edges` are the inner bin edges on
    logit(v), `counts` the validation rows per bin.
    """

    method: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    low: float = 0.0
    high: float = 1.0

    def transform(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            a, b = self.x
            v = expit(a * logit(np.clip(p, EPS, 1 - EPS)) + b)
        elif self.method == "identity":
            v = p
        else:
            v = np.interp(p, self.x, self.y)
        return np.clip(v, self.low, self.high)

    def sigma(self, v: np.ndarray) -> np.ndarray:
        """Binomial standard error of calibrated values `v` from their bin's validation count."""
        v = np.asarray(v, dtype=np.float64)
        n = np.maximum(
            np.asarray(self.counts)[np.searchsorted(self.edges, logit(np.clip(v, EPS, 1 - EPS)))], 1
        )
        smoothed = (v * n + 1) / (n + 2)  # Laplace: a rate of 0 measured on n rows is not certain
        return np.sqrt(smoothed * (1 - smoothed) / n)


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
        return cls.from_json(path.read_text(), str(path))

    @classmethod
    def from_json(cls, text: str, where: str) -> Calibration:
        """The calibration `save` wrote as `text`; ValueError naming `where` otherwise."""
        try:
            raw = json.loads(text)
            tasks = {
                t: TaskCalibration(
                    c["method"],
                    tuple(c["x"]),
                    tuple(c["y"]),
                    tuple(c["edges"]),
                    tuple(c["counts"]),
                    c.get("low", 0.0),  # files written before the bounds
                    c.get("high", 1.0),
                )
                for t, c in raw.items()
            }
            return cls(tasks)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{where}: not a calibration written by `rankers calibrate` ({e})") from e
