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

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from features._csv import (
    CsvFile,
    Layout,
    bad_row,
    count_rows,
    input_files,
    iter_files,
    line_of_row,
    sniff,
    vocabulary_table,
)
from features.dataset import DatasetWriter
from features.outputs import StagedOutput
from features.schema import CategoricalFeature, Label, Schema, SequenceFeature
from features.taobao import SPLITS, beijing_day, check_date, day_text, history_lists

logger = logging.getLogger(__name__)

NAMES = ("user_id", "item_id", "category_id", "behavior", "timestamp")
BEHAVIORS = ("pv", "cart", "fav", "buy")
BUY = BEHAVIORS.index("buy")
_TYPES = {"user_id": pa.int64(), "item_id": pa.int64(), "category_id": pa.int64(), "behavior": pa.string()}
_TYPES["timestamp"] = pa.int64()
_EXPECT = dict.fromkeys(("user_id", "item_id", "category_id"), "an integer id") | {
    "timestamp": "an integer (unix seconds)"
}


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
        for name in ("max_len", "negatives", "valid_days", "test_days"):
            value, low = getattr(self, name), 1 if name in ("max_len", "test_days") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} {value!r}: expected an integer >= {low}")
        if check_date("start", self.start) > check_date("end", self.end):
            raise ValueError(f"start {self.start} is after end {self.end}; expected start <= end")
        if self.block_bytes < 1 << 12:
            raise ValueError(f"block_bytes {self.block_bytes}: expected at least 4096")


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
    """Pass 1's result: sorted raw ids (id = position + 1), behaviour counts, item categories."""

    user: np.ndarray
    user_count: np.ndarray
    item: np.ndarray
    item_count: np.ndarray
    item_cate: np.ndarray  # (items,) the cate id of each item id - 1
    cate: np.ndarray
    cate_count: np.ndarray
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
    """Converts UserBehavior rows into a dataset of examples with histories (see the module doc).

    Columns: user_id, item_id, cate_id (categorical), hist_item_id (table item_id), hist_cate_id
    (table cate_id), click (task ctr), conversion (task cvr); the schema's group is user_id.

    Args:
        inputs: one file or several, read in order as one sequence of rows.
        out: the dataset directory to create (atomically; nothing is left there on failure).
        config: history length, negatives, seed, days and split.
        overwrite: replace an existing `out` once the new dataset is complete.
        progress: show tqdm bars with rows, rate and ETA.

    Returns:
        `out`.

    Raises:
        ValueError: for bad input, naming the file, the line, the column and the value.
    """
    began, out = time.perf_counter(), Path(out)
    with StagedOutput(out, "dataset", overwrite, inputs=inputs) as output:
        layouts = _inspect(inputs)
        total = sum(n for *_, n in layouts)
        cat = _catalogue(layouts, total, config, progress)
        if config.negatives and len(cat.item) < 2:
            raise ValueError(f"{len(cat.item)} item(s) in the kept rows; sampling negatives needs at least 2")
        last = int(cat.days[-1])
        bounds = (last - config.test_days - config.valid_days, last - config.test_days)
        schema = _schema(cat, config.max_len)
        bar = tqdm(total=total, unit="rows", unit_scale=True, desc="userbehavior 2/2", disable=not progress)
        vocabulary = _vocabulary(cat)
        with DatasetWriter(output, schema, splits=SPLITS, identity=vocabulary) as writer, bar:
            positives = 0
            for rows in _by_user(layouts, config, bar):
                table, split = _examples(rows, cat, bounds, config, writer.schema.arrow_schema())
                positives += table.num_rows // (1 + config.negatives)
                for s, name in enumerate(SPLITS):
                    writer.write(name, table.filter(pa.array(split == s)))
            seconds = time.perf_counter() - began
            splits = np.digitize(cat.days, bounds, right=True)
            info = {
                "converter": "features.userbehavior.convert_userbehavior",
                "config": asdict(config),
                "inputs": [str(f.path) for f, _, _ in layouts],
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
                "seconds": round(seconds, 3),
            }
            files = {"vocabulary.parquet": vocabulary, "catalogue.parquet": _catalogue_table(cat)}
            path = writer.commit(info, files=files)
        logger.info(
            "userbehavior: %d behaviours, %d outside %s..%s excluded -> %s %s in %.1f s",
            *(total, cat.excluded, config.start, config.end, path, writer.rows, seconds),
        )
        return path


def _inspect(inputs: str | Path | Sequence[str | Path]) -> list[Layout]:
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


def _blocks(layouts: list[Layout], block_bytes: int) -> Iterator[tuple[CsvFile, int, _Rows]]:
    """(file, index of the block's first data row in it, its rows checked) over every block."""
    offset = 0
    for f, first, batch in iter_files(layouts, _TYPES, _EXPECT, block_bytes):
        for name in NAMES:
            if batch[name].null_count:
                i = int(np.flatnonzero(batch[name].is_null().to_numpy(zero_copy_only=False))[0])
                raise bad_row(f, first, i, name, None, _EXPECT.get(name, "one of " + ", ".join(BEHAVIORS)))
        code = pc.index_in(batch["behavior"], value_set=pa.array(BEHAVIORS))
        if code.null_count:
            i = int(np.flatnonzero(code.is_null().to_numpy(zero_copy_only=False))[0])
            raise bad_row(
                f, first, i, "behavior", batch["behavior"][i].as_py(), "one of " + ", ".join(BEHAVIORS)
            )
        n = batch.num_rows
        user, item, cate, t = (
            batch[c].to_numpy() for c in ("user_id", "item_id", "category_id", "timestamp")
        )
        yield (
            f,
            first,
            _Rows(user, item, cate, code.to_numpy().astype(np.int8), t, np.arange(offset, offset + n)),
        )
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
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc="userbehavior 1/2", disable=not progress)
    with bar:
        for f, first, rows in _blocks(layouts, config.block_bytes):
            current, seen = _check_grouped(rows.user, f, first, current, seen)
            day = beijing_day(rows.t)
            keep = (day >= lo) & (day <= hi)
            excluded += int((~keep).sum())
            kept = rows.take(keep)
            users.add(kept.user, kept.row)
            items.add(kept.item, kept.row, kept.cate)
            cates.add(kept.cate, kept.row)
            days = np.union1d(days, day[keep])
            bar.update(len(rows.user))
    if not len(days):
        raise ValueError(
            f"{layouts[0][0].path}: no rows between {config.start} and {config.end} (Beijing time)"
        )
    user, user_count, _ = users.result()
    item, item_count, item_cate_raw = items.result()
    cate, cate_count, _ = cates.result()
    item_cate = np.searchsorted(cate, item_cate_raw) + 1
    multi = len(items.conflicts)
    return _Catalogue(user, user_count, item, item_count, item_cate, cate, cate_count, days, excluded, multi)


def _by_user(layouts: list[Layout], config: UserBehaviorConfig, bar: tqdm) -> Iterator[_Rows]:
    """Pass 2: the kept rows in blocks of whole users (a user's rows are never split)."""
    lo, hi = check_date("start", config.start), check_date("end", config.end)
    pending: list[_Rows] = []
    for _, _, rows in _blocks(layouts, config.block_bytes):
        bar.update(len(rows.user))
        day = beijing_day(rows.t)
        rows = _Rows.concat([*pending, rows.take((day >= lo) & (day <= hi))])
        if not len(rows.user):
            continue
        other = np.flatnonzero(rows.user != rows.user[-1])
        cut = int(other[-1]) + 1 if len(other) else 0  # the first row of the block's last user
        if cut:
            yield rows.take(slice(0, cut))
        pending = [rows.take(slice(cut, None))]
    if pending and len(pending[0].user):
        yield pending[0]


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


def _schema(cat: _Catalogue, max_len: int) -> Schema:
    users, items, cates = len(cat.user) + 1, len(cat.item) + 1, len(cat.cate) + 1  # id 0 reserved
    return Schema(
        categorical=(
            CategoricalFeature("user_id", users),
            CategoricalFeature("item_id", items),
            CategoricalFeature("cate_id", cates),
        ),
        sequences=(
            SequenceFeature("hist_item_id", items, max_len, table="item_id"),
            SequenceFeature("hist_cate_id", cates, max_len, table="cate_id"),
        ),
        labels=(Label("click", task="ctr"), Label("conversion", task="cvr")),
        group="user_id",
    )


def _vocabulary(cat: _Catalogue) -> pa.Table:
    """(feature, raw value, id, behaviours) of users, items and categories; ids from 1."""
    vocab = {
        "user_id": (pa.array(cat.user), pa.array(cat.user_count)),
        "item_id": (pa.array(cat.item), pa.array(cat.item_count)),
        "cate_id": (pa.array(cat.cate), pa.array(cat.cate_count)),
    }
    return vocabulary_table(vocab, first_id=1)


def _catalogue_table(cat: _Catalogue) -> pa.Table:
    """item_id -> cate_id (ids), the items negatives are drawn from."""
    return pa.table({"item_id": np.arange(1, len(cat.item) + 1, dtype=np.int64), "cate_id": cat.item_cate})
