"""Bidding: agents replayed on iPinYou's logged second-price auctions, and the value of a better
model under the same agent.

    .venv/bin/python -m benchmarks.bidding [--skip-ipinyou] [--skip-model-value]

iPinYou: the 6 campaigns of ../shared/data/ipinyou/campaigns, 100 episodes of 1,000 logged auctions
each (real click, real market price, the log's pCTR as the value). Per campaign and budget (1/16, 1/8
and 1/4 of the mean market price x 1,000), every agent is tuned on episodes 1-50 and replayed on
51-100 (rankers.bidding.evaluate.compare_agents, bids capped at 300, the log's highest price), 48
ticks per episode. Clicks are the real clicks won; expected clicks the sum of the pCTR won; the
hindsight optimum is the fractional knapsack of pCTR under the budget knowing every price.

Model value: 250,000 synthetic rows (features/datasets/synthetic.py, the teacher's click probability known
per row), a well-trained MLP and an undertrained one (30 steps), both calibrated (isotonic) on the
valid split (their reliability before and after is kept for benchmarks/report.py's figure); the
test split (25,000 rows) becomes 25 episodes of 1,000 with log-normal market prices
correlated with the teacher's probability (rankers.bidding.evaluate.market_prices). The paced agent
is tuned per model on the first 12 episodes and replayed on the last 13 with the same budget;
clicks are the real clicks won, true expected clicks the teacher's probabilities of the auctions
won (the same replay with the true probability as the outcome).
Appends JSON lines to benchmarks/results.jsonl and rewrites benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    SHARED_DATA,
    Part,
    figure_link,
    header,
    latest_of,
    load_average,
    markdown_table,
    record,
    run_readme,
    section,
)
from rankers.bidding.calibration import calibrate
from rankers.bidding.evaluate import compare_agents, split_episodes
from rankers.bidding.ipinyou import campaign_names, load_campaign

BUDGETS = (1 / 16, 1 / 8, 1 / 4)


def ipinyou(run: str, command: str) -> None:
    directory = SHARED_DATA / "ipinyou" / "campaigns"
    for name in campaign_names(directory):
        campaign = load_campaign(directory, name)
        for fraction in BUDGETS:
            start = time.perf_counter()
            budget = campaign.budget(fraction)
            rows = compare_agents(campaign.episodes[:50], campaign.episodes[50:], budget, cap=300.0)
            for r in rows:
                record(
                    {"benchmark": "bidding_ipinyou", "run": run, "campaign": name, "fraction": fraction, **r},
                    command,
                )
            print(
                name,
                f"{fraction:.4f}",
                [(r["agent"], round(r["expected"], 2)) for r in rows],
                f"{time.perf_counter() - start:.1f}s",
            )


def model_value(run: str, command: str) -> None:
    from features.datasets.synthetic import SyntheticConfig, write_synthetic
    from rankers.config import RankerConfig, TrainConfig
    from rankers.predictor import Predictor
    from rankers.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(
            Path(tmp) / "data", SyntheticConfig(rows=250_000, min_count=10), progress=False
        )
        models = {
            "mlp, trained": TrainConfig(epochs=5, batch_size=1024, embedding_lr=0.02, progress=False),
            "mlp, 30 steps": TrainConfig(epochs=1, batch_size=1024, max_steps=30, progress=False),
        }
        for name, config in models.items():
            out = Path(tmp) / name.replace(" ", "").replace(",", "_")
            result = train(data, out, RankerConfig(backbone="mlp"), config)
            predictor = Predictor.load(out)
            # isotonic, as when benchmarks/README.md was measured (the library's default is now auto)
            calibration, report = calibrate(predictor, data / "valid", data / "test", method="isotonic")
            calibration.save(out)
            predictor = Predictor.load(out)
            budget = 1 / 8 * 50.0 * 1000
            paced, true = (
                compare_agents(episodes[:12], episodes[12:], budget, agents=("paced",))[0]
                for episodes in (
                    split_episodes(predictor, data / "test", "click", 1000, true_outcomes=truth)
                    for truth in (False, True)
                )
            )
            record(
                {
                    "benchmark": "bidding_model_value",
                    "run": run,
                    "model": name,
                    "test_auc": result["test"]["ctr"]["auc"],
                    "ece_raw": report["tasks"]["ctr"]["test_ece_raw"],  # on the test split
                    "ece_calibrated": report["tasks"]["ctr"]["test_ece_calibrated"],
                    "budget": budget,
                    **{k: paced[k] for k in ("conversions", "expected", "spend", "budget_used", "win_rate")},
                    "true_expected": true["conversions"],
                    "calibration": report["tasks"]["ctr"],  # ECE and reliability, raw and calibrated
                },
                command,
            )
            print(name, result["test"]["ctr"]["auc"], paced)


IPINYOU_INTRO = (
    "iPinYou, second price, 6 campaigns: tuned on episodes 1-50, replayed on 51-100 (50,000 "
    "auctions per campaign); budget per episode a share of the mean market price x 1,000; 48 "
    "ticks; bids capped at 300. Clicks are the real clicks won; expected clicks the sum of the "
    "logged pCTR won; the "
    "hindsight optimum the fractional knapsack of pCTR under the budget knowing every price (an "
    "upper bound for any agent with these values). The last row sums clicks and averages the "
    "ratios.  \n"
)
VALUE_INTRO = (
    "Value of a better model: synthetic test split (25 episodes of 1,000 rows; market prices "
    "log-normal, correlated 0.6 with the teacher's probability, median 50), paced agent tuned per "
    "model on 12 episodes, replayed on 13, budget 6,250 per episode.  \n"
)
AGENTS = ("constant", "linear", "paced")


def _ipinyou_row(campaign: str, fraction: float, by: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One campaign and budget: each agent's clicks and expected clicks, paced against the others."""
    best, c, lin, pace = (by[k] for k in ("hindsight optimum", *AGENTS))
    return {
        "campaign": campaign,
        "budget": f"1/{round(1 / fraction)}",
        "clicks const / linear / paced": f"{c['conversions']:.0f} / {lin['conversions']:.0f} / "
        f"{pace['conversions']:.0f}",
        "expected clicks const / linear / paced": " / ".join(f"{x['expected']:.2f}" for x in (c, lin, pace)),
        "hindsight optimum": best["expected"],
        "paced / optimum": pace["expected"] / best["expected"],
        "paced / linear": pace["expected"] / lin["expected"],
        "budget used linear / paced": f"{lin['budget_used']:.2f} / {pace['budget_used']:.2f}",
    }


def _render_ipinyou(ipy: list[dict[str, Any]]) -> str:
    """A row per campaign and budget, then one that sums the clicks and averages the ratios."""
    cells: dict[tuple[str, float], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ipy:
        cells[(r["campaign"], r["fraction"])][r["agent"]] = r
    table = [_ipinyou_row(campaign, fraction, by) for (campaign, fraction), by in sorted(cells.items())]
    clicks = {a: sum(by[a]["conversions"] for by in cells.values()) for a in AGENTS}
    total = {"campaign": "all", "budget": "all"} | {
        "clicks const / linear / paced": " / ".join(f"{clicks[a]:.0f}" for a in clicks),
        "expected clicks const / linear / paced": " / ".join(
            f"{sum(by[a]['expected'] for by in cells.values()):.2f}" for a in clicks
        ),
        "hindsight optimum": sum(by["hindsight optimum"]["expected"] for by in cells.values()),
        "paced / optimum": float(np.mean([r["paced / optimum"] for r in table])),
        "paced / linear": float(np.mean([r["paced / linear"] for r in table])),
        "budget used linear / paced": "",
    }
    table.append(total)
    return (
        f"{IPINYOU_INTRO}{header(ipy)}\n"
        + markdown_table(table, list(table[0]))
        + "\n"
        + figure_link("bidding_ipinyou.png", "share of the hindsight optimum against the budget")
        + "\n"
    )


def _render_value(value: list[dict[str, Any]]) -> str:
    """Per model: its AUC and calibration, and what the paced agent won with it."""
    table = [
        {
            "model": r["model"],
            "test AUC": r["test_auc"],
            "ECE raw / calibrated": f"{r['ece_raw']:.4f} / {r['ece_calibrated']:.4f}",
            "clicks won": r["conversions"],
            "true expected clicks won": r.get("true_expected"),
            "spend": r["spend"],
            "budget used": r["budget_used"],
            "win rate": r["win_rate"],
        }
        for r in value
    ]
    return (
        f"{VALUE_INTRO}{header(value)}\n"
        + markdown_table(table, list(table[0]))
        + "\n"
        + figure_link("calibration_synthetic.png", "reliability before and after calibration")
    )


def render(rows: list[dict[str, Any]]) -> str:
    """The README's Bidding section: the latest iPinYou run and the latest model-value run."""
    parts: list[Part] = [(latest_of("bidding_ipinyou", "bidding-"), _render_ipinyou)]
    parts.append((latest_of("bidding_model_value", "bidding-"), _render_value))
    return section(rows, "bidding-", "Bidding (benchmarks/bidding.py)", parts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bidding", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-ipinyou", action="store_true")
    parser.add_argument("--skip-model-value", action="store_true")
    args = parser.parse_args()
    command = f"{parser.prog} {shlex.join(sys.argv[1:])}"
    run = f"bidding-{uuid.uuid4().hex[:8]}"
    print(f"load average before: {load_average():.2f}")
    if not args.skip_ipinyou:
        ipinyou(run, command.strip())
    if not args.skip_model_value:
        model_value(run, command.strip())
    print(f"load average after: {load_average():.2f}")
    run_readme()


if __name__ == "__main__":
    main()
