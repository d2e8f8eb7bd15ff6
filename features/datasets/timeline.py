"""Days in Beijing time and behaviour histories, shared by the Taobao converters
(`features.datasets.taobao`, `features.datasets.userbehavior`) and the synthetic histories
(`features.datasets.synthetic_sequences`): Taobao's days are calendar days in Beijing time (UTC+8)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from features.schema import CategoricalFeature, Label, Schema, SequenceFeature

BEIJING = 8 * 3600  # seconds east of UTC
DAY = 86_400
_EPOCH = dt.date(1970, 1, 1)


def beijing_day(t: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of unix seconds `t`, counted in Beijing time (UTC+8)."""
    return (t + BEIJING) // DAY


def check_date(name: str, text: str) -> int:
    """Days since 1970-01-01 of an ISO date `YYYY-MM-DD`; ValueError naming `name` otherwise."""
    try:
        return (dt.date.fromisoformat(text) - _EPOCH).days
    except (TypeError, ValueError):
        raise ValueError(f"{name} {text!r}: expected a date YYYY-MM-DD") from None


def check_days(name: str, dates: tuple[str, ...]) -> tuple[int, int]:
    """(first, last) day numbers of a pair of ISO dates; ValueError naming `name` otherwise."""
    if len(dates) != 2:
        raise ValueError(f"{name} {dates!r}: expected two dates (first, last day)")
    first, last = (check_date(name, d) for d in dates)
    if first > last:
        raise ValueError(f"{name} {dates!r}: expected the first day <= the last day")
    return first, last


def day_text(day: int) -> str:
    """`YYYY-MM-DD` of a day number from `beijing_day`."""
    return str(_EPOCH + dt.timedelta(days=int(day)))


def history_lists(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pa.ListArray:
    """A `list<int64>` row per range: `values[lo[r]:hi[r]]`, built without a Python loop."""
    lengths = hi - lo
    offsets = np.r_[0, np.cumsum(lengths)]
    if offsets[-1] >= 2**31:
        raise ValueError(
            f"{offsets[-1]} history ids in one block; expected fewer than 2^31 (lower block_bytes)"
        )
    positions = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values[positions], pa.int64())
    )


def history_schema(sizes: tuple[int, int, int], max_len: int, labels: tuple[Label, ...]) -> Schema:
    """user_id, item_id, cate_id (`sizes` ids each, 0 included) and the aligned histories
    hist_item_id, hist_cate_id sharing the item and category tables; the group is user_id."""
    users, items, cates = sizes
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
        labels=labels,
        group="user_id",
    )
