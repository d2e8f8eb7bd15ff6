"""Behaviour histories end to end: parquet lists -> reader -> shared tables -> DIN/DIEN."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from features.reader import table_batches
from features.schema import CategoricalFeature, Label, Schema, SequenceFeature
from rankers.config import RankerConfig
from rankers.ranker import build_ranker

SCHEMA = Schema(
    categorical=(CategoricalFeature("user_id", 10), CategoricalFeature("item_id", 30)),
    sequences=(SequenceFeature("hist_item_id", 30, 3, "item_id"),),
    labels=(Label("click", "ctr"),),
    group="user_id",
)


def _table(histories: list[list[int]]) -> pa.Table:
    n = len(histories)
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, 10, n), pa.int64()),
            "item_id": pa.array(rng.integers(0, 30, n), pa.int64()),
            "hist_item_id": pa.array(histories, pa.list_(pa.int64())),
            "click": pa.array(rng.integers(0, 2, n), pa.int8()),
        }
    )


@pytest.mark.parametrize("backbone", ["din", "dien"])
@pytest.mark.parametrize("lookup", ["bag", "collection"])
def test_truncated_away_ids_change_no_output(backbone: str, lookup: str) -> None:
    """Only the most recent max_len = 3 ids are used: the older ones can be anything."""
    histories = [[1, 2, 3, 4, 5, 6], [7, 8], [], [9, 10, 11, 12]]
    older = [[29, 28, 27, 4, 5, 6], [7, 8], [], [0, 10, 11, 12]]
    recent = [[1, 2, 3, 4, 5, 7], [7, 8], [], [9, 10, 11, 12]]
    torch.manual_seed(0)
    ranker = build_ranker(SCHEMA, RankerConfig(backbone=backbone, sequence_lookup=lookup)).eval()

    def logits(h: list[list[int]]) -> torch.Tensor:
        batch = next(table_batches(_table(h), SCHEMA, batch_size=8))
        return ranker(batch).logits["ctr"]

    base = logits(histories)
    torch.testing.assert_close(logits(older), base, rtol=0, atol=0)
    changed = logits(recent)
    assert not torch.equal(changed[0], base[0])
    torch.testing.assert_close(changed[1:], base[1:], rtol=0, atol=0)


def test_tasks_subset_and_embedding_l2_cover_sequences() -> None:
    schema = Schema(
        SCHEMA.dense, SCHEMA.categorical, SCHEMA.sequences, (*SCHEMA.labels, Label("buy", "ctcvr"))
    )
    ranker = build_ranker(schema, RankerConfig(backbone="din", tasks=("ctr",), embedding_l2=1.0))
    assert ranker.tasks == ("ctr",)
    table = _table([[1, 2], [3]]).append_column("buy", pa.array([0, 1], pa.int8()))
    batch = next(table_batches(table, schema, batch_size=8))
    x = ranker.embedding(batch.dense, batch.sparse)
    expected = x.fields.square().sum() + x.sequences["hist_item_id"].values.square().sum()
    out = ranker.train()(batch)
    assert out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, expected / 2)
    with pytest.raises(ValueError, match="cvr"):
        build_ranker(schema, RankerConfig(backbone="din", tasks=("cvr",)))


def test_gauc_groups_by_the_schemas_raw_user_column() -> None:
    """A group column that is no feature (raw ids) reaches the batches in row order, and evaluation
    reports gAUC over it: two users sharing one embedding id stay two users."""
    from rankers.evaluation import evaluate_batches, predict
    from rankers.metrics import group_auc

    schema = Schema(SCHEMA.dense, SCHEMA.categorical, SCHEMA.sequences, SCHEMA.labels, group="user")
    assert ("user", pa.int64()) in schema.columns() and not schema.group_is_feature
    table = _table([[1, 2], [3], [4, 5, 6], [], [7], [8, 9]] * 5)
    users = np.repeat([100, 200, 300], 10)  # raw ids; user_id (the feature) is random
    table = table.append_column("user", pa.array(users, pa.int64()))
    torch.manual_seed(0)
    ranker = build_ranker(schema, RankerConfig(backbone="din"))
    batches = list(table_batches(table, schema, batch_size=7))
    assert all(b.groups is not None for b in batches)
    probs, labels, groups = predict(ranker, batches)
    assert groups is not None and groups.tolist() == users.tolist()
    metrics = evaluate_batches(ranker, batches, {"ctr": 0.5})  # type: ignore[arg-type]
    assert metrics["ctr"]["gauc"] == group_auc(labels["ctr"], probs["ctr"], users)
    assert metrics["ctr"]["gauc"] != group_auc(labels["ctr"], probs["ctr"], np.zeros(30))
