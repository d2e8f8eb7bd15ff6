"""Training end to end on the real Criteo sample, checkpoints, and the Predictor that loads them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from features.reader import ParquetBatches
from rankers import train as train_module
from rankers.predictor import Predictor
from rankers.ranker import RankerConfig
from rankers.train import TrainConfig, train

# The settings the Criteo benchmark uses (benchmarks/quality.py): small batches suit 7,200 rows.
CRITEO = TrainConfig(epochs=10, batch_size=256, embedding_lr=0.02, seed=0, progress=False)


@pytest.fixture(scope="module")
def criteo_run(criteo_8k_2k: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "mlp"
    return out, train(criteo_8k_2k, out, RankerConfig(backbone="mlp"), CRITEO)


@pytest.mark.shared_data
def test_mlp_on_criteo_head10k_beats_the_bar(criteo_run: tuple[Path, dict]) -> None:
    _, result = criteo_run
    test = result["test"]["ctr"]
    assert test["rows"] == 2000
    assert test["auc"] >= 0.72, test
    assert test["logloss"] < test["prior_logloss"], test
    assert result["best_epoch"] >= 1 and len(result["history"]) >= result["best_epoch"]


@pytest.mark.shared_data
def test_checkpoint_dir_holds_schema_config_weights_metrics(criteo_run: tuple[Path, dict]) -> None:
    out, _ = criteo_run
    for name in ("schema.json", "config.json", "metrics.json", "weights/.metadata"):
        assert (out / name).exists(), name
    assert not list(out.glob(".weights.*")), "temporary weight directories left behind"


@pytest.mark.shared_data
def test_predictor_reproduces_the_final_evaluation(criteo_run: tuple[Path, dict], criteo_8k_2k: Path) -> None:
    out, result = criteo_run
    again = Predictor.load(out).evaluate(criteo_8k_2k / "test")
    for key in ("auc", "logloss", "prior_logloss"):
        assert again["ctr"][key] == pytest.approx(result["test"]["ctr"][key], abs=1e-6)


@pytest.mark.shared_data
def test_predict_proba_same_for_path_table_and_batch(
    criteo_run: tuple[Path, dict], criteo_8k_2k: Path
) -> None:
    out, _ = criteo_run
    predictor = Predictor.load(out)
    from_path = predictor.predict_proba(criteo_8k_2k / "test")["ctr"]
    table = pq.read_table(criteo_8k_2k / "test")
    from_table = predictor.predict_proba(table.drop(["label"]), batch_size=333)["ctr"]
    batch = next(iter(ParquetBatches(criteo_8k_2k / "test", batch_size=2000)))
    from_batch = predictor.predict_proba(batch)["ctr"]
    assert from_path.shape == (2000,) and np.all((from_path > 0) & (from_path < 1))
    np.testing.assert_allclose(from_table, from_path, rtol=1e-5)
    np.testing.assert_allclose(from_batch, from_path, rtol=1e-5)
    with pytest.raises(TypeError, match="list"):
        predictor.predict_proba([1, 2])  # type: ignore[arg-type]


@pytest.mark.shared_data
@pytest.mark.parametrize("missing", ["schema.json", "config.json", "weights/.metadata"])
def test_checkpoint_missing_a_file_is_named(
    criteo_run: tuple[Path, dict], tmp_path: Path, missing: str
) -> None:
    out, _ = criteo_run
    broken = tmp_path / "ckpt"
    shutil.copytree(out, broken)
    (broken / missing).unlink()
    with pytest.raises(ValueError, match=missing.replace(".", r"\.")):
        Predictor.load(broken)
    with pytest.raises(ValueError, match="not a directory"):
        Predictor.load(tmp_path / "nowhere")


def test_training_moves_tables_and_dense_weights(synthetic_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=512, progress=False, max_steps=5)
    from features.schema import Schema
    from rankers.ranker import build_ranker

    torch.manual_seed(config.seed)
    fresh = build_ranker(Schema.load(synthetic_small), RankerConfig())  # same seed: the initial weights
    result = train(synthetic_small, tmp_path / "ck", RankerConfig(), config)
    trained = Predictor.load(tmp_path / "ck").ranker
    assert result["history"][0]["steps"] == 5
    before, after = fresh.state_dict(), trained.state_dict()
    table = "embedding.ebc.embedding_bags.C1.weight"
    assert not torch.allclose(before[table], after[table]), "the fused optimizer did not update the table"
    assert not torch.allclose(before["backbone.head.weight"], after["backbone.head.weight"])


def test_early_stopping_keeps_the_best_epoch(synthetic_small: Path, tmp_path: Path, monkeypatch) -> None:
    aucs = iter([0.70, 0.65, 0.60, 0.55, 0.50, 0.45])
    real = train_module.evaluate_batches
    test_after: list[float] = []  # real test AUC of the weights after each epoch

    def fake(model, batches, prior, progress=False, desc="eval"):
        metrics = real(model, batches, prior)
        if desc == "valid":
            metrics["ctr"]["auc"] = next(aucs)
            test = ParquetBatches(synthetic_small / "test", batch_size=4096)
            test_after.append(real(model, test, prior)["ctr"]["auc"])
        return metrics

    monkeypatch.setattr(train_module, "evaluate_batches", fake)
    config = TrainConfig(epochs=6, patience=2, batch_size=1024, progress=False)
    result = train(synthetic_small, tmp_path / "ck", RankerConfig(), config)
    assert len(result["history"]) == 3  # best at epoch 1, two epochs without gain
    assert result["best_epoch"] == 1
    # The weights kept are epoch 1's: the final test AUC is epoch 1's, not the last epoch's.
    assert len(set(test_after)) == 3, test_after
    assert result["test"]["ctr"]["auc"] == pytest.approx(test_after[0], abs=1e-9)
    monkeypatch.setattr(train_module, "evaluate_batches", real)
    assert Predictor.load(tmp_path / "ck").evaluate(synthetic_small / "test")["ctr"]["auc"] == pytest.approx(
        test_after[0], abs=1e-6
    )


def test_train_config_rejects_bad_values() -> None:
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"lr_decay": 0.0}, {"patience": -1}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_monitor_must_be_a_task(synthetic_small: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cvr"):
        train(synthetic_small, tmp_path / "ck", RankerConfig(), TrainConfig(monitor="cvr", progress=False))
