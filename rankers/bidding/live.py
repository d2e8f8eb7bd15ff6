"""Bid values scored live: an episode whose values an exported artifact (`rankers export`) computes
when the replay reaches each tick, from that tick's rows, as a bidding process would online.

`rankers bid --predictor DIR --model FILE` replays the test episodes this way (the agents are tuned
and the market priced on the checkpoint's precomputed values, as without `--model`) and reports
the scoring time per tick beside the outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.reader import parquet_files, table_batches
from features.schema import Schema
from rankers.bidding.replay import Episode
from rankers.bidding.values import BidValues, values_from_probs
from rankers.funnel import goal_tasks


class LiveValues:
    """The values of an episode's rows, scored by `model` when indexed (one tick's rows).

    Args:
        model: a loaded artifact (`rankers.serving.load`), with its checkpoint's calibration.
        rows: the episode's rows of the converted split (the schema's feature columns).
        schema: the features (labels aside).
        goal: click or conversion (`rankers.bidding.values.values_from_probs`).
        timings: each call's seconds are appended here.
    """

    def __init__(self, model: Any, rows: pa.Table, schema: Schema, goal: str, timings: list[float]) -> None:
        if model.calibration is None:
            raise ValueError(
                f"{model.path}: its checkpoint held no calibration; values need one (rankers calibrate)"
            )
        self.model, self.rows, self.schema, self.goal, self.timings = model, rows, schema, goal, timings

    def __len__(self) -> int:
        return self.rows.num_rows

    def __getitem__(self, index: Any) -> BidValues:
        """The values of rows `index` (an array of row numbers), scored now."""
        start = time.perf_counter()
        rows = self.rows.take(pa.array(np.arange(len(self))[index]))
        if rows.num_rows == 0:
            return BidValues(np.zeros(0), np.zeros(0))
        batch = next(table_batches(rows, self.schema, rows.num_rows, labels=False))
        probs = self.model.score(batch)
        tasks = [t for t in goal_tasks(list(probs), self.goal) if t in probs]
        sigma = self.model.calibration.sigma({t: probs[t].astype(np.float64) for t in tasks})
        values = values_from_probs({t: p.astype(np.float64) for t, p in probs.items()}, sigma, self.goal)
        self.timings.append(time.perf_counter() - start)
        return values

    @property
    def value(self) -> np.ndarray:
        """Every row's value (scored at once, untimed: for the hindsight optimum)."""
        timings, self.timings = self.timings, []
        try:
            return self[np.arange(len(self))].value
        finally:
            self.timings = timings


def live_episodes(
    model: Any, split: str | Path, schema: Schema, episodes: list[Episode], first: int, length: int, goal: str
) -> tuple[list[Episode], list[float]]:
    """`episodes` (the split's episodes from number `first` on, `length` rows each, in stored order)
    with values scored through `model` per tick; and the list their scoring times go to."""
    features = [n for n, _ in schema.without_labels().columns()]
    table = pa.concat_tables(pq.read_table(f, columns=features) for f in parquet_files(split))
    timings: list[float] = []
    out = []
    for k, episode in enumerate(episodes):
        rows = table.slice((first + k) * length, length)
        out.append(replace(episode, values=LiveValues(model, rows, schema.without_labels(), goal, timings)))  # type: ignore[arg-type]
    return out, timings


def describe_timings(timings: list[float], length: int, ticks: int) -> str:
    """The scoring time per tick, in words."""
    ms = np.asarray(timings) * 1e3
    return (
        f"Values scored live through the exported artifact, tick by tick ({len(ms)} ticks of about "
        f"{length / ticks:.0f} rows, the rows mapped and scored in each): p50 {np.median(ms):.2f} ms, "
        f"p99 {np.quantile(ms, 0.99):.2f} ms per tick."
    )


@dataclass
class Requests:
    """The opportunities of the first advertiser (ours) in `rankers.bidding.auctionnet.simulate`, as
    rows: tick t brings rows [t n, (t + 1) n) (wrapping around), converting with probability `truth`;
    the strategy bids on values scored from those rows by `model` when the tick comes (timed in
    `timings`), or on `values` computed beforehand.

    Args:
        truth: each row's true conversion probability (e.g. the teacher's on synthetic data).
        rows: the rows' features (a converted split's columns), with `model`.
        schema: their schema (labels aside), with `model`.
        model: a loaded artifact (`rankers.serving.load`), calibrated.
        values: precomputed values instead of `model`.
        goal: click or conversion.
    """

    truth: np.ndarray
    rows: pa.Table | None = None
    schema: Schema | None = None
    model: Any = None
    values: BidValues | None = None
    goal: str = "click"
    timings: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.values is None):
            raise ValueError(
                "Requests: give a model (with rows and schema) or precomputed values, one of them"
            )
        if self.model is not None and (self.rows is None or self.schema is None):
            raise ValueError("Requests: a model scores rows: give rows and schema too")

    def at(self, tick: int, n: int) -> tuple[np.ndarray, BidValues]:
        """(true probabilities, bid values) of tick `tick`'s `n` opportunities."""
        part = np.arange(tick * n, (tick + 1) * n) % len(self.truth)
        if self.values is not None:
            return self.truth[part], self.values[part]
        assert self.rows is not None and self.schema is not None
        live = LiveValues(self.model, self.rows, self.schema.without_labels(), self.goal, self.timings)
        return self.truth[part], live[part]
