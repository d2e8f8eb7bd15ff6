"""Raw rows as a model's training data was mapped: what a checkpoint keeps of a dataset converted by
spec (`spec.json`, the spec with every fitted value, and `vocabulary.parquet`), and the rows of raw
files or tables mapped with it (`features.rawmap`), with pass-through columns beside them.

Example:
    >>> raw = RawInput.load("runs/mine")               # None unless trained on `convert table` data
    >>> for features, kept in raw.tables("new_rows.csv", labels=False, keep=["search_id"]): ...
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TypeAlias

import pyarrow as pa
import pyarrow.parquet as pq

from features.dataset import FINGERPRINT_KEY, dataset_info
from features.rawfile import RawFile, check_columns, open_raw, read_blocks
from features.rawmap import RawMapper, check_parquet_types, expectations, text_types
from features.spec import SPEC_FILE, TableSpec, spec_from_dict
from features.vocabulary import VOCAB_FILE, read_vocabulary

RawRows: TypeAlias = "str | Path | Sequence[str | Path] | pa.Table"  # raw files, or a table of raw columns


def is_raw_file(path: str | Path) -> bool:
    """Whether `path` is a raw file (text, or parquet without a converted dataset's fingerprint)
    rather than a converted split or one of its files."""
    p = Path(path)
    if p.is_dir():
        return False
    try:
        with p.open("rb") as fh:
            if fh.read(4) != b"PAR1":
                return True
        meta = pq.ParquetFile(p).schema_arrow.metadata or {}
    except (OSError, pa.ArrowException):
        return False  # reported by whoever reads it
    return FINGERPRINT_KEY not in meta


def _as_read(table: pa.Table) -> pa.Table:
    """Binary columns (text parsed as bytes) as strings where they are UTF-8."""
    for i, t in enumerate(table.schema.types):
        if pa.types.is_binary(t):
            try:
                table = table.set_column(i, table.column_names[i], table.column(i).cast(pa.string()))
            except pa.ArrowInvalid:
                continue
    return table


class RawInput:
    """The fitted spec and vocabularies of a dataset converted by spec.

    Args:
        spec: the fitted spec (dataset.json's `spec`).
        vocabulary: `vocabulary.parquet`'s path, or its bytes as a file (read when rows are first
            mapped).
    """

    def __init__(self, spec: TableSpec, vocabulary: Path | BinaryIO) -> None:
        self.spec = spec
        self.vocabulary = vocabulary
        self._mapper: RawMapper | None = None

    @staticmethod
    def save(dataset: str | Path, directory: str | Path) -> bool:
        """Copies what maps raw rows from `dataset` into `directory` (a checkpoint); False (and
        nothing copied) for a dataset not converted by spec."""
        spec = dataset_info(dataset).get("spec")
        if spec is None:
            return False
        (Path(directory) / SPEC_FILE).write_text(json.dumps(spec, indent=1))
        shutil.copyfile(Path(dataset) / VOCAB_FILE, Path(directory) / VOCAB_FILE)
        return True

    @classmethod
    def load(cls, directory: str | Path) -> RawInput | None:
        """What `save` copied into `directory`; None where it holds no spec."""
        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            return None
        try:
            parsed = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read it as JSON ({e})") from None
        return cls(spec_from_dict(parsed, str(path)), Path(directory) / VOCAB_FILE)

    @property
    def mapper(self) -> RawMapper:
        if self._mapper is None:
            owners = {t: c for t, c in self.spec.owners().items() if c.role != "dense" and not c.hash_buckets}
            vocab = read_vocabulary(self.vocabulary, dict.fromkeys(owners, pa.binary())) if owners else {}
            self._mapper = RawMapper(self.spec, {t: v for t, (v, _) in vocab.items()})
        return self._mapper

    def tables(
        self, rows: RawRows, labels: bool, keep: Sequence[str] = ()
    ) -> Iterator[tuple[pa.Table, pa.Table]]:
        """(the schema's columns, the `keep` columns as read) of each block of `rows`, in row order.

        Args:
            rows: raw files in the spec's input format, or a table of raw columns.
            labels: map the label columns too (they must be there); else they are not read.
            keep: columns passed through as read (text files: as text).
        """
        mapper, spec = self.mapper, self.spec
        label_names = [c.column for c in spec.role("label")]
        wanted = [c for c in spec.read_columns() if c != spec.time and (labels or c not in label_names)]
        types = text_types(spec)
        types |= {k: pa.string() for k in keep if k not in types}
        arrow = mapper.schema.arrow_schema() if labels else mapper.schema.without_labels().arrow_schema()
        for f, first, block in self._blocks(rows, wanted, keep, labels, types):
            cols = mapper.map(block, f, first, labels=labels)
            features = pa.Table.from_arrays([cols[c] for c in arrow.names], schema=arrow)
            yield features, _as_read(block.select(list(keep)))

    def _blocks(
        self,
        rows: RawRows,
        wanted: list[str],
        keep: Sequence[str],
        labels: bool,
        types: dict[str, pa.DataType],
    ) -> Iterator[tuple[RawFile, int, pa.Table]]:
        """(the file, its first row's index, a block of the `wanted` and `keep` columns) in order."""
        spec = self.spec
        label_names = [c.column for c in spec.role("label")]
        if isinstance(rows, pa.Table):
            names = tuple(rows.column_names)
            f = RawFile(
                Path("the pyarrow Table"),
                names,
                rows.num_rows,
                None,
                {n: rows.schema.field(n).type for n in names},
            )
            check_columns(f, wanted)
            check_columns(f, keep, "to pass through")
            check_parquet_types(spec, f)
            step = spec.input.block_rows
            for first in range(0, rows.num_rows, step):
                yield f, first, rows.slice(first, step)
            return
        paths = [rows] if isinstance(rows, (str, Path)) else list(rows)
        for path in paths:
            f = open_raw(path, spec.input, optional=() if labels else label_names)
            check_columns(f, wanted)
            check_columns(f, keep, "to pass through")
            check_parquet_types(spec, f)
            read = {c: types[c] for c in [*wanted, *(k for k in keep if k not in wanted)]}
            for first, block in read_blocks(f, read, expectations(spec), spec.input):
                yield f, first, block
