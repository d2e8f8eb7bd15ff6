"""Delimited-text input for the converters: layout sniffing, row counting, and batches whose parse
and value errors name the file, the line and the column. No Python loop runs over rows or values.

Line numbers are physical and 1-based, as an editor shows them: the header and blank lines count.
pyarrow reports them exactly only when its reader runs single-threaded (with threads it gives no
row number), so the batches are parsed with `use_threads=False`; conversion of a parsed block is
not what limits the speed.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

_SCAN_BYTES = 16 << 20
_GZIP = b"\x1f\x8b"
_CR, _LF = 13, 10
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): Row #(\d+): CSV conversion error to \S+: (.*)")


@dataclass(frozen=True)
class CsvFile:
    """The layout of one delimited text file."""

    path: Path
    delimiter: str  # "\t" or ","
    header: tuple[str, ...] | None  # the field names of line 1; None when line 1 is already data
    num_fields: int  # fields on line 1


Layout = tuple[CsvFile, tuple[str, ...], int]  # a file, a name per field in file order, its data rows
Inputs: TypeAlias = str | Path | Sequence[str | Path]  # one input path or several
Values: TypeAlias = "np.ndarray | pa.Array | pa.ChunkedArray"  # a value per row of a block


def is_gzip(path: str | Path) -> bool:
    """Whether `path` starts with gzip's magic bytes (read decompressed, whatever its name)."""
    with Path(path).open("rb") as fh:
        return fh.read(2) == _GZIP


def open_bytes(path: str | Path) -> BinaryIO:
    """`path` opened for reading bytes, decompressed if it is gzip."""
    return gzip.open(path, "rb") if is_gzip(path) else Path(path).open("rb")  # type: ignore[return-value]


def first_line(path: Path) -> bytes:
    """Line 1 of `path` (gzip decompressed); ValueError naming the file for bz2 or zstd data."""
    with Path(path).open("rb") as fh:
        if fh.read(4).startswith((b"BZh", b"\x28\xb5\x2f\xfd")):
            raise ValueError(
                f"{path}: line 1: compressed data (bz2 or zstd); expected plain or gzip text, "
                "decompress it first"
            )
    try:
        with open_bytes(path) as fh:
            return fh.readline(1 << 20)
    except (OSError, EOFError) as e:  # a damaged gzip stream
        raise ValueError(f"{path}: cannot read line 1 ({e})") from None


def sniff(path: str | Path) -> CsvFile:
    """Reads line 1 of `path` (gzip is decompressed): tab if it holds a tab, else comma; a header if
    its first field is neither empty nor an integer (a data row starts with a label or an integer
    count)."""
    path = Path(path)
    raw = first_line(path)
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


def data_rows(f: CsvFile, after: str, expected: str) -> int:
    """`count_rows(f)`; ValueError naming the file when it has none, saying what the rows follow
    (`after`) and what they should be (`expected`)."""
    rows = count_rows(f)
    if rows == 0:
        raise ValueError(f"{f.path}: no data rows after {after}; expected {expected}")
    return rows


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
    with open_bytes(path) as fh:
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
        source = pa.input_stream(str(f.path), compression="gzip") if is_gzip(f.path) else f.path
        yield from pacsv.open_csv(source, **options)  # parses the first block already
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


def input_files(inputs: Inputs) -> list[Path]:
    """The input paths as a list, each checked to be a file."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs: expected at least one file, got none")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    return paths


def bad_row(f: CsvFile, first: int, i: int, column: str, value: object, expected: str) -> ValueError:
    """The error for data row `first + i` of `f`: file, line, column, value and what was expected."""
    shown = "empty" if value is None else repr(value)
    return ValueError(
        f"{f.path}: line {line_of_row(f, first + i)}, column {column}: {shown}; expected {expected}"
    )


def split_lists(col: pa.Array, sep: str) -> tuple[pa.Array, np.ndarray]:
    """Text fields of `sep`-joined tokens (empty or missing: none) as (every token in row order,
    tokens per row as int64)."""
    text = pc.fill_null(col, "")
    parts = pc.split_pattern(text, sep)
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    tokens = pc.list_flatten(parts).filter(pa.array(np.repeat(~empty, lengths)))
    return tokens, np.where(empty, 0, lengths).astype(np.int64)


def check_rows(f: CsvFile, first: int, ok: Values, column: str, values: Values, expected: str) -> None:
    """Raises `bad_row` for the first row of a block whose `ok` is false (or null), with its value."""
    if isinstance(ok, pa.Array | pa.ChunkedArray):
        ok = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    if not ok.all():
        i = int(np.argmin(ok))
        value = values[i].as_py() if isinstance(values, pa.Array | pa.ChunkedArray) else values[i].item()
        raise bad_row(f, first, i, column, value, expected)


def require(batch: pa.RecordBatch, columns: Sequence[str], f: CsvFile, first: int) -> None:
    """Raises naming the first empty field of `columns`."""
    for c in columns:
        check_rows(f, first, batch[c].is_valid(), c, batch[c], "a value (this column has no missing values)")


def labels(col: pa.Array, f: CsvFile, first: int, name: str) -> pa.Array:
    """`col` as int8, raising naming the first value that is not 0 or 1."""
    check_rows(f, first, pc.is_in(col, value_set=pa.array([0, 1], col.type)), name, col, "0 or 1")
    return col.cast(pa.int8())
