"""Helpers of the impression -> click -> conversion datasets (AliExpress, Ali-CCP): their labels,
dense columns, header checks, and the train/valid draw over files whose split is not given.

Labels: `click` (task ctr) and `conversion` (task cvr), both 0/1; a conversion without a click raises,
naming the file and the line (the ESMM model relies on conversion implying click). No ctcvr column
is written: the model computes ctcvr = ctr * cvr itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.convert import Block, SplitAssigner, check_integers, check_numbers
from features.delimited import (
    CsvFile,
    Layout,
    check_rows,
    data_rows,
    iter_files,
    labels,
    require,
    sniff,
)
from features.schema import Label

FUNNEL = (Label("click", task="ctr"), Label("conversion", task="cvr"))
Part = tuple[Layout, int | None]  # a file and its split: 0, 1, 2, or None: train or valid, drawn


@dataclass(frozen=True)
class FunnelConfig:
    """The options AliExpressConfig and AliCCPConfig share; every field has a CLI flag of the same name."""

    min_count: int = 1  # values seen fewer times in the train split share the rare id 1 (Ali-CCP: raw)
    valid_fraction: float = 0.1  # seeded fraction of the train rows -> valid (exact count); Ali-CCP:
    # only without a valid file
    seed: int = 0  # seeds the valid draw
    block_bytes: int = 8 << 20  # bytes parsed per block

    def __post_init__(self) -> None:
        check_integers(self, {"min_count": 1, "seed": 0, "block_bytes": 4096})
        check_numbers(self, {"valid_fraction": "[0, 1)"})


def funnel_layout(path: Path, columns: Sequence[str], layout: str) -> Layout:
    """The layout of a comma-separated file whose header names each of `columns` once, and nothing
    else; ValueError naming the file and the columns otherwise, or when it has no data rows."""
    f = sniff(path)
    header = f.header or ()
    missing = [c for c in columns if c not in header]
    repeated = sorted({c for c in header if header.count(c) > 1})
    unknown = [c for c in header if c not in columns]
    if f.header is None or f.delimiter != "," or missing or repeated or unknown:
        what = (
            "no header" if f.header is None else "a tab" if f.delimiter != "," else
            f"missing {missing}" if missing else f"repeated {repeated}" if repeated else f"unknown {unknown}"
        )  # fmt: skip
        raise ValueError(
            f"{path}: line 1 (header): {what}; expected comma-separated columns {', '.join(columns[:3])}, "
            f"..., {columns[-1]} ({layout}) once each"
        )
    return f, f.header, data_rows(f, "the header", layout)


def split_rows(
    parts: Sequence[Part],
    types: dict[str, pa.DataType],
    expect: dict[str, str],
    config: FunnelConfig,
) -> Iterator[Block]:
    """Every block of `parts` with the split of each row.

    Rows of the parts without a split are train or valid: `config.valid_fraction` of them (an exact
    count, uniformly drawn by `config.seed`) valid, the same on every pass. Other arguments as in
    `features.delimited.iter_files`.
    """
    drawn = sum(rows for (_, _, rows), s in parts if s is None)
    counts = SplitAssigner.counts(drawn, (1 - config.valid_fraction, config.valid_fraction, 0.0))
    assign = SplitAssigner(counts, "random", config.seed)
    for layout, s in parts:
        for f, first, b in iter_files([layout], types, expect, config.block_bytes):
            split = assign.take(b.num_rows) if s is None else np.full(b.num_rows, s, dtype=np.int8)
            yield Block(b, split, f, first)


def funnel_labels(
    batch: pa.RecordBatch, f: CsvFile, first: int, click: str, conversion: str
) -> tuple[pa.Array, pa.Array]:
    """(click, conversion) as int8, raising naming the first value that is not 0 or 1 and the first
    conversion without a click."""
    clk, cvr = labels(batch[click], f, first, click), labels(batch[conversion], f, first, conversion)
    x = cvr.to_numpy()
    expected = f"0 when {click} is 0 (a conversion implies a click)"
    check_rows(f, first, x <= clk.to_numpy(), conversion, x, expected)
    return clk, cvr


def dense_values(
    batch: pa.RecordBatch, columns: Sequence[str], f: CsvFile, first: int
) -> dict[str, np.ndarray]:
    """Column -> float32 values, raising naming the first empty or non-finite value."""
    require(batch, columns, f, first)
    out = {}
    for c in columns:
        x = batch[c].to_numpy()
        check_rows(f, first, np.abs(x) <= np.finfo(np.float32).max, c, x, "a finite number")
        out[c] = x.astype(np.float32)
    return out
