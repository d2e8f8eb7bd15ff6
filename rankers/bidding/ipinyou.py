"""iPinYou RTB logs as replay episodes (../shared/data/ipinyou/campaigns, see its README).

`<id>.validation.txt`: a first line `N T`, then per episode a line with its number followed by T
lines `click<TAB>winning price<TAB>pCTR`. The winning price is the second price (CPM units) an
advertiser bidding at least that much pays; pCTR is the log's logistic-regression prediction and
becomes the value (it carries no uncertainty: sigma is 0). `<id>.info.json` gives the campaign's
training-log cost and impressions, whose ratio is the mean market price used to set budgets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankers.bidding.replay import Episode
from rankers.bidding.values import BidValues


@dataclass(frozen=True)
class Campaign:
    """One campaign's episodes in order and its mean market price in the training log."""

    name: str
    episodes: list[Episode]
    mean_price: float

    def budget(self, fraction: float) -> float:
        """fraction x (mean price x episode length): e.g. 1/16 buys about a 16th of the traffic."""
        return fraction * self.mean_price * len(self.episodes[0].values)


def campaign_names(directory: str | Path) -> list[str]:
    names = sorted(p.name.split(".")[0] for p in Path(directory).glob("*.validation.txt"))
    if not names:
        raise ValueError(f"{directory}: no <campaign>.validation.txt files")
    return names


def load_campaign(directory: str | Path, name: str) -> Campaign:
    """Reads `<name>.validation.txt` and `<name>.info.json`; ValueError naming file and line."""
    path = Path(directory) / f"{name}.validation.txt"
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    head = lines[0].split() if lines else []
    if len(head) != 2 or not all(h.isdigit() for h in head):
        raise ValueError(f"{path}:1: expected 'N T' (two integers), got {lines[0] if lines else ''!r}")
    length = int(head[1])
    episodes: list[Episode] = []
    i = 1
    while i < len(lines):
        if lines[i].strip() != str(len(episodes) + 1):
            raise ValueError(f"{path}:{i + 1}: expected episode number {len(episodes) + 1}, got {lines[i]!r}")
        body = lines[i + 1 : i + 1 + length]
        if len(body) < length:
            raise ValueError(f"{path}: episode {len(episodes) + 1} has {len(body)} lines; expected {length}")
        try:
            rows = np.array([[float(x) for x in line.split("\t")] for line in body])
        except ValueError as e:
            raise ValueError(
                f"{path}: episode {len(episodes) + 1} (lines {i + 2}-{i + 1 + length}): {e}"
            ) from e
        if rows.shape != (length, 3):
            raise ValueError(
                f"{path}: episode {len(episodes) + 1}: expected {length} lines of 3 tab-separated fields"
            )
        clicks, prices, pctr = rows.T
        if not np.isin(clicks, (0, 1)).all():
            j = int(np.argmax(~np.isin(clicks, (0, 1))))
            raise ValueError(f"{path}:{i + 2 + j}: click {float(clicks[j])}; expected 0 or 1")
        try:
            values = BidValues(pctr, np.zeros(length))
            episodes.append(Episode(values, prices, clicks))
        except ValueError as e:
            raise ValueError(f"{path}: episode {len(episodes) + 1} (from line {i + 2}): {e}") from e
        i += 1 + length
    info = Path(directory) / f"{name}.info.json"
    try:
        stats = json.loads(info.read_text())
        mean_price = stats["cost_train"] / stats["imp_train"]
    except (OSError, json.JSONDecodeError, KeyError, ZeroDivisionError) as e:
        raise ValueError(f"{info}: expected JSON with cost_train and imp_train > 0 ({e!r})") from e
    return Campaign(name, episodes, float(mean_price))


def describe_campaigns(directory: str | Path, names: list[str]) -> str:
    """Where the campaigns' values, outcomes and prices come from, and their units."""
    return (
        f"iPinYou campaign{'s' if len(names) > 1 else ''} {', '.join(names)} ({directory}): values: the "
        "log's pCTR; outcomes: the log's clicks; prices: the log's second prices, in the log's CPM price "
        "units (the price per 1000 impressions, as logged), as are budget, spend, cost per click, --cpa, "
        "--value and --cap. Budgets at the campaign's mean market price in its training log."
    )
