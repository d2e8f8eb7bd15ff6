"""The Alimama columns, a layout's rows as a `Source`, the row checks shared by the Alimama readers,
and the joined and DMR CSV layouts (see `features.datasets.taobao` for the layouts and the choices
made)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.datasets.timeline import DAY
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
    split_lists,
)

PROFILE = (
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
)
AD = ("adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand")
CATEGORICAL = ("userid", *PROFILE, *AD)
GROUP = "user"  # the raw user id (int64, no feature): gAUC groups by it
LABEL = "click"
BEHAVIOR_SEQUENCES = {"hist_cate_id": "cate_id", "hist_brand": "brand", "hist_btag": "btag"}
JOINED = ("clk", "time_stamp", "userid", *AD[:1], "pid", *AD[2:], "price", *PROFILE, "click_sequence")
STEPS = 50  # history positions of the dmr layout
DMR_GROUPS = ("cont_btag", "his_cate", "his_brand", "mask", "match_mask")
DMR_TAIL = ("uid", *PROFILE, "mid", "cate_id", "campaign_id", "customer", "brand", "price", "pid", "target")


@dataclass
class Source:
    """A layout's rows as record batches of raw values with the standard columns: CATEGORICAL,
    price (float64), the sequences (lists), click (int8) and, where the layout has times, day
    (`beijing_day`). `batches` may be called once per pass."""

    layout: str
    inputs: list[str]
    rows: int
    sequences: dict[str, str]  # sequence column -> its table
    batches: Callable[[], Iterator[pa.RecordBatch]]
    log_price: bool
    info: dict[str, Any] = field(default_factory=dict)  # counts reported in dataset.json


def prices(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.Array:
    """`col` (float64), raising naming the first value that is not a finite number >= 0."""
    x = col.to_numpy(zero_copy_only=False)
    check_rows(f, first, np.isfinite(x) & (x >= 0), name, col, "a finite price >= 0")
    return col


def id_lists(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.ListArray:
    """`^`-separated integer ids (empty: no ids) as `list<int64>`, raising naming a bad field."""
    tokens, lengths = split_lists(col, "^")
    ok = pc.match_substring_regex(tokens, r"^-?\d{1,18}$").to_numpy(zero_copy_only=False)
    if not ok.all():
        row = int(np.searchsorted(np.cumsum(lengths), np.flatnonzero(~ok)[0], side="right"))
        raise bad_row(f, first, row, name, col[row].as_py(), "'^'-separated integer ids or an empty field")
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), tokens.cast(pa.int64()))


def csv_source(layout: str, paths: list[Path], block_bytes: int) -> Source:
    """The rows of joined or dmr files."""
    layouts = [_csv_layout(layout, sniff(p)) for p in paths]
    read = _joined_batches if layout == "joined" else _dmr_batches
    return Source(
        layout=layout,
        inputs=[str(p) for p in paths],
        rows=sum(n for *_, n in layouts),
        sequences={"hist_adgroup_id": "adgroup_id"} if layout == "joined" else dict(BEHAVIOR_SEQUENCES),
        batches=lambda: read(layouts, block_bytes),
        log_price=layout == "joined",
    )


def _csv_layout(layout: str, f: CsvFile) -> Layout:
    if layout == "joined":
        assert f.header is not None
        missing = [c for c in JOINED if c not in f.header]
        repeated = sorted({c for c in f.header if f.header.count(c) > 1})
        if missing or repeated or f.delimiter != ",":
            what = f"missing {missing}" if missing else f"repeated {repeated}"
            raise ValueError(
                f"{f.path}: line 1 (header): {what}"
                f"; expected comma-separated columns {', '.join(JOINED)} once each"
            )
        names = f.header
    else:
        names = tuple(f"{g}{i}" for g in DMR_GROUPS for i in range(STEPS)) + DMR_TAIL
        expected = tuple(g for g in DMR_GROUPS for _ in range(STEPS)) + DMR_TAIL
        if f.header not in (None, expected) or f.delimiter != ",":
            raise ValueError(
                f"{f.path}: line 1 (header) does not match the dmr layout; expected comma-separated "
                f"{', '.join(f'{g} x{STEPS}' for g in DMR_GROUPS)}, {', '.join(DMR_TAIL)} (or no header)"
            )
    return f, names, count_rows(f)


def _joined_batches(layouts: list[Layout], block_bytes: int) -> Iterator[pa.RecordBatch]:
    types = {c: pa.int64() for c in CATEGORICAL} | {"pid": pa.string(), "price": pa.float64()}
    types |= {"clk": pa.int64(), "time_stamp": pa.timestamp("s"), "click_sequence": pa.string()}
    expect = dict.fromkeys(CATEGORICAL, "an integer id or an empty field") | {
        "pid": "text",
        "price": "a number",
        "clk": "0 or 1",
        "time_stamp": "a time YYYY-MM-DD HH:MM:SS",
    }
    for f, first, b in iter_files(layouts, types, expect, block_bytes):
        require(b, ("clk", "time_stamp", "userid", "adgroup_id", "price"), f, first)
        cols = {c: b[c] for c in CATEGORICAL}
        cols["price"] = prices(b["price"], f, first, "price")
        cols["hist_adgroup_id"] = id_lists(b["click_sequence"], f, first, "click_sequence")
        cols[LABEL] = labels(b["clk"], f, first, "clk")
        cols["day"] = pa.array(b["time_stamp"].cast(pa.int64()).to_numpy() // DAY)  # local (Beijing) times
        yield pa.RecordBatch.from_pydict(cols)


def _dmr_batches(layouts: list[Layout], block_bytes: int) -> Iterator[pa.RecordBatch]:
    names = [f"{g}{i}" for g in DMR_GROUPS[:4] for i in range(STEPS)] + list(DMR_TAIL)
    types = {c: pa.float64() if c == "price" else pa.int64() for c in names}
    expect = dict.fromkeys(names, "an integer") | {"price": "a number"}
    for f, first, b in iter_files(layouts, types, expect, block_bytes):
        require(b, names, f, first)
        mask = np.stack([b[f"mask{i}"].to_numpy() for i in range(STEPS)], axis=1)  # (N, 50)
        _check_mask(mask, f, first)
        cols = {c: b[c] for c in CATEGORICAL if c in DMR_TAIL}
        cols |= {"userid": b["uid"], "adgroup_id": b["mid"], "pid": b["pid"].cast(pa.string())}
        cols["price"] = b["price"]  # already scaled by the DMR preprocessing
        offsets = pa.array(np.r_[0, np.cumsum(mask.sum(axis=1))].astype(np.int32))
        for group, seq in (
            ("his_cate", "hist_cate_id"),
            ("his_brand", "hist_brand"),
            ("cont_btag", "hist_btag"),
        ):
            values = np.stack([b[f"{group}{i}"].to_numpy() for i in range(STEPS)], axis=1)  # (N, 50)
            pad = (mask == 0) & (values != 0)
            if pad.any():
                i, j = np.argwhere(pad)[0]
                where = f"{group} (step {j + 1})"
                raise bad_row(f, first, int(i), where, int(values[i, j]), "0 at a padding step (mask 0)")
            cols[seq] = pa.ListArray.from_arrays(offsets, pa.array(values[mask == 1]))
        cols[LABEL] = labels(b["target"], f, first, "target")
        yield pa.RecordBatch.from_pydict(
            {c: cols[c] for c in (*CATEGORICAL, "price", *BEHAVIOR_SEQUENCES, LABEL)}
        )


def _check_mask(mask: np.ndarray, f: CsvFile, first: int) -> None:
    """Every mask is 0 or 1 and no 0 follows a 1 in a row (left padding)."""
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise bad_row(f, first, int(i), f"mask (step {j + 1})", int(mask[i, j]), "0 (padding) or 1")
    after = np.diff(mask, axis=1) < 0  # a 0 right after a 1
    if after.any():
        i, j = np.argwhere(after)[0]
        raise bad_row(f, first, int(i), f"mask (step {j + 2})", 0, "1 after a 1 (histories are left-padded)")
