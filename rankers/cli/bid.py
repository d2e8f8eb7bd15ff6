"""`rankers bid`: bidding agents replayed on logged auctions, as one outcome table
(`rankers.bidding.run.bid_report`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from rankers.cli._compute import add_compute_flags, apply_compute_flags

HELP = "bidding agents replayed on logged auctions: the outcome table"
AGENTS = (
    "constant",
    "linear",
    "paced",
    "cpa",
    "roas",
    "shading",
)  # evaluate.AGENTS (a test holds them equal)


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    from rankers.bidding.run import BidConfig

    d = BidConfig(data="")
    help_ = "iPinYou campaigns directory, or a labeled split with --predictor"
    p.add_argument("--data", required=True, help=help_)
    p.add_argument("--predictor", help="checkpoint (calibrated) whose values bid on the rows of --data")
    help_ = (
        "with --predictor: an artifact exported from that checkpoint (`rankers export`) that scores the "
        "test episodes' rows live, tick by tick, instead of the precomputed values; the scoring time per "
        "tick is reported (default: precomputed values)"
    )
    p.add_argument("--model", metavar="FILE", help=help_)
    p.add_argument("--campaign", help="iPinYou campaigns, comma-separated (default: all in --data)")
    p.add_argument(
        "--agent",
        default=d.agent,
        help=f"comma-separated of {', '.join(AGENTS)}, or all (those whose flags are given: cpa needs "
        "--cpa, roas --roas and --value, shading --auction first_price); default all",
    )
    help_ = "budget per episode, as a share of what buying all its traffic would cost (> 0); default 0.125"
    p.add_argument("--budget", type=float, default=d.budget, help=help_)
    help_ = "target cost per conversion (click), > 0: agent cpa, AuctionNet score; default none"
    p.add_argument("--cpa", type=float, help=help_)
    help_ = "target value won per unit spent, > 0 (agent roas; needs --value); default none"
    p.add_argument("--roas", type=float, help=help_)
    p.add_argument(
        "--auction",
        choices=["second_price", "first_price"],
        default=d.auction,
        help="a win pays the market price (second_price) or the bid (first_price); default second_price",
    )
    p.add_argument(
        "--goal",
        choices=["click", "conversion"],
        help="with --predictor: the value bid on, P(click) or P(conversion) (ctcvr, or ctr x cvr); "
        "default click",
    )
    help_ = "rows per episode, >= 1, with --predictor; default 1000"
    p.add_argument("--episode-length", type=int, help=help_)
    p.add_argument("--cap", type=float, default=d.cap, help="highest bid (> 0); default no cap")
    help_ = "money per conversion (click), > 0: ROI, and agent roas; default none"
    p.add_argument("--value", type=float, help=help_)
    market = "with --predictor, the log-normal market model's"
    defaults = {
        "median": 50.0,
        "sigma": 0.6,
        "corr": 0.6,
        "seed": 0,
    }  # rankers.bidding.evaluate.MarketModel's
    help_ = f"{market} median price per impression (> 0); default {defaults['median']:g}"
    p.add_argument("--market-median", type=float, help=help_)
    help_ = f"{market} spread of the log price (>= 0); default {defaults['sigma']:g}"
    p.add_argument("--market-sigma", type=float, help=help_)
    help_ = f"{market} correlation with true value, in [-1, 1]; default {defaults['corr']:g}"
    p.add_argument("--market-corr", type=float, help=help_)
    p.add_argument("--market-seed", type=int, help=f"{market} noise seed (>= 0); default {defaults['seed']}")
    add_compute_flags(p, scored="(with --predictor; iPinYou logs are not scored)")


def run(args: argparse.Namespace) -> None:
    from rankers.bidding.run import BidConfig, bid_report

    apply_compute_flags(args)  # threads set, the device checked; the batch size and device are BidConfig's
    config = BidConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BidConfig)})
    print(bid_report(config, args.argv))
