"""The AuctionNet adapter: its signature, and our agents through a GSP market of 48 ticks."""

from __future__ import annotations

import inspect

import numpy as np

from rankers.bidding.agents import LinearBid, MaxConversions, TargetCPA
from rankers.bidding.auctionnet import AuctionNetStrategy, Market, simulate

SIGNATURE = [
    "timeStepIndex",
    "pValues",
    "pValueSigmas",
    "historyPValueInfo",
    "historyBid",
    "historyAuctionResult",
    "historyImpressionResult",
    "historyLeastWinningCost",
]


def _seats(market: Market, ours: bool) -> list[AuctionNetStrategy]:
    """20 advertisers; the first 10 run our paced target-CPA agent when `ours`, else linear bids."""
    out = []
    for i in range(market.advertisers):
        budget, cpa, base = float(market.budgets[i]), float(market.cpas[i]), float(market.base[i])
        agent = (
            TargetCPA(cpa=cpa, lambda0=1 / (2 * cpa))
            if ours and i < 10
            else LinearBid(b0=cpa * base, mean_value=base)
        )
        out.append(AuctionNetStrategy(budget, f"a{i}", cpa, category=i % 3, agent=agent))
    return out


def test_the_adapter_has_auctionnets_strategy_signature() -> None:
    s = AuctionNetStrategy(budget=500.0, name="x", cpa=40.0, category=2)
    assert (s.budget, s.remaining_budget, s.name, s.cpa, s.category) == (500.0, 500.0, "x", 40.0, 2)
    assert list(inspect.signature(s.bidding).parameters) == SIGNATURE
    p = np.array([0.01, 0.05, 0.0])
    bids = s.bidding(0, p, p * 0.1, [], [], [], [], [])
    assert bids.shape == (3,) and np.isfinite(bids).all() and (bids >= 0).all() and bids[2] == 0
    # What the histories say it spent is taken off its budget and caps its bids.
    result = [np.array([[1.0, 0.0, 480.0], [0.0, -1.0, 0.0], [0.0, -1.0, 0.0]])]
    shown = [np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])]
    bids = s.bidding(
        1, np.full(3, 0.9), np.zeros(3), [np.stack([p, p], 1)], [bids], result, shown, [np.zeros(3)]
    )
    assert s.remaining_budget == 20.0 and s.state.conversions == 1.0 and (bids <= 20.0).all()
    s.reset()
    assert s.remaining_budget == 500.0 and s.state.spend == 0.0


def test_a_gsp_market_of_48_ticks_keeps_every_budget_and_is_deterministic() -> None:
    market = Market(seed=3)
    rows = simulate(_seats(market, ours=True), market)
    assert len(rows) == market.advertisers
    for r, budget in zip(rows, market.budgets, strict=True):
        assert 0 <= r["spend"] <= budget
    assert rows == simulate(_seats(market, ours=True), market)
    mixed = _seats(market, ours=False)
    mixed[0] = AuctionNetStrategy(
        float(market.budgets[0]), "paced", float(market.cpas[0]), agent=MaxConversions(lambda0=0.01)
    )
    assert simulate(mixed, market)[0]["spend"] <= market.budgets[0]


def test_our_paced_target_cpa_agents_score_more_than_linear_bidding_in_the_same_seats() -> None:
    """AuctionNet's score (conversions x min(1, (target CPA / CPA)^2)) of seats 0-9, summed."""
    for seed in (0, 1):
        market = Market(seed=seed)
        linear = sum(r["score"] for r in simulate(_seats(market, ours=False), market)[:10])
        ours = sum(r["score"] for r in simulate(_seats(market, ours=True), market)[:10])
        assert ours > linear, (seed, ours, linear)
