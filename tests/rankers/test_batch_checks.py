"""A `Batch` built by hand is checked as the parquet reader checks parquet (features.batch.BatchCheck)
before any kernel sees it: on the Predictor path (plain tables), the sharded training path
(train_step and the train pipeline on a model from `shard_ranker`) and evaluation (`predict`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.batch import Batch, BatchCheck
from features.reader import ParquetBatches, table_batches
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from rankers.config import RankerConfig
from rankers.distributed import shard_ranker, single_process_group
from rankers.evaluation import predict
from rankers.pipeline import SparseDistPipeline
from rankers.predictor import Predictor
from rankers.ranker import Ranker, build_ranker
from rankers.train import train_step

CONFIG = RankerConfig(embedding_dim=8)


@pytest.fixture(scope="module")
def schema(synthetic_small: Path) -> Schema:
    return Schema.load(synthetic_small)


@pytest.fixture(scope="module")
def batches(synthetic_small: Path) -> list[Batch]:
    reader = ParquetBatches(synthetic_small / "train", 64)
    return [b for _, b in zip(range(3), reader, strict=False)]


def _with_id(batch: Batch, key: str, row: int, value: int) -> Batch:
    """`batch` with the id of single-id feature `key` at `row` replaced by `value`."""
    kjt = batch.sparse
    values = kjt.values().clone()
    values[kjt.offset_per_key()[kjt.keys().index(key)] + row] = value
    sparse = KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=kjt.lengths(), stride=kjt.stride())
    return Batch(batch.dense, sparse, batch.labels, batch.groups)


def _with_dense(batch: Batch, row: int, column: int, value: float) -> Batch:
    dense = batch.dense.clone()
    dense[row, column] = value
    return Batch(dense, batch.sparse, batch.labels, batch.groups)


def _predictor(schema: Schema) -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_ranker(schema, CONFIG), schema)


def _sharded(schema: Schema) -> tuple[torch.nn.Module, Ranker, torch.optim.Optimizer]:
    single_process_group()
    torch.manual_seed(0)
    ranker = build_ranker(schema, CONFIG, device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    return model, ranker, optimizer


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every weight this process holds (a sharded table's local shards)."""
    out = {}
    for key, value in model.state_dict().items():
        shards = value.local_shards() if hasattr(value, "local_shards") else []
        out[key] = (shards[0].tensor if shards else value).detach().clone()
    return out


def _past_end(schema: Schema, key: str = "C3", row: int = 17) -> tuple[int, str]:
    """The size n of `key`'s table, and the message refusing id n at `row`."""
    n = schema.tables()[key][0]
    table = rf"\(table '{key}' has {n} rows\)"
    return n, rf"feature '{key}' holds id {n} at row {row}, expected ids in \[0, {n}\) {table}"


def test_an_id_past_a_table_end_is_refused_by_name_on_the_predictor_path(
    schema: Schema, batches: list[Batch]
) -> None:
    """Before: torch's `Expected i < index_size` from the plain EmbeddingBagCollection, no feature named."""
    n, message = _past_end(schema)
    bad, predictor = _with_id(batches[0], "C3", 17, n), _predictor(schema)
    with pytest.raises(ValueError, match="batch 1: " + message):
        predictor.predict_proba(bad)
    with pytest.raises(ValueError, match=message):
        next(predictor.iter_proba(bad))
    with pytest.raises(ValueError, match=message):
        predictor.evaluate(bad)


def test_an_id_past_a_table_end_is_refused_by_name_on_the_sharded_training_path(
    schema: Schema, batches: list[Batch]
) -> None:
    """Before: fbgemm clamped the id to row 0 (one C++ log line) and the step trained row 0. Now
    train_step refuses before the forward pass: nothing changes in the model."""
    model, ranker, optimizer = _sharded(schema)
    train_step(model, ranker, optimizer, batches[0])  # optimizer state exists
    before = _weights(model)
    n, message = _past_end(schema)
    with pytest.raises(ValueError, match="epoch 1, step 7: " + message):
        train_step(model, ranker, optimizer, _with_id(batches[1], "C3", 17, n), "epoch 1, step 7")
    with pytest.raises(
        ValueError, match=r"this step: feature 'C5' holds id -1 at row 0, expected ids in \[0, "
    ):
        train_step(model, ranker, optimizer, _with_id(batches[1], "C5", 0, -1))
    after = _weights(model)
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    # Evaluation on the sharded model checks too, naming the batch.
    with pytest.raises(ValueError, match="batch 2: " + message):
        predict(model, [batches[0], _with_id(batches[1], "C3", 17, n)])


def test_the_sharded_tables_raise_rather_than_clamp_an_id_past_their_end(
    schema: Schema, batches: list[Batch]
) -> None:
    """The backup behind the Python check: fbgemm's bounds check is FATAL in the fused tables, which
    raises a RuntimeError on CPU (measured: it does not abort the process)."""
    model, ranker, _ = _sharded(schema)
    n, _ = _past_end(schema)
    with pytest.raises(RuntimeError, match="idx < num_rows"):
        out = model(_with_id(batches[0], "C3", 17, n))  # the model itself: no Python check
        ranker.loss(out, batches[0].labels)[0].backward()


def test_the_train_pipeline_refuses_a_bad_batch_naming_its_step(schema: Schema, batches: list[Batch]) -> None:
    model, ranker, optimizer = _sharded(schema)
    pipeline = SparseDistPipeline(model, ranker, optimizer, where=lambda i: f"step {i + 1}")
    n, message = _past_end(schema)
    stream = iter([batches[0], batches[1], _with_id(batches[2], "C3", 17, n)])
    with pytest.raises(ValueError, match="step 3: " + message):
        for _ in range(3):
            pipeline.progress(stream)
    pipeline.detach()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_dense_values_are_refused(schema: Schema, batches: list[Batch], value: float) -> None:
    """Before: NaN dense values gave NaN probabilities with no error."""
    bad = _with_dense(batches[0], 5, 3, value)
    message = rf"dense feature 'I4' holds {value} at row 5, expected finite values"
    with pytest.raises(ValueError, match="batch 1: " + message):
        _predictor(schema).predict_proba(bad)
    model, ranker, optimizer = _sharded(schema)
    with pytest.raises(ValueError, match="this step: " + message):
        train_step(model, ranker, optimizer, bad)


def test_a_valid_batch_gives_the_same_outputs_as_without_the_check(
    schema: Schema, batches: list[Batch]
) -> None:
    """The check reads the batch and changes nothing: the Predictor's probabilities equal the bare
    model's, and three sharded train steps give bit-identical losses and predictions."""
    predictor = _predictor(schema)
    with torch.no_grad():
        bare = torch.sigmoid(predictor.ranker(batches[0]).logits["ctr"]).numpy()
    assert np.array_equal(predictor.predict_proba(batches[0])["ctr"], bare)
    runs = []
    for checked in (True, False):
        model, ranker, optimizer = _sharded(schema)
        if not checked:
            ranker.embedding.check = lambda batch, where="": None
        losses = [float(train_step(model, ranker, optimizer, b).detach()) for b in batches]
        runs.append((losses, predict(model, batches)[0]["ctr"]))
    assert runs[0][0] == runs[1][0]
    assert np.array_equal(runs[0][1], runs[1][1])


SEQUENCES = Schema(
    dense=(DenseFeature("d"),),
    categorical=(CategoricalFeature("item", 50), CategoricalFeature("cat", 7)),
    sequences=(SequenceFeature("hist_item", 50, max_len=4, table="item"),),
    labels=(Label("y", "ctr"),),
)


def _sequence_batch() -> Batch:
    rng = np.random.default_rng(0)
    lists = [[int(i) for i in rng.integers(0, 50, n)] for n in (3, 0, 4, 2)]
    table = pa.table(
        {
            "d": pa.array(rng.random(4), pa.float32()),
            "item": pa.array(rng.integers(0, 50, 4), pa.int64()),
            "cat": pa.array(rng.integers(0, 7, 4), pa.int64()),
            "hist_item": pa.array(lists, pa.list_(pa.int64())),
            "y": pa.array([0, 1, 0, 1], pa.int8()),
        }
    )
    return next(table_batches(table, SEQUENCES, batch_size=4))


def test_a_sequence_id_is_checked_against_its_target_fields_table() -> None:
    """Sequences share their target field's table; rows of a jagged key are found from its lengths."""
    batch, check = _sequence_batch(), BatchCheck(SEQUENCES)
    check(batch)
    kjt = batch.sparse
    values = kjt.values().clone()
    values[kjt.offset_per_key()[2] + 4] = 50  # the 5th id of hist_item: row 2 (lengths 3, 0, 4, 2)
    bad = Batch(
        batch.dense, KeyedJaggedTensor(kjt.keys(), values, lengths=kjt.lengths(), stride=4), batch.labels
    )
    with pytest.raises(
        ValueError,
        match=r"batch: feature 'hist_item' holds id 50 at row 2, expected ids in \[0, 50\) \(table 'item'",
    ):
        check(bad)


def test_other_malformed_batches_are_refused_naming_the_problem(batches: list[Batch], schema: Schema) -> None:
    check, b = BatchCheck(schema), batches[0]
    labels = {"ctr": b.labels["ctr"].clone()}
    labels["ctr"][9] = 2.0
    cases = {
        r"label 'ctr' holds 2.0 at row 9, expected \[0, 1\]": Batch(b.dense, b.sparse, labels),
        r"dense of shape \(64, 12\), expected \(B, 13\)": Batch(b.dense[:, 1:], b.sparse, b.labels),
        r"sparse stride 64, expected the 32 rows of dense": Batch(b.dense[:32], b.sparse, {}),
        r"sparse keys lack \['C26'\] and hold unknown \[\]": Batch(
            b.dense, KeyedJaggedTensor.from_jt_dict({k: b.sparse[k] for k in b.sparse.keys()[:-1]}), {}
        ),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match="batch: " + message):
            check(bad)
