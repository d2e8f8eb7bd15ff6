"""Bidding agents: bids from values and the agent's state, for one advertiser over one period.

An episode (a day, say) is split into ticks. At each tick the agent sees the opportunities' values
and its state and returns one bid per opportunity; after the tick it observes what it spent and
won (`observe`) and adapts. Every agent returns finite bids in [0, cap].

- `ConstantBid(c)` and `LinearBid(b0, mean_value)` (bid = b0 value / mean value): the classic
  baselines; `tune` picks c or b0 on training episodes.
- `MaxConversions(lambda0)`: bid = value / lambda, lambda paced online by a multiplicative dual
  update: after each tick lambda *= exp(eta (spend - pace) / pace), pace being the budget left
  spread evenly over the ticks left, so lambda rises when spending runs ahead and falls behind it.
- `TargetCPA(cpa)`: bid = kappa cpa value (truthful for conversions worth `cpa` in a second-price
  auction); kappa paced on the expected CPA so far (spend / expected conversions won). With a
  budget, the bid is at most value / lambda.
- `TargetROAS(roas, value_per_conversion)`: bid = kappa value x value per conversion / roas;
  kappa paced on the expected ROAS so far (expected revenue won / spend). With a budget (`paced`),
  the bid is at most value / lambda, as target CPA's.
- `FirstPriceShading(agent, prices)`: turns another agent's bid b into the b' <= b that maximizes
  (b - b') W(b'), W(b) = P(market price <= b) estimated from logged market prices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rankers.bidding.values import BidValues


@dataclass
class AgentState:
    """What an agent knows of its episode: budget and time, spend and outcomes so far."""

    budget: float
    ticks: int
    tick: int = 0
    spend: float = 0.0
    wins: int = 0
    conversions: float = 0.0  # or clicks, whatever the values predict
    value_won: float = 0.0  # expected conversions of the opportunities won

    @property
    def budget_left(self) -> float:
        return self.budget - self.spend

    @property
    def ticks_left(self) -> int:
        return self.ticks - self.tick


@dataclass
class Agent:
    """Base: `bid` applies the cap and checks the result; subclasses implement `_bid`."""

    cap: float = math.inf

    def reset(self, state: AgentState) -> None:
        """Called at the start of each episode."""

    def bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        bids = np.minimum(self._bid(values, state), self.cap)
        if not (np.isfinite(bids).all() and (bids >= 0).all()):
            i = int(np.argmax(~np.isfinite(bids) | (bids < 0)))
            raise ValueError(f"{type(self).__name__} bid {bids[i]} for opportunity {i}: expected finite >= 0")
        return bids

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        raise NotImplementedError

    def observe(self, state: AgentState, spent: float, conversions: float) -> None:
        """After each tick: what it spent and converted in it (state already updated)."""


@dataclass
class ConstantBid(Agent):
    price: float = 1.0

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        return np.full(len(values), self.price)


@dataclass
class LinearBid(Agent):
    b0: float = 1.0
    mean_value: float = 1.0

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        return self.b0 * values.value / self.mean_value


def _pace(lam: float, spent: float, state: AgentState, eta: float, bounds: tuple[float, float]) -> float:
    """Multiplicative dual step: lambda up when this tick spent more than its even share."""
    ticks_before = state.ticks_left + 1
    pace = (state.budget_left + spent) / ticks_before
    if pace <= 0:
        return bounds[1]
    return float(np.clip(lam * math.exp(eta * np.clip((spent - pace) / pace, -1.0, 1.0)), *bounds))


def _nudge(kappa: float, eta: float, gap: float) -> float:
    """kappa x exp(eta x gap), kept in [0.2, 5]: the CPA and ROAS agents' correction."""
    return float(np.clip(kappa * math.exp(eta * gap), 0.2, 5))


@dataclass
class MaxConversions(Agent):
    """Most conversions (or clicks) under the budget: bid = value / lambda, lambda paced."""

    lambda0: float = 1.0
    eta: float = 0.5
    lam: float = field(default=0.0, init=False)

    def reset(self, state: AgentState) -> None:
        if not self.lambda0 > 0:
            raise ValueError(f"lambda0 {self.lambda0} must be > 0")
        self.lam = self.lambda0

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        return values.value / self.lam

    def observe(self, state: AgentState, spent: float, conversions: float) -> None:
        self.lam = _pace(self.lam, spent, state, self.eta, (self.lambda0 / 100, self.lambda0 * 100))


@dataclass
class TargetCPA(Agent):
    """Conversions at a cost per conversion of `cpa`; with `paced`, also under the budget."""

    cpa: float = 1.0
    eta: float = 0.3
    paced: bool = True
    lambda0: float = 1.0
    kappa: float = field(default=1.0, init=False)
    lam: float = field(default=0.0, init=False)

    def reset(self, state: AgentState) -> None:
        if not self.cpa > 0:
            raise ValueError(f"target CPA {self.cpa} must be > 0")
        self.kappa, self.lam = 1.0, self.lambda0

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        bids = self.kappa * self.cpa * values.value
        return np.minimum(bids, values.value / self.lam) if self.paced else bids

    def observe(self, state: AgentState, spent: float, conversions: float) -> None:
        if state.value_won > 0 and state.spend > 0:  # expected CPA so far against the target
            expected_cpa = state.spend / state.value_won
            self.kappa = _nudge(self.kappa, self.eta, (self.cpa - expected_cpa) / self.cpa)
        if self.paced:
            self.lam = _pace(self.lam, spent, state, 0.5, (self.lambda0 / 100, self.lambda0 * 100))


@dataclass
class TargetROAS(Agent):
    """Revenue at a return on ad spend of `roas`: the values times `value_per_conversion` are money
    (1 where the values already are); with `paced`, also under the budget (bid <= value / lambda)."""

    roas: float = 1.0
    eta: float = 0.3
    value_per_conversion: float = 1.0
    paced: bool = False
    lambda0: float = 1.0
    kappa: float = field(default=1.0, init=False)
    lam: float = field(default=0.0, init=False)

    def reset(self, state: AgentState) -> None:
        if not (math.isfinite(self.roas) and self.roas > 0):
            raise ValueError(f"target ROAS {self.roas} must be finite and > 0")
        if not (math.isfinite(self.value_per_conversion) and self.value_per_conversion > 0):
            raise ValueError(f"value per conversion {self.value_per_conversion} must be finite and > 0")
        if self.paced and not self.lambda0 > 0:
            raise ValueError(f"lambda0 {self.lambda0} must be > 0")
        self.kappa, self.lam = 1.0, self.lambda0

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        bids = self.kappa * values.value * self.value_per_conversion / self.roas
        return np.minimum(bids, values.value / self.lam) if self.paced else bids

    def observe(self, state: AgentState, spent: float, conversions: float) -> None:
        if state.spend > 0:  # expected ROAS so far against the target
            expected_roas = state.value_won * self.value_per_conversion / state.spend
            self.kappa = _nudge(self.kappa, self.eta, (expected_roas - self.roas) / self.roas)
        if self.paced:
            self.lam = _pace(self.lam, spent, state, 0.5, (self.lambda0 / 100, self.lambda0 * 100))


@dataclass
class FirstPriceShading(Agent):
    """Shades `inner`'s bids for a first-price auction using the win rate of logged market prices."""

    inner: Agent = field(default_factory=Agent)
    prices: np.ndarray = field(default_factory=lambda: np.zeros(1))
    grid: int = 64

    def __post_init__(self) -> None:
        self._sorted = np.sort(np.asarray(self.prices, dtype=np.float64))
        if not len(self._sorted) or not np.isfinite(self._sorted).all():
            raise ValueError("FirstPriceShading needs finite logged market prices")

    def win_rate(self, bids: np.ndarray) -> np.ndarray:
        """W(b): the share of logged market prices <= b."""
        return np.searchsorted(self._sorted, bids, side="right") / len(self._sorted)

    def reset(self, state: AgentState) -> None:
        self.inner.reset(state)

    def _bid(self, values: BidValues, state: AgentState) -> np.ndarray:
        true = self.inner.bid(values, state)  # what the bid would be in a second-price auction
        shades = np.linspace(0.0, 1.0, self.grid + 1)[1:]  # (G,)
        candidates = true[:, None] * shades[None, :]  # (n, G)
        surplus = (true[:, None] - candidates) * self.win_rate(candidates)
        return candidates[np.arange(len(true)), np.argmax(surplus, axis=1)]

    def observe(self, state: AgentState, spent: float, conversions: float) -> None:
        self.inner.observe(state, spent, conversions)


def tune(make: Callable[[float], Agent], grid: np.ndarray, score: Callable[[Agent], float]) -> float:
    """The grid value whose agent scores highest (ties: the smallest value)."""
    scores = [score(make(float(g))) for g in grid]
    return float(grid[int(np.argmax(scores))])
