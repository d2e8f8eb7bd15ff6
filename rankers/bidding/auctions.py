"""Auctions: second price and first price against a logged market price, and generalized second
price (GSP) with slots, exposure and a reserve among several bidders.

Notation: n opportunities, A bidders. A logged market price is the highest competing bid (what
iPinYou logs as the winning price): a bidder whose bid is at least max(market price, reserve)
wins (ties win, as in iPinYou's replay convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUCTIONS = ("second_price", "first_price")


@dataclass(frozen=True)
class Outcome:
    """won (n,) bool and cost (n,) float: what the bidder pays for each opportunity (0 if lost)."""

    won: np.ndarray
    cost: np.ndarray


def _check(bids: np.ndarray, prices: np.ndarray, reserve: float) -> None:
    if bids.shape != prices.shape:
        raise ValueError(f"bids {bids.shape} and market prices {prices.shape} must have one shape")
    if not reserve >= 0:
        raise ValueError(f"reserve {reserve} must be >= 0")


def second_price(bids: np.ndarray, prices: np.ndarray, reserve: float = 0.0) -> Outcome:
    """Wins where bid >= max(price, reserve) and pays max(price, reserve)."""
    _check(bids, prices, reserve)
    floor = np.maximum(prices, reserve)
    won = bids >= floor
    return Outcome(won, np.where(won, floor, 0.0))


def first_price(bids: np.ndarray, prices: np.ndarray, reserve: float = 0.0) -> Outcome:
    """Wins where bid >= max(price, reserve) and pays its own bid."""
    _check(bids, prices, reserve)
    won = bids >= np.maximum(prices, reserve)
    return Outcome(won, np.where(won, bids, 0.0))


def single_auction(kind: str, bids: np.ndarray, prices: np.ndarray, reserve: float = 0.0) -> Outcome:
    """`second_price` or `first_price` by name."""
    if kind == "second_price":
        return second_price(bids, prices, reserve)
    if kind == "first_price":
        return first_price(bids, prices, reserve)
    raise ValueError(f"auction {kind!r}: expected one of {AUCTIONS}")


@dataclass(frozen=True)
class GSPOutcome:
    """Per opportunity and bidder (n, A): slot (0 = top, -1 = none), exposed (bool) and cost."""

    slot: np.ndarray
    exposed: np.ndarray
    cost: np.ndarray


def gsp(
    bids: np.ndarray,
    slots: int = 3,
    exposure: tuple[float, ...] = (1.0, 0.8, 0.6),
    reserve: float = 0.0,
    rng: np.random.Generator | None = None,
) -> GSPOutcome:
    """Generalized second price over bids (n, A).

    The `slots` highest bids at or above the reserve take slots in bid order (ties: the lower
    bidder index first). Slot k is exposed with probability `exposure[k]` (AuctionNet's exposure
    coefficients; all exposed without an `rng`), and an exposed winner pays the next bid down or
    the reserve, whichever is higher; an unexposed one pays nothing.
    """
    if bids.ndim != 2:
        raise ValueError(f"GSP bids must be (opportunities, bidders); got shape {bids.shape}")
    if len(exposure) != slots or not all(0 <= e <= 1 for e in exposure):
        raise ValueError(f"exposure {exposure}: expected {slots} probabilities, one per slot")
    if not reserve >= 0:
        raise ValueError(f"reserve {reserve} must be >= 0")
    n, bidders = bids.shape
    order = np.argsort(-bids, axis=1, kind="stable")  # (n, A) bidders by bid, highest first
    ranked = np.take_along_axis(bids, order, axis=1)
    nxt = np.concatenate([ranked[:, 1:], np.zeros((n, 1))], axis=1)  # the bid below each rank
    price = np.maximum(nxt, reserve)
    slot = np.full((n, bidders), -1)
    exposed = np.zeros((n, bidders), dtype=bool)
    cost = np.zeros((n, bidders))
    rows = np.arange(n)
    for k in range(min(slots, bidders)):
        who, takes = order[:, k], ranked[:, k] >= max(reserve, np.finfo(float).tiny)
        seen = takes if rng is None else takes & (rng.random(n) < exposure[k])
        slot[rows[takes], who[takes]] = k
        exposed[rows[seen], who[seen]] = True
        cost[rows[seen], who[seen]] = price[seen, k]
    return GSPOutcome(slot, exposed, cost)
