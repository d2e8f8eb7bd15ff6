"""Sizes are checked before anything is allocated (`build_ranker`'s memory estimate, TorchRec's
planner error as one line), and a model's non-finite output or loss is refused, not passed off."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from features.reader import ParquetBatches
from features.schema import CategoricalFeature, DenseFeature, Label, Schema
from rankers.checkpoint import CheckpointDir
from rankers.cli import main
from rankers.config import RankerConfig, TrainConfig
from rankers.distributed import shard_ranker, single_process_group
from rankers.predictor import Predictor
from rankers.ranker import Ranker, build_ranker, machine_memory, memory_needed
from rankers.train import train, train_step

HUGE = Schema(
    dense=(DenseFeature("d"),),
    categorical=(CategoricalFeature("big", 10**12), CategoricalFeature("small", 100)),
    labels=(Label("y", "ctr"),),
)
SMALL = Schema(
    dense=(DenseFeature("d"),),
    categorical=(CategoricalFeature("a", 1000), CategoricalFeature("b", 500)),
    labels=(Label("y", "ctr"),),
)
META = torch.device("meta")


def _refused_at_once(build: Callable[[], object], match: str) -> str:
    """The one-line message of the ValueError `build` raises, with the peak resident memory of
    this process grown by less than 100 MB: refused before anything was allocated."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(ValueError, match=match) as error:
        build()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_table_of_10_12_rows_is_refused_before_allocating() -> None:
    """Before: TorchRec's PlannerError traceback (training) or an allocation of 64 TB (Predictor)."""
    memory = r"more than the [\d.,]+ GB of memory of this machine"
    _refused_at_once(
        lambda: build_ranker(HUGE, RankerConfig(), device=META),
        r"table 'big' \(1,000,000,000,000 rows x 16\) needs 68.0 TB with its rowwise Adagrad state, "
        + memory,
    )
    _refused_at_once(lambda: build_ranker(HUGE, RankerConfig()), r"table 'big' .* needs 64.0 TB, " + memory)


def test_hidden_units_of_10_9_are_refused_before_allocating() -> None:
    """Before: an attempt to allocate 1.7 TB of MLP weights. The dense part is counted on `meta`:
    (33 inputs + 1) x 1e9 weights and biases of the hidden layer, 1e9 + 1 of the output layer."""
    config = RankerConfig(backbone_config={"hidden_units": (10**9,)})
    parameters = 35 * 10**9 + 1
    assert memory_needed(SMALL, config)[1] == 16 * parameters
    _refused_at_once(
        lambda: build_ranker(SMALL, config, device=META),
        rf"the mlp backbone's dense part needs 560.0 GB \({parameters:,} parameters, 16 bytes each with "
        r"its gradient and Adam's two moments\), more than the [\d.,]+ GB of memory of this machine; "
        r"expected a smaller backbone_config \{.*'hidden_units': \(1000000000,\)",
    )


def test_parts_that_fit_alone_but_not_together_are_refused_with_the_figures() -> None:
    config = RankerConfig(backbone_config={"hidden_units": (4,)})  # (33 + 1) x 4 + 4 + 1 = 141 parameters
    assert memory_needed(SMALL, config) == ({"a": 1000 * 68, "b": 500 * 68}, 141 * 16)
    assert memory_needed(SMALL, config, training=False) == ({"a": 1000 * 64, "b": 500 * 64}, 141 * 4)
    with pytest.raises(
        ValueError,
        match=r"the ranker needs 104.3 kB to train \(tables 102.0 kB, the largest 'a' 68.0 kB; dense part "
        r"2.3 kB\), more than the 100.0 kB of memory of this machine; expected smaller tables or backbone",
    ):
        build_ranker(SMALL, config, device=META, memory=100_000)
    build_ranker(SMALL, config, memory=100_000)  # the weights alone fit: 96.6 kB
    build_ranker(SMALL, config, device=META)  # this machine's memory
    assert machine_memory() > 10**9


def test_a_plan_torchrec_cannot_find_is_one_line_naming_the_tables() -> None:
    """Past the estimate (here forced through with `memory`), TorchRec's multi-line PlannerError
    becomes one ValueError naming the tables and sizes."""
    single_process_group()
    ranker = build_ranker(HUGE, RankerConfig(), device=META, memory=10**18)
    with pytest.raises(ValueError) as error:
        shard_ranker(ranker, 1e-3, 0.0, 0.05)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "sharding: TorchRec found no plan for tables big 1,000,000,000,000 x 16 (64.0 TB), small 100 x 16 "
        "(6.4 kB) in "
    )


@pytest.fixture(scope="module")
def nan_checkpoint(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained checkpoint whose weights were then overwritten with a NaN in the backbone."""
    out = tmp_path_factory.mktemp("nan") / "ckpt"
    config = TrainConfig(epochs=1, batch_size=512, max_steps=2, progress=False)
    train(synthetic_small, out, RankerConfig(embedding_dim=4), config)
    predictor = Predictor.load(out)
    with torch.no_grad():
        next(predictor.ranker.backbone.parameters()).view(-1)[0] = float("nan")
    CheckpointDir(out).save_weights(predictor.ranker)
    return out


def test_nan_weights_are_refused_at_predict_naming_the_task(
    nan_checkpoint: Path, synthetic_small: Path
) -> None:
    """Before: NaN probabilities, written to the predictions file or averaged into the metrics."""
    predictor = Predictor.load(nan_checkpoint)
    message = r"task 'ctr': the model's output \(logit\) is nan at row 0, expected finite values"
    with pytest.raises(ValueError, match=message):
        predictor.predict_proba(synthetic_small / "test")
    with pytest.raises(ValueError, match=message):
        predictor.evaluate(synthetic_small / "test")


def test_the_cli_refuses_nan_weights_in_one_line(
    nan_checkpoint: Path, synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.parquet"
    predict = ["predict", "--checkpoint", str(nan_checkpoint), "--data", str(synthetic_small / "test")]
    for argv in ([*predict, "--out", str(out)], ["evaluate", "--checkpoint", str(nan_checkpoint)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rankers: error: task 'ctr': the model's output (logit) is nan at row 0")
        assert err.count("\n") == 1
    assert not out.exists()


def test_a_non_finite_loss_is_a_value_error_naming_the_step(
    synthetic_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI prints a ValueError as one line; the loss check stays a FloatingPointError too."""
    single_process_group()
    ranker = build_ranker(Schema.load(synthetic_small), RankerConfig(embedding_dim=4), device=META)
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    real = Ranker.loss
    monkeypatch.setattr(
        Ranker, "loss", lambda self, out, labels: (real(self, out, labels)[0] * float("nan"), {})
    )
    batch = next(iter(ParquetBatches(synthetic_small / "train", 64)))
    with pytest.raises(ValueError, match="training loss became nan at epoch 1, step 3") as error:
        train_step(model, ranker, optimizer, batch, "epoch 1, step 3")
    assert isinstance(error.value, FloatingPointError)
