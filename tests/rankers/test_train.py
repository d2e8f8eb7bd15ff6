"""Training end to end on the real Criteo sample, checkpoints, and the Predictor that loads them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from features.reader import ParquetBatches
from features.schema import Schema
from rankers import train as train_module
from rankers.config import RankerConfig, TrainConfig
from rankers.predictor import Predictor
from rankers.ranker import build_ranker
from rankers.train import train, train_step
from tests.conftest import shared_file

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
def test_a_criteo_checkpoint_scores_the_raw_tsv(
    criteo_run: tuple[Path, dict], criteo_8k_2k: Path, tmp_path: Path
) -> None:
    out, _ = criteo_run
    predictor = Predictor.load(out)  # `convert criteo` recorded its rows' spec; the checkpoint keeps it
    lines = shared_file("criteo/train_head10k.tsv").read_bytes().splitlines(keepends=True)
    (tmp_path / "test.tsv").write_bytes(b"".join(lines[8000:]))  # the test split: the last 2,000 rows
    from_raw = predictor.predict_proba(tmp_path / "test.tsv")["ctr"]
    np.testing.assert_allclose(from_raw, predictor.predict_proba(criteo_8k_2k / "test")["ctr"], atol=1e-6)
    unlabeled = predictor.predict_proba(shared_file("criteo/test_unlabeled_head10k.tsv"))["ctr"]  # 39 fields
    assert unlabeled.shape == (10_000,) and np.isfinite(unlabeled).all()


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

    def fake(model, batches, prior, progress=False, desc="eval", device=None):
        metrics = real(model, batches, prior, device=device)
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


@pytest.mark.shared_data
@pytest.mark.parametrize("backbone", ["autoint", "autoint_plus", "finalmlp"])
def test_interaction_backbones_on_criteo_head10k_beat_the_bar(
    backbone: str, criteo_8k_2k: Path, tmp_path: Path
) -> None:
    """One seed of the benchmark's setting (the backbones' default configs); see benchmarks/README.md."""
    result = train(criteo_8k_2k, tmp_path / "ck", RankerConfig(backbone=backbone), CRITEO)
    test = result["test"]["ctr"]
    assert test["auc"] >= 0.72 and test["logloss"] < test["prior_logloss"], test


@pytest.mark.shared_data
def test_bf16_autocast_trains_as_well_as_fp32(
    criteo_run: tuple[Path, dict], criteo_8k_2k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--precision auto` on a CPU with AVX512-BF16 (patched in: this one has none) trains in bf16,
    records it, and reaches the fp32 run's test AUC within 0.01 on the Criteo sample."""
    _, fp32 = criteo_run
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    bf16 = train(
        criteo_8k_2k, tmp_path / "ck", RankerConfig(backbone="mlp"), replace(CRITEO, precision="auto")
    )
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert abs(bf16["test"]["ctr"]["auc"] - fp32["test"]["ctr"]["auc"]) < 0.01


def test_precision_auto_is_bf16_only_where_the_device_multiplies_it_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rankers.devices import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == ("fp32", "asked for")
    assert resolve_precision("bf16", cpu) == ("bf16", "asked for")
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert resolve_precision("auto", cpu) == ("fp32", "auto: CPU without AVX512-BF16 or AMX")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", cpu) == ("bf16", "auto: CPU with AMX")


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_train_step_runs_the_forward_pass_in_the_chosen_precision(
    synthetic_small: Path, precision: str, dtype: torch.dtype
) -> None:
    from rankers.distributed import shard_ranker, single_process_group

    single_process_group()
    torch.manual_seed(0)
    ranker = build_ranker(Schema.load(synthetic_small), RankerConfig(), device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    seen: list[torch.dtype] = []
    first = next(m for m in ranker.backbone.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    batch = next(iter(ParquetBatches(synthetic_small / "train", batch_size=64)))
    loss = train_step(model, ranker, optimizer, batch, precision=precision)
    assert seen == [dtype] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_train_config_rejects_bad_values() -> None:
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"lr_decay": 0.0}, {"patience": -1}, {"precision": "fp16"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_monitor_must_be_a_task(synthetic_small: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cvr"):
        train(synthetic_small, tmp_path / "ck", RankerConfig(), TrainConfig(monitor="cvr", progress=False))


def _copy_with(src: Path, dst: Path, split: str, column: str, value: int) -> Path:
    """A copy of a dataset with one column of one split set to a constant."""
    import pyarrow as pa

    shutil.copytree(src, dst)
    for f in (dst / split).glob("*.parquet"):
        t = pq.read_table(f)
        i = t.schema.get_field_index(column)
        pq.write_table(
            t.set_column(i, column, pa.array(np.full(t.num_rows, value), t.schema.field(i).type)), f
        )
    return dst


def test_one_class_validation_is_refused_unless_logloss_selects(
    synthetic_small: Path, tmp_path: Path
) -> None:
    data = _copy_with(synthetic_small, tmp_path / "data", "valid", "label", 0)
    message = (
        rf"{data / 'valid'}: task 'ctr' has only negatives \(0 positives in 2000 rows\), so its AUC is "
        r"undefined .* pass --monitor-metric logloss"
    )
    for metric in ("auc", "auc-logloss"):
        with pytest.raises(ValueError, match=message):
            train(data, tmp_path / "ck", RankerConfig(), TrainConfig(epochs=2, monitor_metric=metric))
        assert not (tmp_path / "ck").exists()
    config = TrainConfig(epochs=2, patience=1, progress=True, monitor_metric="logloss")
    result = train(data, tmp_path / "ck", RankerConfig(), config)
    assert result["valid"]["ctr"]["auc"] is None and result["valid"]["ctr"]["logloss"] > 0
    # the epoch of the lowest validation LogLoss (its weights were kept)
    losses = [row["valid"]["ctr"]["logloss"] for row in result["history"]]
    assert result["best_epoch"] == 1 + losses.index(min(losses))
    assert result["valid"]["ctr"]["logloss"] == pytest.approx(min(losses))


def test_short_last_batch_is_dropped_so_batch_norm_trains(synthetic_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=5333, progress=False)  # 16,000 rows = 3 x 5,333 + 1
    ranker = RankerConfig(backbone_config={"batch_norm": True, "hidden_units": (8,)})
    result = train(synthetic_small, tmp_path / "ck", ranker, config)
    assert result["history"][0]["steps"] == 3


def test_an_existing_checkpoint_is_replaced_only_when_asked(synthetic_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, max_steps=1, progress=False)
    train(synthetic_small, tmp_path / "ck", RankerConfig(), config)
    before = (tmp_path / "ck" / "metrics.json").read_text()
    with pytest.raises(ValueError, match="already exists"):
        train(synthetic_small, tmp_path / "ck", RankerConfig(), config)
    assert (tmp_path / "ck" / "metrics.json").read_text() == before
    train(synthetic_small, tmp_path / "ck", RankerConfig(), config, overwrite=True)


def test_a_save_cut_between_renames_still_loads(synthetic_small: Path, tmp_path: Path) -> None:
    train(
        synthetic_small, tmp_path / "ck", RankerConfig(), TrainConfig(epochs=1, max_steps=2, progress=False)
    )
    expected = Predictor.load(tmp_path / "ck").predict_proba(synthetic_small / "test")["ctr"]
    (tmp_path / "ck" / "weights").rename(tmp_path / "ck" / ".weights.old")  # killed after the first rename
    np.testing.assert_array_equal(
        Predictor.load(tmp_path / "ck").predict_proba(synthetic_small / "test")["ctr"], expected
    )


@pytest.mark.shared_data
def test_predictor_refuses_rows_mapped_with_other_vocabularies(
    criteo_run: tuple[Path, dict], criteo_8k_2k: Path, tmp_path: Path
) -> None:
    from features.dataset import dataset_info
    from features.datasets.criteo import CriteoConfig, convert_criteo
    from tests.conftest import shared_file

    out, _ = criteo_run
    predictor = Predictor.load(out)
    other = convert_criteo(
        shared_file("criteo/train_head10k.tsv"), tmp_path / "d", CriteoConfig(min_count=1), progress=False
    )
    theirs = dataset_info(other)["fingerprint"]
    assert theirs != predictor.fingerprint
    ours_fp = predictor.fingerprint
    message = f"dataset fingerprint {theirs}, but {out} was trained on data with fingerprint {ours_fp}"
    with pytest.raises(ValueError, match=message):
        predictor.predict_proba(other / "test")
    # a file copied away from its dataset still carries its fingerprint: refused by it alone
    alone = tmp_path / "alone.parquet"
    shutil.copy(next((other / "test").glob("*.parquet")), alone)
    with pytest.raises(ValueError, match=f"{alone}: {message}"):
        predictor.predict_proba(alone)
    ours = tmp_path / "ours.parquet"  # one of the training dataset's files, copied away: accepted
    shutil.copy(next((criteo_8k_2k / "test").glob("*.parquet")), ours)
    assert len(predictor.predict_proba(ours)["ctr"]) == pq.read_metadata(ours).num_rows


@pytest.mark.shared_data
def test_predictor_on_no_rows_and_without_labels(criteo_run: tuple[Path, dict], criteo_8k_2k: Path) -> None:
    out, _ = criteo_run
    predictor = Predictor.load(out)
    table = pq.read_table(criteo_8k_2k / "test")
    empty = predictor.predict_proba(table.slice(0, 0))
    assert list(empty) == ["ctr"] and empty["ctr"].shape == (0,)
    with pytest.raises(ValueError, match="missing column 'label'"):
        predictor.evaluate(table.drop(["label"]))
    unlabeled = next(iter(ParquetBatches(criteo_8k_2k / "test", batch_size=10, labels=False)))
    with pytest.raises(ValueError, match="Batch: no labeled rows"):
        predictor.evaluate(unlabeled)


def test_task_weights_must_name_tasks(synthetic_small: Path) -> None:
    from features.schema import Schema
    from rankers.ranker import build_ranker

    with pytest.raises(ValueError, match="cvt"):
        build_ranker(Schema.load(synthetic_small), RankerConfig(task_weights=(("cvt", 2.0),)))
    with pytest.raises(ValueError, match="-1"):
        RankerConfig(task_weights=(("ctr", -1.0),))


def test_resume_state_restores_decayed_learning_rates_and_refuses_another_count_mid_epoch(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """TorchRec's optimizers leave param groups out of state_dict(): the saved state carries the
    learning rates (cut by reduce-on-plateau) and the number of processes that wrote it."""
    import json

    from features.reader import find_schema
    from rankers.checkpoint import CheckpointDir
    from rankers.config import RankerConfig
    from rankers.distributed import shard_ranker, single_process_group
    from rankers.ranker import build_ranker

    single_process_group()
    schema = find_schema(synthetic_small / "train")

    def sharded() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        ranker = build_ranker(schema, RankerConfig(embedding_dim=4), device=torch.device("meta"))
        return shard_ranker(ranker, 1e-3, 0.0, 0.05)

    model, optimizer = sharded()
    from features.reader import ParquetBatches
    from rankers.train import train_step

    batch = next(iter(ParquetBatches(synthetic_small / "train", 64)))
    train_step(model, model.module, optimizer, batch)  # optimizer state exists from the first step on
    for group in optimizer.param_groups:
        group["lr"] *= 0.1
    assert len({g["lr"] for g in optimizer.param_groups}) == 2  # tables 0.005, dense 1e-4
    ckpt = CheckpointDir(tmp_path)
    ckpt.save_state(model, optimizer, {"epoch": 1, "step": 5})
    model2, optimizer2 = sharded()
    progress = ckpt.load_state(model2, optimizer2)
    assert progress["processes"] == 1 and progress["epoch"] == 1
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]
    path = tmp_path / "state" / "progress.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"processes": 2}))
    with pytest.raises(
        ValueError, match=r"saved by 2 processes partway through epoch 2 \(step 5\); resume it with --nproc 2"
    ):
        ckpt.load_state(*sharded())
    # At the end of an epoch the count may change (the re-sharding is tested in test_sharding).
    path.write_text(json.dumps(json.loads(path.read_text()) | {"step": 0}))
    assert ckpt.load_state(*sharded())["processes"] == 2


def test_run_state_round_trips_through_progress_json() -> None:
    """`state/progress.json` keeps the keys it always had, and a RunState read back is the same."""
    import json
    import math

    from rankers.run import RunState

    state = RunState(2, 7, 400, 3.5, False, [{"epoch": 1, "loss": 0.5}], 0.7, 1, 1)
    progress = json.loads(json.dumps(state.to_progress()))
    assert list(progress) == ["epoch", "step", "steps_done", "loss_sum", "stopped", "history", "best"]
    assert RunState.from_progress(progress | {"processes": 1, "lrs": [0.1, 0.05]}) == state
    fresh = RunState.from_progress(json.loads(json.dumps(RunState().to_progress())))
    assert fresh == RunState() and fresh.best_score == -math.inf
    state.next_epoch(stopped=True)
    assert (state.epoch, state.step, state.loss_sum, state.stopped) == (3, 0, 0.0, True)
