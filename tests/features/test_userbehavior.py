"""Tests of the UserBehavior converter against a plain-Python recomputation from the real sample."""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.dataset import dataset_info
from features.datasets.userbehavior import UserBehaviorConfig, convert_userbehavior
from features.reader import ParquetBatches
from features.schema import Schema
from tests.conftest import shared_file

SAMPLE = "taobao/UserBehavior_head_650users.csv"
BEIJING = dt.timezone(dt.timedelta(hours=8))
FIRST, LAST = dt.date(2017, 11, 25), dt.date(2017, 12, 3)


def _day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts, BEIJING).date()


def _split(ts: int) -> int:
    """0 train, 1 valid (2017-12-02), 2 test (2017-12-03), the sample's default split."""
    return {dt.date(2017, 12, 2): 1, dt.date(2017, 12, 3): 2}.get(_day(ts), 0)


@pytest.fixture(scope="module")
def behaviours() -> dict[str, list[tuple[int, int, str, str, str]]]:
    """user -> its kept behaviours (time, file row, item, category, type), by (time, file row)."""
    out: dict[str, list[tuple[int, int, str, str, str]]] = defaultdict(list)
    with shared_file(SAMPLE).open(newline="") as fh:
        for row, (user, item, cate, kind, ts) in enumerate(csv.reader(fh)):
            if FIRST <= _day(int(ts)) <= LAST:
                out[user].append((int(ts), row, item, cate, kind))
    return {u: sorted(b) for u, b in out.items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The sample with 2 negatives per positive, seeds 0 and 1, max_len 5 (cuts many histories)."""
    base = tmp_path_factory.mktemp("userbehavior")
    src = shared_file(SAMPLE)
    return {
        seed: convert_userbehavior(
            src, base / f"seed{seed}", UserBehaviorConfig(negatives=2, seed=seed, max_len=5), progress=False
        )
        for seed in (0, 1)
    }


def _all(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(out / s) for s in ("train", "valid", "test"))


def _ids(out: Path, feature: str) -> dict[str, int]:
    v = pq.read_table(out / "vocabulary.parquet").to_pydict()
    return {val: i for f, val, i in zip(v["feature"], v["value"], v["id"], strict=True) if f == feature}


def _expected(behaviours: list[tuple[int, int, str, str, str]], max_len: int) -> list[tuple]:
    """(item, history items, conversion, day) of every positive of one user, recomputed naively:
    conversion when the user buys the item at that second or later, in the same split."""
    out = []
    for t, _, item, _, _ in behaviours:
        earlier = [b[2] for b in behaviours if b[0] < t]
        if earlier:
            buy = any(
                b[4] == "buy" and b[2] == item and b[0] >= t and _split(b[0]) == _split(t) for b in behaviours
            )
            out.append((item, tuple(earlier[-max_len:]), int(buy), _day(t)))
    return out


@pytest.mark.shared_data
def test_positives_histories_and_conversion_match_a_naive_recomputation(
    converted: dict[int, Path], behaviours: dict[str, list]
) -> None:
    out = converted[0]
    table = _all(out).to_pydict()
    users, items, cates = _ids(out, "user_id"), _ids(out, "item_id"), _ids(out, "cate_id")
    raw_item = {i: v for v, i in items.items()}
    catalogue = pq.read_table(out / "catalogue.parquet").to_pydict()
    cate_of = dict(zip(catalogue["item_id"], catalogue["cate_id"], strict=True))
    checked = 0
    for user in list(behaviours)[:40]:
        rows = [i for i, u in enumerate(table["user_id"]) if u == users[user] and table["click"][i] == 1]
        got = sorted(
            (
                raw_item[table["item_id"][i]],
                tuple(raw_item[h] for h in table["hist_item_id"][i]),
                table["conversion"][i],
            )
            for i in rows
        )
        expected = sorted(e[:3] for e in _expected(behaviours[user], 5))
        assert got == expected, user
        checked += len(got)
        for i in rows:  # categories follow the catalogue (an item's first category)
            assert table["hist_cate_id"][i] == [cate_of[h] for h in table["hist_item_id"][i]]
            assert table["cate_id"][i] == cate_of[table["item_id"][i]]
    assert cates and all(i > 0 for i in cates.values())
    assert checked > 1000  # positives compared


@pytest.mark.shared_data
def test_split_is_by_the_positives_day_last_day_test(converted: dict[int, Path], behaviours: dict) -> None:
    per_day: dict[dt.date, int] = defaultdict(int)
    for b in behaviours.values():
        for *_, day in _expected(b, 5):
            per_day[day] += 1
    info = dataset_info(converted[0])
    test = per_day[LAST]
    valid = per_day[LAST - dt.timedelta(days=1)]
    train = sum(per_day.values()) - test - valid
    assert info["rows"] == {"train": 3 * train, "valid": 3 * valid, "test": 3 * test}  # 1 + 2 negatives
    assert info["days"]["test"] == ["2017-12-03"] and info["days"]["valid"] == ["2017-12-02"]
    assert info["excluded_out_of_range"] == 68_571 - sum(len(b) for b in behaviours.values()) == 29
    assert info["users"] == 650 and info["items_with_several_categories"] == 1


@pytest.mark.shared_data
def test_negatives_never_the_positive_and_seeded(converted: dict[int, Path], tmp_path: Path) -> None:
    a, b = (pq.read_table(converted[s] / "train") for s in (0, 1))
    item = a["item_id"].to_numpy().reshape(-1, 3)  # positive, negative, negative
    assert (a["click"].to_numpy().reshape(-1, 3) == [1, 0, 0]).all()
    assert (a["conversion"].to_numpy().reshape(-1, 3)[:, 1:] == 0).all()
    assert (a["conversion"].to_numpy() <= a["click"].to_numpy()).all()  # a conversion implies a click
    assert (item[:, 1:] != item[:, :1]).all()
    hist = a["hist_item_id"].to_pylist()
    assert all(hist[i] == hist[i + 1] == hist[i + 2] for i in range(0, len(hist), 3))
    n_items = Schema.load(converted[0]).categorical[1].num_embeddings
    assert item.min() >= 1 and item.max() < n_items
    other = b["item_id"].to_numpy().reshape(-1, 3)
    assert (other[:, 0] == item[:, 0]).all() and (other[:, 1:] != item[:, 1:]).mean() > 0.99
    again = convert_userbehavior(
        shared_file(SAMPLE), tmp_path / "again", UserBehaviorConfig(negatives=2, max_len=5), progress=False
    )
    for split in ("train", "valid", "test"):
        assert pq.read_table(again / split).equals(pq.read_table(converted[0] / split))


@pytest.mark.shared_data
def test_schema_and_reader(converted: dict[int, Path]) -> None:
    out = converted[0]
    schema = Schema.load(out)
    assert schema.group == "user_id" and schema.tasks == ("ctr", "cvr")
    assert [lab.name for lab in schema.labels] == ["click", "conversion"]
    assert [(s.name, s.table, s.max_len) for s in schema.sequences] == [
        ("hist_item_id", "item_id", 5),
        ("hist_cate_id", "cate_id", 5),
    ]
    reader = ParquetBatches(out / "train", batch_size=4096, schema=schema)
    batches = list(reader)
    assert sum(len(b.labels["ctr"]) for b in batches) == dataset_info(out)["rows"]["train"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ub.csv"
    path.write_text(text)
    return path


GOOD = "1,10,100,pv,1511600000\n1,11,100,buy,1511600100\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "2,12,100,pv\n", "line 3: 4 comma-separated fields, expected 5"),
        (GOOD + "2,x12,100,pv,1511600000\n", "line 3, column item_id"),
        (GOOD + "2,12,100,click,1511600000\n", "line 3, column behavior: 'click'; expected one of pv"),
        (
            GOOD + "2,12,100,pv,1511600000\n1,13,100,pv,1511600000\n",
            "line 4, column user_id: user 1 appears again",
        ),
        (GOOD + "2,,100,pv,1511600000\n", "line 3, column item_id: empty"),
    ],
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="ub.csv: " + message.replace("(", r"\(")):
        convert_userbehavior(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_same_second_behaviours_are_not_history_and_existing_output_kept(tmp_path: Path) -> None:
    path = _write(tmp_path, "1,10,100,pv,1511600000\n1,11,100,cart,1511600000\n1,12,101,buy,1511600001\n")
    out = convert_userbehavior(path, tmp_path / "out", UserBehaviorConfig(negatives=1), progress=False)
    rows = _all(out).to_pydict()
    assert rows["click"] == [1, 0] and rows["conversion"] == [1, 0]
    assert rows["hist_item_id"] == [[1, 2], [1, 2]]  # items 10 and 11, both a second earlier
    with pytest.raises(ValueError, match="already exists"):
        convert_userbehavior(path, out, progress=False)
    assert np.array_equal(
        _all(convert_userbehavior(path, out, overwrite=True, progress=False))["click"], [1, 0]
    )
