"""A user's raw file as a spec reads it (`features.spec.InputSpec`): CSV/TSV (any one-character
delimiter, with or without a header line, gzip detected) or parquet, read in blocks of the columns
asked for, with errors that name the file, the line (text) or row (parquet), the column and the value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.delimited import CsvFile, count_rows, first_line, iter_files, line_of_row
from features.spec import InputSpec

_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class RawFile:
    """One input file: its columns in file order and its data rows."""

    path: Path
    names: tuple[str, ...]
    rows: int
    text: CsvFile | None  # None: parquet
    types: Mapping[str, pa.DataType]  # parquet: each column's arrow type

    def where(self, row: int) -> str:
        """`path: line N` (text, as an editor numbers lines) or `path: row N` (parquet, 1-based) of
        data row `row` (0-based)."""
        if self.text is not None:
            return f"{self.path}: line {line_of_row(self.text, row)}"
        return f"{self.path}: row {row + 1}"

    def bad(self, row: int, column: str, value: object, expected: str) -> ValueError:
        shown = "empty" if value is None else repr(value)
        return ValueError(f"{self.where(row)}, column {column}: {shown}; expected {expected}")

    def check(
        self, first: int, ok: np.ndarray | pa.Array, column: str, values: pa.Array, expected: str
    ) -> None:
        """Raises `bad` for the first row of a block (starting at data row `first`) whose `ok` is
        false or null."""
        if isinstance(ok, pa.Array | pa.ChunkedArray):
            ok = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
        if not ok.all():
            i = int(np.argmin(ok))
            raise self.bad(first + i, column, values[i].as_py(), expected)


def open_raw(path: str | Path, spec: InputSpec, optional: Sequence[str] = ()) -> RawFile:
    """The layout of `path`; ValueError naming the file for one that cannot be read or is empty.

    Args:
        path: a CSV/TSV (gzip or plain) or parquet file.
        spec: the spec's input options.
        optional: columns of `spec.names` a headerless text file may lack (labels, when rows are
            scored): a line 1 with that many fewer fields lacks them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if spec.format == "parquet" or (spec.format == "auto" and magic == _PARQUET_MAGIC):
        return _open_parquet(path)
    if magic == _PARQUET_MAGIC:
        raise ValueError(
            f"{path}: a parquet file, but the spec's input format is {spec.format!r}; expected text"
        )
    raw = first_line(path)
    line = raw.decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r\n")
    if not line.strip():
        what = "is empty (0 bytes)" if not raw else "line 1 is blank"
        raise ValueError(f"{path}: {what}; expected a header or a data row on line 1")
    delimiter = spec.delimiter if spec.delimiter != "auto" else "\t" if "\t" in line else ","
    fields = [f.strip().strip('"') for f in line.split(delimiter)]
    if spec.header:
        names = tuple(fields)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{path}: line 1 (header): columns {dupes} repeated; expected each once")
    else:
        names = spec.names
        if len(fields) == len(names) - len(optional):
            names = tuple(n for n in names if n not in optional)
        elif len(fields) != len(names):
            raise ValueError(
                f"{path}: line 1: {len(fields)} fields separated by {delimiter!r}, but the spec's names "
                f"list {len(names)} ({', '.join(names[:3])}, ...); expected one name per field"
            )
    f = CsvFile(path, delimiter, names if spec.header else None, len(fields))
    return RawFile(path, names, count_rows(f), f, {})


def _open_parquet(path: Path) -> RawFile:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    schema = pf.schema_arrow
    return RawFile(
        path, tuple(schema.names), pf.metadata.num_rows, None, {n: schema.field(n).type for n in schema.names}
    )


def check_columns(f: RawFile, wanted: Sequence[str], why: str = "named in the spec") -> None:
    """ValueError naming the file and the first column of `wanted` it lacks, `why` it is wanted,
    and the columns it has."""
    missing = [c for c in wanted if c not in f.names]
    if missing:
        has = ", ".join(f.names[:12]) + (", ..." if len(f.names) > 12 else "")
        raise ValueError(f"{f.path}: no column {missing[0]!r} ({why}); the file has: {has}")


def read_blocks(
    f: RawFile, types: Mapping[str, pa.DataType], expect: Mapping[str, str], spec: InputSpec
) -> Iterator[tuple[int, pa.Table]]:
    """(index of the block's first data row, the block's columns of `types` that `f` has) in file
    order. Text columns are parsed as `types` says (an unparsable field raises naming the file, the
    line and the column, with `expect`'s words); parquet columns come as stored (`features.rawmap`
    converts them)."""
    wanted = {c: t for c, t in types.items() if c in f.names}
    if f.text is not None:
        layout = [(f.text, f.names, f.rows)]
        for _, first, batch in iter_files(layout, wanted, expect, spec.block_bytes, spec.block_rows):
            yield first, pa.Table.from_batches([batch])
        return
    pf = pq.ParquetFile(f.path)
    first = 0
    for batch in pf.iter_batches(batch_size=spec.block_rows, columns=list(wanted)):
        yield first, pa.Table.from_batches([batch])
        first += batch.num_rows
