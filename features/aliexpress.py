"""AliExpress search logs (impression -> click -> conversion) -> a parquet dataset; the funnel
helpers shared with `features.aliccp` (labels, dense columns, file splits).

Input: CSV files with the header `search_id, categorical_1..16, numerical_1..63, click,
conversion` (any column order; a missing, repeated or unknown column raises). The public release
comes as separate train and test files per country: the train files give the train split and a
seeded `valid_fraction` of their rows (exact count) the valid split; the `test` files give the test
split, mapped with the train vocabulary.

Choices:
- categorical_*: ids as `features.criteo`: 0 = missing (an empty field), 1 = rare or unseen (fewer
  than `min_count` times in the train split, or never seen there: values met only in valid or
  test rows map to 1 as well), 2.. = the vocabulary by descending train count, ties by value.
  `vocabulary.parquet` (feature, value, id, count) is saved beside the data.
- numerical_*: dense float32 as given (the release has them scaled already); an empty or
  non-finite value raises.
- search_id: not a feature (an id of the query, never seen again at serving time); it is written
  as the schema's `group` column (int64), so gAUC is the impression-weighted AUC within each search
  that holds a click and a non-click: how well a model ranks one result page, what search ranking
  is judged by.
- Labels: `click` (task ctr) and `conversion` (task cvr), both 0/1; a conversion without a click
  raises, naming the file and the line (the ESMM model relies on conversion implying click).

Example::

    convert_aliexpress("NL/train.csv", "build/aliexpress_nl", test="NL/test.csv")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from features._csv import (
    MISSING,
    CsvFile,
    Layout,
    SplitAssigner,
    ValueCounter,
    bad_row,
    count_rows,
    input_files,
    iter_files,
    labels,
    lookup_ids,
    read_vocabulary,
    require,
    sniff,
    vocabulary_table,
)
from features.dataset import DatasetWriter
from features.outputs import StagedOutput, paths_of
from features.schema import CategoricalFeature, DenseFeature, Label, Schema

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CATS = tuple(f"categorical_{i}" for i in range(1, 17))
NUMS = tuple(f"numerical_{i}" for i in range(1, 64))
GROUP = "search_id"
COLUMNS = (GROUP, *CATS, *NUMS, "click", "conversion")
VOCAB_FILE = "vocabulary.parquet"
FUNNEL = (Label("click", task="ctr"), Label("conversion", task="cvr"))
Part = tuple[Layout, int | None]  # a file and its split: 0, 1, 2, or None: train or valid, drawn


@dataclass(frozen=True)
class AliExpressConfig:
    """How AliExpress rows become features; every field has a CLI flag of the same name."""

    min_count: int = 1  # values seen fewer times in the train split share the rare id 1
    valid_fraction: float = 0.1  # seeded fraction of the train files' rows -> valid (exact count)
    seed: int = 0  # seeds the valid draw
    block_bytes: int = 8 << 20  # bytes parsed per block

    def __post_init__(self) -> None:
        check_config(self.min_count, self.valid_fraction, self.seed, self.block_bytes)


def check_config(min_count: int, valid_fraction: float, seed: int, block_bytes: int) -> None:
    """The checks of the fields AliExpressConfig shares with AliCCPConfig."""
    for name, value, low in (
        ("min_count", min_count, 1),
        ("seed", seed, 0),
        ("block_bytes", block_bytes, 4096),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} {value!r}: expected an integer >= {low}")
    if (
        isinstance(valid_fraction, bool)
        or not isinstance(valid_fraction, int | float)
        or not 0 <= valid_fraction < 1
    ):
        raise ValueError(f"valid_fraction {valid_fraction!r}: expected a number in [0, 1)")


def convert_aliexpress(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: AliExpressConfig = AliExpressConfig(),
    overwrite: bool = False,
    progress: bool = True,
    vocabulary_from: str | Path | None = None,
    test: str | Path | Sequence[str | Path] = (),
) -> Path:
    """Converts AliExpress train (and test) files into a dataset directory (see the module doc).

    Args:
        inputs: the train file(s), read in order: the train and valid splits; may be empty
            (`()`) with `vocabulary_from`, to map only `test` rows for scoring.
        out: the dataset directory to create (atomically; nothing is left there on failure).
        config: vocabulary, valid fraction and seed.
        overwrite: replace an existing `out` once the new dataset is complete.
        progress: show tqdm bars with rows, rate and ETA.
        vocabulary_from: a dataset written by this function: its vocabularies and schema are
            reused instead of counting the train split.
        test: file(s) of the test split, mapped with the train vocabulary.

    Returns:
        `out`.

    Raises:
        ValueError: for bad input, naming the file, the line, the column and the value.
    """
    began, out = time.perf_counter(), Path(out)
    with StagedOutput(
        out, "dataset", overwrite, inputs=[*paths_of(inputs), *paths_of(test), vocabulary_from]
    ) as output:
        train_paths = input_files(inputs) if _paths(inputs) or vocabulary_from is None else []
        test_paths = input_files(test) if _paths(test) else []
        train: list[Part] = [(funnel_layout(p, COLUMNS, _LAYOUT), None) for p in train_paths]
        parts = [*train, *((funnel_layout(p, COLUMNS, _LAYOUT), 2) for p in test_paths)]
        if vocabulary_from is None:
            vocab = _vocabulary(train, config, progress)
        else:
            vocab = read_vocabulary(Path(vocabulary_from) / VOCAB_FILE, dict.fromkeys(CATS, pa.int64()))
        schema = _schema({c: len(v) for c, (v, _) in vocab.items()})
        if vocabulary_from is not None and Schema.load(vocabulary_from) != schema:
            raise ValueError(
                f"{vocabulary_from}: schema.json does not match {VOCAB_FILE}; expected an AliExpress dataset"
            )
        vocabulary = vocabulary_table(vocab)
        with DatasetWriter(output, schema, splits=SPLITS, identity=vocabulary) as writer:
            _write(writer, parts, vocab, config, progress)
            seconds, total = time.perf_counter() - began, sum(rows for (_, _, rows), _ in parts)
            info = {
                "converter": "features.aliexpress.convert_aliexpress",
                "config": asdict(config),
                "inputs": {"train": [str(p) for p in train_paths], "test": [str(p) for p in test_paths]},
                "vocabulary_from": None if vocabulary_from is None else str(vocabulary_from),
                "seconds": round(seconds, 3),
                "rows_per_s": round(total / seconds),
            }
            path = writer.commit(info, files={VOCAB_FILE: vocabulary})
        logger.info("aliexpress: %d rows -> %s %s in %.1f s", total, path, writer.rows, seconds)
        return path


def _write(
    writer: DatasetWriter,
    parts: list[Part],
    vocab: dict[str, tuple[pa.Array, pa.Array]],
    config: AliExpressConfig,
    progress: bool,
) -> None:
    """Pass 2: maps every row and writes it to its split."""
    arrow = writer.schema.arrow_schema()
    total = sum(rows for (_, _, rows), _ in parts)
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc="aliexpress 2/2 write", disable=not progress)
    with bar:
        for f, first, b, split in split_rows(
            parts, _types(), _EXPECT, config.valid_fraction, config.seed, config.block_bytes
        ):
            require(b, (GROUP, "click", "conversion"), f, first)
            cols: dict[str, pa.Array | np.ndarray] = {c: lookup_ids(b[c], vocab[c][0], MISSING) for c in CATS}
            cols |= dense_values(b, NUMS, f, first)
            cols["click"], cols["conversion"] = funnel_labels(b, f, first, "click", "conversion")
            cols[GROUP] = b[GROUP]
            table = pa.Table.from_arrays([cols[n] for n in arrow.names], schema=arrow)
            write_splits(writer, table, split)
            bar.update(b.num_rows)


_LAYOUT = "the AliExpress layout"
_EXPECT = {GROUP: "an integer id", "click": "0 or 1", "conversion": "0 or 1"}
_EXPECT |= dict.fromkeys(CATS, "an integer id or an empty field") | dict.fromkeys(NUMS, "a number")


def _types() -> dict[str, pa.DataType]:
    types = {GROUP: pa.int64(), "click": pa.int64(), "conversion": pa.int64()}
    return types | dict.fromkeys(CATS, pa.int64()) | dict.fromkeys(NUMS, pa.float64())


def _paths(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]


def _vocabulary(
    train: list[Part], config: AliExpressConfig, progress: bool
) -> dict[str, tuple[pa.Array, pa.Array]]:
    """Pass 1: column -> (values by id from 2 on, their counts) over the train split."""
    counter = ValueCounter(dict.fromkeys(CATS, pa.int64()))
    total = sum(rows for (_, _, rows), _ in train)
    types = dict.fromkeys(CATS, pa.int64())
    bar = tqdm(
        total=total, unit="rows", unit_scale=True, desc="aliexpress 1/2 vocabulary", disable=not progress
    )
    with bar:
        for _, _, b, split in split_rows(
            train, types, _EXPECT, config.valid_fraction, config.seed, config.block_bytes
        ):
            keep = pa.array(split == 0)
            for c in CATS:
                counter.add(c, b[c].filter(keep))
            bar.update(b.num_rows)
    return {c: counter.vocabulary(c, config.min_count) for c in CATS}


def _schema(sizes: dict[str, int]) -> Schema:
    return Schema(
        dense=tuple(DenseFeature(c) for c in NUMS),
        categorical=tuple(CategoricalFeature(c, 2 + sizes[c]) for c in CATS),
        labels=FUNNEL,
        group=GROUP,
    )


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
    rows = count_rows(f)
    if rows == 0:
        raise ValueError(f"{path}: no data rows after the header; expected {layout}")
    return f, f.header, rows


def split_rows(
    parts: Sequence[Part],
    types: dict[str, pa.DataType],
    expect: dict[str, str],
    valid_fraction: float,
    seed: int,
    block_bytes: int,
) -> Iterator[tuple[CsvFile, int, pa.RecordBatch, np.ndarray]]:
    """(file, index of the batch's first data row in it, batch, split of each row) over `parts`.

    Rows of the parts without a split are train or valid: `valid_fraction` of them (an exact count,
    uniformly drawn by `seed`) valid, the same on every pass. Other arguments as in `iter_files`.
    """
    drawn = sum(rows for (_, _, rows), s in parts if s is None)
    counts = SplitAssigner.counts(drawn, (1 - valid_fraction, valid_fraction, 0.0))
    assign = SplitAssigner(counts, "random", seed)
    for layout, s in parts:
        for f, first, b in iter_files([layout], types, expect, block_bytes):
            split = assign.take(b.num_rows) if s is None else np.full(b.num_rows, s, dtype=np.int8)
            yield f, first, b, split


def funnel_labels(
    batch: pa.RecordBatch, f: CsvFile, first: int, click: str, conversion: str
) -> tuple[pa.Array, pa.Array]:
    """(click, conversion) as int8, raising naming the first value that is not 0 or 1 and the first
    conversion without a click."""
    clk, cvr = labels(batch[click], f, first, click), labels(batch[conversion], f, first, conversion)
    bad = np.flatnonzero(cvr.to_numpy() > clk.to_numpy())
    if len(bad):
        raise bad_row(
            f, first, int(bad[0]), conversion, 1, f"0 when {click} is 0 (a conversion implies a click)"
        )
    return clk, cvr


def dense_values(
    batch: pa.RecordBatch, columns: Sequence[str], f: CsvFile, first: int
) -> dict[str, np.ndarray]:
    """Column -> float32 values, raising naming the first empty or non-finite value."""
    require(batch, columns, f, first)
    out = {}
    for c in columns:
        x = batch[c].to_numpy()
        bad = np.flatnonzero(~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max))
        if len(bad):
            raise bad_row(f, first, int(bad[0]), c, float(x[bad[0]]), "a finite number")
        out[c] = x.astype(np.float32)
    return out


def write_splits(writer: DatasetWriter, table: pa.Table, split: np.ndarray) -> None:
    """Writes each row to its split (0 train, 1 valid, 2 test); the writer counts the labels."""
    for s, name in enumerate(SPLITS):
        writer.write(name, table.filter(pa.array(split == s)))
