"""The row checks shared by the Alimama readers, and the joined and DMR CSV layouts (see
`features.taobao` for the layouts and the choices made)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features._csv import CsvFile, Layout, bad_row, count_rows, iter_files, labels, require, sniff
from features.taobao import (
    _DAY,
    BEHAVIOR_SEQUENCES,
    CATEGORICAL,
    DMR_GROUPS,
    DMR_TAIL,
    JOINED,
    LABEL,
    STEPS,
    Source,
    TaobaoAdConfig,
)


def prices(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.Array:
    """`col` (float64), raising naming the first value that is not a finite number >= 0."""
    x = col.to_numpy(zero_copy_only=False)
    bad = ~(np.isfinite(x) & (x >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise bad_row(f, first, i, name, col[i].as_py(), "a finite price >= 0")
    return col


def id_lists(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.ListArray:
    """`^`-separated integer ids (empty: no ids) as `list<int64>`, raising naming a bad field."""
    text = pc.fill_null(col, "")
    parts = pc.split_pattern(text, "^")
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    tokens = pc.list_flatten(parts).filter(pa.array(np.repeat(~empty, lengths)))
    lengths = np.where(empty, 0, lengths)
    ok = pc.match_substring_regex(tokens, r"^-?\d{1,18}$").to_numpy(zero_copy_only=False)
    if not ok.all():
        row = int(np.searchsorted(np.cumsum(lengths), np.flatnonzero(~ok)[0], side="right"))
        raise bad_row(f, first, row, name, col[row].as_py(), "'^'-separated integer ids or an empty field")
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), tokens.cast(pa.int64()))


def csv_source(layout: str, paths: list[Path], config: TaobaoAdConfig) -> Source:
    layouts = [_csv_layout(layout, sniff(p)) for p in paths]
    read = _joined_batches if layout == "joined" else _dmr_batches
    return Source(
        layout=layout,
        inputs=[str(p) for p in paths],
        rows=sum(n for *_, n in layouts),
        sequences={"hist_adgroup_id": "adgroup_id"} if layout == "joined" else dict(BEHAVIOR_SEQUENCES),
        batches=lambda: read(layouts, config.block_bytes),
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
        cols["day"] = pa.array(b["time_stamp"].cast(pa.int64()).to_numpy() // _DAY)  # local (Beijing) times
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
                raise bad_row(
                    f,
                    first,
                    int(i),
                    f"{group} (step {j + 1})",
                    int(values[i, j]),
                    "0 at a padding step (mask 0)",
                )
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
