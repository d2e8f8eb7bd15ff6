"""Tests of the AliExpress converter against the real samples re-read with the stdlib csv module."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.dataset import dataset_info
from features.datasets.aliexpress import CATS, NUMS, AliExpressConfig, convert_aliexpress
from features.schema import Schema
from tests.conftest import shared_file

TRAIN, TEST = "aliexpress/train_1k.csv", "aliexpress/test_1k.csv"
ALL_TRAIN = AliExpressConfig(valid_fraction=0.0)


def _rows(relative: str) -> list[dict[str, str]]:
    with shared_file(relative).open(newline="") as fh:
        return list(csv.DictReader(fh))


def _vocabulary(rows: list[dict[str, str]], column: str, min_count: int) -> dict[str, int]:
    """value -> id, counted here: 2.. by descending count, ties by the integer value."""
    counts = Counter(r[column] for r in rows)
    kept = sorted((v for v, n in counts.items() if n >= min_count), key=lambda v: (-counts[v], int(v)))
    return {v: i + 2 for i, v in enumerate(kept)}


def _convert(tmp_path: Path, name: str, config: AliExpressConfig = ALL_TRAIN, **kw: object) -> Path:
    return convert_aliexpress(shared_file(TRAIN), tmp_path / name, config, progress=False, **kw)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The train sample whole in train (min_count 1 and 2), the test sample in test."""
    base = tmp_path_factory.mktemp("aliexpress")
    configs = {m: AliExpressConfig(min_count=m, valid_fraction=0.0) for m in (1, 2)}
    return {m: _convert(base, f"m{m}", c, test=shared_file(TEST)) for m, c in configs.items()}


def _check_rows(table: pa.Table, rows: list[dict[str, str]], vocab: dict[str, dict[str, int]]) -> None:
    """Every row of `table` against the CSV row at the same position."""
    assert table.num_rows == len(rows)
    got = table.to_pydict()
    for c in ("search_id", "click", "conversion"):
        assert got[c] == [int(r[c]) for r in rows], c
    for c in CATS:
        assert got[c] == [vocab[c].get(r[c], 1) for r in rows], c
    for c in NUMS:
        assert np.array_equal(table[c].to_numpy(), np.array([float(r[c]) for r in rows], np.float32)), c


@pytest.mark.shared_data
@pytest.mark.parametrize("min_count", [1, 2])
def test_rows_labels_and_ids_match_a_plain_reread(converted: dict[int, Path], min_count: int) -> None:
    train, test = _rows(TRAIN), _rows(TEST)
    out = converted[min_count]
    vocab = {c: _vocabulary(train, c, min_count) for c in CATS}
    _check_rows(pq.read_table(out / "train"), train, vocab)
    _check_rows(pq.read_table(out / "test"), test, vocab)  # mapped with the train vocabulary
    assert dataset_info(out)["rows"] == {"train": 1000, "valid": 0, "test": 1000}
    unseen = [r["categorical_7"] for r in test if r["categorical_7"] not in vocab["categorical_7"]]
    written = pq.read_table(out / "test", columns=["categorical_7"])["categorical_7"].to_numpy()
    assert int((written == 1).sum()) == len(unseen)  # values not in the train vocabulary -> 1
    assert len(unseen) == 184 if min_count == 1 else len(unseen) > 184
    schema = Schema.load(out)
    assert [c.num_embeddings for c in schema.categorical] == [2 + len(vocab[c]) for c in CATS]
    assert [(lab.name, lab.task) for lab in schema.labels] == [("click", "ctr"), ("conversion", "cvr")]
    assert schema.group == "search_id" and not schema.group_is_feature
    assert [f.name for f in schema.dense] == list(NUMS)
    positives = dataset_info(out)["positives"]
    assert positives["train"] == {"click": 29, "conversion": 10} and positives["test"]["click"] == 43
    stored = pq.read_table(out / "vocabulary.parquet").to_pydict()
    assert {(f, v): i for f, v, i in zip(stored["feature"], stored["value"], stored["id"], strict=True)} == {
        (c, v): i for c in CATS for v, i in vocab[c].items()
    }


@pytest.mark.shared_data
def test_valid_is_a_seeded_exact_fraction_of_train(converted: dict[int, Path], tmp_path: Path) -> None:
    a = _convert(tmp_path, "a", AliExpressConfig(valid_fraction=0.1, seed=3))
    b = _convert(tmp_path, "b", AliExpressConfig(valid_fraction=0.1, seed=3))
    c = _convert(tmp_path, "c", AliExpressConfig(valid_fraction=0.1, seed=4))
    assert dataset_info(a)["rows"] == {"train": 900, "valid": 100, "test": 0}
    assert pq.read_table(a / "valid").equals(pq.read_table(b / "valid"))
    assert not pq.read_table(a / "valid").equals(pq.read_table(c / "valid"))
    # train + valid hold every row once; the vocabulary counts only the train split
    both = pa.concat_tables([pq.read_table(a / s) for s in ("train", "valid")])
    key = ["search_id", "numerical_20", "numerical_40", "click", "conversion"]
    whole = pq.read_table(converted[1] / "train").select(key)
    assert sorted(zip(*both.select(key).to_pydict().values(), strict=True)) == sorted(
        zip(*whole.to_pydict().values(), strict=True)
    )
    counted = pq.read_table(a / "vocabulary.parquet").to_pydict()
    train_7 = Counter(pq.read_table(a / "train")["categorical_7"].to_pylist())
    ids = [i for f, i in zip(counted["feature"], counted["id"], strict=True) if f == "categorical_7"]
    counts = [n for f, n in zip(counted["feature"], counted["count"], strict=True) if f == "categorical_7"]
    assert [train_7[i] for i in ids] == counts


@pytest.mark.shared_data
def test_vocabulary_from_maps_test_rows_like_the_first_conversion(
    converted: dict[int, Path], tmp_path: Path
) -> None:
    out = convert_aliexpress(
        (), tmp_path / "scored", vocabulary_from=converted[2], test=shared_file(TEST), progress=False
    )
    assert pq.read_table(out / "test").equals(pq.read_table(converted[2] / "test"))
    assert Schema.load(out) == Schema.load(converted[2])
    assert dataset_info(out)["rows"] == {"train": 0, "valid": 0, "test": 1000}


def _edited(tmp_path: Path, row: int, column: str, value: str) -> Path:
    """The first 20 rows of the train sample with data row `row` (0-based) holding `value`."""
    with shared_file(TRAIN).open(newline="") as fh:
        lines = list(csv.reader(fh))[:21]
    lines[row + 1][lines[0].index(column)] = value
    if column == "conversion":
        lines[row + 1][lines[0].index("click")] = "0"
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(lines)
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (5, "conversion", "1", "line 7, column conversion: 1; expected 0 when click is 0"),
        (2, "click", "2", "line 4, column click: 2; expected 0 or 1"),
        (9, "numerical_5", "inf", "line 11, column numerical_5: inf; expected a finite number"),
        (3, "numerical_63", "", "line 5, column numerical_63: empty; expected a value"),
        (0, "categorical_3", "x7", "line 2, column categorical_3: .*expected an integer id"),
        (4, "search_id", "", "line 6, column search_id: empty; expected a value"),
    ],
)
def test_bad_input_names_file_line_column_and_value(
    tmp_path: Path, row: int, column: str, value: str, message: str
) -> None:
    path = _edited(tmp_path, row, column, value)
    for train, test in ((path, ()), (shared_file(TRAIN), path)):  # in a train file or a test file
        with pytest.raises(ValueError, match="bad.csv: " + message):
            convert_aliexpress(train, tmp_path / "out", test=test, progress=False)
        assert not (tmp_path / "out").exists()


def test_header_must_name_each_column_once(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("search_id,categorical_1,click,conversion\n1,2,0,0\n")
    with pytest.raises(ValueError, match=r"h.csv: line 1 \(header\): missing \['categorical_2'"):
        convert_aliexpress(path, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=r"valid_fraction 1\.0: expected a number in"):
        AliExpressConfig(valid_fraction=1.0)
