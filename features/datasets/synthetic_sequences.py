"""Seeded synthetic DIN-shaped data (behaviour histories) from a known teacher.

Each row is a user, a target item with its category, and the user's history of items and their
categories (aligned lists, oldest first, at most `max_len`, geometric lengths of mean about
`mean_len`). Users have `interests` favourite categories (drawn by a Zipf law over categories); a
history entry is an item of a favourite category with probability `interest_share`, else any item,
and the target likewise with `target_interest_share`. Every item has one category. The teacher's logit

    z = b + h * log1p(k) + m * [target item in the history] + w_item[target] + w_user[user]

with k the number of history entries of the target's category: the signal sits in the history
matched against the target, what target attention (DIN, DIEN) is built to find, plus per-item and
per-user effects (normal, std `item_scale`, `user_scale`) a plain field model can learn. b is set so
the mean click probability is about `target_ctr`. Labels are Bernoulli(sigmoid(z)); every row
carries `teacher_p`, and dataset.json records the teacher's AUC and LogLoss per split: the best any
model can reach there.

Ids start at 1 (0 is no value, as the converters write them): item_id and hist_item_id share the
item table, cate_id and hist_cate_id the category table. Rows are drawn at once (about 300 bytes a
row at mean length 17), split by row order.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.convert import Plan, check_integers, check_numbers, check_split, convert
from features.datasets.teacher import fit_bias, sigmoid, teacher_plan
from features.datasets.timeline import history_schema
from features.schema import Label

_COUNTS = ("rows", "users", "items", "categories", "max_len", "interests")  # each >= 1


@dataclass(frozen=True)
class SequenceSyntheticConfig:
    """Shape and teacher of the synthetic behaviour data."""

    rows: int = 200_000
    seed: int = 0
    users: int = 10_000
    items: int = 100_000
    categories: int = 1_000
    max_len: int = 50
    mean_len: float = 17.0  # mean of the geometric lengths after the cap at max_len
    interests: int = 3  # favourite categories per user
    interest_share: float = 0.8  # history entries from a favourite category
    target_interest_share: float = 0.5  # targets from a favourite category
    history_weight: float = 1.0  # h: weight of log1p(history entries of the target's category)
    repeat_weight: float = 0.5  # m: weight of the target item being in the history
    item_scale: float = 0.3
    user_scale: float = 0.3
    target_ctr: float = 0.25
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        check_integers(
            self, dict.fromkeys(("rows", "users", "items", "categories", "max_len", "interests"), 1)
        )
        if self.items < self.categories:
            raise ValueError(f"items {self.items} must be >= categories {self.categories} (one each)")
        if not 1 <= self.mean_len < self.max_len:
            raise ValueError(f"mean_len {self.mean_len} must be in [1, max_len {self.max_len})")
        intervals = {"interest_share": "[0, 1]", "target_interest_share": "[0, 1]", "target_ctr": "(0, 1)"}
        check_numbers(self, intervals)
        check_split(self.split)


def _geometric_mean_p(mean: float, cap: int) -> float:
    """The p of a geometric law (support 1, 2, ...) whose mean after min(., cap) is `mean`."""
    lo, hi = 1e-6, 1.0
    for _ in range(60):
        p = (lo + hi) / 2
        capped = (1 - (1 - p) ** cap) / p  # E[min(G, cap)] = sum_{k<cap} P(G > k)
        lo, hi = (p, hi) if capped > mean else (lo, p)
    return (lo + hi) / 2


def _teacher_rows(config: SequenceSyntheticConfig) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(the rows, the teacher's probabilities, labels); ids from 1 in the table."""
    rng = np.random.default_rng([config.seed, 11])
    n, c = config.rows, config.categories
    item_cate = rng.permutation(np.arange(config.items) % c)  # every category has items
    by_cate = np.argsort(item_cate, kind="stable")
    first = np.searchsorted(item_cate[by_cate], np.arange(c))
    size = np.bincount(item_cate, minlength=c)
    zipf = 1.0 / np.arange(1, c + 1)
    favourites = rng.choice(c, size=(config.users, config.interests), p=zipf / zipf.sum())

    def draw(user: np.ndarray, share: float) -> np.ndarray:
        """Items: of one of the user's favourite categories with probability `share`, else any."""
        cate = favourites[user, rng.integers(0, config.interests, len(user))]
        liked = by_cate[first[cate] + (rng.random(len(user)) * size[cate]).astype(np.int64)]
        return np.where(rng.random(len(user)) < share, liked, rng.integers(0, config.items, len(user)))

    user = rng.integers(0, config.users, n)
    lengths = np.minimum(rng.geometric(_geometric_mean_p(config.mean_len, config.max_len), n), config.max_len)
    owner = np.repeat(np.arange(n), lengths)
    history = draw(user[owner], config.interest_share)
    target = draw(user, config.target_interest_share)
    same_cate = np.bincount(owner, weights=item_cate[history] == item_cate[target][owner], minlength=n)
    repeat = np.bincount(owner, weights=history == target[owner], minlength=n) > 0
    z = (
        config.history_weight * np.log1p(same_cate)
        + config.repeat_weight * repeat
        + rng.normal(0, config.item_scale, config.items)[target]
        + rng.normal(0, config.user_scale, config.users)[user]
    )
    p = sigmoid(z + fit_bias(z, config.target_ctr))
    y = (rng.random(n) < p).astype(np.int8)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    table = pa.table(  # ids from 1: 0 is no value
        {
            "click": y,
            "user_id": user + 1,
            "item_id": target + 1,
            "cate_id": item_cate[target] + 1,
            "hist_item_id": pa.ListArray.from_arrays(offsets, history + 1),
            "hist_cate_id": pa.ListArray.from_arrays(offsets, item_cate[history] + 1),
            "teacher_p": p,
        }
    )
    return table, p, y


def write_synthetic_sequences(
    out: str | Path, config: SequenceSyntheticConfig = SequenceSyntheticConfig(), overwrite: bool = False
) -> Path:
    """Writes train/valid/test (by row order) with the schema's columns, `click` and `teacher_p`;
    dataset.json holds the config, the mean history length and the teacher's figures per split."""

    def plan(_: ExitStack) -> Plan:
        table, p, y = _teacher_rows(config)
        lengths = pc.list_value_length(table["hist_item_id"]).to_numpy()  # int32, as np.diff(offsets)
        info = {"mean_history_length": float(lengths.mean())}
        sizes = (config.users + 1, config.items + 1, config.categories + 1)
        schema = history_schema(sizes, config.max_len, (Label("click", "ctr"),))
        return teacher_plan(config, schema, [(table, {"p": p, "y": y})], info)

    name = "synthetic_sequences"
    return convert(name, name, config, out, plan, (), overwrite, progress=False)
