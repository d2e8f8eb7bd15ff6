"""Criteo Display Advertising logs -> a parquet dataset (layout in `features.dataset`, the passes
in `features.convert`, ids in `features.vocabulary`).

Input: the Kaggle / Terabyte TSV without header (40 fields `label, I1..I13, C1..C26`, or 39 without
the label for unlabeled rows), or a CSV/TSV whose line 1 names those columns (case-insensitive;
other columns, such as Kaggle's `Id`, are ignored). Delimiter and header are read from line 1 of
each file; several files are read as one sequence of rows. Memory is bounded by the vocabularies
and `map_rows`: larger than RAM is fine.

Every categorical column has its vocabulary of the train split (values met only in valid or test
rows map to the rare id 1, as unseen values would at serving time), ties by value (bytes; numbers
for bucketized I tokens). Rows without labels (39 fields) are for scoring only: they need
`vocabulary_from` (the training dataset) and become one split, `unlabeled`.

Example::

    train = convert_criteo("train.txt", "build/criteo", CriteoConfig(min_count=10))
    convert_criteo("test.txt", "build/criteo_test", vocabulary_from=train)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.convert import Block, Plan, SplitAssigner, check_integers, check_split, convert
from features.dataset import dataset_info
from features.delimited import CsvFile, Inputs, Layout, data_rows, input_files, iter_files, labels, sniff
from features.outputs import paths_of
from features.schema import CategoricalFeature, DenseFeature, Label, Schema
from features.spec import ColumnSpec, InputSpec, SplitSpec, TableSpec
from features.vocabulary import MISSING, RARE, Vocabulary, lookup_ids, reuse_vocabulary

logger = logging.getLogger(__name__)

LABEL = "label"
INTS = tuple(f"I{i}" for i in range(1, 14))
CATS = tuple(f"C{i}" for i in range(1, 27))
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
        check_integers(self, {"min_count": 1, "block_bytes": 4096, "map_rows": 1})
        if self.int_mode not in ("log1p", "bucketize"):
            raise ValueError(f"int_mode {self.int_mode!r}: expected 'log1p' or 'bucketize'")
        object.__setattr__(self, "split", check_split(self.split))
        if self.split_by not in ("random", "order"):
            raise ValueError(f"split_by {self.split_by!r}: expected 'random' or 'order'")


def convert_criteo(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: CriteoConfig = CriteoConfig(),
    vocabulary_from: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Converts Criteo rows into a dataset directory with train/valid/test splits.

    Args:
        inputs: one file or several, read in order as one sequence of rows.
        out, overwrite, progress: as in `features.convert.convert`.
        config: vocabulary, dense transform and split options.
        vocabulary_from: a dataset written by this function; its vocabularies and schema are reused
            (same `int_mode` required), e.g. to map unlabeled rows for prediction.
    """

    def plan(_: ExitStack) -> Plan:
        return _plan(inputs, config, vocabulary_from, Path(os.path.abspath(out)))

    paths, converter = [*paths_of(inputs), vocabulary_from], "features.criteo.convert_criteo"
    return convert("criteo", converter, config, out, plan, paths, overwrite, progress)


def _plan(inputs: Inputs, config: CriteoConfig, vocabulary_from: str | Path | None, out: Path) -> Plan:
    """The rows of `inputs` as blocks of Criteo rows, and how to count and map them."""
    layouts, labeled = _inspect(inputs)
    n = sum(rows for _, _, rows in layouts)
    counts = SplitAssigner.counts(n, config.split) if labeled else (n, 0, 0)
    if not labeled and vocabulary_from is None:
        raise ValueError(
            f"{layouts[0][0].path}: no label column (39 fields), so these rows are for scoring only "
            "and need the ids of the model's training data: convert them with --vocabulary-from "
            "that dataset"
        )
    if not labeled:
        logger.warning("criteo: no labels: the %d rows are one split for prediction, %s", n, out / UNLABELED)
    vocab = (
        None if vocabulary_from is None else _load_vocabulary(Path(vocabulary_from), config.int_mode, labeled)
    )
    counted, min_rows = _types(config.int_mode, labeled=False, dense=False), 1

    def blocks(pass_: int) -> Iterator[Block]:
        assign = SplitAssigner(counts, config.split_by, config.seed)
        types = _types(config.int_mode, labeled and pass_ == 2, dense=pass_ == 2)
        files = layouts if pass_ == 2 or counts[0] else []
        for f, first, batch in iter_files(files, types, _EXPECT, config.block_bytes, min_rows):
            yield Block(batch, assign.take(batch.num_rows), f, first)

    def count(block: Block) -> dict[str, pa.Array]:
        b, train = block.batch, block.split == 0
        if not train.any():  # a valid or test block: nothing to count, nothing to bucketize
            return {}
        mask = None if train.all() else pa.array(train)  # a whole train block is counted as it is
        cols = {c: _bucketize(b[c]) if c in INTS else b[c] for c in counted}
        return {c: v if mask is None else v.filter(mask) for c, v in cols.items()}

    def schema(vocab: Vocabulary) -> Schema:
        nonlocal min_rows  # rows mapped per lookup in pass 2 (after this call): amortizes its set-up
        min_rows = min(config.map_rows, sum(len(v) for v, _ in vocab.values()))
        return _schema(config.int_mode, {c: len(v) for c, (v, _) in vocab.items()}, labeled)

    return Plan(
        rows=n,
        blocks=blocks,
        schema=schema,
        map=lambda block, vocab: _map(block, vocab, config, labeled),
        inputs=[str(f.path) for f, _, _ in layouts],
        count=count,
        counted=counted,
        min_count=config.min_count,
        vocabulary=vocab,
        splits=("train", "valid", "test") if labeled else (UNLABELED,),
        info=lambda: (
            {"vocabulary_from": None if vocabulary_from is None else str(vocabulary_from)}
            | _as_spec(config, layouts[0][0], labeled and vocabulary_from is None)
        ),
    )


def _as_spec(config: CriteoConfig, f: CsvFile, labeled: bool) -> dict[str, Any]:
    """dataset.json's `spec`: the table spec that maps raw Criteo rows as this conversion does
    (`features.spec`; a checkpoint keeps it to score raw files), where one can: labeled rows,
    int_mode log1p, missing values as id 0. {} otherwise."""
    if not labeled or config.int_mode != "log1p" or not config.missing_id:
        return {}
    columns = (
        ColumnSpec("label", LABEL, task="ctr"),
        *(ColumnSpec("dense", c, transform="log1p") for c in INTS),
        *(ColumnSpec("categorical", c, min_count=config.min_count) for c in CATS),
    )
    header = f.header is not None
    read = InputSpec("csv", f.delimiter, header, () if header else (LABEL, *INTS, *CATS))
    split = SplitSpec(config.split_by, config.split, config.seed)
    return {"spec": TableSpec(columns, input=read, split=split).to_dict()}


def _inspect(inputs: Inputs) -> tuple[list[Layout], bool]:
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
        layouts.append((f, names, data_rows(f, "line 1", "Criteo rows")))
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


def _schema(int_mode: str, sizes: dict[str, int], labeled: bool) -> Schema:
    ids = (*INTS, *CATS) if int_mode == "bucketize" else CATS
    return Schema(
        dense=tuple(DenseFeature(c) for c in INTS) if int_mode == "log1p" else (),
        categorical=tuple(CategoricalFeature(c, 2 + sizes[c]) for c in ids),
        labels=(Label(LABEL, task="ctr"),) if labeled else (),
    )


def _load_vocabulary(directory: Path, int_mode: str, labeled: bool) -> Vocabulary:
    """The vocabularies of a dataset written by `convert_criteo` with `int_mode`."""
    dense = Schema.load(directory).dense
    mode = dataset_info(directory).get("config", {}).get("int_mode", "log1p" if dense else "bucketize")
    if mode != int_mode:
        raise ValueError(
            f"{directory}: vocabulary built with int_mode {mode!r}, expected {int_mode!r} as in config"
        )

    def schema(vocab: Vocabulary) -> Schema:
        return _schema(int_mode, {c: len(v) for c, (v, _) in vocab.items()}, labeled)

    return reuse_vocabulary(directory, _types(int_mode, labeled=False, dense=False), schema, "convert_criteo")


def _map(block: Block, vocab: Vocabulary, config: CriteoConfig, labeled: bool) -> dict[str, Any]:
    """Pass 2: a block's rows as ids and dense values."""
    batch, missing = block.batch, MISSING if config.missing_id else RARE
    cols = {c: lookup_ids(batch[c], vocab[c][0], missing) for c in CATS}
    for c in INTS:
        if config.int_mode == "bucketize":
            cols[c] = lookup_ids(_bucketize(batch[c]), vocab[c][0], missing)
        else:
            x = pc.fill_null(batch[c], 0).to_numpy().astype(np.float64)
            cols[c] = (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
    if labeled:
        assert block.file is not None
        cols[LABEL] = labels(batch[LABEL], block.file, block.first, LABEL)
    return cols
