"""Vocabularies of the converters: value counts over the train split, the vocabulary table saved as
`vocabulary.parquet` beside a dataset (feature, value, id, count), and vectorised id lookup.

Ids every vocabulary reserves: 0 = missing (`MISSING`), 1 = rare or unseen (`RARE`); its values
start at 2 by descending train count, ties by value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.schema import Schema

_MERGE_ROWS = 1 << 18  # pending (value, count) rows of a column before they are merged
VOCAB_FILE = "vocabulary.parquet"  # a dataset's vocabulary table, beside its splits
MISSING, RARE = 0, 1  # ids every vocabulary reserves; its values start at 2
VOCABULARY_SCHEMA = pa.schema(
    [("feature", pa.string()), ("value", pa.string()), ("id", pa.int64()), ("count", pa.int64())]
)
Vocabulary = dict[str, tuple[pa.Array, pa.Array]]  # column -> (values by id from 2 on, their counts)


class ValueCounter:
    """Counts of the values of several columns, batch by batch; memory grows with distinct values.

    Each batch's counts are kept aside and merged (summed by value) once they outnumber the merged
    ones, so every count is merged O(log) times.

    Args:
        types: column -> arrow type of its values.
    """

    def __init__(self, types: Mapping[str, pa.DataType]) -> None:
        self.types = dict(types)
        self.parts: dict[str, list[pa.Table]] = {c: [] for c in types}  # [merged, pending...]

    def add(self, column: str, values: pa.Array) -> None:
        vc = pc.value_counts(values)
        parts = self.parts[column]
        parts.append(pa.table({"value": vc.field("values"), "count": vc.field("counts")}))
        if sum(len(t) for t in parts[1:]) >= max(_MERGE_ROWS, len(parts[0])):
            self.parts[column] = [self._merged(column)]

    def _merged(self, column: str) -> pa.Table:
        if not self.parts[column]:
            return pa.table({"value": pa.array([], self.types[column]), "count": pa.array([], pa.int64())})
        summed = pa.concat_tables(self.parts[column]).group_by("value").aggregate([("count", "sum")])
        return summed.rename_columns(["value", "count"])

    def vocabulary(self, column: str, min_count: int) -> tuple[pa.Array, pa.Array]:
        """(values seen at least `min_count` times, not null, by descending count then value; counts)."""
        counts = self._merged(column)
        kept = counts.filter(
            pc.and_(pc.is_valid(counts["value"]), pc.greater_equal(counts["count"], min_count))
        )
        kept = kept.sort_by([("count", "descending"), ("value", "ascending")])
        return kept["value"].combine_chunks(), kept["count"].combine_chunks()


def vocabulary_table(vocab: Mapping[str, tuple[pa.Array, pa.Array]], first_id: int = 2) -> pa.Table:
    """Vocabularies (column -> (values by id from `first_id`, counts)) as a table (feature, value,
    id, count); ids 0 and 1 are missing and rare by default."""
    parts = [VOCABULARY_SCHEMA.empty_table()]
    for c, (values, counts) in vocab.items():
        try:
            text = values.cast(pa.string())
        except pa.ArrowInvalid as e:
            raise ValueError(f"column {c}: a value is not UTF-8 text ({e}); expected text") from None
        ids = pa.array(np.arange(first_id, first_id + len(values), dtype=np.int64))
        parts.append(
            pa.table([pa.repeat(pa.scalar(c), len(values)), text, ids, counts], schema=VOCABULARY_SCHEMA)
        )
    return pa.concat_tables(parts)


def read_vocabulary(path: Path | BinaryIO, types: Mapping[str, pa.DataType]) -> Vocabulary:
    """The vocabularies of the columns in `types` (cast to those types) from a `vocabulary_table`."""
    table = pq.read_table(path)
    vocab = {}
    for c, typ in types.items():
        part = table.filter(pc.equal(table["feature"], c)).sort_by("id")
        if not np.array_equal(part["id"].to_numpy(), np.arange(2, 2 + len(part))):
            raise ValueError(
                f"{path}: ids of feature {c} are not 2, 3, ...; expected a converter's vocabulary"
            )
        vocab[c] = (part["value"].combine_chunks().cast(typ), part["count"].combine_chunks())
    return vocab


def reuse_vocabulary(
    directory: str | Path, types: Mapping[str, pa.DataType], schema: Callable[[Vocabulary], Schema], by: str
) -> Vocabulary:
    """The vocabularies of `types`' columns of a dataset written by converter `by`, checked against
    its schema.json: features as `schema(vocabulary)` gives them (labels aside)."""
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {VOCAB_FILE} (expected a dataset written by {by})")
    vocab = read_vocabulary(path, types)
    if Schema.load(directory).without_labels() != schema(vocab).without_labels():
        raise ValueError(
            f"{directory}: schema.json does not match {VOCAB_FILE}; expected a dataset written by {by} "
            "(num_embeddings 2 + vocabulary)"
        )
    return vocab


def lookup_ids(col: pa.Array, values: pa.Array, missing: int) -> np.ndarray:
    """int64 ids of `col` in the vocabulary `values` (values[0] has id 2): RARE where absent,
    `missing` where null.

    `index_in` rebuilds a hash table of its value set on every call (about 10x the cost of a
    probe), so a vocabulary longer than `col` is probed against `col`'s distinct values instead.
    """
    if len(values) <= len(col):
        ids = pc.fill_null(pc.index_in(col, value_set=values), -1).to_numpy().astype(np.int64) + 2
    else:
        enc = pc.dictionary_encode(col)
        where = pc.index_in(values, value_set=enc.dictionary)  # vocabulary entry -> distinct value
        found = np.flatnonzero(where.is_valid().to_numpy(zero_copy_only=False))
        lut = np.full(len(enc.dictionary) + 1, RARE, dtype=np.int64)  # the last entry for nulls
        lut[pc.take(where, found).to_numpy()] = found + 2
        ids = lut[pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy()]
    if col.null_count:
        ids[col.is_null().to_numpy(zero_copy_only=False)] = missing
    return ids
