"""Replay: an agent bids on logged opportunities in time order, episode by episode, against the
logged market prices, under its budget.

Each episode is split into `ticks` equal runs of opportunities. At each tick the agent bids for the
whole run; the auction decides wins and costs; then the opportunities are settled in order and a
win whose bid exceeds the budget left is not placed, so spend never exceeds the budget (in second
and first price alike, the cost is at most the bid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rankers.bidding.agents import Agent, AgentState
from rankers.bidding.auctions import single_auction
from rankers.bidding.values import BidValues, check_array


@dataclass(frozen=True)
class Episode:
    """Logged opportunities in time order: values, market prices and real outcomes (0/1)."""

    values: BidValues
    prices: np.ndarray
    outcomes: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.values) == len(self.prices) == len(self.outcomes):
            raise ValueError(
                f"episode arrays differ in length: values {len(self.values)}, prices {len(self.prices)}, "
                f"outcomes {len(self.outcomes)}"
            )
        check_array("price", np.asarray(self.prices, dtype=np.float64))


@dataclass(frozen=True)
class ReplayConfig:
    """How episodes are replayed and scored."""

    ticks: int = 48  # decisions per episode (AuctionNet's 48)
    auction: str = "second_price"  # or "first_price" (rankers.bidding.auctions)
    reserve: float = 0.0
    target_cpa: float | None = None  # adds AuctionNet's score
    value_per_conversion: float | None = None  # adds ROI


def run_episode(
    agent: Agent, episode: Episode, budget: float, config: ReplayConfig = ReplayConfig()
) -> dict[str, Any]:
    """One episode; returns its outcome (see `outcome`)."""
    if not (np.isfinite(budget) and budget > 0):
        raise ValueError(f"budget {budget} must be finite and > 0")
    n = len(episode.values)
    state = AgentState(budget=budget, ticks=config.ticks)
    agent.reset(state)
    for t, part in enumerate(np.array_split(np.arange(n), config.ticks)):
        state.tick = t
        values = episode.values[part]
        bids = agent.bid(values, state)
        result = single_auction(config.auction, bids, episode.prices[part], config.reserve)
        spent, converted = 0.0, 0.0
        for i in np.flatnonzero(result.won):  # settle in order; never past the budget
            if bids[i] > state.budget_left - spent:
                continue
            spent += float(result.cost[i])
            converted += float(episode.outcomes[part[i]])
            state.value_won += float(values.value[i])
            state.wins += 1
        state.spend += spent
        state.conversions += converted
        state.tick = t + 1
        agent.observe(state, spent, converted)
    return outcome(state, n, config.target_cpa, config.value_per_conversion)


def outcome(
    state: AgentState,
    opportunities: int,
    target_cpa: float | None = None,
    value_per_conversion: float | None = None,
) -> dict[str, Any]:
    """Conversions (or clicks), expected ones, spend, CPA, win rate, budget used; with a target
    CPA, AuctionNet's score: conversions x min(1, (target CPA / CPA)^2); with a value per
    conversion, ROI = (conversions x value - spend) / spend and ROAS = conversions x value / spend."""
    cpa = state.spend / state.conversions if state.conversions else float("inf") if state.spend else 0.0
    row: dict[str, Any] = {
        "conversions": state.conversions,
        "expected": state.value_won,
        "spend": state.spend,
        "cpa": cpa,
        "wins": state.wins,
        "win_rate": state.wins / max(opportunities, 1),
        "budget_used": state.spend / state.budget,
    }
    if value_per_conversion is not None:
        revenue = state.conversions * value_per_conversion
        row["roi"] = (revenue - state.spend) / state.spend if state.spend else float("nan")
        row["roas"] = revenue / state.spend if state.spend else float("nan")
    if target_cpa is not None:
        row["score"] = state.conversions * min(1.0, (target_cpa / cpa) ** 2) if cpa > 0 else state.conversions
    return row


def replay(
    agent: Agent, episodes: list[Episode], budget: float, config: ReplayConfig = ReplayConfig()
) -> list[dict[str, Any]]:
    """`run_episode` over each episode in turn (the agent reset at each)."""
    return [run_episode(agent, e, budget, config) for e in episodes]


def totals(rows: list[dict[str, Any]], value_per_conversion: float | None = None) -> dict[str, float]:
    """Sums over episodes, with CPA (and ROI, ROAS) over the sums and the mean win rate and budget used."""
    spend = sum(r["spend"] for r in rows)
    conversions = sum(r["conversions"] for r in rows)
    out = {
        "episodes": len(rows),
        "conversions": conversions,
        "expected": sum(r["expected"] for r in rows),
        "spend": spend,
        "cpa": spend / conversions if conversions else float("inf"),
        "win_rate": float(np.mean([r["win_rate"] for r in rows])),
        "budget_used": float(np.mean([r["budget_used"] for r in rows])),
    }
    if value_per_conversion is not None:
        out["roi"] = (conversions * value_per_conversion - spend) / spend if spend else float("nan")
        out["roas"] = conversions * value_per_conversion / spend if spend else float("nan")
    if rows and all("score" in r for r in rows):
        out["score"] = sum(r["score"] for r in rows)
    return out


def hindsight_optimum(values: np.ndarray, prices: np.ndarray, budget: float) -> float:
    """The most expected value winnable in one episode knowing every market price: a knapsack
    (value, price) under the budget, bounded above by its fractional relaxation, which is what
    this returns (greedy by value per price, the last item taken in part). The physical limit of
    any agent with these values in a second-price auction."""
    free = prices <= 0
    total = float(values[free].sum())
    v, p = values[~free], prices[~free]
    order = np.argsort(-v / p, kind="stable")
    cum = np.cumsum(p[order])
    k = int(np.searchsorted(cum, budget, side="right"))  # items fully affordable
    total += float(v[order[:k]].sum())
    if k < len(order):
        left = budget - (cum[k - 1] if k else 0.0)
        total += float(v[order[k]]) * left / float(p[order[k]])
    return total


def outcome_columns(goal: str, roi: bool = False, roas: bool = False, score: bool = False) -> dict[str, str]:
    """The keys of `totals` (and `compare_agents` rows) a table shows, each with its label for
    `goal` ("click": clicks, cost per click; "conversion": conversions, cost per conversion)."""
    plural, one = ("clicks", "click") if goal == "click" else ("conversions", "conversion")
    columns = {
        "conversions": plural,
        "expected": f"expected {plural}",
        "of_optimum": "of optimum",
        "spend": "spend (total)",
        "cpa": f"cost per {one}",
        "win_rate": "win rate",
        "budget_used": "budget used",
    }
    columns |= {"roi": "ROI"} if roi else {}
    columns |= {"roas": "ROAS"} if roas else {}
    columns |= {"score": "score (AuctionNet)"} if score else {}
    return columns


def describe_run(goal: str, auction: str, fraction: float, sources: list[tuple[str, list[Episode]]]) -> str:
    """The auction, the budget, what the columns sum over, and what buying everything would cost."""
    plural, one = ("clicks", "click") if goal == "click" else ("conversions", "conversion")
    tests = {(len(e) - len(e) // 2, len(e[0].values)) for _, e in sources}
    n, length = next(iter(tests))
    rest = f"the other {n} episodes of {length:,} rows" if len(tests) == 1 else "the rest (test episodes)"
    costs = ", ".join(f"{name} {_amount(_buy_all(e[: len(e) // 2]))}" for name, e in sources)
    return (
        f"{auction.replace('_', '-').capitalize()} auction; budget per episode {fraction:g} of its "
        "traffic's cost. "
        f"Agents tuned on the first half of each source's episodes, replayed on {rest}: {plural} (real, "
        f"won), expected {plural} (the values won) and spend (total) sum over those test episodes; win "
        f"rate and budget used are means per episode; of optimum: expected {plural} over the hindsight "
        f"optimum's. Buying every tuning opportunity costs per expected {one}: {costs}."
    )


def _amount(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _buy_all(episodes: list[Episode]) -> float:
    value = sum(float(e.values.value.sum()) for e in episodes)
    return sum(float(e.prices.sum()) for e in episodes) / value if value else float("inf")
