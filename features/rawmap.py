"""Raw rows -> features, as a spec says (`features.spec`): the one mapping of `rankers convert table`
(pass 2) and of predicting from raw files, so both map a value the same way.

- labels: 0 or 1 (text, integers, booleans); with tasks ctr and cvr, a conversion implies a click.
- dense: finite numbers or empty; transformed, then empty fields are the column's `fill`.
- categorical, multi, sequence: values compared as text (`features.hashing.as_text`): the vocabulary
  of the column's table (unseen or rare values: id 1) or its hash bucket; empty fields and empty
  tokens: id 0. Sequences keep their `max_len` most recent (last) values.
- group: a categorical column's ids, or else every value's stable hash as a non-negative int64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.delimited import split_lists
from features.hashing import DistinctHashes, as_text, bucket_ids, stable_hash
from features.rawfile import RawFile
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from features.spec import ColumnSpec, TableSpec
from features.vocabulary import MISSING, lookup_ids

Tables = Mapping[str, pa.Array]  # table owner -> its vocabulary values (binary), ids from 2


def text_types(spec: TableSpec) -> dict[str, pa.DataType]:
    """The arrow type each read column is parsed as from text."""
    types: dict[str, pa.DataType] = {}
    for c in spec.columns:
        types[c.column] = {"label": pa.int64(), "dense": pa.float64()}.get(c.role, pa.binary())
    types |= dict.fromkeys(spec.keys, pa.string())
    if spec.group and spec.group not in types:
        types[spec.group] = pa.binary()
    if spec.time and spec.split.by == "time":  # read only to split by
        types[spec.time] = pa.string()
    return types


def expectations(spec: TableSpec) -> dict[str, str]:
    """Column -> what a value should be, for parse errors."""
    out = {c.column: "0 or 1" for c in spec.role("label")}
    out |= {c.column: "a number or an empty field" for c in spec.role("dense")}
    return out


def check_parquet_types(spec: TableSpec, f: RawFile) -> None:
    """ValueError naming the file and the column whose parquet type the spec cannot read."""
    for c in spec.columns:
        t = f.types.get(c.column)
        if t is None:
            continue
        listed = c.role in ("multi", "sequence") and not c.delimiter
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or _is_text(t)
        ok = {
            "label": numeric or pa.types.is_boolean(t),
            "dense": numeric,
        }.get(c.role, (pa.types.is_list(t) or pa.types.is_large_list(t)) if listed else _is_text_like(t))
        if listed and ok:
            ok = _is_text_like(t.value_type)
        if not ok:
            expected = {
                "label": "integers, booleans or their text (0 or 1)",
                "dense": "numbers or their text",
            }.get(c.role, "a list of text or integers" if listed else "text or integers")
            raise ValueError(
                f"{f.path}: column {c.column} has type {t}; expected {expected} for a {c.role} column"
            )


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)


def numbers(col: pa.Array, to: pa.DataType, f: RawFile, first: int, column: str, expected: str) -> pa.Array:
    """`col` (numbers, booleans or their text, as a parquet file or table may hold them) cast to
    `to`; ValueError naming the first value that is no such number."""
    if col.type == to:
        return col
    if pa.types.is_boolean(col.type) or pa.types.is_dictionary(col.type):
        col = col.cast(pa.int64()) if pa.types.is_boolean(col.type) else col.dictionary_decode()
    try:
        return col.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, value in enumerate(col.to_pylist()):  # the error path only: find the first bad value
            try:
                pa.array([value], col.type).cast(to)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise f.bad(first + i, column, value, expected) from None
        raise


def _is_text_like(t: pa.DataType) -> bool:
    return any(
        check(t)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_integer,
            pa.types.is_boolean,
            pa.types.is_dictionary,
        )
    )


def build_schema(spec: TableSpec, sizes: Mapping[str, int], labels: bool = True) -> Schema:
    """The dataset's schema; `sizes`: table owner -> num_embeddings."""
    single = [c for c in spec.role("categorical")] + [
        c for c in spec.role("dense") if c.transform == "bucketize"
    ]
    cats = [CategoricalFeature(c.column, _size(c, sizes), table=c.owner) for c in single]
    cats += [
        CategoricalFeature(c.column, sizes[c.owner], table=c.owner, multi=True) for c in spec.role("multi")
    ]
    return Schema(
        dense=tuple(DenseFeature(c.column) for c in spec.role("dense") if c.transform != "bucketize"),
        categorical=tuple(cats),
        sequences=tuple(
            SequenceFeature(c.column, sizes[c.owner], c.max_len, c.owner) for c in spec.role("sequence")
        ),
        labels=tuple(Label(c.column, c.task) for c in spec.role("label")) if labels else (),
        group=spec.group,
    )


def _size(c: ColumnSpec, sizes: Mapping[str, int]) -> int:
    return 3 + len(c.boundaries) if c.role == "dense" else sizes[c.owner]


def table_sizes(spec: TableSpec, vocab: Tables) -> dict[str, int]:
    """Table owner -> num_embeddings: 2 + vocabulary or 2 + buckets."""
    return {
        name: 2 + (c.hash_buckets or len(vocab[name]))
        for name, c in spec.owners().items()
        if c.role != "dense"
    }


def tokens(col: pa.Array | pa.ChunkedArray, c: ColumnSpec) -> tuple[pa.Array, np.ndarray]:
    """(every value of a multi or sequence column's rows as text, in row order, values per row);
    empty tokens and null list items are null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if c.delimiter:
        flat, lengths = split_lists(as_text(col), c.delimiter)
    else:
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = as_text(pc.list_flatten(col))
    flat = pc.if_else(pc.equal(flat, b""), pa.scalar(None, flat.type), flat) if len(flat) else flat
    return flat, lengths


def keep_last(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the last `max_len` tokens of each row into the flat tokens, the new lengths)."""
    if max_len <= 0 or lengths.max(initial=0) <= max_len:
        return np.arange(int(lengths.sum())), lengths
    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, max_len)
    starts = ends - kept
    idx = np.repeat(starts - np.cumsum(kept) + kept, kept) + np.arange(int(kept.sum()))
    return idx, kept


class RawMapper:
    """Maps blocks of raw columns to the dataset's columns.

    Args:
        spec: a fitted spec (no setting left to fit).
        vocab: table owner -> vocabulary values (binary), for the tables without `hash_buckets`.
        seen: hashed table owner -> the distinct hashes of its values mapped so far (collisions).
    """

    def __init__(self, spec: TableSpec, vocab: Tables, seen: dict[str, DistinctHashes] | None = None) -> None:
        unfitted = [c.column for c in spec.columns if c.needs_fit]
        assert not unfitted, f"columns {unfitted} are not fitted"
        self.spec, self.vocab, self.seen = spec, vocab, seen
        self.owners = spec.owners()
        self.sizes = table_sizes(spec, vocab)
        self.schema = build_schema(spec, self.sizes)

    def ids(self, values: pa.Array, c: ColumnSpec) -> np.ndarray:
        """int64 ids of text values in `c`'s table."""
        owner = self.owners[c.owner]
        if owner.hash_buckets:
            ids, full = bucket_ids(values, owner.hash_buckets, MISSING)
            if self.seen is not None:
                self.seen.setdefault(owner.column, DistinctHashes()).add(full)
            return ids
        return lookup_ids(values, self.vocab[c.owner], MISSING)

    def map(self, block: pa.Table, f: RawFile, first: int, labels: bool = True) -> dict[str, Any]:
        """The dataset's columns of a block of rows (labels only with `labels`)."""
        out: dict[str, Any] = {}
        for c in self.spec.columns:
            if c.role == "label":
                if labels:
                    out[c.column] = self._label(block[c.column], c, f, first)
            elif c.role == "dense":
                out[c.column] = self._dense(block[c.column], c, f, first)
            elif c.role == "categorical":
                out[c.column] = self.ids(as_text(block[c.column]), c)
            else:
                out[c.column] = self._listed(block[c.column], c)
        if labels:
            self._funnel(out, f, first)
        g = self.spec.group
        if g and g not in out:
            text = pc.fill_null(as_text(block[g]), b"")
            out[g] = (stable_hash(text) >> np.uint64(1)).astype(np.int64)
        return out

    def _label(self, col: pa.ChunkedArray, c: ColumnSpec, f: RawFile, first: int) -> pa.Array:
        col = numbers(col.combine_chunks(), pa.int64(), f, first, c.column, "0 or 1")
        f.check(first, pc.is_in(col, value_set=pa.array([0, 1], col.type)), c.column, col, "0 or 1")
        return col.cast(pa.int8())

    def _funnel(self, out: dict[str, Any], f: RawFile, first: int) -> None:
        by_task = {c.task: c.column for c in self.spec.role("label")}
        if "cvr" in by_task and "ctr" in by_task:
            click, conv = (out[by_task[t]].to_numpy(zero_copy_only=False) for t in ("ctr", "cvr"))
            ok = (conv == 0) | (click == 1)
            f.check(
                first,
                ok,
                by_task["cvr"],
                out[by_task["cvr"]],
                f"0 when {by_task['ctr']} is 0 (a conversion implies a click)",
            )

    def _dense(self, col: pa.ChunkedArray, c: ColumnSpec, f: RawFile, first: int) -> np.ndarray:
        col = numbers(col.combine_chunks(), pa.float64(), f, first, c.column, "a number or an empty field")
        missing = col.is_null().to_numpy(zero_copy_only=False)
        x = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False)
        f.check(first, np.isfinite(x), c.column, col, "a finite number or an empty field")
        if c.transform == "bucketize":
            ids = np.searchsorted(np.asarray(c.boundaries), x, side="right").astype(np.int64) + 2
            ids[missing] = MISSING
            return ids
        if c.transform == "log1p":
            x = np.sign(x) * np.log1p(np.abs(x))
        elif c.transform == "standardise":
            assert c.mean is not None and c.std is not None
            x = (x - c.mean) / c.std
        if missing.any():
            x = np.where(missing, c.fill, x)
        return x.astype(np.float32)

    def _listed(self, col: pa.ChunkedArray, c: ColumnSpec) -> pa.Array:
        flat, lengths = tokens(col, c)
        idx, lengths = keep_last(lengths, c.max_len)
        ids = self.ids(flat.take(pa.array(idx)) if len(idx) != len(flat) else flat, c)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
