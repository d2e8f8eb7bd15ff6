"""Agents side by side on logged episodes: tuned on the first episodes, replayed on the rest,
against the hindsight optimum; and episodes built from any labeled split with a market model.

Tuning (on the training episodes, maximizing the expected conversions won under the budget):
constant bid c and linear bidding's b0 over a log grid; the paced agent starts at the lambda
matching tuned linear bidding (lambda0 = mean value / b0) scaled over a grid; target CPA and target
ROAS use the advertiser's targets as given (`cpa`, `roas`), paced to the budget from the same
lambda0; first-price shading shades the paced agent, its lambda tuned with the shading on. Agents
bid as built in either auction: only `shading` shades.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
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
    TargetROAS,
    tune,
)
from rankers.bidding.replay import Episode, ReplayConfig, hindsight_optimum, replay, totals
from rankers.bidding.values import BidValues, check_array

AGENTS = ("constant", "linear", "paced", "cpa", "roas", "shading")


@dataclass(frozen=True)
class MarketModel:
    """Log-normal market prices per impression (in the model's own units) correlated with the
    opportunities' true value: log price = log(median) + sigma (corr z + sqrt(1 - corr^2) e), z the
    standardized log true value and e standard normal noise. Competitors value what we value,
    imperfectly."""

    median: float = 50.0  # the price at the mean log true value (the median where it is symmetric)
    sigma: float = 0.6  # spread of the log price
    corr: float = 0.6  # correlation of the log price with the log true value
    seed: int = 0  # of the noise

    def __post_init__(self) -> None:
        if not (np.isfinite(self.median) and self.median > 0):
            raise ValueError(f"market model: median {self.median}; expected a finite price > 0")
        if not (np.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"market model: sigma {self.sigma}; expected a finite spread >= 0")
        if not -1 <= self.corr <= 1:
            raise ValueError(f"market model: corr {self.corr}; expected a correlation in [-1, 1]")
        if self.seed < 0:
            raise ValueError(f"market model: seed {self.seed}; expected an integer >= 0")

    def prices(self, true_value: np.ndarray) -> np.ndarray:
        logv = np.log(np.clip(true_value, 1e-9, None))
        z = (logv - logv.mean()) / (logv.std() or 1.0)
        e = np.random.default_rng(self.seed).standard_normal(len(z))
        return self.median * np.exp(self.sigma * (self.corr * z + np.sqrt(1 - self.corr**2) * e))


def market_prices(
    true_value: np.ndarray, median: float = 50.0, corr: float = 0.6, sigma: float = 0.6, seed: int = 0
) -> np.ndarray:
    """`MarketModel(median, sigma, corr, seed).prices(true_value)`."""
    return MarketModel(median, sigma, corr, seed).prices(true_value)


def episodes_from_split(
    values: BidValues, outcomes: np.ndarray, prices: np.ndarray, length: int
) -> list[Episode]:
    """Rows in order, cut into episodes of `length` (rows after the last full one are left out)."""
    if length < 1:
        raise ValueError(f"episode length {length}: expected an integer >= 1")
    n = (len(values) // length) * length
    if n == 0:
        raise ValueError(f"{len(values)} rows are fewer than one episode of {length}")
    return [
        Episode(values[i : i + length], prices[i : i + length], outcomes[i : i + length])
        for i in range(0, n, length)
    ]


def halves(name: str, episodes: list[Episode]) -> tuple[list[Episode], list[Episode]]:
    """The first half of `name`'s episodes to tune on, the rest to test on; two or more needed."""
    if len(episodes) < 2:
        raise ValueError(
            f"{name}: {len(episodes)} episode(s); the agents are tuned on the first half of two or more "
            "(lower --episode-length)"
        )
    return episodes[: len(episodes) // 2], episodes[len(episodes) // 2 :]


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
    roas: float | None = None,
) -> list[dict[str, Any]]:
    """One row per agent (tuned on `train`, replayed on `test`) and the hindsight optimum's row.
    `cpa` is needed by agent "cpa", `roas` and `value_per_conversion` by "roas", a first-price
    `auction` by "shading"."""
    check_agents(agents, cpa, roas, value_per_conversion, auction)
    mean_v = float(np.mean(np.concatenate([e.values.value for e in train])))
    if not mean_v > 0:
        raise ValueError("the training episodes' values are all 0: nothing to bid on")
    prices = np.concatenate([e.prices for e in train])
    tuning = ReplayConfig(ticks=ticks, auction=auction)
    testing = replace(tuning, target_cpa=cpa, value_per_conversion=value_per_conversion)

    def score(agent: Agent) -> float:
        return totals(replay(agent, train, budget, tuning))["expected"]

    def shade(agent: Agent) -> Agent:
        return FirstPriceShading(inner=agent, prices=prices, cap=cap)

    top = float(np.quantile(prices, 0.99)) * 4
    grid = np.geomspace(top / 400, top, 25)

    @cache
    def b0() -> float:
        return tune(lambda b: LinearBid(b0=b, mean_value=mean_v, cap=cap), grid, score)

    def paced(wrap: Callable[[Agent], Agent] = lambda a: a) -> Agent:
        lambdas = mean_v / b0() * np.geomspace(0.25, 4, 9)
        lam = tune(lambda x: wrap(MaxConversions(lambda0=x, cap=cap)), lambdas, score)
        return wrap(MaxConversions(lambda0=lam, cap=cap))

    made: dict[str, Callable[[], Agent]] = {
        "constant": lambda: ConstantBid(
            price=tune(lambda c: ConstantBid(price=c, cap=cap), grid, score), cap=cap
        ),
        "linear": lambda: LinearBid(b0=b0(), mean_value=mean_v, cap=cap),
        "paced": paced,
        "cpa": lambda: TargetCPA(cpa=float(cpa or 0), lambda0=mean_v / b0(), cap=cap),
        "roas": lambda: TargetROAS(
            roas=float(roas or 0),
            value_per_conversion=float(value_per_conversion or 0),
            paced=True,
            lambda0=mean_v / b0(),
            cap=cap,
        ),
        "shading": lambda: paced(shade),
    }
    rows: list[dict[str, Any]] = []
    for name in agents:
        result = totals(replay(made[name](), test, budget, testing), value_per_conversion)
        rows.append({"agent": name, **result})
    best = sum(hindsight_optimum(e.values.value, e.prices, budget) for e in test)
    rows.append({"agent": "hindsight optimum", "expected": best})
    for r in rows:
        r["of_optimum"] = r["expected"] / best if best else float("nan")
    return rows


def lacks(
    agent: str, cpa: float | None, roas: float | None, value_per_conversion: float | None, auction: str
) -> str:
    """What `agent` needs and was not given (a target, a value, an auction), or ""."""
    if agent not in AGENTS:
        raise ValueError(f"agent {agent!r}: expected some of {', '.join(AGENTS)}, or all")
    if agent == "cpa" and cpa is None:
        return "a target CPA (--cpa)"
    if agent == "roas" and roas is None:
        return "a target ROAS (--roas)"
    if agent == "roas" and value_per_conversion is None:
        return "a value per conversion or click (--value): ROAS is the value won over the spend"
    if agent == "shading" and auction != "first_price":
        return f"--auction first_price: it shades bids for a first-price auction (got {auction})"
    return ""


def check_agents(
    names: tuple[str, ...],
    cpa: float | None,
    roas: float | None,
    value_per_conversion: float | None,
    auction: str,
) -> None:
    """ValueError naming the first agent of `names` unknown or lacking something (`lacks`)."""
    for name in names:
        missing = lacks(name, cpa, roas, value_per_conversion, auction)
        if missing:
            raise ValueError(f"agent {name!r} needs {missing}")


def select_agents(
    spec: str, cpa: float | None, roas: float | None, value_per_conversion: float | None, auction: str
) -> tuple[str, ...]:
    """`spec`: "all" (every agent whose needs are given) or comma-separated names, checked."""
    if spec == "all":
        return tuple(a for a in AGENTS if not lacks(a, cpa, roas, value_per_conversion, auction))
    names = tuple(name.strip() for name in spec.split(","))
    check_agents(names, cpa, roas, value_per_conversion, auction)
    return names


def split_episodes(
    predictor: Any,
    split: str | Path,
    goal: str = "click",
    length: int = 1000,
    market: MarketModel = MarketModel(),
    true_outcomes: bool = False,
    batch_size: int = 65_536,
) -> list[Episode]:
    """Episodes of a labeled split (rows in stored order): calibrated values from `predictor`,
    real outcomes from the labels, and `market` prices correlated with the rows' true value, the
    teacher's probability on synthetic data (`teacher_p`, times `teacher_p_cvr` for conversions),
    else the calibrated value itself. With `true_outcomes` (synthetic data), the outcome of a row
    is its true probability, so a replay counts the expected conversions won without noise. The
    model scores `batch_size` rows per forward pass."""
    import pyarrow.parquet as pq

    from features.reader import parquet_files
    from rankers.bidding.values import values_from_probs
    from rankers.funnel import goal_tasks

    if predictor.calibration is None:
        raise ValueError(f"{predictor.path}: no calibration (run `rankers calibrate --checkpoint DIR`)")
    probs, labels, _ = predictor.predict_labeled(split, batch_size, raw=True)
    where = f"{predictor.path} on {split}"
    tasks = [t for t in goal_tasks(list(probs), goal) if t in probs]
    calibrated = predictor.calibration.transform(probs)
    for task in tasks:
        check_array(f"task {task!r}: calibrated probability", calibrated[task], where)
    needed = {task: calibrated[task] for task in tasks}
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
    outcomes = truth if true_outcomes else np.asarray(y, dtype=np.float64)
    return episodes_from_split(values, outcomes, market.prices(truth), length)


# `rankers bid`: the flags' ranges, and the words of its header.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "--budget": (lambda v: np.isfinite(v) and v > 0, "a finite share > 0 of an episode's traffic cost"),
    "--cap": (lambda v: v > 0, "a highest bid > 0 (inf, the default, for none)"),
    "--value": (lambda v: np.isfinite(v) and v > 0, "a finite value > 0 per conversion (click)"),
    "--cpa": (lambda v: np.isfinite(v) and v > 0, "a finite target cost per conversion (click) > 0"),
    "--roas": (lambda v: np.isfinite(v) and v > 0, "a finite target value won per unit spent > 0"),
    "--episode-length": (lambda v: v >= 1, "an integer >= 1 (rows per episode)"),
    "--market-median": (lambda v: np.isfinite(v) and v > 0, "a finite price per impression > 0"),
    "--market-sigma": (lambda v: np.isfinite(v) and v >= 0, "a finite spread of the log price >= 0"),
    "--market-corr": (lambda v: -1 <= v <= 1, "a correlation in [-1, 1]"),
    "--market-seed": (lambda v: v >= 0, "an integer >= 0"),
}
# Flags of a labeled split scored by --predictor (iPinYou logs have their own prices and episodes).
PREDICTOR_FLAGS = (
    "--goal",
    "--model",
    "--episode-length",
    *(f"--market-{k}" for k in ("median", "sigma", "corr", "seed")),
)
BID_FLAGS = (*_RANGES, "--goal", "--model")


def check_bid_flags(flags: dict[str, Any], argv: Sequence[str], predictor: bool) -> None:
    """ValueError naming the first flag of `flags` (each of BID_FLAGS: its value, None when not
    given) out of its range, or given without `predictor` when only a predictor's rows use it, with
    its value as typed in `argv`; and --roas without --value."""
    for flag, value in flags.items():
        ok, expected = _RANGES.get(flag, (lambda v: True, ""))
        if value is not None and not ok(value):
            raise ValueError(f"{flag} {_typed(flag, value, argv)}: expected {expected}")
    for flag in PREDICTOR_FLAGS:
        if not predictor and flags.get(flag) is not None:
            raise ValueError(
                f"{flag} {_typed(flag, flags[flag], argv)}: applies with --predictor (a labeled split "
                "priced by the market model); iPinYou logs have their own prices, clicks and episodes"
            )
    if flags.get("--roas") is not None and flags.get("--value") is None:
        raise ValueError(
            f"--roas {_typed('--roas', flags['--roas'], argv)} needs --value (ROAS is value / spend)"
        )


def _typed(flag: str, value: Any, argv: Sequence[str]) -> str:
    """`flag`'s value as typed (the last one given, as argparse keeps), else as parsed."""
    typed = f"{value:g}" if isinstance(value, float) else str(value)
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            typed = argv[i + 1]
        elif arg.startswith(flag + "="):
            typed = arg[len(flag) + 1 :]
    return typed


def describe_split(split: str | Path, predictor: str | Path, goal: str, market: MarketModel) -> str:
    """Where a split's values, outcomes and prices come from, and their units."""
    one, label = ("click", "ctr") if goal == "click" else ("conversion", "cvr")
    return (
        f"Rows of {split} scored by {predictor} (values: calibrated P({one}); outcomes: the split's "
        f"{label} labels), priced by the log-normal market model: median {market.median:g} per "
        f"impression (--market-median), sigma {market.sigma:g} (--market-sigma, the spread of the log "
        f"price), corr {market.corr:g} with the rows' true value (--market-corr), seed {market.seed} "
        f"(--market-seed). In the model's price units per impression: budget, spend, cost per {one}, "
        f"--cpa, --value and --cap. Budgets at the mean market price of the tuning episodes."
    )
