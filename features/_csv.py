"""Streaming helpers for the converters: delimited-text input (layout sniffing, row counting,
batches whose parse errors name the file, the line and the column), split assignment, value counts
and vocabulary id lookup. No Python loop runs over rows or values.

Line numbers are physical and 1-based, as an editor shows them: the header and blank lines count.
pyarrow reports them exactly only when its reader runs single-threaded (with threads it gives no
row number), so the batches are parsed with `use_threads=False`; conversion of a parsed block is
not what limits the speed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

_SCAN_BYTES = 16 << 20
_MERGE_ROWS = 1 << 18  # pending (value, count) rows of a column before they are merged
_SPLIT_CHUNK = 1 << 16  # rows per random split draw; fixed, so a split does not depend on batch sizes
MISSING, RARE = 0, 1  # ids every vocabulary reserves; its values start at 2
_CR, _LF = 13, 10
VOCABULARY_SCHEMA = pa.schema(
    [("feature", pa.string()), ("value", pa.string()), ("id", pa.int64()), ("count", pa.int64())]
)
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): Row #(\d+): CSV conversion error to \S+: (.*)")


@dataclass(frozen=True)
class CsvFile:
    """The layout of one delimited text file.

    Args:
        path: the file.
        delimiter: "\\t" or ",".
        header: the field names of line 1, or None when line 1 is already data.
        num_fields: fields on line 1.
    """

    path: Path
    delimiter: str
    header: tuple[str, ...] | None
    num_fields: int


Layout = tuple[CsvFile, tuple[str, ...], int]  # a file, a name per field in file order, its data rows


def sniff(path: str | Path) -> CsvFile:
    """Reads line 1 of `path`: tab if it holds a tab, else comma; a header if its first field is
    neither empty nor an integer (a data row starts with a label or an integer count)."""
    path = Path(path)
    with path.open("rb") as fh:
        raw = fh.readline(1 << 20)
    if raw.startswith((b"\x1f\x8b", b"BZh", b"\x28\xb5\x2f\xfd")):
        raise ValueError(
            f"{path}: line 1: compressed data (gzip, bz2 or zstd); expected plain text, decompress it first"
        )
    line = raw.decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r\n")
    if not line.strip():
        what = "is empty (0 bytes)" if not raw else "line 1 is blank"
        raise ValueError(f"{path}: {what}; expected a header or a data row on line 1")
    delimiter = "\t" if "\t" in line else ","
    fields = [f.strip().strip('"') for f in line.split(delimiter)]
    first = fields[0].lstrip("+-")
    header = None if first == "" or first.isdigit() else tuple(fields)
    return CsvFile(path, delimiter, header, len(fields))


def count_rows(f: CsvFile) -> int:
    """Data rows of `f`: its non-blank lines, less the header."""
    return _scan(f.path, None)[0] - (f.header is not None)


def line_of_row(f: CsvFile, row: int) -> int:
    """The 1-based line number of data row `row` (0-based) of `f`."""
    return _scan(f.path, row + (f.header is not None))[1]


def _scan(path: Path, stop: int | None) -> tuple[int, int]:
    """(non-blank lines of `path`, the 1-based line number of non-blank line `stop` (0-based)).

    A line ends at "\\n", "\\r\\n" or "\\r", as pyarrow reads it. Plain "\\n" chunks without blank
    lines are counted with `bytes.count`; others with numpy masks.
    """
    seen = breaks = 0
    prev = _LF  # as if the file started after a line break: leading blank lines are not lines
    with path.open("rb") as fh:
        while chunk := fh.read(_SCAN_BYTES):
            if stop is None and prev != _CR and b"\r" not in chunk and b"\n\n" not in chunk:
                seen += chunk.count(b"\n") - (prev == _LF and chunk[0] == _LF)
                prev = chunk[-1]
                continue
            b = np.frombuffer(chunk, np.uint8)
            before = np.concatenate(([prev], b[:-1]))  # the byte preceding each byte
            term, term_before = (b == _LF) | (b == _CR), (before == _LF) | (before == _CR)
            ends = np.flatnonzero(term & ~term_before)  # the last byte + 1 of each non-blank line
            brk = (b == _CR) | ((b == _LF) & (before != _CR))  # each physical line break
            if stop is not None and seen + len(ends) > stop:
                return seen + len(ends), breaks + int(brk[: ends[stop - seen]].sum()) + 1
            seen, breaks, prev = seen + len(ends), breaks + int(brk.sum()), int(b[-1])
    if prev not in (_LF, _CR):  # a last line without a line break
        seen += 1
    return seen, breaks + 1 if stop is not None and stop < seen else 0


def iter_batches(
    f: CsvFile,
    names: tuple[str, ...],
    types: Mapping[str, pa.DataType],
    expect: Mapping[str, str],
    block_bytes: int,
) -> Iterator[pa.RecordBatch]:
    """Parses `f` in blocks of about `block_bytes` into batches of the columns in `types`.

    Args:
        f: the file and its layout.
        names: a name for every field in file order; those absent from `types` are skipped.
        types: the columns to convert and their arrow types; empty fields are null.
        expect: column -> what a value should be, for error messages.
        block_bytes: bytes parsed per batch.

    Raises:
        ValueError: naming the file, the line and the column for a row with the wrong number of
            fields or a value that does not convert.
    """
    invalid: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(row)  # the handler's own exceptions are swallowed by pyarrow
        return "error"

    options = {
        "read_options": pacsv.ReadOptions(
            column_names=list(names),
            skip_rows=int(f.header is not None),
            block_size=block_bytes,
            use_threads=False,
        ),
        "parse_options": pacsv.ParseOptions(
            delimiter=f.delimiter,
            quote_char=False if f.delimiter == "\t" else '"',
            invalid_row_handler=on_invalid,
        ),
        "convert_options": pacsv.ConvertOptions(
            column_types=dict(types),
            include_columns=list(types),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    }
    try:
        reader = pacsv.open_csv(f.path, **options)  # parses the first block already
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except pa.ArrowInvalid as e:
        raise _parse_error(f, names, types, expect, invalid, e) from None


def _parse_error(
    f: CsvFile,
    names: tuple[str, ...],
    types: Mapping[str, pa.DataType],
    expect: Mapping[str, str],
    invalid: list[pacsv.InvalidRow],
    e: pa.ArrowInvalid,
) -> ValueError:
    if invalid:
        row, sep = invalid[0], "tab" if f.delimiter == "\t" else "comma"
        return ValueError(
            f"{f.path}: line {row.number}: {row.actual_columns} {sep}-separated fields, expected "
            f"{row.expected_columns} ({', '.join(names[:2])}, ..., {names[-1]}) as on line 1"
        )
    m = _CONVERSION_ERROR.search(str(e))
    if m is None:
        return ValueError(f"{f.path}: {e}")
    name = names[int(m.group(1))]
    wanted = expect.get(name, str(types[name]))
    return ValueError(f"{f.path}: line {m.group(2)}, column {name}: {m.group(3)}; expected {wanted}")


def iter_files(
    layouts: Sequence[Layout],
    types: Mapping[str, pa.DataType],
    expect: Mapping[str, str],
    block_bytes: int,
    min_rows: int = 1,
) -> Iterator[tuple[CsvFile, int, pa.RecordBatch]]:
    """(file, index of the batch's first data row in that file, batch) over several files in order.

    Parsed blocks of one file are joined until a batch has `min_rows` rows or the file ends; each
    file must yield the rows `count_rows` found. Other arguments as in `iter_batches`; columns of
    `types` that a file lacks are left out of its batches.
    """
    for f, names, rows in layouts:
        seen, group = 0, []
        wanted = {c: t for c, t in types.items() if c in names}
        for batch in itertools.chain(iter_batches(f, names, wanted, expect, block_bytes), [None]):
            if batch is not None:
                group.append(batch)
            size = sum(b.num_rows for b in group)
            if seen + size > rows:
                raise ValueError(
                    f"{f.path}: more rows parsed than lines counted ({rows}); quoted line breaks?"
                )
            if group and (batch is None or size >= min_rows):
                joined, group = group[0] if len(group) == 1 else pa.concat_batches(group), []
                yield f, seen, joined
                seen += size
        if seen != rows:
            raise ValueError(f"{f.path}: {seen} rows parsed but {rows} non-blank lines counted")


def input_files(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The input paths as a list, each checked to be a file."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs: expected at least one file, got none")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    return paths


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """(train, valid, test) fractions as floats; ValueError unless 3 finite values >= 0 summing to 1."""
    fractions = tuple(float(f) for f in split)
    if (
        len(fractions) != 3
        or not all(math.isfinite(f) and f >= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(f"split {split!r}: expected 3 fractions >= 0 (train, valid, test) summing to 1")
    return fractions  # type: ignore[return-value]


class SplitAssigner:
    """The split of each row in input order (0 train, 1 valid, 2 test), exactly `counts` rows each.

    "random": each chunk of `_SPLIT_CHUNK` rows draws its split counts from the multivariate
    hypergeometric of the rows left, then shuffles them: a uniformly random assignment overall that
    holds one chunk in memory and does not depend on batch sizes. "order": train rows come first.
    """

    def __init__(self, counts: tuple[int, int, int], by: str, seed: int) -> None:
        self.left = np.array(counts, dtype=np.int64)
        self.by = by
        self.rng = np.random.default_rng(seed)
        self.buf = np.empty(0, dtype=np.int8)

    @staticmethod
    def counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
        """Rows per split of `n` rows, rounded so that they sum to `n`."""
        train = int(n * fractions[0] + 0.5)
        train_valid = min(n, int(n * (fractions[0] + fractions[1]) + 0.5))
        return train, train_valid - train, n - train_valid

    def take(self, k: int) -> np.ndarray:
        """The splits (int8) of the next `k` rows."""
        while len(self.buf) < k:
            m = min(_SPLIT_CHUNK, int(self.left.sum()))
            assert m > 0, "more rows than counted"
            if self.by == "random":
                draw = self.rng.multivariate_hypergeometric(self.left, m)
            else:
                draw = np.diff(np.minimum(np.concatenate(([0], np.cumsum(self.left))), m))
            self.left -= draw
            chunk = np.repeat(np.arange(3, dtype=np.int8), draw)
            if self.by == "random":
                self.rng.shuffle(chunk)
            self.buf = np.concatenate((self.buf, chunk))
        out, self.buf = self.buf[:k], self.buf[k:]
        return out


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


def read_vocabulary(path: Path, types: Mapping[str, pa.DataType]) -> dict[str, tuple[pa.Array, pa.Array]]:
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


def bad_row(f: CsvFile, first: int, i: int, column: str, value: object, expected: str) -> ValueError:
    """The error for data row `first + i` of `f`: file, line, column, value and what was expected."""
    shown = "empty" if value is None else repr(value)
    return ValueError(
        f"{f.path}: line {line_of_row(f, first + i)}, column {column}: {shown}; expected {expected}"
    )


def require(batch: pa.RecordBatch, columns: Sequence[str], f: CsvFile, first: int) -> None:
    """Raises naming the first empty field of `columns`."""
    for c in columns:
        if batch[c].null_count:
            i = int(np.flatnonzero(batch[c].is_null().to_numpy(zero_copy_only=False))[0])
            raise bad_row(f, first, i, c, None, "a value (this column has no missing values)")


def labels(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.Array:
    """`col` as int8, raising naming the first value that is not 0 or 1."""
    bad = pc.invert(pc.fill_null(pc.is_in(col, value_set=pa.array([0, 1], col.type)), False))
    if pc.any(bad).as_py():
        i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise bad_row(f, first, i, name, col[i].as_py(), "0 or 1")
    return col.cast(pa.int8())
