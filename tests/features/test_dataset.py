"""Tests of the atomic dataset writer: splits, files, row groups, and what a failure leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import features.dataset
from features.dataset import DATASET_FILE, DatasetWriter, dataset_info, file_fingerprint, fingerprint
from features.schema import SCHEMA_FILE, CategoricalFeature, DenseFeature, Label, Schema

SCHEMA = Schema(
    dense=(DenseFeature("x"),),
    categorical=(CategoricalFeature("c", num_embeddings=10),),
    labels=(Label("label", task="ctr"),),
)


def _table(start: int, n: int) -> pa.Table:
    """n rows whose `row` column numbers them from `start`."""
    k = np.arange(start, start + n)
    return pa.table(
        {
            "x": pa.array(k.astype(np.float32)),
            "c": pa.array(k % 10),
            "label": pa.array((k % 2).astype(np.int8)),
            "row": pa.array(k),
        }
    )


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_writes_splits_schema_and_info(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA) as w:
        w.write("train", _table(0, 30))
        w.write("test", _table(30, 7))
        w.write("train", _table(37, 5))
        w.write("valid", _table(42, 0))
        assert not out.exists()  # nothing is published before commit
        assert w.commit({"converter": "test", "seconds": 3}, files={"extra.parquet": _table(0, 2)}) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [SCHEMA_FILE, DATASET_FILE, "extra.parquet", "train", "valid", "test"]
    )
    assert Schema.load(out) == SCHEMA
    assert dataset_info(out) == {
        "rows": {"train": 35, "valid": 0, "test": 7},
        "positives": {"train": {"label": 18}, "valid": {"label": 0}, "test": {"label": 3}},
        "warnings": ["split 'valid' is empty (0 rows)"],
        "fingerprint": fingerprint(SCHEMA),
        "converter": "test",
        "seconds": 3,
    }
    for split in ("train", "valid", "test"):  # every file carries it, the empty split's too
        assert {file_fingerprint(f) for f in (out / split).glob("*.parquet")} == {fingerprint(SCHEMA)}
    assert fingerprint(SCHEMA, {"seed": 1}) != fingerprint(SCHEMA) != fingerprint(SCHEMA, _table(0, 2))
    assert json.loads((out / DATASET_FILE).read_text())["rows"]["train"] == 35
    assert pq.read_table(out / "train")["row"].to_pylist() == [*range(30), *range(37, 42)]
    assert pq.read_table(out / "test")["row"].to_pylist() == list(range(30, 37))
    assert pq.read_table(out / "extra.parquet").equals(_table(0, 2))
    assert _leftovers(tmp_path) == []
    assert dataset_info(tmp_path) == {}


def test_unknown_split(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "ds", SCHEMA) as w, pytest.raises(ValueError, match="'dev'"):
        w.write("dev", _table(0, 3))


def test_files_roll_at_rows_per_file_in_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features.dataset, "ROW_GROUP_ROWS", 10)
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA, splits=("train",), rows_per_file=30) as w:
        w.write("train", _table(0, 75))
        w.commit({})
    files = sorted((out / "train").iterdir())
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    groups = [
        [pq.ParquetFile(f).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(f).num_row_groups)]
        for f in files
    ]
    assert groups == [[10, 10, 10], [10, 10, 10], [10, 5]]
    assert pq.read_table(out / "train")["row"].to_pylist() == list(range(75))


def test_small_writes_are_buffered_into_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features.dataset, "ROW_GROUP_ROWS", 10)
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 8, 20)
    with DatasetWriter(out, SCHEMA, splits=("train",), rows_per_file=40) as w:
        start = 0
        for n in sizes:
            w.write("train", _table(start, int(n)))
            start += int(n)
        w.commit({})
    files = sorted((out / "train").iterdir())
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    assert rows[:-1] == [40] * (len(rows) - 1) and 0 < rows[-1] <= 40 and sum(rows) == start
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert all(meta.row_group(g).num_rows <= 10 for g in range(meta.num_row_groups))
        assert meta.num_row_groups == -(-meta.num_rows // 10)  # full groups, not one per small write
    assert pq.read_table(out / "train")["row"].to_pylist() == list(range(start))
    assert dataset_info(out)["rows"] == {"train": start}


def test_exception_inside_the_block_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features.dataset, "ROW_GROUP_ROWS", 10)
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(out, SCHEMA, rows_per_file=15) as w:
        w.write("train", _table(0, 40))  # files already written and one still open
        assert _leftovers(tmp_path)
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_overwrite_and_only_ours_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA) as w:
        w.write("train", _table(0, 5))
        w.commit({})
    with pytest.raises(ValueError, match=f"{out} already exists .*--overwrite"):
        DatasetWriter(out, SCHEMA)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # a directory this library did not write, whatever the flag
        with pytest.raises(ValueError, match=f"{mine} is a directory that rankers did not write"):
            DatasetWriter(mine, SCHEMA, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ValueError, match="is a file that rankers did not write"):
        DatasetWriter(notes, SCHEMA, overwrite=True)
    assert notes.read_text() == "mine"
    assert _leftovers(tmp_path) == []


def test_one_class_and_empty_splits_are_recorded_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA) as w:
        w.write("train", _table(0, 6))
        w.write("valid", _table(0, 1))  # row 0: label 0 only
        w.commit({})
    warnings = dataset_info(out)["warnings"]
    assert warnings == [
        "split 'valid': label 'label' has only negatives (0 positives in 1 rows), "
        "so its AUC is undefined there",
        "split 'test' is empty (0 rows)",
    ]
    assert [r.getMessage() for r in caplog.records] == [f"{out}: {w}" for w in warnings]


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA) as w:
        with pytest.raises(ValueError, match=rf"{out} is being written by another rankers process \(pid \d+"):
            DatasetWriter(out, SCHEMA, overwrite=True)
        w.write("train", _table(0, 3))
        w.commit({})
    with DatasetWriter(out, SCHEMA, overwrite=True) as w:  # the lock went with the first writer
        w.commit({})
    assert _leftovers(tmp_path) == []


def test_an_output_inside_or_around_an_input_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.tsv").write_text("1\t2\n")
    for out, how in ((raw, "is"), (raw / "ds", "lies inside"), (tmp_path, "contains")):
        with pytest.raises(ValueError, match=f"--out {out} {how} the input"):
            DatasetWriter(out, SCHEMA, overwrite=True, inputs=[raw])
    assert (raw / "train.tsv").read_text() == "1\t2\n"


def test_overwrite_replaces_out_only_at_commit(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA) as w:
        w.write("train", _table(0, 5))
        w.commit({"source": "v1"})
    with DatasetWriter(out, SCHEMA, overwrite=True) as w:
        w.write("train", _table(100, 3))
        assert pq.read_table(out / "train")["row"].to_pylist() == list(range(5))  # old one intact
        w.commit({"source": "v2"})
    assert dataset_info(out)["source"] == "v2"
    assert pq.read_table(out / "train")["row"].to_pylist() == [100, 101, 102]
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="x"), DatasetWriter(out, SCHEMA, overwrite=True) as w:
        w.write("train", _table(0, 1))
        raise ValueError("x")
    assert dataset_info(out)["source"] == "v2"  # a failed overwrite keeps the existing dataset
    assert _leftovers(tmp_path) == []


def test_empty_split_reads_as_zero_rows(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, SCHEMA) as w:
        w.write("train", _table(0, 4))
        w.commit({})
    for split in ("valid", "test"):
        table = pq.read_table(out / split)
        assert table.num_rows == 0
        assert [(f.name, f.type) for f in table.schema] == SCHEMA.columns()
    assert dataset_info(out)["rows"] == {"train": 4, "valid": 0, "test": 0}


def test_leaving_without_commit_leaves_nothing(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "out", SCHEMA) as w:
        w.write("train", _table(0, 5))
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []
