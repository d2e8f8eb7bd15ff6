"""Agents side by side on logged episodes: tuned on the first episodes, replayed on the rest,
against the hindsight optimum; and episodes built from any labeled split with a market model.

Tuning (on the training episodes, maximizing the expected conversions won under the budget):
constant bid c and linear bidding's b0 over a log grid; the paced agent starts at the lambda
matching tuned linear bidding (lambda0 = mean value / b0) scaled over a grid; target CPA uses the
advertiser's CPA as given (`cpa`), paced to the budget from the same lambda0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rankers.bidding.agents import (
    Agent,
    ConstantBid,
    FirstPriceShading,
    LinearBid,
    MaxConversions,
    TargetCPA,
    tune,
)
from rankers.bidding.replay import Episode, ReplayConfig, hindsight_optimum, replay, totals
from rankers.bidding.values import BidValues

AGENTS = ("constant", "linear", "paced", "cpa")


def market_prices(
    true_value: np.ndarray, median: float = 50.0, corr: float = 0.6, spread: float = 0.6, seed: int = 0
) -> np.ndarray:
    """Log-normal market prices correlated with the opportunities' true value: log price =
    log(median) + spread (corr z + sqrt(1 - corr^2) e), z the standardized log true value and e
    standard normal noise. Competitors value what we value, imperfectly."""
    if not (-1 <= corr <= 1 and spread >= 0 and median > 0):
        raise ValueError(f"market model: corr {corr} in [-1, 1], spread {spread} >= 0, median {median} > 0")
    logv = np.log(np.clip(true_value, 1e-9, None))
    z = (logv - logv.mean()) / (logv.std() or 1.0)
    e = np.random.default_rng(seed).standard_normal(len(z))
    return median * np.exp(spread * (corr * z + np.sqrt(1 - corr**2) * e))


def episodes_from_split(
    values: BidValues, outcomes: np.ndarray, prices: np.ndarray, length: int
) -> list[Episode]:
    """Rows in order, cut into episodes of `length` (rows after the last full one are left out)."""
    n = (len(values) // length) * length
    if n == 0:
        raise ValueError(f"{len(values)} rows are fewer than one episode of {length}")
    return [
        Episode(values[i : i + length], prices[i : i + length], outcomes[i : i + length])
        for i in range(0, n, length)
    ]


def compare_agents(
    train: list[Episode],
    test: list[Episode],
    budget: float,
    agents: tuple[str, ...] = ("constant", "linear", "paced"),
    cpa: float | None = None,
    auction: str = "second_price",
    cap: float = np.inf,
    ticks: int = 48,
    value_per_conversion: float | None = None,
) -> list[dict[str, Any]]:
    """One row per agent (tuned on `train`, replayed on `test`) and the hindsight optimum's row."""
    if auction == "first_price" and "cpa" in agents:
        raise ValueError("compare target CPA under second price (first price shades the other agents)")
    mean_v = float(np.mean(np.concatenate([e.values.value for e in train])))
    if not mean_v > 0:
        raise ValueError("the training episodes' values are all 0: nothing to bid on")
    prices = np.concatenate([e.prices for e in train])

    def wrap(agent: Agent) -> Agent:
        return FirstPriceShading(inner=agent, prices=prices, cap=cap) if auction == "first_price" else agent

    tuning = ReplayConfig(ticks=ticks, auction=auction)
    testing = replace(tuning, target_cpa=cpa, value_per_conversion=value_per_conversion)

    def score(agent: Agent) -> float:
        return totals(replay(wrap(agent), train, budget, tuning))["expected"]

    top = float(np.quantile(prices, 0.99)) * 4
    grid = np.geomspace(top / 400, top, 25)
    b0 = tune(lambda b: LinearBid(b0=b, mean_value=mean_v, cap=cap), grid, score)
    made: dict[str, Callable[[], Agent]] = {
        "constant": lambda: ConstantBid(
            price=tune(lambda c: ConstantBid(price=c, cap=cap), grid, score), cap=cap
        ),
        "linear": lambda: LinearBid(b0=b0, mean_value=mean_v, cap=cap),
        "paced": lambda: MaxConversions(
            lambda0=tune(
                lambda x: MaxConversions(lambda0=x, cap=cap), mean_v / b0 * np.geomspace(0.25, 4, 9), score
            ),
            cap=cap,
        ),
        "cpa": lambda: TargetCPA(cpa=_required(cpa), lambda0=mean_v / b0, cap=cap),
    }
    rows: list[dict[str, Any]] = []
    for name in agents:
        if name not in made:
            raise ValueError(f"agent {name!r}: expected some of {AGENTS}")
        result = totals(replay(wrap(made[name]()), test, budget, testing), value_per_conversion)
        rows.append({"agent": name, **result})
    best = sum(hindsight_optimum(e.values.value, e.prices, budget) for e in test)
    rows.append({"agent": "hindsight optimum", "expected": best})
    for r in rows:
        r["of_optimum"] = r["expected"] / best if best else float("nan")
    return rows


def _required(cpa: float | None) -> float:
    if cpa is None:
        raise ValueError("agent 'cpa' needs a target CPA (--cpa)")
    return cpa


def split_episodes(
    predictor: Any,
    split: str | Path,
    goal: str = "click",
    length: int = 1000,
    market_seed: int = 0,
    median: float = 50.0,
    true_outcomes: bool = False,
) -> list[Episode]:
    """Episodes of a labeled split (rows in stored order): calibrated values from `predictor`,
    real outcomes from the labels, and `market_prices` correlated with the rows' true value, the
    teacher's probability on synthetic data (`teacher_p`, times `teacher_p_cvr` for conversions),
    else the calibrated value itself. With `true_outcomes` (synthetic data), the outcome of a row
    is its true probability, so a replay counts the expected conversions won without noise."""
    import pyarrow.parquet as pq

    from features.reader import parquet_files
    from rankers.bidding.values import goal_tasks, values_from_probs

    if predictor.calibration is None:
        raise ValueError(f"{predictor.path}: no calibration (run `rankers calibrate --checkpoint DIR` first)")
    probs, labels, _ = predictor.predict_labeled(split, raw=True)
    calibrated = predictor.calibration.transform(probs)
    needed = {t: calibrated[t] for t in goal_tasks(list(calibrated), goal) if t in calibrated}
    values = values_from_probs(calibrated, predictor.calibration.sigma(needed), goal)
    label = "ctr" if goal == "click" else "cvr"  # the conversion label marks click-and-conversion
    if label not in labels:
        raise ValueError(f"{split}: no {label!r} label for goal {goal!r} (labels: {sorted(labels)})")
    y = labels[label]
    names = pq.ParquetFile(parquet_files(split)[0]).schema_arrow.names
    truth = values.value
    if "teacher_p" in names:
        t = {
            c: np.concatenate(
                [pq.read_table(f, columns=[c]).column(c).to_numpy() for f in parquet_files(split)]
            )
            for c in ("teacher_p", "teacher_p_cvr")
            if c in names
        }
        if goal == "conversion" and "teacher_p_cvr" not in t:
            raise ValueError(f"{split}: goal 'conversion' needs a teacher_p_cvr column beside teacher_p")
        truth = t["teacher_p"] * (t["teacher_p_cvr"] if goal == "conversion" else 1.0)
    elif true_outcomes:
        raise ValueError(f"{split}: no teacher_p column, so no true outcomes (synthetic data has one)")
    prices = market_prices(truth, median=median, seed=market_seed)
    outcomes = truth if true_outcomes else np.asarray(y, dtype=np.float64)
    return episodes_from_split(values, outcomes, prices, length)
