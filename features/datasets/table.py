"""Any table -> a parquet dataset, as its spec says (`features.spec`; mapping in `features.rawmap`,
the passes in `features.convert`).

Input: CSV/TSV (plain or gzip) or parquet files, read in order as one sequence of rows; every file
must hold the spec's columns (labels too). Passes:
- (by time without cutoffs) the time column of every row: the cutoffs that give the fractions;
- 1, when a table has a vocabulary or a dense column is fitted: the train rows' values of every
  vocabulary table (a shared table counts its sharers' values too), standardise's mean and std,
  bucketize's quantiles;
- 2: every row mapped (`RawMapper`) and written to its split, with the keys (and a group column
  that is no feature) beside the features. Hashed tables need no pass 1: their distinct values are
  counted here, and dataset.json's `hashing` says per table how many fell into buckets shared with
  another value (by their 64-bit hashes: 8 bytes of memory per distinct value).

dataset.json's `spec` (the spec with every fitted value) and `vocabulary.parquet` beside the data are
what a checkpoint trained on it keeps (as `spec.json` and `vocabulary.parquet`) to map raw rows at
prediction time (`rankers predict`).

Times (`time`, to split by): numbers (e.g. unix seconds), or ISO 8601 date-times (text, or parquet
timestamps and dates), which count as unix seconds (UTC unless the text names its offset); cutoffs
are then unix seconds too.

Example::

    convert_table(["logs/day1.csv.gz", "logs/day2.csv.gz"], load_spec("spec.toml"), "data/mine")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.convert import Block, Plan, SplitAssigner, bar, convert
from features.delimited import Inputs, input_files
from features.hashing import DistinctHashes, as_text
from features.outputs import paths_of
from features.rawfile import RawFile, check_columns, open_raw, read_blocks
from features.rawmap import RawMapper, check_parquet_types, expectations, numbers, text_types, tokens
from features.schema import Schema
from features.spec import ColumnSpec, TableSpec, describe_spec, fitted
from features.vocabulary import ValueCounter, Vocabulary

CONVERTER = "features.datasets.table.convert_table"


def convert_table(
    inputs: Inputs, spec: TableSpec, out: str | Path, overwrite: bool = False, progress: bool = True
) -> Path:
    """Converts the rows of `inputs` into a dataset directory with train/valid/test splits.

    Args:
        inputs: one file or several, read in order as one sequence of rows.
        spec: every column's role, the input options and the split (`features.spec.load_spec`).
        out, overwrite, progress: as in `features.convert.convert`.

    Raises:
        ValueError: a file lacking a column of the spec (before any row is read), or a bad value,
            naming the file, the line or row, the column and the value.
    """

    def plan(_: ExitStack) -> Plan:
        return _plan(inputs, spec, progress)

    return convert("table", CONVERTER, spec.split, out, plan, paths_of(inputs), overwrite, progress)


def inspect(inputs: Inputs, spec: TableSpec) -> list[RawFile]:
    """Every input's layout, checked to hold the spec's columns with types it can read."""
    files = []
    for path in input_files(inputs):
        f = open_raw(path, spec.input)
        check_columns(f, [c for c in spec.read_columns() if c != spec.time or spec.split.by == "time"])
        check_parquet_types(spec, f)
        if f.text is not None:
            listed = [c.column for c in spec.ids if c.role in ("multi", "sequence") and not c.delimiter]
            if listed:
                raise ValueError(
                    f"{path}: column {listed[0]} is a list column (no delimiter) in the spec, but text "
                    "holds no lists; give its `delimiter`, or read parquet"
                )
            same = [c.column for c in spec.ids if c.delimiter and c.delimiter == f.text.delimiter]
            if same:
                raise ValueError(f"{path}: column {same[0]}: its delimiter is the file's field delimiter")
        files.append(f)
    return files


def _plan(inputs: Inputs, spec: TableSpec, progress: bool) -> Plan:
    files = inspect(inputs, spec)
    n = sum(f.rows for f in files)
    if n == 0:
        raise ValueError(f"{files[0].path}: no data rows")
    types, expect = text_types(spec), expectations(spec)
    cutoffs = _cutoffs(files, spec, n, progress) if spec.split.by == "time" else None
    counts = SplitAssigner.counts(n, spec.split.fractions)
    vocab_owners = {t: c for t, c in spec.owners().items() if c.role != "dense" and not c.hash_buckets}
    fit_cols = [c for c in spec.columns if c.needs_fit]
    counted_cols = [c for c in spec.ids if c.owner in vocab_owners]
    stats = _Stats(fit_cols)
    seen: dict[str, DistinctHashes] = {}
    state: dict[str, Any] = {}

    def blocks(pass_: int) -> Iterator[Block]:
        assign = SplitAssigner(counts, spec.split.by if spec.split.by != "time" else "order", spec.split.seed)
        read = read_types(pass_)
        for f in files:
            for first, table in read_blocks(f, read, expect, spec.input):
                if cutoffs is None:
                    split = assign.take(table.num_rows)
                else:
                    split = _time_split(table[spec.time], cutoffs, f, first, spec.time)
                yield Block(table, split, None, first, source=f)

    def read_types(pass_: int) -> dict[str, pa.DataType]:
        if pass_ == 2:
            return types
        cols = [c.column for c in (*counted_cols, *fit_cols)] + ([spec.time] if cutoffs else [])
        return {c: types[c] for c in cols}

    def count(block: Block) -> dict[str, pa.Array]:
        train = block.split == 0
        if not train.any():
            return {}
        table = block.batch if train.all() else block.batch.filter(pa.array(train))
        stats.add(table, block.source, block.first)
        values: dict[str, list[pa.Array]] = {t: [] for t in vocab_owners}
        for c in counted_cols:
            col = table[c.column]
            values[c.owner].append(as_text(col) if c.role == "categorical" else tokens(col, c)[0])
        return {t: pa.concat_arrays(v) for t, v in values.items() if v}

    def schema(vocab: Vocabulary) -> Schema:
        state["spec"] = fitted(spec, stats.values())
        values = {t: v for t, (v, _) in vocab.items()}
        state["mapper"] = RawMapper(state["spec"], values, seen)
        identity["spec"] = state["spec"].to_dict()
        return state["mapper"].schema

    def map_block(block: Block, _: Vocabulary) -> pa.Table:
        mapper: RawMapper = state["mapper"]
        cols = mapper.map(block.batch, block.source, block.first)
        arrow = mapper.schema.arrow_schema()
        table = pa.Table.from_arrays([cols[c] for c in arrow.names], schema=arrow)
        for k in spec.keys:
            table = table.append_column(k, block.batch[k])
        return table

    def info() -> dict[str, Any]:
        return {"spec": state["spec"].to_dict(), "hashing": _collisions(spec, seen)} | (
            {"time_cutoffs": list(cutoffs)} if cutoffs else {}
        )

    identity: dict[str, Any] = {}
    need_pass_1 = bool(vocab_owners) or bool(fit_cols)
    return Plan(
        rows=n,
        blocks=blocks,
        schema=schema,
        map=map_block,
        inputs=[str(f.path) for f in files],
        count=count if need_pass_1 else None,
        counted={t: pa.binary() for t in vocab_owners},
        min_count=1,
        vocabulary=None,
        identity=identity,
        head={"layout": describe_spec(spec)},
        info=info,
        min_counts={t: c.min_count for t, c in vocab_owners.items()},
    )


class _Stats:
    """Standardise's sums and bucketize's value counts over the train rows of the fitted columns."""

    def __init__(self, cols: Sequence[ColumnSpec]) -> None:
        self.cols = list(cols)
        self.sums: dict[str, list[float]] = {}  # column -> [n, shift, sum(x - shift), sum((x - shift)^2)]
        self.counter = ValueCounter({c.column: pa.float64() for c in cols if c.transform == "bucketize"})

    def add(self, table: pa.Table, f: RawFile, first: int) -> None:
        for c in self.cols:
            col = numbers(table[c.column].combine_chunks(), pa.float64(), f, first, c.column, "a number")
            x = col.drop_null().to_numpy()
            if not np.isfinite(x).all():
                valid = np.flatnonzero(col.is_valid().to_numpy(zero_copy_only=False))
                bad = int(valid[np.argmin(np.isfinite(x))])
                raise f.bad(
                    first + bad,
                    c.column,
                    float(x[np.argmin(np.isfinite(x))]),
                    "a finite number or an empty field",
                )
            if c.transform == "bucketize":
                self.counter.add(c.column, pa.array(x))
                continue
            s = self.sums.setdefault(c.column, [0.0, float(x[0]) if len(x) else 0.0, 0.0, 0.0])
            d = x - s[1]
            s[0], s[2], s[3] = s[0] + len(x), s[2] + float(d.sum()), s[3] + float((d * d).sum())

    def values(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for c in self.cols:
            if c.transform == "standardise":
                n, shift, s1, s2 = self.sums.get(c.column, [0.0, 0.0, 0.0, 0.0])
                if n == 0:
                    raise ValueError(f"column {c.column}: no values in the train rows to standardise with")
                mean = s1 / n
                var = max(s2 / n - mean * mean, 0.0)
                out[c.column] = {"mean": shift + mean, "std": float(np.sqrt(var)) or 1.0}
            else:
                out[c.column] = {
                    "boundaries": _quantiles(*self.counter.vocabulary(c.column, 1), c.buckets, c.column)
                }
        return out


def _quantiles(values: pa.Array, counts: pa.Array, buckets: int, column: str) -> tuple[float, ...]:
    """Boundaries that split the counted values into `buckets` parts of about equal rows."""
    if len(values) == 0:
        raise ValueError(f"column {column}: no values in the train rows to bucketize by quantiles")
    order = np.argsort(values.to_numpy())
    v, n = values.to_numpy()[order], counts.to_numpy()[order]
    below = np.cumsum(n) - n  # rows with a smaller value
    total = int(n.sum())
    cuts = [v[np.searchsorted(below, k * total / buckets, side="right") - 1] for k in range(1, buckets)]
    out = tuple(float(x) for x in np.unique(np.asarray(cuts, dtype=np.float64)) if x > v[0])
    return out or (float(v[-1]),)


def _cutoffs(files: list[RawFile], spec: TableSpec, n: int, progress: bool) -> tuple[float, float]:
    """The given cutoffs, or the times below which the train and train + valid fractions of rows lie."""
    if spec.split.cutoffs:
        return spec.split.cutoffs[0], spec.split.cutoffs[1]
    types = {spec.time: pa.string()}
    parts = []

    def blocks() -> Iterator[Block]:
        for f in files:
            for first, table in read_blocks(f, types, expectations(spec), spec.input):
                yield Block(table, np.zeros(0, np.int8), None, first, source=f)

    for block in bar("table 0/2 time", n, progress, blocks()):
        parts.append(_times(block.batch[spec.time], block.source, block.first, spec.time))
    times = np.sort(np.concatenate(parts))
    train, valid, _ = SplitAssigner.counts(n, spec.split.fractions)
    at = [times[min(k, n - 1)] if k < n else np.inf for k in (train, train + valid)]
    return float(at[0]), float(at[1])


def _times(col: pa.ChunkedArray, f: RawFile, first: int, name: str) -> np.ndarray:
    """Each row's time as float64: numbers as they are, date-times as unix seconds."""
    col = col.combine_chunks()
    f.check(first, col.is_valid(), name, col, "a time (this column has no missing values)")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            col = _datetimes(col, f, first, name)
    if pa.types.is_date(col.type):
        col = col.cast(pa.timestamp("s"))
    if pa.types.is_timestamp(col.type):
        seconds = pc.cast(col, pa.timestamp("s", col.type.tz)).cast(pa.int64())
        return seconds.to_numpy(zero_copy_only=False).astype(np.float64)
    return numbers(col, pa.float64(), f, first, name, "a number or a date-time").to_numpy(
        zero_copy_only=False
    )


def _datetimes(col: pa.Array, f: RawFile, first: int, name: str) -> pa.Array:
    """Text times as timestamps (ISO 8601); ValueError naming the first that is neither a number
    nor a date-time."""
    try:
        return col.cast(pa.timestamp("s"))
    except pa.ArrowInvalid:
        pass
    try:
        return col.cast(pa.timestamp("s", "UTC"))  # with an offset
    except pa.ArrowInvalid:
        for i, value in enumerate(col.to_pylist()):  # the error path only: the first bad value
            try:
                pa.array([value]).cast(pa.float64())
            except pa.ArrowInvalid:
                try:
                    pa.array([value]).cast(pa.timestamp("s"))
                except pa.ArrowInvalid:
                    raise f.bad(first + i, name, value, "a number or an ISO 8601 date-time") from None
        raise


def _time_split(
    col: pa.ChunkedArray, cutoffs: tuple[float, float], f: RawFile, first: int, name: str
) -> np.ndarray:
    t = _times(col, f, first, name)
    return np.searchsorted(np.asarray(cutoffs), t, side="right").astype(np.int8)


def _collisions(spec: TableSpec, seen: dict[str, DistinctHashes]) -> dict[str, Any]:
    """Per hashed table: buckets, distinct values seen, buckets used, values in a shared bucket."""
    owners = spec.owners().items()
    return {t: seen.get(t, DistinctHashes()).collisions(c.hash_buckets) for t, c in owners if c.hash_buckets}
