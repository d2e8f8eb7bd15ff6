"""Writing a parquet dataset directory atomically.

Layout of a dataset directory::

    out/
      schema.json        the Schema (features/schema.py)
      dataset.json       rows per split, the converter and its options
      train/part-00000.parquet ...
      valid/...  test/...

A converter writes into a hidden temporary sibling of `out` and renames it into place only when
every split is complete, so a failed or killed conversion never leaves a directory that looks
like a finished dataset, and an existing dataset is never overwritten unless asked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import Schema

DATASET_FILE = "dataset.json"
ROW_GROUP_ROWS = 131_072


class DatasetWriter:
    """Appends arrow tables to the splits of a new dataset; `commit` publishes it.

    Use as a context manager: leaving the block without `commit` (an exception, say) removes the
    temporary directory.

    Args:
        out: the dataset directory to create.
        schema: the columns written tables should hold (extra columns are kept too); the writer does
            not check them, `ParquetBatches` does when the data is read.
        splits: split names (sub-directories); a split that receives no rows is still created.
        overwrite: replace an existing `out` (only at commit, after everything was written).
        rows_per_file: rows per parquet file before a new part is started.
    """

    def __init__(
        self,
        out: str | Path,
        schema: Schema,
        splits: tuple[str, ...] = ("train", "valid", "test"),
        overwrite: bool = False,
        rows_per_file: int = 4_194_304,
    ) -> None:
        self.out = Path(out)
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file {rows_per_file} must be >= 1")
        if self.out.exists() and not overwrite:
            raise ValueError(f"{self.out} already exists (pass overwrite=True / --overwrite to replace it)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.overwrite = overwrite
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        umask = os.umask(0)
        os.umask(umask)
        self.tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; the dataset should not be
        self.rows = {s: 0 for s in splits}
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
        if split not in self.rows:
            raise ValueError(f"unknown split {split!r}, expected one of {list(self.rows)}")
        if table.num_rows == 0:
            return
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
            self._writers[split] = pq.ParquetWriter(path, arrow_schema)
        return self._writers[split]

    def commit(self, info: dict[str, Any], files: dict[str, pa.Table] | None = None) -> Path:
        """Closes every split, writes schema.json, dataset.json (with `info`) and extra parquet
        `files` (name -> table), and renames the temporary directory to `out`."""
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
        meta = {"rows": self.rows, **info}
        (self.tmp / DATASET_FILE).write_text(json.dumps(meta, indent=1, default=str))
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            self.out.rename(old)
            self.tmp.rename(self.out)
            shutil.rmtree(old)
        else:
            self.tmp.rename(self.out)
        self._committed = True
        return self.out

    def abort(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def dataset_info(directory: str | Path) -> dict[str, Any]:
    """The `dataset.json` of a dataset directory, or {} if it has none."""
    path = Path(directory) / DATASET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
