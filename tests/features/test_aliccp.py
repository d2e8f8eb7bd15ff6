"""Tests of the Ali-CCP converter: the label-encoded samples re-read with the stdlib csv module,
and the raw layout on small files written here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.dataset import dataset_info
from features.datasets.aliccp import FIELDS, MULTI, AliCCPConfig, convert_aliccp
from features.schema import Schema
from tests.conftest import shared_file

FILES = {
    "train": "ali_ccp/train_sample.csv",
    "valid": "ali_ccp/val_sample.csv",
    "test": "ali_ccp/test_sample.csv",
}


def _rows(relative: str) -> list[dict[str, str]]:
    with shared_file(relative).open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aliccp") / "data"
    files = {s: shared_file(p) for s, p in FILES.items()}
    return convert_aliccp(files["train"], out, progress=False, valid=files["valid"], test=files["test"])


@pytest.mark.shared_data
def test_encoded_rows_ids_and_labels_match_a_plain_reread(encoded: Path) -> None:
    rows = {s: _rows(p) for s, p in FILES.items()}
    header = list(rows["train"][0])
    ids = [c for c in header if c[0].isdigit()]
    dense = [c for c in header if c.startswith("D")]
    assert dataset_info(encoded)["rows"] == {"train": 100, "valid": 50, "test": 50}
    for split, expected in rows.items():  # each file is one split, in file order
        got = pq.read_table(encoded / split).to_pydict()
        assert got["click"] == [int(r["click"]) for r in expected]
        assert got["conversion"] == [int(r["purchase"]) for r in expected]
        for c in ids:
            assert got[c] == [int(r[c]) for r in expected], c  # ids as given
        for c in dense:
            expected_values = np.array([float(r[c]) for r in expected], np.float32)
            np.testing.assert_allclose(np.array(got[c], np.float32), expected_values, rtol=1e-6, atol=0)
    schema = Schema.load(encoded)
    largest = {c: max(int(r[c]) for split in rows.values() for r in split) for c in ids}
    assert {f.name: f.num_embeddings for f in schema.categorical} == {c: largest[c] + 1 for c in ids}
    assert largest["205"] > max(int(r["205"]) for r in rows["train"])  # valid/test ids beyond train's
    assert [f.name for f in schema.dense] == dense and not schema.multi
    assert [(lab.name, lab.task) for lab in schema.labels] == [("click", "ctr"), ("conversion", "cvr")]
    assert schema.group == "101" and schema.group_is_feature
    assert dataset_info(encoded)["positives"]["train"] == {"click": 7, "conversion": 1}


@pytest.mark.shared_data
def test_without_a_valid_file_valid_is_a_fraction_of_train(tmp_path: Path) -> None:
    config = AliCCPConfig(valid_fraction=0.2, seed=1)
    out = convert_aliccp(shared_file(FILES["train"]), tmp_path / "o", config, progress=False)
    assert dataset_info(out)["rows"] == {"train": 80, "valid": 20, "test": 0}
    both = [
        *pq.read_table(out / "train")["205"].to_pylist(),
        *pq.read_table(out / "valid")["205"].to_pylist(),
    ]
    assert sorted(both) == sorted(int(r["205"]) for r in _rows(FILES["train"]))


def _edited(tmp_path: Path, edits: dict[tuple[int, str], str], name: str = "bad.csv") -> Path:
    with shared_file(FILES["train"]).open(newline="") as fh:
        lines = list(csv.reader(fh))[:30]
    for (row, column), value in edits.items():
        lines[row + 1][lines[0].index(column)] = value
    path = tmp_path / name
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(lines)
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({(6, "click"): "0", (6, "purchase"): "1"}, "line 8, column purchase: 1; expected 0 when click is 0"),
        ({(3, "205"): "-4"}, "line 5, column 205: -4; expected an integer id >= 0"),
        ({(2, "101"): ""}, "line 4, column 101: empty; expected a value"),
        ({(9, "D508"): "nan"}, "line 11, column D508: nan; expected a finite number"),
        ({(0, "purchase"): "7"}, "line 2, column purchase: 7; expected 0 or 1"),
    ],
)
def test_encoded_bad_input_names_file_line_and_column(
    tmp_path: Path, edits: dict[tuple[int, str], str], message: str
) -> None:
    path = _edited(tmp_path, edits)
    with pytest.raises(ValueError, match="bad.csv: " + message):
        convert_aliccp(path, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="bad.csv: " + message):  # in the test file too
        convert_aliccp(shared_file(FILES["train"]), tmp_path / "out", test=path, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_encoded_files_must_share_the_train_columns(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("click,purchase,101,999\n0,0,1,1\n")
    with pytest.raises(ValueError, match=r"other.csv: line 1 \(header\): missing \['121'"):
        convert_aliccp(shared_file(FILES["train"]), tmp_path / "out", valid=other, progress=False)
    other.write_text("click,purchase,101,user_name\n0,0,1,x\n")
    with pytest.raises(ValueError, match=r"line 1 \(header\): unknown columns \['user_name'\]"):
        convert_aliccp(other, tmp_path / "out", progress=False)


# --- the raw layout ---------------------------------------------------------------------------


def _list(entries: list[tuple[str, int]]) -> str:
    return "\x01".join(
        f"{field}\x02{feature}\x03{0.5 * (i + 1)}" for i, (field, feature) in enumerate(entries)
    )


COMMON = {
    "u1md5": [("101", 9001), ("121", 3), ("109_14", 11), ("109_14", 12), ("150_14", 7)],
    "u2md5": [("101", 9002), ("121", 4), ("109_14", 11)],
    "u3md5": [("101", 9003)],
}
SKELETON = [  # (click, conversion, md5, skeleton entries)
    (1, 0, "u1md5", [("205", 500), ("508", 61), ("508", 62)]),
    (0, 0, "u2md5", [("205", 501)]),
    (1, 1, "u1md5", [("205", 500), ("301", 1)]),
    (0, 0, "u3md5", []),
] * 5


def _write_raw(directory: Path, skeleton: list[tuple], common: dict[str, list], split: str = "train") -> Path:
    directory.mkdir(exist_ok=True)
    lines = [f"{k},{len(v)},{_list(v)}\n" for k, v in common.items()]
    (directory / f"common_features_{split}.csv").write_text("".join(lines))
    lines = [f"{i + 1},{c},{v},{m},{len(e)},{_list(e)}\n" for i, (c, v, m, e) in enumerate(skeleton)]
    (directory / f"sample_skeleton_{split}.csv").write_text("".join(lines))
    return directory


def test_raw_joins_common_features_by_md5_with_multi_value_lists(tmp_path: Path) -> None:
    raw = _write_raw(tmp_path / "raw", SKELETON, COMMON)
    test_rows = [(1, 0, "t1md5", [("205", 500)]), (0, 0, "t2md5", [("205", 999)])]
    _write_raw(raw, test_rows, {"t1md5": [("101", 9001), ("109_14", 12)], "t2md5": [("101", 42)]}, "test")
    out = convert_aliccp(raw, tmp_path / "out", AliCCPConfig(valid_fraction=0.0), progress=False)
    assert dataset_info(out)["rows"] == {"train": 20, "valid": 0, "test": 2}
    schema = Schema.load(out)
    assert [f.name for f in schema.categorical] == list(FIELDS)
    assert {f.name for f in schema.multi} == set(MULTI) and schema.group == "user"
    assert [(lab.name, lab.task) for lab in schema.labels] == [("click", "ctr"), ("conversion", "cvr")]
    train = pq.read_table(out / "train").to_pydict()
    # train counts: 205: 500 x10, 501 x5; 109_14: 11 x15 (u1 and u2), 12 x10; 101: 9001 x10, others x5
    assert train["205"][:4] == [2, 3, 2, 0]
    assert train["109_14"][:4] == [[2, 3], [2], [2, 3], []]  # every entry, common ones joined
    assert train["150_14"][:4] == [[2], [], [2], []]
    assert train["508"][:4] == [[2, 3], [], [], []]  # skeleton multi-value entries
    assert train["101"][:4] == [2, 3, 2, 4] and train["user"][:4] == [9001, 9002, 9001, 9003]
    assert train["121"][:4] == [2, 3, 2, 0] and train["301"][:4] == [0, 0, 2, 0]
    assert train["click"][:4] == [1, 0, 1, 0] and train["conversion"][:4] == [0, 0, 1, 0]
    test = pq.read_table(out / "test").to_pydict()
    assert test["205"] == [2, 1] and test["101"] == [2, 1] and test["user"] == [9001, 42]  # unseen -> 1
    assert test["109_14"] == [[3], []]
    vocab = pq.read_table(out / "vocabulary.parquet").to_pydict()
    rows = list(zip(vocab["feature"], vocab["value"], vocab["id"], vocab["count"], strict=True))
    assert [r for r in rows if r[0] == "109_14"] == [("109_14", "11", 2, 15), ("109_14", "12", 3, 10)]


def test_raw_min_count_and_valid_split(tmp_path: Path) -> None:
    raw = _write_raw(tmp_path / "raw", SKELETON, COMMON)
    config = AliCCPConfig(valid_fraction=0.25, min_count=6, seed=2)
    out = convert_aliccp(raw, tmp_path / "out", config, progress=False)
    assert dataset_info(out)["rows"] == {"train": 15, "valid": 5, "test": 0}
    counted = sum(1 for r in pq.read_table(out / "train").to_pydict()["user"] if r == 9001)
    vocab = pq.read_table(out / "vocabulary.parquet").to_pydict()
    users = [
        (v, n) for f, v, n in zip(vocab["feature"], vocab["value"], vocab["count"], strict=True) if f == "101"
    ]
    assert users[0] == ("9001", counted) and all(n >= 6 for _, n in users)  # counted over train rows only


@pytest.mark.parametrize(
    ("line", "edit", "message"),
    [
        (3, lambda r: (r[0], r[1], "nomd5", r[3]), "line 3, column md5: 'nomd5'; expected a md5 of"),
        (2, lambda r: (0, 1, r[2], r[3]), "line 2, column conversion: 1; expected 0 when click is 0"),
        (
            4,
            lambda r: (*r[:3], [("205", 1), ("205", 2)]),
            "line 4, column feature_list: '2 entries of field 205'",
        ),
        (
            1,
            lambda r: (*r[:3], [("999", 1)]),
            r"line 1, column feature_list: '999\\x021\\x030\.5'; expected fields among 101, 121",
        ),
        (
            1,
            lambda r: (*r[:3], [("205", "x")]),
            "line 1, column feature_list: .*expected integer feature ids",
        ),
    ],
)
def test_raw_bad_input_names_file_line_and_column(
    tmp_path: Path, line: int, edit: object, message: str
) -> None:
    rows = list(SKELETON)
    rows[line - 1] = edit(rows[line - 1])  # type: ignore[operator]
    raw = _write_raw(tmp_path / "raw", rows, COMMON)
    with pytest.raises(ValueError, match="sample_skeleton_train.csv: " + message):
        convert_aliccp(raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_raw_checks_the_common_file_and_feature_num(tmp_path: Path) -> None:
    raw = _write_raw(tmp_path / "raw", SKELETON, {**COMMON, "u4md5": [("101", 1)]})
    path = raw / "common_features_train.csv"
    path.write_text(path.read_text() + f"u2md5,1,{_list([('101', 5)])}\n")
    with pytest.raises(
        ValueError, match=r"common_features_train\.csv: line 5, column md5: 'u2md5' appears again"
    ):
        convert_aliccp(raw, tmp_path / "out", progress=False)
    path.write_text(path.read_text().replace("u3md5,1,", "u3md5,2,"))
    with pytest.raises(
        ValueError, match=r"common_features_train\.csv: line 3, column feature_num: 2; expected 1"
    ):
        convert_aliccp(raw, tmp_path / "out", progress=False)
    (raw / "sample_skeleton_test.csv").write_text("")
    with pytest.raises(ValueError, match=r"no common_features_test\.csv"):
        convert_aliccp(raw, tmp_path / "out", progress=False)
