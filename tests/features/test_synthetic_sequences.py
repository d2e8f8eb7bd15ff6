"""Tests of the DIN-shaped synthetic data: layout, history lengths, aligned item/category ids, seeding,
and a teacher whose signal is the history matched against the target.

20,000 rows (16,000 train, 2,000 valid, 2,000 test); tolerances are about 5 standard errors of the
statistic at that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from features.dataset import dataset_info
from features.datasets.synthetic_sequences import SequenceSyntheticConfig, write_synthetic_sequences
from features.reader import find_schema, parquet_files, table_batches

ROWS = 20_000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_sequences(tmp_path_factory.mktemp("seq") / "d", SequenceSyntheticConfig(rows=ROWS))


def _all(data: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(parquet_files(data / s)) for s in ("train", "valid", "test"))


def test_layout_split_sizes_and_ids_in_range(data: Path) -> None:
    schema = find_schema(data)
    assert [f.name for f in schema.categorical] == ["user_id", "item_id", "cate_id"]
    assert [(f.name, f.table, f.max_len) for f in schema.sequences] == [
        ("hist_item_id", "item_id", 50),
        ("hist_cate_id", "cate_id", 50),
    ]
    assert dataset_info(data)["rows"] == {"train": 16_000, "valid": 2_000, "test": 2_000}
    table = _all(data)
    for f in (*schema.categorical, *schema.sequences):
        column = table.column(f.name).combine_chunks()
        ids = column.flatten().to_numpy() if f in schema.sequences else column.to_numpy()
        assert ids.min() >= 1 and ids.max() < f.num_embeddings, f.name  # 0 stays "no value"


def test_history_lengths_are_capped_geometric_with_the_asked_mean(data: Path) -> None:
    lengths = pa.compute.list_value_length(_all(data).column("hist_item_id")).to_numpy()
    assert lengths.min() >= 1 and lengths.max() == 50
    # std of a length about 15: 5 standard errors of the mean of 20,000 is about 0.55
    assert abs(lengths.mean() - 17.0) < 0.55
    assert dataset_info(data)["mean_history_length"] == pytest.approx(lengths.mean())


def test_every_item_has_one_category_in_targets_and_histories(data: Path) -> None:
    table = _all(data)
    items = np.concatenate(
        [
            table.column("item_id").to_numpy(),
            table.column("hist_item_id").combine_chunks().flatten().to_numpy(),
        ]
    )
    cates = np.concatenate(
        [
            table.column("cate_id").to_numpy(),
            table.column("hist_cate_id").combine_chunks().flatten().to_numpy(),
        ]
    )
    pairs = np.unique(np.stack([items, cates], axis=1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)


def test_same_seed_same_rows_other_seed_other_rows(data: Path, tmp_path: Path) -> None:
    again = write_synthetic_sequences(tmp_path / "a", SequenceSyntheticConfig(rows=ROWS))
    other = write_synthetic_sequences(tmp_path / "b", SequenceSyntheticConfig(rows=ROWS, seed=1))
    assert _all(again).equals(_all(data))
    assert not _all(other).column("click").equals(_all(data).column("click"))


def test_the_teacher_rewards_history_matching_the_target(data: Path) -> None:
    table = _all(data)
    y, p = table.column("click").to_numpy(), table.column("teacher_p").to_numpy()
    assert abs(y.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / ROWS)
    offsets = table.column("hist_cate_id").combine_chunks().offsets.to_numpy()
    hist = table.column("hist_cate_id").combine_chunks().flatten().to_numpy()
    owner = np.repeat(np.arange(len(y)), np.diff(offsets))
    matches = np.bincount(owner, weights=hist == table.column("cate_id").to_numpy()[owner], minlength=len(y))
    seen = matches > 0
    # the click rate with the target's category in the history is far above the rate without
    assert y[seen].mean() - y[~seen].mean() > 0.1
    teacher = dataset_info(data)["teacher"]["test"]
    assert teacher["auc"] == pytest.approx(roc_auc_score(y[-2_000:], p[-2_000:]))
    assert teacher["auc"] > 0.7


def test_the_reader_batches_the_histories(data: Path) -> None:
    schema = find_schema(data)
    table = pq.read_table(parquet_files(data / "test"))
    batch = next(iter(table_batches(table, schema, 256)))
    lengths = batch.sparse["hist_item_id"].lengths()
    assert int(lengths.max()) <= 50 and int(lengths.min()) >= 1
    assert lengths.tolist() == batch.sparse["hist_cate_id"].lengths().tolist()


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"rows": 0}, "rows"),
        ({"mean_len": 60.0}, "mean_len"),
        ({"items": 10}, "items"),
        ({"target_ctr": 1.0}, "target_ctr"),
    ],
)
def test_a_bad_config_is_refused_by_name(bad: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SequenceSyntheticConfig(**bad)  # type: ignore[arg-type]
