"""TorchRec's TrainPipelineSparseDist: the same training as the plain loop, in one and two processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rankers.cli import main
from rankers.config import RankerConfig, TrainConfig
from rankers.predictor import Predictor
from rankers.train import train

SHORT = TrainConfig(epochs=2, batch_size=256, embedding_lr=0.02, max_steps=40, progress=False)


def _same_run(a: dict, b: dict) -> None:
    for row in (*a["history"], *b["history"]):
        row.pop("examples_per_s")
    assert a["history"] == b["history"]
    assert a["test"] == b["test"]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("backbone", "lookup", "l2"), [("mlp", "bag", 0.0), ("din", "bag", 1e-4), ("dien", "collection", 0.0)]
)
def test_the_pipeline_trains_like_the_plain_loop(
    criteo_8k_2k: Path, userbehavior: Path, tmp_path: Path, backbone: str, lookup: str, l2: float
) -> None:
    """Over two epochs (the pipeline is rebuilt per epoch and detached for evaluation), losses,
    metrics and the saved weights equal the plain loop's bit for bit, every table module pipelined
    (see rankers.pipeline)."""
    data = criteo_8k_2k if backbone == "mlp" else userbehavior
    model = RankerConfig(backbone=backbone, embedding_dim=8, sequence_lookup=lookup, embedding_l2=l2)
    plain = train(data, tmp_path / "plain", model, SHORT)
    piped = train(data, tmp_path / "piped", model, replace(SHORT, pipeline=True))
    assert [r["steps"] for r in piped["history"]] == [r["steps"] for r in plain["history"]] != [0, 0]
    _same_run(plain, piped)
    pa, pb = (Predictor.load(tmp_path / d).predict_proba(data / "test") for d in ("plain", "piped"))
    assert all(np.array_equal(pa[t], pb[t]) for t in pa)


@pytest.mark.shared_data
@pytest.mark.parametrize(("backbone", "lookup"), [("mlp", "bag"), ("din", "bag"), ("dien", "collection")])
def test_every_table_module_is_pipelined(userbehavior: Path, backbone: str, lookup: str) -> None:
    """TorchRec finds each table module's input in the batch (`Batch.tables`), sequence tables
    too, so it distributes them all ahead of the forward; detached, the model builds them itself."""
    from features.reader import ParquetBatches, find_schema
    from rankers.distributed import shard_ranker, single_process_group
    from rankers.pipeline import SparseDistPipeline
    from rankers.ranker import build_ranker

    single_process_group()
    config = RankerConfig(backbone=backbone, embedding_dim=8, sequence_lookup=lookup)
    ranker = build_ranker(find_schema(userbehavior), config, device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    pipeline = SparseDistPipeline(model, ranker, optimizer)
    batches = iter(ParquetBatches(userbehavior / "train", 64))
    for _ in range(3):
        loss, rows = pipeline.progress(batches)
        assert rows == 64 and torch.isfinite(loss)
    pipelined = pipeline._pipelined_modules
    assert len(pipelined) == len(ranker.embedding.table_modules()) == 2  # pooled, sequence tables
    pipeline.detach()
    assert not ranker.embedding.inputs_from_batch
    batch = next(batches)
    assert model(batch).logits["ctr"].shape == (64,)


@pytest.mark.shared_data
def test_a_non_finite_loss_stops_the_pipeline_before_the_step(criteo_8k_2k: Path, monkeypatch) -> None:
    from features.reader import ParquetBatches, find_schema
    from rankers.distributed import shard_ranker, single_process_group
    from rankers.pipeline import SparseDistPipeline
    from rankers.ranker import Ranker, build_ranker

    single_process_group()
    ranker = build_ranker(
        find_schema(criteo_8k_2k), RankerConfig(embedding_dim=4), device=torch.device("meta")
    )
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    real = Ranker.loss
    calls = iter(range(100))

    def nan_on_third(self, out, labels):  # type: ignore[no-untyped-def]
        loss, parts = real(self, out, labels)
        return (loss * float("nan"), parts) if next(calls) == 2 else (loss, parts)

    monkeypatch.setattr(Ranker, "loss", nan_on_third)
    pipeline = SparseDistPipeline(model, ranker, optimizer, where=lambda i: f"step {i + 1}")
    batches = iter(ParquetBatches(criteo_8k_2k / "train", 64))
    pipeline.progress(batches)
    pipeline.progress(batches)
    assert pipeline._pipelined_modules, "the MLP's tables were not pipelined"
    before = {k: v.clone() for k, v in model.state_dict().items() if "backbone" in k}
    with pytest.raises(FloatingPointError, match="training loss became nan at step 3"):
        pipeline.progress(batches)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "Adam stepped on a NaN loss"


@pytest.mark.distributed
@pytest.mark.shared_data
def test_two_processes_train_the_same_with_and_without_the_pipeline(
    criteo_8k_2k: Path, tmp_path: Path
) -> None:
    """Row-wise tables over two processes (gloo): `--pipeline` distributes the next batch's ids
    before this batch's forward, and the run's losses and metrics are the plain loop's."""
    common = ["--data", str(criteo_8k_2k), "--nproc", "2", "--sharding", "row_wise", "--no-progress"]
    common += ["--epochs", "1", "--max-steps", "20", "--batch-size", "256", "--embedding-dim", "8"]
    assert main(["train", "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "piped"), "--pipeline", *common]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("plain", "piped"))
    assert b["train_config"]["pipeline"] and not a["train_config"]["pipeline"]
    assert a["history"][0]["steps"] == 20
    _same_run(a, b)
