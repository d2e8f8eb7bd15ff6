"""Writing a parquet dataset directory atomically.

Layout of a dataset directory::

    out/
      schema.json        the Schema (features/schema.py)
      dataset.json       rows per split, the converter and its options
      train/part-00000.parquet ...
      valid/...  test/...

A converter writes into `.NAME.partial` beside `out` under an exclusive lock and swaps it into
place only when every split is complete (`features.outputs.StagedOutput`), so a failed or killed
conversion never leaves a directory that looks like a finished dataset, and an existing dataset
is replaced only when asked, and only when this library wrote it.

`dataset.json` records, besides rows per split, the positives of every label per split, and
`warnings` for splits that are empty or hold one class of a label (they are logged too).

Every parquet file carries the dataset's `fingerprint` in its schema metadata (and dataset.json):
a digest of the features (the schema without labels) and of what gives the ids their meaning (the
vocabularies, or the generator's settings), so rows mapped with other vocabularies are told apart
from the rows a model was trained on even when a file travels without its dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.outputs import StagedOutput
from features.schema import FEATURES_KEY, Schema

logger = logging.getLogger(__name__)
DATASET_FILE = "dataset.json"
FINGERPRINT_KEY = b"rankers.fingerprint"  # parquet schema metadata of every split file
ROW_GROUP_ROWS = 131_072
# what gives ids their meaning: a vocabulary table, settings, or both (a table, then settings)
Identity: TypeAlias = pa.Table | dict[str, Any] | tuple[pa.Table, dict[str, Any]] | None


class DatasetWriter:
    """Appends arrow tables to the splits of a new dataset; `commit` publishes it.

    Use as a context manager: leaving the block without `commit` (an exception, say) removes the
    staged directory.

    Args:
        out: the dataset directory to create, or a `StagedOutput` the caller opened already (to
            hold the lock from before its first pass; the caller then closes it).
        schema: the columns written tables should hold (extra columns are kept too); the writer does
            not check them, `ParquetBatches` does when the data is read.
        splits: split names (sub-directories); a split that receives no rows is still created.
        overwrite: replace an existing dataset at `out` (only at commit, after everything was
            written; never a directory this library did not write).
        rows_per_file: rows per parquet file before a new part is started.
        inputs: the files the conversion reads; `out` must be apart from each.
        identity: what gives the ids their meaning, for the fingerprint: the vocabulary table
            (feature, value, id), or the settings that generated the ids; None: the schema alone.
        derived_from: the fingerprint of the dataset this one's rows were taken from (its ids
            mean the same), kept instead of a new one.
    """

    def __init__(
        self,
        out: str | Path | StagedOutput,
        schema: Schema,
        splits: tuple[str, ...] = ("train", "valid", "test"),
        overwrite: bool = False,
        rows_per_file: int = 4_194_304,
        inputs: Iterable[str | Path | None] = (),
        identity: Identity = None,
        derived_from: str | None = None,
    ) -> None:
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file {rows_per_file} must be >= 1")
        self.output = (
            out if isinstance(out, StagedOutput) else StagedOutput(out, "dataset", overwrite, inputs)
        )
        self.out = self.output.final
        self.schema = schema
        self.fingerprint = derived_from or fingerprint(schema, identity)
        self.rows_per_file = rows_per_file
        self.tmp = self.output.fresh_directory()
        self.rows = {s: 0 for s in splits}
        self.positives = {s: dict.fromkeys((lab.name for lab in schema.labels), 0) for s in splits}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._file_rows = {s: 0 for s in splits}
        self._parts = {s: 0 for s in splits}
        self._pending: dict[str, list[pa.Table]] = {s: [] for s in splits}
        self._committed = False
        for s in splits:
            (self.tmp / s).mkdir()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or not self._committed:  # leaving without commit() discards the rows
            self.abort()

    def write(self, split: str, table: pa.Table) -> None:
        """Appends `table`'s rows to `split` (buffered into row groups of ROW_GROUP_ROWS)."""
        try:
            self._write(split, table)
        except OSError as e:
            raise _named(e, self.out) from None

    def _write(self, split: str, table: pa.Table) -> None:
        if split not in self.rows:
            raise ValueError(f"unknown split {split!r}, expected one of {list(self.rows)}")
        if table.num_rows == 0:
            return
        for name in self.positives[split]:
            if name in table.column_names:
                self.positives[split][name] += int(pc.sum(table[name]).as_py() or 0)
        self._pending[split].append(table)
        if sum(t.num_rows for t in self._pending[split]) >= ROW_GROUP_ROWS:
            self._flush(split, final=False)

    def _flush(self, split: str, final: bool) -> None:
        pending = self._pending[split]
        if not pending:
            return
        table = pa.concat_tables(pending)
        full = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        self._pending[split] = [table.slice(full)] if full < table.num_rows else []
        start = 0
        while start < full:
            n = min(full - start, self.rows_per_file - self._file_rows[split])
            self._writer(split, table.schema).write_table(
                table.slice(start, n), row_group_size=ROW_GROUP_ROWS
            )
            self._file_rows[split] += n
            self.rows[split] += n
            start += n
            if self._file_rows[split] >= self.rows_per_file:
                self._writers.pop(split).close()
                self._file_rows[split] = 0
                self._parts[split] += 1

    def _writer(self, split: str, arrow_schema: pa.Schema) -> pq.ParquetWriter:
        if split not in self._writers:
            path = self.tmp / split / f"part-{self._parts[split]:05d}.parquet"
            meta = (arrow_schema.metadata or {}) | {
                FINGERPRINT_KEY: self.fingerprint.encode(),
                FEATURES_KEY: self.schema.features_json().encode(),
            }
            self._writers[split] = pq.ParquetWriter(path, arrow_schema.with_metadata(meta))
        return self._writers[split]

    def commit(self, info: dict[str, Any], files: dict[str, pa.Table] | None = None) -> Path:
        """Closes every split, writes schema.json, dataset.json (with `info`) and extra parquet
        `files` (name -> table), and moves the staged directory to `out`."""
        try:
            return self._commit(info, files)
        except OSError as e:
            raise _named(e, self.out) from None

    def _commit(self, info: dict[str, Any], files: dict[str, pa.Table] | None) -> Path:
        for split in self.rows:
            self._flush(split, final=True)
            if self.rows[split] == 0:  # an empty split still reads as a dataset of 0 rows
                self._writer(split, self.schema.arrow_schema())
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        self.schema.save(self.tmp)
        for name, table in (files or {}).items():
            pq.write_table(table, self.tmp / name)
        warnings = split_warnings(self.rows, self.positives)
        for w in warnings:
            logger.warning("%s: %s", self.out, w)
        meta = {"rows": self.rows, "positives": self.positives, "warnings": warnings}
        meta |= {"fingerprint": self.fingerprint, **info}
        (self.tmp / DATASET_FILE).write_text(json.dumps(meta, indent=1, default=str))
        self._committed = True
        return self.output.commit()

    def abort(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        self.output.abort()


def _named(e: OSError, out: Path) -> OSError:
    """`e` naming the dataset being written when it names no file (pyarrow's errors do not)."""
    return e if e.filename else OSError(e.errno, e.strerror or str(e), str(out))


def fingerprint(schema: Schema, identity: Identity = None) -> str:
    """16 hex digits of sha256 over the schema without labels and `identity` (the feature, value
    and id columns of a vocabulary table, or settings as canonical JSON)."""
    h = hashlib.sha256(schema.without_labels().to_json().encode())
    for part in identity if isinstance(identity, tuple) else (identity,):
        _update(h, part)
    return h.hexdigest()[:16]


def _update(h: Any, identity: pa.Table | dict[str, Any] | None) -> None:
    if isinstance(identity, pa.Table):
        names = [c for c in ("feature", "value", "id") if c in identity.column_names]
        for name in names or identity.column_names:
            h.update(name.encode() + b"\0")
            _hash_column(h, identity[name])
    elif identity is not None:
        h.update(json.dumps(identity, sort_keys=True, default=str).encode())


def _hash_column(h: Any, column: pa.ChunkedArray) -> None:
    """Adds a column's values to `h` without a Python loop over them: numbers as int64 or float64
    bytes, anything else as text, its offsets (from 0) and bytes; independent of how the column
    is chunked."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        wide = np.float64 if pa.types.is_floating(array.type) else np.int64
        h.update(array.to_numpy(zero_copy_only=False).astype(wide).tobytes())
        return
    if not (pa.types.is_binary(array.type) or pa.types.is_string(array.type)):
        array = array.cast(pa.string())
    text = array.cast(pa.large_binary())
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + len(text) + 1]
    if len(text):
        h.update((offsets - offsets[0]).tobytes())
        h.update(memoryview(text.buffers()[2])[offsets[0] : offsets[-1]])


def file_fingerprint(path: str | Path) -> str | None:
    """The fingerprint a parquet file carries (`DatasetWriter`), or None."""
    try:
        value = (pq.read_schema(path).metadata or {}).get(FINGERPRINT_KEY)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None
    return None if value is None else value.decode()


def split_warnings(rows: dict[str, int], positives: dict[str, dict[str, int]]) -> list[str]:
    """What a user must know about the splits: empty ones, and labels with one class in a split."""
    out = []
    for split, n in rows.items():
        if n == 0:
            out.append(f"split {split!r} is empty (0 rows)")
            continue
        for label, pos in positives.get(split, {}).items():
            if pos in (0, n):
                only = "negatives" if pos == 0 else "positives"
                out.append(
                    f"split {split!r}: label {label!r} has only {only} ({pos} positives in {n} rows), "
                    "so its AUC is undefined there"
                )
    return out


def dataset_info(directory: str | Path) -> dict[str, Any]:
    """The `dataset.json` of a dataset directory, or {} if it has none.

    Strict: the keys the library reads are type-checked, and a key outside those `DatasetWriter` and
    the converters write is refused (a misspelt key would otherwise read as absent); ValueError
    naming the file, the key and the value.
    """
    from features.strict import check_keys, check_value, read_json

    path = Path(directory) / DATASET_FILE
    if not path.is_file():
        return {}
    read: dict[str, Any] = {  # what the library reads, and its type
        "rows": dict[str, int],
        "positives": dict[str, dict[str, int]],
        "warnings": list[str],
        "fingerprint": str,
        "converter": str,
        "config": dict[str, Any],
        "teacher": dict[str, Any],
        "spec": dict[str, Any],  # converted by spec: the spec with its fitted values
    }
    informational = {  # written by the converters (features/*.py, benchmarks/*.py) for people
        *("layout", "inputs", "vocabulary_from", "seconds", "rows_per_s", "timezone", "source"),
        *("mean_history_length", "input_rows", "excluded_outside_dates", "behaviours", "buckets"),
        *("missing_ad_feature", "missing_user_profile", "excluded_out_of_range", "days"),
        *("behaviours_without_history", "users", "items", "categories", "items_with_several_categories"),
        *("hashing", "time_cutoffs"),
    }
    info = check_keys(read_json(path), str(path), optional={*read, *informational})
    for key, tp in read.items():
        if key in info:
            check_value(info[key], tp, f"{path} {key}")
    return info
