"""Criteo Display Advertising logs -> a parquet dataset (layout in `features.dataset`).

Input: the Kaggle / Terabyte TSV without header (40 fields `label, I1..I13, C1..C26`, or 39 without
the label for unlabeled rows), or a CSV/TSV whose line 1 names those columns (case-insensitive;
other columns, such as Kaggle's `Id`, are ignored). Delimiter and header are read from line 1 of
each file; several files are read as one sequence of rows.

A byte scan counts the rows (the exact split sizes need them), then two streaming passes, memory
bounded by the vocabularies and `map_rows`: pass 1 counts the values of every categorical column
over the train split; pass 2 maps values to ids and writes the splits. Larger than RAM is fine.

Ids of every categorical column: 0 = missing (with `missing_id`), 1 = rare or unseen (a value seen
fewer than `min_count` times in the train split, or never seen there: values met only in the valid
or test rows map to 1 too), 2.. = the vocabulary by descending train count, ties by value (bytes;
numbers for bucketized I tokens). The table has `2 + len(vocabulary)` rows. Vocabularies are saved
as `vocabulary.parquet` (feature, value, id, count) beside the data, so later rows can be mapped to
the same ids.

Rows without labels (39 fields) are for scoring only: they need `vocabulary_from` (the training
dataset) and become one split, `unlabeled`, never train/valid/test.

Example::

    train = convert_criteo("train.txt", "build/criteo", CriteoConfig(min_count=10))
    convert_criteo("test.txt", "build/criteo_test", CriteoConfig(split=(0.0, 0.0, 1.0)),
                   vocabulary_from=train)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from features._csv import (
    MISSING,
    RARE,
    CsvFile,
    Layout,
    SplitAssigner,
    ValueCounter,
    check_split,
    count_rows,
    input_files,
    iter_files,
    labels,
    lookup_ids,
    read_vocabulary,
    sniff,
    vocabulary_table,
)
from features.dataset import DatasetWriter, dataset_info
from features.outputs import StagedOutput, paths_of
from features.schema import CategoricalFeature, DenseFeature, Label, Schema

logger = logging.getLogger(__name__)

LABEL = "label"
INTS = tuple(f"I{i}" for i in range(1, 14))
CATS = tuple(f"C{i}" for i in range(1, 27))
VOCAB_FILE = "vocabulary.parquet"
SPLITS = ("train", "valid", "test")
UNLABELED = "unlabeled"  # the one split of rows without labels: for prediction only
_EXPECT = {LABEL: "0 or 1", **dict.fromkeys(INTS, "an integer or an empty field")}


@dataclass(frozen=True)
class CriteoConfig:
    """How Criteo rows become features; every field has a CLI flag of the same name."""

    min_count: int = 1  # values seen fewer times in the train split share the rare id 1
    missing_id: bool = True  # missing values get id 0; False: they share the rare id 1
    int_mode: str = "log1p"  # "log1p": I1..I13 dense sign(x)*log1p(|x|), missing 0.0 (I2 has negatives);
    # "bucketize": I1..I13 categorical, token floor(ln(x)^2) for x > 2 else x (AutoInt's Criteo_x4)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/valid/test fractions, summing to 1
    split_by: str = "random"  # "random": seeded, exact counts; "order": first rows train, then valid, test
    seed: int = 0  # seeds the random split
    block_bytes: int = 8 << 20  # bytes parsed per block (pyarrow block_size)
    map_rows: int = 1 << 18  # most rows mapped per vocabulary lookup in pass 2; ~1.5 kB of memory a row

    def __post_init__(self) -> None:
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise ValueError(f"min_count {self.min_count!r}: expected an integer >= 1")
        if self.int_mode not in ("log1p", "bucketize"):
            raise ValueError(f"int_mode {self.int_mode!r}: expected 'log1p' or 'bucketize'")
        object.__setattr__(self, "split", check_split(self.split))
        if self.split_by not in ("random", "order"):
            raise ValueError(f"split_by {self.split_by!r}: expected 'random' or 'order'")
        if self.block_bytes < 1 << 12:
            raise ValueError(f"block_bytes {self.block_bytes}: expected at least 4096")
        if self.map_rows < 1:
            raise ValueError(f"map_rows {self.map_rows}: expected at least 1")


def convert_criteo(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: CriteoConfig = CriteoConfig(),
    vocabulary_from: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Converts Criteo rows into a dataset directory with train/valid/test splits.

    Vocabularies count the train split only, so values that occur only in valid or test rows map
    to the rare id 1, as unseen values would at serving time.

    Args:
        inputs: one file or several, read in order as one sequence of rows.
        out: the dataset directory to create (atomically; nothing is left there on failure).
        config: vocabulary, dense transform and split options.
        vocabulary_from: a dataset written by this function; its vocabularies and schema are reused
            (same `int_mode` required), e.g. to map unlabeled rows for prediction.
        overwrite: replace an existing `out` once the new dataset is complete.
        progress: show tqdm bars with rows and rate.

    Returns:
        `out`.

    Raises:
        ValueError: for bad input, naming the file, the line and the column.
    """
    start, out = time.perf_counter(), Path(out)
    with StagedOutput(out, "dataset", overwrite, inputs=[*paths_of(inputs), vocabulary_from]) as output:
        layouts, labeled = _inspect(inputs)
        n = sum(rows for _, _, rows in layouts)
        counts = SplitAssigner.counts(n, config.split) if labeled else (n, 0, 0)
        if not labeled and vocabulary_from is None:
            raise ValueError(
                f"{layouts[0][0].path}: no label column (39 fields), so these rows are for scoring only "
                "and need the ids of the model's training data: convert them with --vocabulary-from "
                "that dataset"
            )
        if vocabulary_from is None:
            vocab = _build_vocabulary(layouts, counts, config, progress)
            schema = _schema(config.int_mode, {c: len(v) for c, (v, _) in vocab.items()}, labeled)
        else:
            schema, vocab = _load_vocabulary(Path(vocabulary_from), config.int_mode, labeled)
        vocabulary = vocabulary_table(vocab)
        splits = SPLITS if labeled else (UNLABELED,)
        with DatasetWriter(output, schema, splits=splits, identity=vocabulary) as writer:
            _write(writer, layouts, counts, config, vocab, progress)
            seconds = time.perf_counter() - start
            info = {
                "converter": "features.criteo.convert_criteo",
                "config": asdict(config),
                "inputs": [str(f.path) for f, _, _ in layouts],
                "vocabulary_from": None if vocabulary_from is None else str(vocabulary_from),
                "seconds": round(seconds, 3),
                "rows_per_s": round(n / seconds),
            }
            path = writer.commit(info, files={VOCAB_FILE: vocabulary})
        if not labeled:
            logger.warning(
                "criteo: no labels: the %d rows are one split for prediction, %s", n, path / UNLABELED
            )
        logger.info("criteo: %d rows -> %s in %.1f s (%.0f rows/s)", n, path, seconds, n / seconds)
        return path


def _inspect(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Layout], bool]:
    """Layouts of the inputs, and whether they hold labels; all must agree on that."""
    layouts: list[Layout] = []
    for path in input_files(inputs):
        f = sniff(path)
        names = _field_names(f)
        if layouts and (LABEL in names) != (LABEL in layouts[0][1]):
            first = layouts[0][0]
            raise ValueError(
                f"{path}: line 1 has {f.num_fields} fields ({'with' if LABEL in names else 'no'} label), "
                f"but {first.path} has {first.num_fields}; all inputs must have the same columns"
            )
        rows = count_rows(f)
        if rows == 0:
            raise ValueError(f"{path}: no data rows after line 1; expected Criteo rows")
        layouts.append((f, names, rows))
    return layouts, LABEL in layouts[0][1]


def _field_names(f: CsvFile) -> tuple[str, ...]:
    """A name per field of `f` in file order; header columns that are not Criteo's get `_skip*`."""
    if f.header is None:
        if f.num_fields not in (39, 40):
            raise ValueError(
                f"{f.path}: line 1: {f.num_fields} fields, expected 40 (label, I1..I13, C1..C26), "
                "39 (no label) or a header line naming them"
            )
        return (LABEL, *INTS, *CATS)[40 - f.num_fields :]
    canonical = {c.lower(): c for c in (LABEL, *INTS, *CATS)}
    names = tuple(canonical.get(h.lower(), f"_skip{i}") for i, h in enumerate(f.header))
    dupes = sorted({c for c in names if names.count(c) > 1})
    missing = [c for c in (*INTS, *CATS) if c not in names]
    if dupes or missing:
        raise ValueError(
            f"{f.path}: line 1 (header), columns {dupes or missing}: "
            f"{'repeated' if dupes else 'missing'}; expected label (optional), I1..I13, C1..C26 once each"
        )
    return names


def _types(int_mode: str, labeled: bool, dense: bool) -> dict[str, pa.DataType]:
    """Columns to convert; binary (not string) C values skip UTF-8 checks of every row."""
    types = {LABEL: pa.int64()} if labeled else {}
    if dense or int_mode == "bucketize":
        types.update(dict.fromkeys(INTS, pa.int64()))
    return {**types, **dict.fromkeys(CATS, pa.binary())}


def _bucketize(col: pa.Array) -> pa.Array:
    """floor(ln(x)^2) for x > 2, else x; missing stays null (AutoInt's Criteo_x4 protocol)."""
    x = pc.fill_null(col, 0).to_numpy()
    big = x > 2
    tokens = x.copy()
    tokens[big] = np.floor(np.log(x[big]) ** 2)
    return pa.array(tokens, mask=col.is_null().to_numpy(zero_copy_only=False))


def _build_vocabulary(
    layouts: list[Layout], counts: tuple[int, int, int], config: CriteoConfig, progress: bool
) -> dict[str, tuple[pa.Array, pa.Array]]:
    """Pass 1: column -> (values by id from 2 on, their train counts)."""
    types = _types(config.int_mode, labeled=False, dense=False)
    counter = ValueCounter(types)
    assign = SplitAssigner(counts, config.split_by, config.seed)
    with tqdm(
        total=sum(counts), unit="rows", unit_scale=True, desc="criteo 1/2 vocabulary", disable=not progress
    ) as bar:
        for _, _, batch in iter_files(layouts if counts[0] else [], types, _EXPECT, config.block_bytes):
            train = assign.take(batch.num_rows) == 0
            mask = None if train.all() else pa.array(train)
            for c in counter.types if train.any() else ():
                col = _bucketize(batch[c]) if c in INTS else batch[c]
                counter.add(c, col if mask is None else col.filter(mask))
            bar.update(batch.num_rows)
    return {c: counter.vocabulary(c, config.min_count) for c in counter.types}


def _schema(int_mode: str, sizes: dict[str, int], labeled: bool) -> Schema:
    ids = (*INTS, *CATS) if int_mode == "bucketize" else CATS
    return Schema(
        dense=tuple(DenseFeature(c) for c in INTS) if int_mode == "log1p" else (),
        categorical=tuple(CategoricalFeature(c, 2 + sizes[c]) for c in ids),
        labels=(Label(LABEL, task="ctr"),) if labeled else (),
    )


def _load_vocabulary(
    directory: Path, int_mode: str, labeled: bool
) -> tuple[Schema, dict[str, tuple[pa.Array, pa.Array]]]:
    """The schema and vocabularies of a dataset written by `convert_criteo`."""
    schema, path = Schema.load(directory), directory / VOCAB_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {VOCAB_FILE} (expected a dataset written by convert_criteo)")
    mode = dataset_info(directory).get("config", {}).get("int_mode", "log1p" if schema.dense else "bucketize")
    if mode != int_mode:
        raise ValueError(
            f"{directory}: vocabulary built with int_mode {mode!r}, expected {int_mode!r} as in config"
        )
    vocab = read_vocabulary(path, _types(int_mode, labeled=False, dense=False))
    expected = _schema(int_mode, {c: len(v) for c, (v, _) in vocab.items()}, labeled)
    if schema.without_labels() != expected.without_labels():
        raise ValueError(
            f"{directory}: schema.json does not match {VOCAB_FILE}; expected num_embeddings 2 + vocabulary"
        )
    return expected, vocab


def _write(
    writer: DatasetWriter,
    layouts: list[Layout],
    counts: tuple[int, int, int],
    config: CriteoConfig,
    vocab: dict[str, tuple[pa.Array, pa.Array]],
    progress: bool,
) -> None:
    """Pass 2: maps every row to ids and dense values and writes it to its split."""
    arrow = writer.schema.arrow_schema()
    labeled = bool(writer.schema.labels)
    assign = SplitAssigner(counts, config.split_by, config.seed)
    types = _types(config.int_mode, labeled, dense=True)
    missing = MISSING if config.missing_id else RARE
    min_rows = min(config.map_rows, sum(len(v) for v, _ in vocab.values()))  # amortizes lookup set-up
    with tqdm(
        total=sum(counts), unit="rows", unit_scale=True, desc="criteo 2/2 write", disable=not progress
    ) as bar:
        for f, first_row, batch in iter_files(layouts, types, _EXPECT, config.block_bytes, min_rows):
            cols = {c: lookup_ids(batch[c], vocab[c][0], missing) for c in CATS}
            for c in INTS:
                if config.int_mode == "bucketize":
                    cols[c] = lookup_ids(_bucketize(batch[c]), vocab[c][0], missing)
                else:
                    x = pc.fill_null(batch[c], 0).to_numpy().astype(np.float64)
                    cols[c] = (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
            if labeled:
                cols[LABEL] = labels(batch[LABEL], f, first_row, LABEL)
            table = pa.Table.from_arrays([cols[name] for name in arrow.names], schema=arrow)
            split = assign.take(batch.num_rows)
            for s, name in enumerate(writer.rows):  # train, valid, test; or only unlabeled
                rows = np.flatnonzero(split == s)
                writer.write(name, table if len(rows) == table.num_rows else table.take(rows))
            bar.update(batch.num_rows)
