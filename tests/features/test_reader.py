"""Tests of `ParquetBatches` and `table_batches` on small datasets written here.

Every row carries a unique `row` id (an extra column the schema does not name) and its dense
column `x0` holds the same number, so a batch's rows can be traced back to the parquet rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import features.dataset
from features.batch import Batch
from features.dataset import DatasetWriter
from features.reader import ParquetBatches, table_batches
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

SCHEMA = Schema(
    dense=(DenseFeature("x0"), DenseFeature("x1")),
    categorical=(CategoricalFeature("c0", num_embeddings=50), CategoricalFeature("c1", num_embeddings=7)),
    labels=(Label("click", task="ctr"), Label("buy", task="cvr")),
)


def _table(start: int, n: int, seed: int = 0) -> pa.Table:
    k = np.arange(start, start + n)
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, n).astype(np.int8)
    return pa.table(
        {
            "x0": pa.array(k.astype(np.float32)),
            "x1": pa.array(rng.normal(size=n).astype(np.float32)),
            "c0": pa.array(rng.integers(0, 50, n)),
            "c1": pa.array(rng.integers(0, 7, n)),
            "click": pa.array(click),
            "buy": pa.array(click * rng.integers(0, 2, n).astype(np.int8)),
            "row": pa.array(k),
        }
    )


def _dataset(
    out: Path,
    monkeypatch: pytest.MonkeyPatch,
    n: int = 203,
    rows_per_file: int = 50,
    row_group: int = 16,
    schema: Schema = SCHEMA,
    table: pa.Table | None = None,
) -> Path:
    """A dataset with a train split of n rows in files of rows_per_file rows, groups of row_group."""
    monkeypatch.setattr(features.dataset, "ROW_GROUP_ROWS", row_group)
    with DatasetWriter(out, schema, rows_per_file=rows_per_file) as w:
        w.write("train", _table(0, n) if table is None else table)
        w.commit({})
    return out / "train"


@pytest.fixture
def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """203 rows in 5 files (50, 50, 50, 50, 3 rows) of several row groups each."""
    path = _dataset(tmp_path / "ds", monkeypatch)
    groups = [pq.ParquetFile(f).num_row_groups for f in sorted(path.iterdir())]
    assert len(groups) == 5 and all(g > 1 for g in groups[:4])
    return path


def _rows(batches: list[Batch]) -> list[int]:
    return [int(v) for b in batches for v in b.dense[:, 0].tolist()]


def _check_rows(batch: Batch, table: pa.Table, schema: Schema = SCHEMA) -> None:
    """The batch holds exactly the rows of `table` whose `row` ids are its x0 values."""
    rows = batch.dense[:, 0].numpy().astype(np.int64)
    where = {r: i for i, r in enumerate(table["row"].to_pylist())}
    sub = table.take(pa.array([where[r] for r in rows]))
    b = len(rows)
    want_dense = np.stack([sub[f.name].to_numpy() for f in schema.dense], axis=1)
    assert batch.dense.dtype == torch.float32 and batch.dense.shape == (b, len(schema.dense))
    np.testing.assert_array_equal(batch.dense.numpy(), want_dense)
    kjt = batch.sparse
    assert kjt.keys() == list(schema.sparse_keys)
    assert kjt.stride() == b
    assert kjt.lengths().tolist() == [1] * (b * len(schema.sparse_keys))
    want_ids = np.concatenate([sub[k].to_numpy() for k in schema.sparse_keys])  # feature-major
    np.testing.assert_array_equal(kjt.values().numpy(), want_ids)
    for key in schema.sparse_keys:
        np.testing.assert_array_equal(kjt[key].values().numpy(), sub[key].to_numpy())
    assert sorted(batch.labels) == sorted(schema.tasks)
    for lab in schema.labels:
        y = batch.labels[lab.task]
        assert y.dtype == torch.float32
        np.testing.assert_array_equal(y.numpy(), sub[lab.name].to_numpy().astype(np.float32))


# Contents, sizes and order


@pytest.mark.parametrize(
    ("batch_size", "sizes"), [(16, [16] * 12 + [11]), (50, [50] * 4 + [3]), (500, [203])]
)
def test_batches_equal_the_parquet_rows_in_file_order(train: Path, batch_size: int, sizes: list[int]) -> None:
    table = pq.read_table(train)
    reader = ParquetBatches(train, batch_size=batch_size)
    batches = list(reader)
    assert [len(b) for b in batches] == sizes
    assert len(reader) == len(sizes) and reader.num_rows == 203
    assert _rows(batches) == list(range(203))  # file order, row group order, row order
    for b in batches:
        _check_rows(b, table)
    dense = torch.cat([b.dense for b in batches]).numpy()
    np.testing.assert_array_equal(dense[:, 1], table["x1"].to_numpy())


@pytest.mark.parametrize(("batch_size", "n_batches"), [(16, 12), (50, 4), (203, 1), (500, 0)])
def test_drop_last(train: Path, batch_size: int, n_batches: int) -> None:
    reader = ParquetBatches(train, batch_size=batch_size, drop_last=True)
    batches = list(reader)
    assert len(reader) == len(batches) == n_batches
    assert all(len(b) == batch_size for b in batches)
    assert _rows(batches) == list(range(n_batches * batch_size))
    shuffled = ParquetBatches(train, batch_size=batch_size, drop_last=True, shuffle_buffer=40, seed=3)
    assert [len(b) for b in shuffled] == [batch_size] * n_batches


def test_one_file_finds_the_schema_two_levels_up(train: Path) -> None:
    file = sorted(train.iterdir())[1]
    batches = list(ParquetBatches(file, batch_size=32))
    assert _rows(batches) == list(range(50, 100))


def test_reads_twice_the_same(train: Path) -> None:
    reader = ParquetBatches(train, batch_size=32)
    assert _rows(list(reader)) == _rows(list(reader)) == list(range(203))


# Shuffling


def _order(path: Path, seed: int, epoch: int = 0, buffer: int = 40, batch_size: int = 16) -> list[int]:
    reader = ParquetBatches(path, batch_size=batch_size, shuffle_buffer=buffer, seed=seed)
    reader.set_epoch(epoch)
    batches = list(reader)
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)  # only the last is short
    return _rows(batches)


@pytest.mark.parametrize("buffer", [1, 40, 1000])
def test_shuffle_is_seeded_and_visits_every_row_once(train: Path, buffer: int) -> None:
    first = _order(train, seed=0, buffer=buffer)
    assert sorted(first) == list(range(203))
    assert first != list(range(203))
    assert _order(train, seed=0, buffer=buffer) == first
    assert _order(train, seed=1, buffer=buffer) != first
    epoch1 = _order(train, seed=0, epoch=1, buffer=buffer)
    assert epoch1 != first and sorted(epoch1) == list(range(203))


def test_row_groups_are_visited_in_a_seeded_order(train: Path) -> None:
    # A buffer of 1 row permutes only inside one row group's read, so whichever rows come first
    # tell which row group was read first.
    first = [frozenset(_order(train, seed=s, buffer=1)[:16]) for s in range(5)]
    assert len(set(first)) > 1
    assert frozenset(_order(train, seed=0, buffer=1)[:16]) == first[0]


def test_set_epoch_changes_the_next_iteration(train: Path) -> None:
    reader = ParquetBatches(train, batch_size=16, shuffle_buffer=64, seed=5)
    a, again = _rows(list(reader)), _rows(list(reader))
    reader.set_epoch(1)
    b = _rows(list(reader))
    assert a == again and a != b and sorted(a) == sorted(b) == list(range(203))


def test_shuffled_batches_hold_the_parquet_rows(train: Path) -> None:
    table = pq.read_table(train)
    batches = list(ParquetBatches(train, batch_size=16, shuffle_buffer=1000, seed=2))
    for b in batches:
        _check_rows(b, table)
    first = np.array(_rows(batches[:1]))
    assert np.unique(first // 16).size > 2  # the first batch mixes several row groups


# Ranks


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle_buffer", [0, 24])
def test_ranks_partition_the_rows(train: Path, world_size: int, shuffle_buffer: int) -> None:
    per_rank = []
    for rank in range(world_size):
        reader = ParquetBatches(
            train, batch_size=10, shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size
        )
        rows = _rows(list(reader))
        assert len(rows) == reader.num_rows and len(reader) == -(-reader.num_rows // 10)
        per_rank.append(rows)
    union = sorted(r for rows in per_rank for r in rows)
    assert union == list(range(203))
    sizes = [len(rows) for rows in per_rank]
    assert max(sizes) - min(sizes) <= 1
    if not shuffle_buffer:  # contiguous ranges in file order
        assert [r for rows in per_rank for r in rows] == list(range(203))


@pytest.mark.parametrize(("rank", "world_size"), [(-1, 2), (2, 2), (0, 0)])
def test_bad_rank(train: Path, rank: int, world_size: int) -> None:
    with pytest.raises(ValueError, match=f"rank {rank}"):
        ParquetBatches(train, rank=rank, world_size=world_size)


@pytest.mark.parametrize(("arg", "value"), [("batch_size", 0), ("shuffle_buffer", -1)])
def test_bad_sizes(train: Path, arg: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{arg} {value}"):
        ParquetBatches(train, **{arg: value})


# Labels


def test_labels_false_reads_rows_without_label_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlabeled = _table(0, 40).drop_columns(["click", "buy"])
    path = _dataset(tmp_path / "u", monkeypatch, table=unlabeled, schema=SCHEMA.without_labels())
    (tmp_path / "u" / "schema.json").write_text(SCHEMA.to_json())  # the training schema, with labels
    with pytest.raises(ValueError, match="missing column 'click'"):
        ParquetBatches(path)
    batches = list(ParquetBatches(path, batch_size=16, labels=False))
    assert [len(b) for b in batches] == [16, 16, 8] and _rows(batches) == list(range(40))
    assert all(b.labels == {} for b in batches)
    for b in batches:
        _check_rows(b, unlabeled, SCHEMA.without_labels())
    table = _table(0, 40)  # labels=False ignores label columns that are there
    assert all(b.labels == {} for b in table_batches(table, SCHEMA, batch_size=16, labels=False))


SEQ_SCHEMA = Schema(
    dense=SCHEMA.dense,
    categorical=SCHEMA.categorical,
    sequences=(
        SequenceFeature("hist", num_embeddings=7, max_len=3, table="c1"),
        SequenceFeature("hist_long", num_embeddings=50, max_len=40),
    ),
    labels=SCHEMA.labels,
)


def _seq_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    hist = [list(rng.integers(0, 7, rng.integers(0, 6))) for _ in range(n)]  # lengths 0..5, max_len 3
    long = [list(rng.integers(0, 50, rng.integers(0, 60))) for _ in range(n)]
    return (
        _table(0, n, seed)
        .append_column("hist", pa.array(hist, pa.list_(pa.int64())))
        .append_column("hist_long", pa.array(long, pa.list_(pa.int64())))
    )


@pytest.mark.parametrize("shuffle_buffer", [0, 64])
def test_sequences_join_the_kjt_keeping_the_most_recent_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffle_buffer: int
) -> None:
    table = _seq_table(203)
    path = _dataset(tmp_path / "s", monkeypatch, table=table, schema=SEQ_SCHEMA)
    batches = list(ParquetBatches(path, batch_size=32, shuffle_buffer=shuffle_buffer, seed=3))
    assert sorted(_rows(batches)) == list(range(203))
    lists = {name: table.column(name).to_pylist() for name in ("hist", "hist_long")}
    for b in batches:
        assert b.sparse.keys() == ["c0", "c1", "hist", "hist_long"]
        by_key = b.sparse.to_dict()
        rows = [int(r) for r in b.dense[:, 0].tolist()]
        for name, max_len in (("hist", 3), ("hist_long", 40)):
            jagged = by_key[name]
            got = [v.tolist() for v in torch.split(jagged.values(), jagged.lengths().tolist())]
            assert got == [lists[name][r][-max_len:] if lists[name][r] else [] for r in rows]
        for name in ("c0", "c1"):  # the categorical keys still hold one id per row, in row order
            assert by_key[name].lengths().tolist() == [1] * len(rows)
            assert by_key[name].values().tolist() == [table.column(name)[r].as_py() for r in rows]


def _carries_its_ids_per_key(batch: Batch) -> None:
    """The KJT's ids per key and their offsets were given (counted on the host, plain ints), so no
    KJT method sums the lengths on a device to find them, and `Batch.to` keeps them."""
    kjt = batch.sparse
    per_key = kjt.length_per_key_or_none()
    assert per_key is not None and all(type(n) is int for n in per_key)
    assert per_key == kjt.lengths().view(len(kjt.keys()), -1).sum(1).tolist()
    assert kjt.offset_per_key_or_none() == [0, *np.cumsum(per_key).tolist()]
    moved = batch.to(torch.device("cpu")).sparse
    assert moved.length_per_key_or_none() == per_key
    assert moved.offset_per_key_or_none() == kjt.offset_per_key_or_none()


@pytest.mark.parametrize("shuffle_buffer", [0, 64])
def test_the_kjt_carries_its_ids_per_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffle_buffer: int
) -> None:
    path = _dataset(tmp_path / "s", monkeypatch, table=_seq_table(203), schema=SEQ_SCHEMA)
    batches = list(ParquetBatches(path, batch_size=32, shuffle_buffer=shuffle_buffer, seed=3))
    for b in batches:
        _carries_its_ids_per_key(b)
    for b in table_batches(_seq_table(50), SEQ_SCHEMA, batch_size=16):
        _carries_its_ids_per_key(b)


def test_sequence_ids_out_of_range_and_nulls_inside_lists_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _seq_table(20)
    bad = _replace_column(table, "hist", pa.array([[1, 7]] + [[]] * 19, pa.list_(pa.int64())))
    path = _dataset(tmp_path / "a", monkeypatch, table=bad, schema=SEQ_SCHEMA)
    with pytest.raises(ValueError, match=r"list column 'hist' holds id 7, expected ids in \[0, 7\)"):
        list(ParquetBatches(path))
    bad = _replace_column(table, "hist", pa.array([[1, None]] + [[]] * 19, pa.list_(pa.int64())))
    path = _dataset(tmp_path / "b", monkeypatch, table=bad, schema=SEQ_SCHEMA)
    with pytest.raises(ValueError, match=r"column 'hist' has 1 null values"):
        list(ParquetBatches(path))
    with pytest.raises(ValueError, match=r"column 'hist' has 1 nulls"):
        list(table_batches(bad, SEQ_SCHEMA, batch_size=8))


# Bad input: each error names the file (or the dataset path) and the column


def _replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _bad(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, tuple[str, ...]]:
    """A dataset with one defect; the path to read and the words its error must hold."""
    good = _table(0, 120)
    part1 = "part-00001.parquet"
    if case == "missing column":
        return _dataset(tmp_path / "d", monkeypatch, table=good.drop_columns(["c1"])), ("part-00000", "'c1'")
    if case == "float64":
        table = _replace_column(good, "x1", good["x1"].cast(pa.float64()))
        return _dataset(tmp_path / "d", monkeypatch, table=table), ("part-00000", "'x1'", "double", "float")
    if case == "nulls":
        c0 = pa.array([None if k == 77 else v for k, v in enumerate(good["c0"].to_pylist())], pa.int64())
        return _dataset(tmp_path / "d", monkeypatch, table=_replace_column(good, "c0", c0)), (
            part1,
            "'c0'",
            "null",
        )
    if case in ("id too big", "negative id"):
        c1 = good["c1"].to_numpy().copy()
        c1[99] = 7 if case == "id too big" else -1
        path = _dataset(tmp_path / "d", monkeypatch, table=_replace_column(good, "c1", pa.array(c1)))
        return path, (str(path), "'c1'", "[0, 7)")
    if case in ("nan", "inf"):
        x1 = good["x1"].to_numpy().copy()
        x1[42] = np.nan if case == "nan" else np.inf
        path = _dataset(tmp_path / "d", monkeypatch, table=_replace_column(good, "x1", pa.array(x1)))
        return path, (str(path), "'x1'", "NaN or infinite")
    if case == "label 2":
        click = good["click"].to_numpy().copy()
        click[60] = 2
        path = _dataset(tmp_path / "d", monkeypatch, table=_replace_column(good, "click", pa.array(click)))
        return path, (str(path), "'click'", "2", "0 or 1")
    path = _dataset(tmp_path / "d", monkeypatch, table=good)
    if case == "not parquet":
        (path / part1).write_text("label,x0\n1,2\n")
        return path, (part1, "parquet")
    if case == "truncated":
        data = (path / part1).read_bytes()
        (path / part1).write_bytes(data[: len(data) // 2])
        return path, (part1, "parquet")
    if case == "schema mismatch":
        other = Schema(dense=(DenseFeature("x0"), DenseFeature("x9")), categorical=SCHEMA.categorical)
        other.save(path.parent)
        return path, ("part-00000", "'x9'")
    if case == "feature deleted from schema":  # before: it trained without the feature, silently
        Schema(dense=SCHEMA.dense[:1], categorical=SCHEMA.categorical).save(path.parent)
        return path, (str(path), "'x1' is in the file but not in schema.json", "edited after conversion")
    if case == "ids beyond schema":
        small = Schema(dense=SCHEMA.dense, categorical=(CategoricalFeature("c0", num_embeddings=3),))
        small.save(path.parent)  # schema.json edited after conversion: the files know their features
        return path, (
            str(path),
            "'c0' num_embeddings 3 in schema.json, 50 written",
            "edited after conversion",
        )
    if case == "empty directory":
        (tmp_path / "empty").mkdir()
        SCHEMA.save(tmp_path / "empty")
        return tmp_path / "empty", (str(tmp_path / "empty"), "parquet")
    if case == "no schema":
        (tmp_path / "bare" / "train").mkdir(parents=True)
        return tmp_path / "bare" / "train", (str(tmp_path / "bare" / "train"), "schema.json")
    assert case == "nonexistent"
    return path.parent / "trian", (str(path.parent / "trian"), "no such")


BAD = [
    "missing column",
    "float64",
    "nulls",
    "id too big",
    "negative id",
    "nan",
    "inf",
    "label 2",
    "not parquet",
    "truncated",
    "schema mismatch",
    "ids beyond schema",
    "feature deleted from schema",
    "empty directory",
    "no schema",
    "nonexistent",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_file_and_the_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    path, words = _bad(case, tmp_path, monkeypatch)
    with pytest.raises(ValueError) as err:
        list(ParquetBatches(path, batch_size=32))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_bad_values_are_found_when_shuffled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _bad("id too big", tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="'c1'"):
        list(ParquetBatches(path, batch_size=32, shuffle_buffer=50, seed=4))


# table_batches


def test_table_batches_in_row_order() -> None:
    table = pa.concat_tables([_table(0, 30), _table(30, 27, seed=1)])  # two chunks
    batches = list(table_batches(table, SCHEMA, batch_size=8))
    assert [len(b) for b in batches] == [8] * 7 + [1]
    assert _rows(batches) == list(range(57))
    for b in batches:
        _check_rows(b, table)


@pytest.mark.parametrize(
    ("column", "values", "words"),
    [
        ("x0", pa.array(np.zeros(10)), ("'x0'", "double")),
        ("c0", pa.array([1, None, *range(8)], pa.int64()), ("'c0'", "null")),
        ("c0", pa.array([50, *range(9)]), ("'c0'", "[0, 50)")),
        ("buy", pa.array([0, 1, 2, *[0] * 7], pa.int8()), ("'buy'", "0 or 1")),
    ],
)
def test_table_batches_bad_columns(column: str, values: pa.Array, words: tuple[str, ...]) -> None:
    table = _replace_column(_table(0, 10), column, values)
    with pytest.raises(ValueError) as err:
        list(table_batches(table, SCHEMA, batch_size=4))
    for word in ("table", *words):
        assert word in str(err.value), (word, str(err.value))


def test_a_whole_dataset_is_refused_naming_a_split(train: Path) -> None:
    with pytest.raises(ValueError, match=r"whole dataset.*train"):
        ParquetBatches(train.parent)
    with pytest.raises(ValueError, match="batch_size 0"):
        list(table_batches(_table(0, 4), SCHEMA, batch_size=0))


def test_multi_value_features_keep_every_id_and_pool_into_one_field() -> None:
    """A multi-value categorical column: all its ids per row (none cut), between the single-id keys
    and the sequences in the KJT; the embedding arch mean-pools them into one field vector."""
    from rankers.embedding import EmbeddingArch

    schema = Schema(
        categorical=(
            CategoricalFeature("tags", 9, multi=True),
            CategoricalFeature("item", 5),
        ),
        sequences=(SequenceFeature("hist", 5, 2, "item"),),
        labels=(Label("y", "ctr"),),
    )
    assert schema.sparse_keys == ("item", "tags", "hist")
    assert dict(schema.columns())["tags"] == pa.list_(pa.int64())
    table = pa.table(
        {
            "tags": pa.array([[1, 2, 3, 4], [], [8]], pa.list_(pa.int64())),
            "item": pa.array([1, 2, 3], pa.int64()),
            "hist": pa.array([[1, 2, 3], [4], []], pa.list_(pa.int64())),
            "y": pa.array([0, 1, 0], pa.int8()),
        }
    )
    batch = next(table_batches(table, schema, batch_size=3))
    _carries_its_ids_per_key(batch)  # multi-value keys too
    jt = batch.sparse.to_dict()
    assert jt["tags"].lengths().tolist() == [4, 0, 1] and jt["tags"].values().tolist() == [1, 2, 3, 4, 8]
    assert jt["hist"].lengths().tolist() == [2, 1, 0]  # sequences are cut to max_len, tags are not
    arch = EmbeddingArch(schema, 4)
    out = arch(batch.dense, batch.sparse)
    weight = arch.ebc.embedding_bags["tags"].weight
    assert out.field_names == ("tags", "item")
    torch.testing.assert_close(out.fields[0, 0], weight[[1, 2, 3, 4]].mean(0))
    assert (out.fields[1, 0] == 0).all()
    bad = table.set_column(0, "tags", pa.array([[1], [9], []], pa.list_(pa.int64())))
    with pytest.raises(ValueError, match=r"list column 'tags' holds id 9, expected ids in \[0, 9\)"):
        next(table_batches(bad, schema, batch_size=3))
