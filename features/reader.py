"""`ParquetBatches`: streams a parquet dataset as `Batch`es, vectorised, sharded by rank.

Rows are split between ranks as contiguous ranges of the dataset's global row order (rank r of W
reads rows [r*N//W, (r+1)*N//W), so sizes differ by at most one row), so ranks never overlap and no
row is lost. Only the row groups that overlap a rank's range are read.

Shuffling (when `shuffle_buffer` > 0): each epoch visits the rank's row groups in a seeded random
order and permutes rows inside a buffer of at least `shuffle_buffer` rows: a window shuffle, as
in TorchRec's and tf.data's streaming readers. Rows left over after the last full batch of one
buffer move on to the next, so only the final batch of an epoch can be short.

Sequence features (`list<int64>` columns, oldest id first) join the same KeyedJaggedTensor after
the categorical keys, one jagged row per example: lists longer than the feature's `max_len` keep
their most recent `max_len` ids, empty lists give length 0, and nothing is padded.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.batch import Batch
from features.dataset import DATASET_FILE
from features.schema import SCHEMA_FILE, CategoricalFeature, Schema, SequenceFeature


def find_schema(path: str | Path) -> Schema:
    """The schema of a dataset path: `schema.json` in the path (if a directory) or its parent."""
    p = Path(path)
    for d in (p, p.parent) if p.is_dir() else (p.parent, p.parent.parent):
        if (d / SCHEMA_FILE).is_file():
            return Schema.load(d)
    raise ValueError(f"{path}: no {SCHEMA_FILE} in it or its parent directory")


def parquet_files(path: str | Path) -> list[Path]:
    """The parquet files of a dataset split (a directory, searched recursively) or one file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ValueError(f"{path}: no such file or directory")
    if (p / DATASET_FILE).is_file():
        raise ValueError(f"{path} is a whole dataset; expected one split of it, such as {p / 'train'}")
    files = sorted(p.rglob("*.parquet"))
    if not files:
        raise ValueError(f"{path}: no .parquet files in it")
    return files


def open_parquet(path: Path) -> pq.ParquetFile:
    """Opens a parquet file, turning arrow's errors into one that names the file."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from e


@dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of one row group of one file."""

    file: int
    row_group: int
    start: int
    stop: int


class ParquetBatches:
    """Iterates a parquet dataset split as `Batch`es.

    Example:
        >>> for batch in ParquetBatches("data/criteo/train", batch_size=4096, shuffle_buffer=1 << 18):
        ...     out = ranker(batch)

    Args:
        path: a split directory (or one file) whose `schema.json` is in it or in its parent.
        batch_size: rows per batch.
        shuffle_buffer: rows permuted together; 0 keeps the stored order.
        seed: seeds the shuffle; epoch e uses seed + e (see `set_epoch`).
        rank: this process's rank.
        world_size: number of ranks sharing the data.
        drop_last: drop the final short batch.
        labels: read the schema's labels (False for unlabeled rows to predict).
        schema: overrides the schema found beside the data.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 4096,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        labels: bool = True,
        schema: Schema | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer {shuffle_buffer} must be >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.schema = schema if schema is not None else find_schema(path)
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, seed
        self.drop_last, self.labels = drop_last, labels
        self.path = Path(path)
        self.files = parquet_files(path)
        self._columns = [n for n, _ in (self.schema if labels else self.schema.without_labels()).columns()]
        self._pieces = self._rank_pieces(rank, world_size)
        self.num_rows = sum(p.stop - p.start for p in self._pieces)
        self._epoch = 0

    def _rank_pieces(self, rank: int, world_size: int) -> list[_Piece]:
        groups: list[tuple[int, int, int]] = []  # (file, row group, rows)
        for i, f in enumerate(self.files):
            with open_parquet(f) as pf:
                self.schema.check_arrow(pf.schema_arrow, where=str(f), labels=self.labels)
                groups += [(i, g, pf.metadata.row_group(g).num_rows) for g in range(pf.num_row_groups)]
        total = sum(n for *_, n in groups)
        lo, hi = rank * total // world_size, (rank + 1) * total // world_size
        pieces, offset = [], 0
        for i, g, n in groups:
            start, stop = max(lo, offset), min(hi, offset + n)
            if start < stop:
                pieces.append(_Piece(i, g, start - offset, stop - offset))
            offset += n
        return pieces

    def set_epoch(self, epoch: int) -> None:
        """Makes the next iteration shuffle with seed + epoch."""
        self._epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed + self._epoch)
        pieces = list(self._pieces)
        if self.shuffle_buffer:
            pieces = [pieces[i] for i in rng.permutation(len(pieces))]
        files: dict[int, pq.ParquetFile] = {}
        buffer: list[pa.Table] = []
        rows = 0
        try:
            for piece in pieces:
                if piece.file not in files:
                    files[piece.file] = open_parquet(self.files[piece.file])
                table = self._read(files[piece.file], piece)
                buffer.append(table)
                rows += table.num_rows
                if rows >= max(self.shuffle_buffer, self.batch_size):
                    carry = yield from self._emit(pa.concat_tables(buffer), rng, final=False)
                    buffer, rows = [carry], carry.num_rows
        finally:
            for pf in files.values():
                pf.close()
        if rows:
            yield from self._emit(pa.concat_tables(buffer), rng, final=True)

    def _read(self, pf: pq.ParquetFile, piece: _Piece) -> pa.Table:
        try:
            table = pf.read_row_group(piece.row_group, columns=self._columns)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(
                f"{self.files[piece.file]}: row group {piece.row_group} cannot be read ({e})"
            ) from e
        for name in self._columns:
            nulls = _nulls(table.column(name))
            if nulls:
                raise ValueError(
                    f"{self.files[piece.file]}: column {name!r} has {nulls} null values in row group "
                    f"{piece.row_group}; expected none"
                )
        table = table.slice(piece.start, piece.stop - piece.start)
        if self.labels:
            where = f"{self.files[piece.file]}: row group {piece.row_group}"
            _check_funnel(self.schema, table, where, piece.start)
        return table

    def _emit(
        self, table: pa.Table, rng: np.random.Generator, final: bool
    ) -> Generator[Batch, None, pa.Table]:
        """Yields the full batches of `table` (and the short last one if `final`); returns the rest."""
        n = table.num_rows
        cols = _Columns(self.schema, table, str(self.path), self.labels, row_major=bool(self.shuffle_buffer))
        order = rng.permutation(n) if self.shuffle_buffer else None
        full = n - n % self.batch_size
        for s in range(0, full, self.batch_size):
            yield cols.batch(
                slice(s, s + self.batch_size) if order is None else order[s : s + self.batch_size]
            )
        if full == n:
            return table.slice(n)
        if final:
            if not self.drop_last:
                yield cols.batch(slice(full, n) if order is None else order[full:])
            return table.slice(n)
        return table.slice(full) if order is None else table.take(order[full:])


class _Columns:
    """A table's columns as numpy arrays, feature-major, ready to slice into batches."""

    def __init__(self, s: Schema, table: pa.Table, where: str, labels: bool, row_major: bool = False) -> None:
        self.keys = list(s.sparse_keys)
        n = table.num_rows
        self.dense = (
            np.stack([_np(table, f.name) for f in s.dense], axis=1).astype(np.float32, copy=False)
            if s.dense
            else np.zeros((n, 0), dtype=np.float32)
        )  # (N, n_dense)
        finite = np.isfinite(self.dense).all(axis=0)
        if not finite.all():
            name = s.dense[int(np.flatnonzero(~finite)[0])].name
            raise ValueError(
                f"{where}: dense column {name!r} holds NaN or infinite values, expected finite floats"
            )
        # Shuffled batches gather whole rows of a row-major (N, F) array, 8x faster than gathering
        # from F columns; in-order batches slice a feature-major (F, N) array, which stacks faster.
        self.row_major = row_major
        cols = [_np(table, f.name) for f in s.single]
        if cols:
            self.ids = np.stack(cols, axis=1 if row_major else 0)  # (N, F) or (F, N)
        else:
            self.ids = np.zeros((n, 0) if row_major else (0, n), dtype=np.int64)
        if n and s.single:
            axis = 0 if row_major else 1
            low, high = self.ids.min(axis=axis), self.ids.max(axis=axis)
            limits = np.array([f.num_embeddings for f in s.single], dtype=np.int64)
            bad = np.flatnonzero((low < 0) | (high >= limits))
            if bad.size:
                f = s.single[int(bad[0])]
                raise ValueError(
                    f"{where}: column {f.name!r} holds ids in [{low[bad[0]]}, "
                    f"{high[bad[0]]}], expected [0, {f.num_embeddings}) from schema.json"
                )
        # Multi-value features and sequences alike: jagged lists (multi-value ones kept whole).
        lists: list[CategoricalFeature | SequenceFeature] = [*s.multi, *s.sequences]
        self.sequences = [_Sequence(table, f, where) for f in lists]
        self.groups = _np(table, s.group).astype(np.int64, copy=False) if s.group else None
        self.labels: dict[str, np.ndarray] = {}
        for lab in s.labels if labels else ():
            y = _np(table, lab.name)
            if n and (y.min() < 0 or y.max() > 1):
                raise ValueError(
                    f"{where}: label column {lab.name!r} holds "
                    f"{int(y[(y < 0) | (y > 1)][0])}, expected 0 or 1"
                )
            self.labels[lab.task] = y

    def batch(self, rows: slice | np.ndarray) -> Batch:
        if self.row_major:
            assert isinstance(rows, np.ndarray)  # shuffled batches are index arrays
            rows_dense, ids = np.take(self.dense, rows, axis=0), np.take(self.ids, rows, axis=0)
            values = torch.from_numpy(ids.T.reshape(-1))  # (B, F) -> (F * B,) feature-major
        else:
            rows_dense = np.ascontiguousarray(self.dense[rows])
            values = torch.from_numpy(np.ascontiguousarray(self.ids[:, rows]).reshape(-1))  # (F * B,)
        dense = torch.from_numpy(rows_dense)
        b = dense.shape[0]
        lengths = torch.ones(len(self.keys) * b, dtype=torch.int32)  # categorical keys first
        per_key = [b] * (len(self.keys) - len(self.sequences))  # ids per key, counted on the host
        if self.sequences:
            gathered = [seq.gather(rows) for seq in self.sequences]
            values = torch.cat([values, *(torch.from_numpy(v) for v, _ in gathered)])
            lengths = torch.cat([lengths[: len(per_key) * b], *(torch.from_numpy(n) for _, n in gathered)])
            per_key += [len(v) for v, _ in gathered]
        sparse = _kjt(self.keys, values, lengths, b, per_key)
        labels = {t: torch.from_numpy(y[rows].astype(np.float32)) for t, y in self.labels.items()}
        groups = None if self.groups is None else torch.from_numpy(self.groups[rows].copy())
        return Batch(dense=dense, sparse=sparse, labels=labels, groups=groups)


def _kjt(
    keys: list[str], values: torch.Tensor, lengths: torch.Tensor, b: int, per_key: list[int]
) -> KeyedJaggedTensor:
    """The batch's KJT with its ids per key (`length_per_key`) and their offsets given, so TorchRec
    never sums the lengths on the device to find them (a host sync per batch on a GPU)."""
    offsets = [0, *np.cumsum(per_key, dtype=np.int64).tolist()]
    return KeyedJaggedTensor(
        keys=keys, values=values, lengths=lengths, stride=b, length_per_key=per_key, offset_per_key=offsets
    )


class _Sequence:
    """A `list<int64>` column as flat ids and per-row [start, start + length) ranges; a sequence's
    lists cut to their most recent `max_len` ids (stored oldest first; nothing is padded), a
    multi-value feature's kept whole."""

    def __init__(self, table: pa.Table, f: SequenceFeature | CategoricalFeature, where: str) -> None:
        column = table.column(f.name).combine_chunks()
        full = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)  # (N,)
        ends = np.cumsum(full)
        self.values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        keep = f.max_len if isinstance(f, SequenceFeature) else None
        self.lengths = (full if keep is None else np.minimum(full, keep)).astype(np.int32)  # (N,)
        self.starts = ends - self.lengths  # the last max_len ids of each row
        if len(self.values) and (self.values.min() < 0 or self.values.max() >= f.num_embeddings):
            bad = self.values[(self.values < 0) | (self.values >= f.num_embeddings)][0]
            raise ValueError(
                f"{where}: list column {f.name!r} holds id {bad}, expected ids in "
                f"[0, {f.num_embeddings}) from schema.json"
            )

    def gather(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept ids of `rows`, concatenated, and their lengths (int32)."""
        lengths, starts = self.lengths[rows], self.starts[rows]
        first = np.cumsum(lengths) - lengths  # where each row's ids begin in the output
        positions = np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))
        return self.values[positions], np.ascontiguousarray(lengths)


def _nulls(column: pa.ChunkedArray) -> int:
    """Null rows, and for list columns null ids inside the lists too."""
    nulls = column.null_count
    if pa.types.is_list(column.type):
        nulls += sum(chunk.flatten().null_count for chunk in column.chunks)
    return nulls


def _check_funnel(schema: Schema, table: pa.Table, where: str, first: int = 0) -> None:
    """Raises naming the first row whose conversion (task cvr) label is 1 without a click (task ctr)."""
    columns = {lab.task: lab.name for lab in schema.labels}
    if "ctr" not in columns or "cvr" not in columns or not table.num_rows:
        return
    click, conversion = _np(table, columns["ctr"]), _np(table, columns["cvr"])
    bad = np.flatnonzero((conversion == 1) & (click == 0))
    if bad.size:
        raise ValueError(
            f"{where}, row {first + int(bad[0])}: {columns['cvr']!r} is 1 but {columns['ctr']!r} is 0; "
            "expected a conversion only after a click"
        )


def table_batches(table: pa.Table, schema: Schema, batch_size: int, labels: bool = True) -> Iterator[Batch]:
    """An in-memory arrow table (with the schema's columns) as `Batch`es in row order."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    schema.check_arrow(table.schema, where="table", labels=labels)
    for name, _ in (schema if labels else schema.without_labels()).columns():
        nulls = _nulls(table.column(name))
        if nulls:
            raise ValueError(f"table: column {name!r} has {nulls} nulls; expected none")
    if labels:
        _check_funnel(schema, table, "table")
    cols = _Columns(schema, table, "table", labels)
    for s in range(0, table.num_rows, batch_size):
        yield cols.batch(slice(s, min(s + batch_size, table.num_rows)))


def _np(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    return col.chunk(0).to_numpy() if col.num_chunks == 1 else col.to_numpy()
