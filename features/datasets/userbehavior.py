"""Taobao UserBehavior (Tianchi) -> ranking examples with behaviour histories, negatives and a
conversion label (layout in `features.dataset`).

Input: CSV without header, `user_id, item_id, category_id, behavior, timestamp` (behaviour `pv`,
`cart`, `fav` or `buy`; unix seconds), grouped by user: the rows of a user are contiguous (a user
reappearing after another one raises, naming the line). Several files are read as one sequence.

Choices:
- Time: days are calendar days in Beijing time (UTC+8). Rows outside [`start`, `end`] (the public
  set's 2017-11-25..2017-12-03 by default; it holds a few stray earlier timestamps) are excluded
  from everything (catalogue, histories, examples); their count is in dataset.json and logged.
- Ids: user_id, item_id and cate_id map to 1..N by ascending raw value (0 is reserved and unused),
  so ids do not depend on file order. `vocabulary.parquet` (feature, value, id, count of
  behaviours) and `catalogue.parquet` (item_id, cate_id, as ids) are saved beside the data.
- Catalogue: every item of the kept rows with the category of its first row in file order; an item
  recorded with several categories (rare) keeps that first one everywhere (positives, histories,
  negatives), so an (item, category) pair never tells a positive from a negative; such items are
  counted in dataset.json.
- Examples: within a user, behaviours are ordered by (timestamp, file order). Each behaviour of any
  type with at least one behaviour of that user at a strictly earlier second gives one positive
  (its item, click=1) and `negatives` rows (click=0) with items drawn uniformly from the whole
  catalogue, never the positive item (collisions are redrawn; items of the history may be drawn).
  All share the history: the items and categories of the behaviours strictly earlier in time
  (same-second behaviours are not each other's history), oldest first, the `max_len` most recent.
  Negatives come from `numpy.random.default_rng([seed, raw user id])`, so a user's negatives depend
  only on the seed, the user's rows and the catalogue.
- `conversion` (task cvr): 1 on a positive whose user buys that item at the behaviour's second or
  later within the same split (a buy behaviour is its own conversion; a train example never learns
  of a purchase made on a valid or test day), else 0; always 0 on negatives, so a conversion implies
  a click, as the ESMM model needs (it computes ctcvr = ctr * cvr itself; no ctcvr column).
- Split by the positive's day: the last `test_days` days holding kept rows are test, the
  `valid_days` before them valid, earlier days train.

Memory: pass 1 holds the catalogue and user ids; pass 2 holds one block of rows plus one user.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.convert import SPLITS, Block, Plan, bar, check_integers, convert
from features.datasets.funnel import FUNNEL
from features.datasets.timeline import beijing_day, check_date, day_text, history_lists, history_schema
from features.delimited import (
    CsvFile,
    Inputs,
    Layout,
    check_rows,
    count_rows,
    input_files,
    iter_files,
    line_of_row,
    require,
    sniff,
)
from features.outputs import paths_of
from features.vocabulary import Vocabulary

NAMES = ("user_id", "item_id", "category_id", "behavior", "timestamp")
BEHAVIORS = ("pv", "cart", "fav", "buy")
BUY = BEHAVIORS.index("buy")
_TYPES = dict.fromkeys(NAMES, pa.int64()) | {"behavior": pa.string()}
_EXPECT = dict.fromkeys(NAMES[:3], "an integer id") | {"timestamp": "an integer (unix seconds)"}


@dataclass(frozen=True)
class UserBehaviorConfig:
    """How UserBehavior rows become examples; every field has a CLI flag of the same name."""

    max_len: int = 50  # most recent history behaviours kept per example
    negatives: int = 1  # sampled negative items per positive
    seed: int = 0  # seeds the negative sampling
    start: str = "2017-11-25"  # first day kept (Beijing time, inclusive)
    end: str = "2017-12-03"  # last day kept (Beijing time, inclusive)
    valid_days: int = 1  # days before the test days that form the valid split
    test_days: int = 1  # last days (among the kept rows) that form the test split
    block_bytes: int = 8 << 20  # bytes parsed per block

    def __post_init__(self) -> None:
        check_integers(
            self, {"max_len": 1, "negatives": 0, "valid_days": 0, "test_days": 1, "block_bytes": 4096}
        )
        if check_date("start", self.start) > check_date("end", self.end):
            raise ValueError(f"start {self.start} is after end {self.end}; expected start <= end")


@dataclass
class _Rows:
    """Behaviours of a block, in file order: raw ids, behaviour codes, times, global row numbers."""

    user: np.ndarray
    item: np.ndarray
    cate: np.ndarray
    behavior: np.ndarray
    t: np.ndarray
    row: np.ndarray

    def take(self, idx: np.ndarray | slice) -> _Rows:
        return _Rows(*(a[idx] for a in vars(self).values()))

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(*(np.concatenate([vars(p)[k] for p in parts]) for k in vars(parts[0])))


@dataclass
class _Catalogue:
    """Pass 1's result: sorted raw ids (id = position + 1), item categories, and the vocabularies
    (raw ids with their behaviours) of user_id, item_id and cate_id."""

    user: np.ndarray
    item: np.ndarray
    item_cate: np.ndarray  # (items,) the cate id of each item id - 1
    cate: np.ndarray
    vocabulary: Vocabulary
    days: np.ndarray  # the distinct kept days (days since 1970-01-01, Beijing time)
    excluded: int  # rows outside [start, end]
    multi: int  # items recorded with more than one category


def convert_userbehavior(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: UserBehaviorConfig = UserBehaviorConfig(),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Converts UserBehavior rows into a dataset of examples with histories (see the module doc):
    the columns of `features.datasets.timeline.history_schema`, click (ctr) and conversion (cvr).

    Args:
        inputs: one file or several, read in order as one sequence of rows.
        out, overwrite, progress: as in `features.convert.convert`.
        config: history length, negatives, seed, days and split.
    """

    def plan(_: ExitStack) -> Plan:
        return _plan(inputs, config, progress)

    converter = "features.userbehavior.convert_userbehavior"
    return convert("userbehavior", converter, config, out, plan, paths_of(inputs), overwrite, progress)


def _plan(inputs: Inputs, config: UserBehaviorConfig, progress: bool) -> Plan:
    """Pass 1 (the catalogue) made here; pass 2's blocks are the examples of whole users."""
    layouts = _inspect(inputs)
    total = sum(n for *_, n in layouts)
    cat = _catalogue(layouts, total, config, progress)
    if config.negatives and len(cat.item) < 2:
        raise ValueError(f"{len(cat.item)} item(s) in the kept rows; sampling negatives needs at least 2")
    last = int(cat.days[-1])
    bounds = (last - config.test_days - config.valid_days, last - config.test_days)
    sizes = (len(cat.user) + 1, len(cat.item) + 1, len(cat.cate) + 1)  # id 0 reserved
    schema = history_schema(sizes, config.max_len, FUNNEL)
    positives = 0

    def blocks(_: int) -> Iterator[Block]:
        nonlocal positives
        for rows, consumed in _by_user(layouts, config):
            table, split = _examples(rows, cat, bounds, config, schema.arrow_schema())
            positives += table.num_rows // (1 + config.negatives)
            yield Block(table, split, rows=consumed)

    def info() -> dict[str, Any]:
        splits = np.digitize(cat.days, bounds, right=True)
        return {
            "behaviours": total,
            "excluded_out_of_range": cat.excluded,
            # a user's first second of behaviour has no earlier behaviour, so no example
            "behaviours_without_history": total - cat.excluded - positives,
            "users": len(cat.user),
            "items": len(cat.item),
            "categories": len(cat.cate),
            "items_with_several_categories": cat.multi,
            "days": {s: [day_text(d) for d in cat.days[splits == i]] for i, s in enumerate(SPLITS)},
            "timezone": "UTC+8 (Beijing)",
        }

    ids = np.arange(1, len(cat.item) + 1, dtype=np.int64)
    return Plan(
        rows=total,
        blocks=blocks,
        schema=lambda _: schema,
        map=lambda block, _: {c: block.batch[c] for c in block.batch.column_names},
        inputs=[str(f.path) for f, _, _ in layouts],
        vocabulary=cat.vocabulary,
        first_id=1,  # ids by ascending raw value from 1
        info=info,
        files=lambda: {"catalogue.parquet": pa.table({"item_id": ids, "cate_id": cat.item_cate})},
        rate=False,
        summary=lambda: f"{total} behaviours, {cat.excluded} outside {config.start}..{config.end} excluded",
    )


def _inspect(inputs: Inputs) -> list[Layout]:
    layouts: list[Layout] = []
    for path in input_files(inputs):
        f = sniff(path)
        if f.header is not None or f.num_fields != len(NAMES):
            raise ValueError(
                f"{path}: line 1: {f.num_fields} fields{' (a header?)' if f.header else ''}; expected "
                f"{len(NAMES)} without header: {', '.join(NAMES)}"
            )
        if f.delimiter != ",":
            raise ValueError(f"{path}: line 1 holds a tab; expected comma-separated fields")
        layouts.append((f, NAMES, count_rows(f)))
    return layouts


def _blocks(layouts: list[Layout], block_bytes: int) -> Iterator[Block]:
    """Every block, its rows checked, with them as `_Rows` for `source`."""
    offset = 0
    for f, first, batch in iter_files(layouts, _TYPES, _EXPECT, block_bytes):
        require(batch, ("user_id", "item_id", "category_id", "timestamp"), f, first)
        code = pc.index_in(batch["behavior"], value_set=pa.array(BEHAVIORS))
        check_rows(f, first, code.is_valid(), "behavior", batch["behavior"], "one of " + ", ".join(BEHAVIORS))
        n = batch.num_rows
        user, item, cate, t = (
            batch[c].to_numpy() for c in ("user_id", "item_id", "category_id", "timestamp")
        )
        rows = _Rows(user, item, cate, code.to_numpy().astype(np.int8), t, np.arange(offset, offset + n))
        yield Block(batch, np.empty(0), f, first, source=rows)
        offset += n


class _Tally:
    """Distinct values with their first row (in file order), count and the payload of that first
    row; values met with another payload on a later row are kept in `conflicts`. Blocks are merged
    once they outnumber the merged values, so each value is merged O(log) times."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.conflicts = np.empty(0, dtype=np.int64)

    def add(self, value: np.ndarray, row: np.ndarray, payload: np.ndarray | None = None) -> None:
        ones = np.ones(len(value), dtype=np.int64)
        self.parts.append(self._reduce(value, row, ones, value if payload is None else payload))
        if sum(len(p[0]) for p in self.parts[1:]) >= max(1 << 16, len(self.parts[0][0])):
            self.parts = [self._reduce(*(np.concatenate(a) for a in zip(*self.parts, strict=True)))]

    def _reduce(self, value: np.ndarray, row: np.ndarray, count: np.ndarray, payload: np.ndarray) -> tuple:
        order = np.lexsort((row, value))
        value, row, count, payload = value[order], row[order], count[order], payload[order]
        if not len(value):
            return value, row, count, payload
        start = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
        first_payload = np.repeat(payload[start], np.diff(np.r_[start, len(value)]))
        self.conflicts = np.union1d(self.conflicts, value[payload != first_payload])
        return value[start], row[start], np.add.reduceat(count, start), payload[start]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted distinct values, their counts, the payload of their first row)."""
        if not self.parts:
            return (np.empty(0, dtype=np.int64),) * 3
        value, _, count, payload = self._reduce(*(np.concatenate(a) for a in zip(*self.parts, strict=True)))
        return value, count, payload


def _check_grouped(
    user: np.ndarray, f: CsvFile, first: int, current: int | None, seen: np.ndarray
) -> tuple[int, np.ndarray]:
    """Raises naming the line where a user reappears after another user; returns the block's last
    user and the users seen so far (sorted)."""
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    if current is not None and user[0] == current:
        starts = starts[1:]
    runs = user[starts]
    again = np.isin(runs, seen)
    again[np.setdiff1d(np.arange(len(runs)), np.unique(runs, return_index=True)[1])] = True
    if again.any():
        i = int(starts[np.argmax(again)])
        raise ValueError(
            f"{f.path}: line {line_of_row(f, first + i)}, column user_id: user {user[i]} appears again "
            "after other users; expected each user's rows to be contiguous (the file grouped by user)"
        )
    return int(user[-1]), np.union1d(seen, runs)


def _catalogue(layouts: list[Layout], total: int, config: UserBehaviorConfig, progress: bool) -> _Catalogue:
    """Pass 1: checks the rows and collects users, items with their category, categories, days."""
    lo, hi = check_date("start", config.start), check_date("end", config.end)
    users, items, cates = _Tally(), _Tally(), _Tally()
    days, seen, current, excluded = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), None, 0
    for block in bar("userbehavior 1/2 catalogue", total, progress, _blocks(layouts, config.block_bytes)):
        rows = block.source
        assert block.file is not None
        current, seen = _check_grouped(rows.user, block.file, block.first, current, seen)
        day = beijing_day(rows.t)
        keep = (day >= lo) & (day <= hi)
        excluded += int((~keep).sum())
        kept = rows.take(keep)
        users.add(kept.user, kept.row)
        items.add(kept.item, kept.row, kept.cate)
        cates.add(kept.cate, kept.row)
        days = np.union1d(days, day[keep])
    if not len(days):
        raise ValueError(
            f"{layouts[0][0].path}: no rows between {config.start} and {config.end} (Beijing time)"
        )
    found = {"user_id": users.result(), "item_id": items.result(), "cate_id": cates.result()}
    (user, *_), (item, _, item_cate), (cate, *_) = found.values()
    vocab = {c: (pa.array(values), pa.array(counts)) for c, (values, counts, _) in found.items()}
    item_cate = np.searchsorted(cate, item_cate) + 1
    return _Catalogue(user, item, item_cate, cate, vocab, days, excluded, len(items.conflicts))


def _by_user(layouts: list[Layout], config: UserBehaviorConfig) -> Iterator[tuple[_Rows, int]]:
    """Pass 2: the kept rows in blocks of whole users (a user's rows are never split), each with
    the input rows read since the last."""
    lo, hi = check_date("start", config.start), check_date("end", config.end)
    pending: list[_Rows] = []
    consumed = 0
    for block in _blocks(layouts, config.block_bytes):
        consumed += block.batch.num_rows
        day = beijing_day(block.source.t)
        rows = _Rows.concat([*pending, block.source.take((day >= lo) & (day <= hi))])
        if not len(rows.user):
            continue
        other = np.flatnonzero(rows.user != rows.user[-1])
        cut = int(other[-1]) + 1 if len(other) else 0  # the first row of the block's last user
        if cut:
            yield rows.take(slice(0, cut)), consumed
            consumed = 0
        pending = [rows.take(slice(cut, None))]
    if pending and len(pending[0].user):
        yield pending[0], consumed


def _examples(
    rows: _Rows, cat: _Catalogue, bounds: tuple[int, int], config: UserBehaviorConfig, arrow: pa.Schema
) -> tuple[pa.Table, np.ndarray]:
    """The examples of whole users' rows, and the split of each (0 train, 1 valid, 2 test)."""
    run = np.cumsum(np.r_[0, rows.user[1:] != rows.user[:-1]])  # a user's position in the block
    order = np.lexsort((rows.t, run))  # stable: same-second behaviours keep file order
    rows, run = rows.take(order), run[order]
    item = np.searchsorted(cat.item, rows.item) + 1
    cate = cat.item_cate[item - 1]
    key = (run << 32) | (rows.t - rows.t.min())  # (user, time), sorted; times span < 2^32 s
    first = np.searchsorted(key, run << 32)  # each row's user's first row
    hi = np.searchsorted(key, key, side="left")  # the first row of the user at the same second
    ex = np.flatnonzero(hi > first)  # rows with an earlier behaviour
    lo = np.maximum(first, hi - config.max_len)[ex]
    k = config.negatives
    rep = np.repeat(np.arange(len(ex)), 1 + k)  # (n * (1 + k),): a positive then its negatives
    negatives = _negatives(rows.user[ex], item[ex], len(cat.item), k, config.seed)  # (n, k)
    items = np.column_stack([item[ex], negatives]).ravel()
    days = np.digitize(beijing_day(rows.t), bounds, right=True)  # each row's split
    bought = _bought(run, item, rows.t, rows.behavior, days)[ex]
    cols = {
        "user_id": np.searchsorted(cat.user, rows.user[ex])[rep] + 1,
        "item_id": items,
        "cate_id": cat.item_cate[items - 1],
        "hist_item_id": history_lists(item, lo[rep], hi[ex][rep]),
        "hist_cate_id": history_lists(cate, lo[rep], hi[ex][rep]),
        "click": np.tile(np.r_[1, np.zeros(k)].astype(np.int8), len(ex)),
        "conversion": np.column_stack([bought, np.zeros((len(ex), k), dtype=np.int8)]).ravel(),
    }
    split = days[ex][rep]
    return pa.Table.from_arrays([cols[c] for c in arrow.names], schema=arrow), split


def _negatives(users: np.ndarray, positives: np.ndarray, n_items: int, k: int, seed: int) -> np.ndarray:
    """(n, k) item ids in 1..n_items, uniform, never the row's positive; one generator per user."""
    out = np.empty((len(positives), k), dtype=np.int64)
    if not k or not len(positives):
        return out
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(users)], strict=True):
        rng = np.random.default_rng([seed, int(users[s]) & (2**64 - 1)])
        draw = rng.integers(1, n_items + 1, size=(e - s, k))
        while (clash := draw == positives[s:e, None]).any():
            draw[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
        out[s:e] = draw
    return out


def _bought(
    run: np.ndarray, item: np.ndarray, t: np.ndarray, behavior: np.ndarray, split: np.ndarray
) -> np.ndarray:
    """int8 per row: 1 if the row's user buys the row's item at the row's second or later, in the
    row's split."""
    pair = (run * (int(item.max()) + 1) + item) * 3 + split  # (user, item, split) as one int64
    buys = behavior == BUY
    bp, bt = pair[buys], t[buys]
    order = np.lexsort((bt, bp))
    bp, bt = bp[order], bt[order]
    last = np.r_[bp[1:] != bp[:-1], True] if len(bp) else np.empty(0, dtype=bool)
    bp, bt = bp[last], bt[last]  # the last buy time of each (user, item)
    if not len(bp):
        return np.zeros(len(pair), dtype=np.int8)
    i = np.minimum(np.searchsorted(bp, pair), len(bp) - 1)
    return ((bp[i] == pair) & (t <= bt[i])).astype(np.int8)
