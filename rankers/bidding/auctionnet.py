"""AuctionNet (NeurIPS 2024 auto-bidding benchmark) compatibility: a strategy class with its
signature that runs any of our agents, and a small GSP simulation shaped like its environment.

In AuctionNet a delivery period has 48 ticks. At each tick every advertiser's strategy gets the
tick's opportunities' conversion probabilities (`pValues`) and their uncertainty
(`pValueSigmas`), and the history of earlier ticks, one numpy array per tick:
- historyPValueInfo[t]: (n, 2) pValue, pValueSigma;
- historyBid[t]: (n,) its bids;
- historyAuctionResult[t]: (n, 3) isWin, slot, cost;
- historyImpressionResult[t]: (n, 2) isExposed, conversion;
- historyLeastWinningCost[t]: (n,) the lowest bid that would have won a slot.
Cost is charged when the ad is exposed. camelCase lives only here, as in AuctionNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankers.bidding.agents import Agent, AgentState, TargetCPA
from rankers.bidding.auctions import gsp
from rankers.bidding.values import BidValues


class AuctionNetStrategy:
    """AuctionNet's strategy interface over one of our agents (default: target CPA, paced to the
    budget). Spend, conversions and wins are read back from the histories, so the agent's state
    is right whatever order the environment calls it in."""

    def __init__(
        self,
        budget: float = 100.0,
        name: str = "rankers",
        cpa: float = 2.0,
        category: int = 1,
        agent: Agent | None = None,
        ticks: int = 48,
    ) -> None:
        self.budget, self.remaining_budget = float(budget), float(budget)
        self.name, self.cpa, self.category, self.ticks = name, cpa, category, ticks
        self.agent = agent if agent is not None else TargetCPA(cpa=cpa, lambda0=1 / (2 * cpa))
        self.reset()

    def reset(self) -> None:
        self.remaining_budget = self.budget
        self.state = AgentState(budget=self.budget, ticks=self.ticks)
        self.agent.reset(self.state)
        self._seen = 0

    def bidding(
        self,
        timeStepIndex: int,  # AuctionNet's names (camelCase)
        pValues: np.ndarray,
        pValueSigmas: np.ndarray,
        historyPValueInfo: Sequence[np.ndarray],
        historyBid: Sequence[np.ndarray],
        historyAuctionResult: Sequence[np.ndarray],
        historyImpressionResult: Sequence[np.ndarray],
        historyLeastWinningCost: Sequence[np.ndarray],
    ) -> np.ndarray:
        """One bid per opportunity of tick `timeStepIndex`, at most the budget left."""
        for t in range(self._seen, len(historyAuctionResult)):
            result, shown = np.asarray(historyAuctionResult[t]), np.asarray(historyImpressionResult[t])
            exposed = shown[:, 0] > 0
            spent = float((result[:, 2] * exposed).sum())
            converted = float(shown[:, 1].sum())
            self.state.spend += spent
            self.state.conversions += converted
            self.state.wins += int(exposed.sum())
            self.state.value_won += float(np.asarray(historyPValueInfo[t])[exposed, 0].sum())
            self.state.tick = t + 1
            self.agent.observe(self.state, spent, converted)
        self._seen = len(historyAuctionResult)
        self.state.tick = timeStepIndex
        self.remaining_budget = self.budget - self.state.spend
        bids = self.agent.bid(BidValues(pValues, pValueSigmas), self.state)
        return np.minimum(bids, max(self.remaining_budget, 0.0))


@dataclass
class Market:
    """An AuctionNet-shaped market: advertisers with budgets and target CPAs, opportunities whose
    conversion probability for advertiser a is lognormal around a per-advertiser base rate."""

    advertisers: int = 20
    opportunities: int = 200  # per tick
    ticks: int = 48
    slots: int = 3
    exposure: tuple[float, ...] = (1.0, 0.8, 0.6)
    reserve: float = 0.0
    seed: int = 0
    base: np.ndarray = field(init=False)
    budgets: np.ndarray = field(init=False)
    cpas: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.base = rng.uniform(0.002, 0.02, self.advertisers)
        self.cpas = rng.uniform(50, 150, self.advertisers)
        # Budgets: 0.3-1.5x the cost at target CPA of a share of the conversions; in this market
        # (20 advertisers, 3 slots) nearly every budget binds.
        expected = self.base * self.opportunities * self.ticks * self.exposure[0] / self.advertisers * 3
        self.budgets = expected * self.cpas * rng.uniform(0.3, 1.5, self.advertisers)


def simulate(strategies: Sequence[Any], market: Market, requests: Any = None) -> list[dict[str, float]]:
    """Runs one delivery period of `strategies` (AuctionNet interface, one per advertiser) in a GSP
    auction; wins that would take an advertiser past its budget are dropped in opportunity order.
    Returns per advertiser: conversions, spend, CPA, budget used and AuctionNet's score.

    With `requests` (`rankers.bidding.live.Requests`), the first advertiser's opportunities are rows:
    they convert with the rows' true probability, and its strategy bids on the values a model scores
    from them as each tick comes (or on precomputed ones), as a bidder online would."""
    rng = np.random.default_rng(market.seed + 1)
    n, a = market.opportunities, len(strategies)
    hist: list[dict[str, list[np.ndarray]]] = [
        {k: [] for k in ("info", "bid", "result", "shown", "lwc")} for _ in range(a)
    ]
    spend, conversions = np.zeros(a), np.zeros(a)
    for s in strategies:
        s.reset()
    for t in range(market.ticks):
        p = np.clip(market.base[None, :] * rng.lognormal(0.0, 0.6, (n, a)), 0, 1)  # (n, A)
        sigma = p * 0.2
        shown_p = p.copy()  # what each strategy is told; the first one's from its model with `requests`
        if requests is not None:
            truth, values = requests.at(t, n)
            p[:, 0], shown_p[:, 0], sigma[:, 0] = truth, values.value, values.sigma
        bids = np.stack(
            [
                s.bidding(
                    t, shown_p[:, i], sigma[:, i], h["info"], h["bid"], h["result"], h["shown"], h["lwc"]
                )
                for i, (s, h) in enumerate(zip(strategies, hist, strict=True))
            ],
            axis=1,
        )
        out = gsp(bids, market.slots, market.exposure, market.reserve, rng)
        cost, exposed = out.cost.copy(), out.exposed.copy()
        for i in range(a):  # the wins after an advertiser's budget runs out are dropped
            left = strategies[i].budget - spend[i]
            over = np.cumsum(cost[:, i]) > left
            cost[over, i], exposed[over, i] = 0.0, False
        converted = exposed & (rng.random((n, a)) < p)
        least = np.sort(bids, axis=1)[:, -market.slots] if a >= market.slots else np.zeros(n)
        for i, h in enumerate(hist):
            h["info"].append(np.stack([shown_p[:, i], sigma[:, i]], axis=1))
            h["bid"].append(bids[:, i])
            h["result"].append(
                np.stack([out.slot[:, i] >= 0, out.slot[:, i], cost[:, i]], axis=1).astype(float)
            )
            h["shown"].append(np.stack([exposed[:, i], converted[:, i]], axis=1).astype(float))
            h["lwc"].append(least)
        spend += cost.sum(axis=0)
        conversions += converted.sum(axis=0)
    rows = []
    for i, s in enumerate(strategies):
        cpa = spend[i] / conversions[i] if conversions[i] else float("inf")
        score = conversions[i] * min(1.0, (s.cpa / cpa) ** 2) if conversions[i] else 0.0
        rows.append(
            {
                "conversions": float(conversions[i]),
                "spend": float(spend[i]),
                "cpa": cpa,
                "budget_used": float(spend[i] / s.budget),
                "score": score,
            }
        )
    return rows
