"""Tests of the Alimama converter: the real joined and dmr samples read with the stdlib csv module,
and small hand-made raw tables for the history join."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.dataset import dataset_info
from features.datasets.taobao import PROFILE, TaobaoAdConfig, convert_taobao_ad, detect_layout
from features.reader import ParquetBatches
from features.schema import Schema
from tests.conftest import shared_file

JOINED = "taobao/alimama_joined_sample100.csv"
DMR = "taobao/alimama_dmr_sample99.csv"
ALL_TRAIN = TaobaoAdConfig(split_by="random", split=(1.0, 0.0, 0.0))  # file order kept


def _vocab(out: Path) -> dict[tuple[str, str], int]:
    v = pq.read_table(out / "vocabulary.parquet").to_pydict()
    return {(f, val): i for f, val, i in zip(v["feature"], v["value"], v["id"], strict=True)}


def _csv(relative: str) -> list[list[str]]:
    with shared_file(relative).open(newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.shared_data
def test_joined_sample_rows_histories_and_shared_vocabulary(tmp_path: Path) -> None:
    header, *rows = _csv(JOINED)
    col = {name: i for i, name in enumerate(header)}
    out = convert_taobao_ad(shared_file(JOINED), tmp_path / "j", ALL_TRAIN, progress=False)
    table, vocab = pq.read_table(out / "train").to_pydict(), _vocab(out)
    assert len(rows) == len(table["click"]) == 100
    for i, r in enumerate(rows):
        sequence = r[col["click_sequence"]].split("^") if r[col["click_sequence"]] else []
        assert table["hist_adgroup_id"][i] == [vocab["adgroup_id", s] for s in sequence]
        assert table["adgroup_id"][i] == vocab["adgroup_id", r[col["adgroup_id"]]]
        assert table["click"][i] == int(r[col["clk"]])
        assert table["user"][i] == int(r[col["userid"]])  # the raw id: gAUC groups by it
        assert math.isclose(table["price"][i], math.log1p(float(r[col["price"]])), rel_tol=1e-6)
        for c in PROFILE:  # empty profile fields are missing (id 0), others in the vocabulary
            assert table[c][i] == (vocab[c, r[col[c]]] if r[col[c]] else 0)
    assert sum(len(h) for h in table["hist_adgroup_id"]) == 40  # 15 x 1, 8 x 2, 1 x 3, 1 x 6 ids
    schema = Schema.load(out)
    assert schema.group == "user" and schema.tasks == ("ctr",)
    assert [(s.name, s.table, s.max_len) for s in schema.sequences] == [("hist_adgroup_id", "adgroup_id", 50)]


@pytest.mark.shared_data
def test_joined_time_split_keeps_every_row_of_2017_05_06_in_train(tmp_path: Path) -> None:
    out = convert_taobao_ad(shared_file(JOINED), tmp_path / "t", progress=False)
    rows = dataset_info(out)["rows"]
    assert rows["test"] == 0 and rows["train"] + rows["valid"] == 100 and 0 < rows["valid"] < 25


@pytest.mark.shared_data
def test_dmr_sample_masks_become_histories(tmp_path: Path) -> None:
    header, *rows = _csv(DMR)
    assert len(header) == 267 and detect_layout(shared_file(DMR))[0] == "dmr"
    out = convert_taobao_ad(shared_file(DMR), tmp_path / "d", ALL_TRAIN, progress=False)
    table, vocab = pq.read_table(out / "train").to_pydict(), _vocab(out)
    assert len(table["click"]) == 99 and table["click"] == [int(r[-1]) for r in rows]
    lengths = [len(h) for h in table["hist_cate_id"]]
    assert lengths == [sum(int(m) for m in r[150:200]) for r in rows] and min(lengths) == 28
    for i, r in enumerate(rows):
        real = [j for j in range(50) if r[150 + j] == "1"]
        assert table["hist_cate_id"][i] == [vocab["cate_id", r[50 + j]] for j in real]
        assert table["hist_brand"][i] == [vocab["brand", r[100 + j]] for j in real]
        assert table["hist_btag"][i] == [vocab["btag", r[j]] for j in real]
        assert (
            table["cate_id"][i] == vocab["cate_id", r[260]]
            and table["adgroup_id"][i] == vocab["adgroup_id", r[259]]
        )
    assert np.allclose(table["price"], [float(r[264]) for r in rows])  # as given
    with pytest.raises(ValueError, match="no times; expected split_by 'random'"):
        convert_taobao_ad(shared_file(DMR), tmp_path / "x", progress=False)
    batches = list(ParquetBatches(out / "train", batch_size=32))
    assert sum(len(b.labels["ctr"]) for b in batches) == 99


@pytest.mark.shared_data
def test_dmr_bad_mask_and_joined_bad_sequence_name_the_line(tmp_path: Path) -> None:
    header, *rows = _csv(DMR)
    rows[3][150] = "2"
    bad = tmp_path / "dmr.csv"
    bad.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    with pytest.raises(ValueError, match=r"dmr.csv: line 5, column mask \(step 1\): 2; expected 0"):
        convert_taobao_ad(bad, tmp_path / "o", ALL_TRAIN, progress=False)
    rows[3][150], rows[6][150], rows[6][151] = "0", "1", "0"  # a 0 after a 1
    bad.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    with pytest.raises(ValueError, match=r"line 8, column mask \(step 2\)"):
        convert_taobao_ad(bad, tmp_path / "o", ALL_TRAIN, progress=False)
    lines = shared_file(JOINED).read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",12^x"
    (tmp_path / "j.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"j.csv: line 3, column click_sequence: '12\^x'"):
        convert_taobao_ad(tmp_path / "j.csv", tmp_path / "o", ALL_TRAIN, progress=False)
    assert not (tmp_path / "o").exists()


MAY_6 = 1494000000  # 2017-05-06 00:00 Beijing
MAY_13 = 1494604800  # 2017-05-13 00:00 Beijing


def _raw(tmp_path: Path, behaviours: list[str]) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    (d / "raw_sample.csv").write_text(
        "user,time_stamp,adgroup_id,pid,nonclk,clk\n"
        f"1,{MAY_6 + 1000},10,430548_1007,1,0\n"
        f"1,{MAY_13 + 5},11,430539_1007,0,1\n"
        f"2,{MAY_6 + 50},12,430548_1007,1,0\n"
        f"2,{MAY_13 + 86400},10,430548_1007,1,0\n"  # 2017-05-14: outside the dates
    )
    (d / "ad_feature.csv").write_text(
        "adgroup_id,cate_id,campaign_id,customer,brand,price\n10,100,1000,50,NULL,9.9\n11,101,1001,51,7,100\n"
    )
    (d / "user_profile.csv").write_text(  # the real header's trailing space
        "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,"
        "new_user_class_level \n1,0,5,2,5,,3,0,3\n"
    )
    (d / "behavior_log.csv").write_text(
        "user,time_stamp,btag,cate,brand\n" + "".join(b + "\n" for b in behaviours)
    )
    return d


def test_raw_tables_histories_strictly_before_and_cut_to_max_len(tmp_path: Path) -> None:
    older = [f"1,{MAY_6 - 100 + i},pv,{200 + i},5" for i in range(60)]  # cate 200..259, oldest first
    same = [f"1,{MAY_6 + 1000},cart,999,6", f"2,{MAY_6 + 50},fav,998,NULL", f"2,{MAY_6 + 49},buy,101,NULL"]
    d = _raw(tmp_path, [*same, *older[::-1]])  # file order is not time order
    config = TaobaoAdConfig(buckets=3, valid_fraction=0.0)
    out = convert_taobao_ad(d, tmp_path / "out", config, progress=False)
    info, vocab = dataset_info(out), _vocab(out)
    assert info["rows"] == {"train": 2, "valid": 0, "test": 1} and info["excluded_outside_dates"] == 1
    assert info["missing_user_profile"] == 2 and info["missing_ad_feature"] == 1  # user 2; adgroup 12
    train = pq.read_table(out / "train").to_pydict()
    test = pq.read_table(out / "test").to_pydict()
    by_user = {u: i for i, u in enumerate(train["userid"])}
    one, two = by_user[vocab["userid", "1"]], by_user[vocab["userid", "2"]]
    # user 1 at MAY_6 + 1000: the 50 most recent of the 60 older behaviours, not the same-second one
    assert train["hist_cate_id"][one] == [vocab["cate_id", str(c)] for c in range(210, 260)]
    assert train["hist_btag"][one] == [vocab["btag", "pv"]] * 50
    # user 2 at MAY_6 + 50: only the buy a second earlier; its NULL brand is missing
    assert train["hist_cate_id"][two] == [vocab["cate_id", "101"]] and train["hist_brand"][two] == [0]
    assert (
        all(train[c][two] == 0 for c in PROFILE) and train["cate_id"][two] == 0 and train["price"][two] == 0
    )
    assert train["brand"][one] == 0 and train["cate_id"][one] == vocab["cate_id", "100"]  # ad 10: brand NULL
    # user 1 on 2017-05-13 (test): the same-second cart (cate 999) is now history; unseen in train
    assert len(test["hist_cate_id"][0]) == 50 and test["hist_cate_id"][0][-1] == 1
    assert test["click"] == [1] and math.isclose(test["price"][0], math.log1p(100), rel_tol=1e-6)
    cate = next(f for f in Schema.load(out).categorical if f.name == "cate_id")
    assert Schema.load(out).tables()["cate_id"] == (cate.num_embeddings, ("cate_id", "hist_cate_id"))


def test_raw_bad_btag_and_missing_table(tmp_path: Path) -> None:
    d = _raw(tmp_path, [f"1,{MAY_6},like,100,5"])
    with pytest.raises(
        ValueError, match=r"behavior_log.csv: line 2, column btag: 'like'; expected one of pv"
    ):
        convert_taobao_ad(d, tmp_path / "out", progress=False)
    (d / "ad_feature.csv").unlink()
    with pytest.raises(ValueError, match="ad_feature"):
        convert_taobao_ad(d, tmp_path / "out", progress=False)
