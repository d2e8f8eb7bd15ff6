"""`rankers bid` as a library call: bidding agents tuned and replayed on logged auctions (iPinYou
campaigns) or on a labeled split scored by a calibrated predictor, as one outcome table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BID_FLAGS = (  # evaluate.BID_FLAGS: the flags `check_bid_flags` checks
    *("--budget", "--cap", "--value", "--cpa", "--roas", "--episode-length"),
    *("--market-median", "--market-sigma", "--market-corr", "--market-seed", "--goal", "--model"),
)


@dataclass(frozen=True)
class BidConfig:
    """One `rankers bid` run; the fields are its flags (None: not given)."""

    data: str | Path  # iPinYou campaigns directory, or a labeled split with `predictor`
    predictor: str | Path | None = None  # checkpoint (calibrated) whose values bid on the rows of `data`
    model: str | Path | None = None  # an artifact of `predictor` scoring the test episodes live, per tick
    campaign: str | None = None  # iPinYou campaigns, comma-separated (None: all in `data`)
    agent: str = "all"  # comma-separated agents, or all (those whose targets are given)
    budget: float = 1 / 8  # budget per episode, as a share of what buying all its traffic would cost
    cpa: float | None = None  # target cost per conversion (click)
    roas: float | None = None  # target value won per unit spent (needs `value`)
    auction: str = "second_price"  # second_price or first_price
    goal: str | None = None  # with a predictor: click or conversion (None: click)
    episode_length: int | None = None  # rows per episode, with a predictor (None: 1000)
    cap: float = float("inf")  # highest bid
    value: float | None = None  # money per conversion (click)
    market_median: float | None = None  # the market model's (None: MarketModel's default)
    market_sigma: float | None = None
    market_corr: float | None = None
    market_seed: int | None = None
    batch_size: int = 65_536  # rows scored per forward pass, with a predictor
    device: str = "auto"  # where a predictor scores rows: auto (cuda where torch sees a GPU), cpu, cuda[:N]

    def flags(self) -> dict[str, Any]:
        """The values of BID_FLAGS by flag (None where not given)."""
        return {f: getattr(self, f[2:].replace("-", "_")) for f in BID_FLAGS}


def bid_report(config: BidConfig, argv: Sequence[str] = ()) -> str:
    """The header (where values, outcomes and prices come from, and how the run is split) and the
    outcome table, agent by agent, of each source's test episodes.

    Args:
        config: the run.
        argv: the command line it came from, so an error quotes a flag's value as typed.

    Raises:
        ValueError: naming the first flag out of its range or not applying, before any work.
    """
    from rankers.bidding import evaluate as ev
    from rankers.bidding.replay import describe_run, outcome_columns
    from rankers.metrics import markdown_table

    ev.check_bid_flags(config.flags(), argv, predictor=bool(config.predictor))
    c = config
    agents = ev.select_agents(c.agent, c.cpa, c.roas, c.value, c.auction)
    goal, length, data = c.goal or "click", c.episode_length or 1000, Path(c.data)
    sources, about = _sources(c, goal, length, data)
    rows: list[dict[str, Any]] = []
    timings: list[float] = []
    for name, episodes, budget in sources:
        train, test = ev.halves(name, episodes)
        if c.model:
            test, timings = _live(c, test, len(train), length, goal)
        rs = ev.compare_agents(train, test, budget, agents, c.cpa, c.auction, c.cap, 48, c.value, c.roas)
        rows += [{"data": name, "budget": budget, "test_episodes": len(test), **r} for r in rs]
    shown = outcome_columns(goal, c.value is not None, c.roas is not None, c.cpa is not None)
    labels = {"data": "data", "budget": "budget per episode", "test_episodes": "test episodes"}
    labels |= {"agent": "agent"} | shown
    run = describe_run(goal, c.auction, c.budget, [(n, e) for n, e, _ in sources])
    if c.model:
        from rankers.bidding.live import describe_timings

        run += "\n" + describe_timings(timings, length, 48)
    table = markdown_table([{labels.get(k, k): v for k, v in r.items()} for r in rows], list(labels.values()))
    return f"{about}\n{run}\n\n{table}"


def _live(c: BidConfig, test: list, first: int, length: int, goal: str) -> tuple[list, list[float]]:
    """The test episodes with values scored live through the artifact `c.model` of `c.predictor`,
    and the list each tick's scoring time goes to."""
    from features.schema import Schema
    from rankers.bidding.live import live_episodes
    from rankers.checkpoint import CheckpointDir
    from rankers.serving.loader import load

    assert c.predictor is not None
    model = load(c.model, max_batch=c.batch_size)  # type: ignore[arg-type]
    ours = (CheckpointDir(c.predictor).marker() or {}).get("data_fingerprint")
    if model.info.get("data_fingerprint") != ours:
        raise ValueError(
            f"--model {c.model}: exported from a checkpoint trained on other data (fingerprint "
            f"{model.info.get('data_fingerprint')}) than --predictor {c.predictor} ({ours}); export "
            "that checkpoint"
        )
    return live_episodes(model, c.data, Schema.load(c.predictor), test, first, length, goal)


def _sources(c: BidConfig, goal: str, length: int, data: Path) -> tuple[list[tuple[str, list, float]], str]:
    """Each source's (name, episodes, budget per episode), and the header's words on where values,
    outcomes and prices come from."""
    import numpy as np

    from rankers.bidding import evaluate as ev
    from rankers.bidding.ipinyou import campaign_names, describe_campaigns, load_campaign

    sources: list[tuple[str, list, float]] = []  # (name, episodes, budget per episode)
    if c.predictor:
        from rankers.predictor import Predictor

        given: dict[str, Any] = {"median": c.market_median, "sigma": c.market_sigma}
        given |= {"corr": c.market_corr, "seed": c.market_seed}
        market = ev.MarketModel(**{k: v for k, v in given.items() if v is not None})
        predictor = Predictor.load(c.predictor, c.device)
        episodes = ev.split_episodes(predictor, data, goal, length, market, batch_size=c.batch_size)
        mean_price = float(np.mean([e.prices.mean() for e in ev.halves(data.name, episodes)[0]]))
        sources.append((data.name, episodes, c.budget * mean_price * length))
        about = ev.describe_split(data, c.predictor, goal, market)
    else:
        names = c.campaign.split(",") if c.campaign else campaign_names(data)
        for name in names:
            campaign = load_campaign(data, name)
            sources.append((name, campaign.episodes, campaign.budget(c.budget)))
        about = describe_campaigns(data, names)
    return sources, about
