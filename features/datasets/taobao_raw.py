"""The raw Alimama tables -> impressions with ad and user profile fields and behaviour histories,
as a `features.datasets.taobao_csv.Source` (the module doc of `features.datasets.taobao` gives the
layout's choices).

Scalable join: raw_sample (26M rows) and behavior_log (700M rows) are streamed into `buckets`
parquet files each, by `user % buckets`; then each bucket's behaviours are sorted by (user, time)
and every impression takes the behaviours at a strictly earlier second with two binary searches,
so memory holds one bucket, ad_feature and user_profile. A behaviour at the impression's second is
not in its history (it may be the click's consequence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.convert import Block, bar
from features.datasets.taobao_csv import AD, BEHAVIOR_SEQUENCES, CATEGORICAL, LABEL, PROFILE, Source, prices
from features.datasets.timeline import beijing_day, history_lists
from features.delimited import (
    CsvFile,
    Layout,
    bad_row,
    check_rows,
    count_rows,
    iter_files,
    labels,
    require,
    sniff,
)

TABLES = ("raw_sample", "ad_feature", "user_profile", "behavior_log")
COLUMNS = {
    "raw_sample": ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),
    "ad_feature": ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
    "user_profile": ("userid", *PROFILE),
    "behavior_log": ("user", "time_stamp", "btag", "cate", "brand"),
}
BTAGS = ("pv", "cart", "fav", "buy")
_INT = "an integer id or an empty field"


def raw_tables(paths: Sequence[Path]) -> list[Path]:
    """The four tables' paths in TABLES order, from a directory holding `<table>.csv` or four paths
    named `<table>.*`."""
    if len(paths) == 1 and paths[0].is_dir():
        found = {t: paths[0] / f"{t}.csv" for t in TABLES}
    else:
        found = {p.name.split(".")[0]: p for p in paths}
    missing = [t for t in TABLES if t not in found or not found[t].is_file()]
    if missing or len(found) != len(TABLES):
        where = paths[0] if len(paths) == 1 else [str(p) for p in paths]
        raise ValueError(f"{where}: tables {missing or sorted(found)}; expected {', '.join(TABLES)} (.csv)")
    return [found[t] for t in TABLES]


def raw_source(paths: list[Path], tmp: Path, config: Any, progress: bool) -> Source:
    """Partitions and joins the raw tables into `tmp`; the Source reads the joined buckets.
    `config` is a `features.datasets.taobao.TaobaoAdConfig`."""
    layouts = {t: _layout(p, t) for t, p in zip(TABLES, paths, strict=True)}
    ads = _lookup(layouts["ad_feature"], config.block_bytes)
    profiles = _lookup(layouts["user_profile"], config.block_bytes)
    k = config.buckets
    for table, prepare in (("raw_sample", _impressions), ("behavior_log", _behaviours)):
        _partition(layouts[table], prepare, tmp / table, k, config.block_bytes, progress)
    info = {"behaviours": layouts["behavior_log"][2], "buckets": k, "missing_ad_feature": 0}
    info["missing_user_profile"] = 0
    for b in tqdm(range(k), desc="taobao-ad join", unit="buckets", disable=not progress):
        joined = _join(tmp, b, ads, profiles, config.max_len, info)
        if joined is not None:
            pq.write_table(joined, tmp / f"joined-{b:05d}.parquet")
    files = sorted(tmp.glob("joined-*.parquet"))

    def batches() -> Iterator[pa.RecordBatch]:
        for path in files:
            yield from pq.ParquetFile(path).iter_batches(batch_size=1 << 16)

    return Source(
        layout="raw",
        inputs=[str(p) for p in paths],
        rows=layouts["raw_sample"][2],
        sequences=dict(BEHAVIOR_SEQUENCES),
        batches=batches,
        log_price=True,
        info=info,
    )


def _layout(path: Path, table: str) -> Layout:
    f = sniff(path)
    missing = [c for c in COLUMNS[table] if c not in (f.header or ())]
    if missing:
        raise ValueError(
            f"{path}: line 1 (header): columns {missing} missing; expected {', '.join(COLUMNS[table])}"
        )
    assert f.header is not None
    return f, f.header, count_rows(f)


def _ints(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.Array:
    """Text ids as int64; empty or "NULL" (as ad_feature writes a missing brand) is missing."""
    col = pc.if_else(pc.equal(col, "NULL"), pa.scalar(None, pa.string()), col)
    ok = pc.fill_null(pc.match_substring_regex(col, r"^-?\d{1,18}$"), True)
    check_rows(f, first, ok, name, col, "an integer id, NULL or an empty field")
    return col.cast(pa.int64())


def _keys(user: pa.Array, t: pa.Array, f: CsvFile, first: int) -> None:
    """Users in [0, 2^31) and times in [0, 2^32): (user << 32 | time) sorts by user, then time."""
    for name, col, high in (("user", user, 2**31), ("time_stamp", t, 2**32)):
        x = col.to_numpy()
        check_rows(f, first, (x >= 0) & (x < high), name, x, f"an integer in [0, {high})")


def _lookup(layout: Layout, block_bytes: int) -> pa.Table:
    """ad_feature or user_profile, sorted by its key (the first column), checked for repeats."""
    f, names, _ = layout
    table = "ad_feature" if "price" in names else "user_profile"
    columns = COLUMNS[table]
    key = columns[0]
    types = {
        c: pa.string() if c == "brand" else pa.float64() if c == "price" else pa.int64() for c in columns
    }
    expect = dict.fromkeys(columns, _INT) | {"price": "a number"}
    parts = []
    for _, first, b in iter_files([layout], types, expect, block_bytes):
        require(b, (key, "price") if table == "ad_feature" else (key,), f, first)
        cols = {c: b[c] for c in columns}
        if table == "ad_feature":
            cols["brand"] = _ints(b["brand"], f, first, "brand")
            cols["price"] = prices(b["price"], f, first, "price")
        parts.append(pa.table(cols))
    whole = pa.concat_tables(parts) if parts else pa.schema([(c, pa.int64()) for c in columns]).empty_table()
    keys = whole[key].to_numpy()
    order = np.argsort(keys, kind="stable")
    repeat = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if repeat.size:
        i = int(order[repeat[0] + 1])
        raise bad_row(f, 0, i, key, int(keys[i]), f"each {key} once (it is the table's key)")
    return whole.take(pa.array(order))


def _impressions(b: pa.RecordBatch, f: CsvFile, first: int) -> pa.Table:
    require(b, ("user", "time_stamp", "adgroup_id", "nonclk", "clk"), f, first)
    _keys(b["user"], b["time_stamp"], f, first)
    click = labels(b["clk"], f, first, "clk")
    bad = pc.not_equal(pc.add(b["nonclk"], b["clk"]), 1).to_numpy(zero_copy_only=False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise bad_row(f, first, i, "nonclk", b["nonclk"][i].as_py(), f"1 - clk = {1 - b['clk'][i].as_py()}")
    cols = {"user": b["user"], "time_stamp": b["time_stamp"], "adgroup_id": b["adgroup_id"]}
    return pa.table(cols | {"pid": b["pid"], LABEL: click})


def _behaviours(b: pa.RecordBatch, f: CsvFile, first: int) -> pa.Table:
    require(b, ("user", "time_stamp", "btag"), f, first)
    _keys(b["user"], b["time_stamp"], f, first)
    known = pc.is_in(b["btag"], value_set=pa.array(BTAGS))
    check_rows(f, first, known, "btag", b["btag"], f"one of {', '.join(BTAGS)}")
    cols = {"user": b["user"], "time_stamp": b["time_stamp"], "btag": b["btag"], "cate": b["cate"]}
    return pa.table(cols | {"brand": _ints(b["brand"], f, first, "brand")})


def _partition(
    layout: Layout,
    prepare: Callable[[pa.RecordBatch, CsvFile, int], pa.Table],
    out: Path,
    k: int,
    block_bytes: int,
    progress: bool,
) -> None:
    """Streams a table into `out-<bucket>.parquet` files by user % k, keeping file order."""
    f, names, rows = layout
    wanted = ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk", "btag", "cate", "brand")
    types = {c: pa.string() if c in ("pid", "btag", "brand") else pa.int64() for c in wanted if c in names}
    expect = dict.fromkeys(types, _INT) | {"time_stamp": "an integer (unix seconds)"}
    writers: dict[int, pq.ParquetWriter] = {}
    blocks = (
        Block(b, np.empty(0), f, first) for _, first, b in iter_files([layout], types, expect, block_bytes)
    )
    try:
        for block in bar(f"partition {f.path.name}", rows, progress, blocks):
            table = prepare(block.batch, f, block.first)
            bucket = np.mod(table["user"].to_numpy(), k)
            order = np.argsort(bucket, kind="stable")
            edges = np.searchsorted(bucket[order], np.arange(k + 1))
            for j in map(int, np.flatnonzero(np.diff(edges))):
                if j not in writers:
                    writers[j] = pq.ParquetWriter(f"{out}-{j:05d}.parquet", table.schema)
                writers[j].write_table(table.take(pa.array(order[edges[j] : edges[j + 1]])))
    finally:
        for w in writers.values():
            w.close()


def _take(table: pa.Table, key: str, values: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The rows of `table` (sorted by `key`) matching `values`, null rows where none; found mask."""
    keys = table[key].to_numpy()
    i = np.minimum(np.searchsorted(keys, values), max(len(keys) - 1, 0))
    found = (keys[i] == values) if len(keys) else np.zeros(len(values), dtype=bool)
    return table.take(pa.array(i, mask=~found)), found


def _gather(column: pa.Array, lo: np.ndarray, hi: np.ndarray) -> pa.ListArray:
    """`column[lo[r]:hi[r]]` per row as a list array; nulls stay null (missing ids)."""
    positions = history_lists(np.arange(len(column)), lo, hi)
    return pa.ListArray.from_arrays(positions.offsets, column.take(positions.values))


def _join(
    tmp: Path, b: int, ads: pa.Table, profiles: pa.Table, max_len: int, info: dict[str, int]
) -> pa.Table | None:
    """Bucket `b`'s impressions with their ad, profile and histories (strictly earlier seconds)."""
    path = tmp / f"raw_sample-{b:05d}.parquet"
    if not path.exists():
        return None
    imp = pq.read_table(path)
    beh_path = tmp / f"behavior_log-{b:05d}.parquet"
    beh = pq.read_table(beh_path) if beh_path.exists() else None
    user, t = imp["user"].to_numpy(), imp["time_stamp"].to_numpy()
    ikey = (user << 32) | t
    if beh is None:
        types = {"user": pa.int64(), "time_stamp": pa.int64(), "btag": pa.string(), "cate": pa.int64()}
        beh = pa.schema(types | {"brand": pa.int64()}).empty_table()
    bu, bt = beh["user"].to_numpy(), beh["time_stamp"].to_numpy()
    order = np.lexsort((bt, bu))  # stable: same-second behaviours keep file order
    beh = beh.take(pa.array(order))
    bkey = ((bu << 32) | bt)[order]
    hi = np.searchsorted(bkey, ikey, side="left")  # the user's first behaviour at or after t
    lo = np.maximum(np.searchsorted(bkey, user << 32, side="left"), hi - max_len)
    ad, ad_found = _take(ads, "adgroup_id", imp["adgroup_id"].to_numpy())
    profile, profile_found = _take(profiles, "userid", user)
    info["missing_ad_feature"] += int((~ad_found).sum())
    info["missing_user_profile"] += int((~profile_found).sum())
    cols = {"userid": imp["user"], "adgroup_id": imp["adgroup_id"], "pid": imp["pid"]}
    cols |= {c: profile[c] for c in PROFILE} | {c: ad[c] for c in AD[2:]}  # cate_id .. brand
    cols["price"] = pc.fill_null(ad["price"], 0.0)  # no ad feature: price 0 (log1p 0), counted
    cols["hist_cate_id"] = _gather(beh["cate"].combine_chunks(), lo, hi)
    cols["hist_brand"] = _gather(beh["brand"].combine_chunks(), lo, hi)
    cols["hist_btag"] = _gather(beh["btag"].combine_chunks(), lo, hi)
    cols[LABEL] = imp[LABEL]
    cols["day"] = pa.array(beijing_day(t))
    return pa.table({c: cols[c] for c in (*CATEGORICAL, "price", *BEHAVIOR_SEQUENCES, LABEL, "day")})
