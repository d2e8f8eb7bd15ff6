"""Inference with the device given: `predict`, `evaluate_batches` and the Predictor take a device
(`cpu` given explicitly equals the default, bit for bit, and today's per-batch results), the
non-finite-output error still names the task and the row across batches, and a resume state
holding a GPU's RNG state (`cuda-rng-RANK.pt`) resumes on CPU. Runs on CPU; the CUDA branches of
the checkpoint are driven with torch.cuda's RNG functions stubbed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from features.batch import Batch
from features.reader import ParquetBatches
from features.schema import Schema
from rankers.checkpoint import CheckpointDir
from rankers.config import RankerConfig, TrainConfig
from rankers.evaluation import evaluate_batches, label_prior, predict
from rankers.predictor import Predictor
from rankers.ranker import Ranker, build_ranker
from tests.conftest import one_line_error
from tests.rankers.test_batch_checks import _with_id

CONFIG = RankerConfig(embedding_dim=4)
CPU = torch.device("cpu")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


@pytest.fixture(scope="module")
def schema(synthetic_small: Path) -> Schema:
    return Schema.load(synthetic_small)


@pytest.fixture(scope="module")
def ranker(schema: Schema) -> Ranker:
    torch.manual_seed(0)
    return build_ranker(schema, CONFIG)


@pytest.fixture(scope="module")
def checkpoint(
    synthetic_small: Path, schema: Schema, ranker: Ranker, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A complete checkpoint directory of `ranker` (untrained: its weights as initialized)."""
    out = tmp_path_factory.mktemp("device") / "ckpt"
    out.mkdir()
    ckpt = CheckpointDir(out)
    prior = label_prior(synthetic_small / "train", schema)
    ckpt.write_config(schema, CONFIG, TrainConfig(), synthetic_small, prior)
    ckpt.save_weights(ranker)
    ckpt.write_marker({})
    return out


def _old_predict(model: Ranker, batches: list[Batch]) -> dict[str, np.ndarray]:
    """Probabilities as `predict` computed them before it took a device: per batch, on the host."""
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in batches:
            for t, logit in model.eval()(batch).logits.items():
                out.setdefault(t, []).append(torch.sigmoid(logit.float()).numpy())
    return {t: np.concatenate(v) for t, v in out.items()}


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for t in a:
        assert a[t].dtype == b[t].dtype == np.float32 and np.array_equal(a[t], b[t]), t


def test_predict_on_cpu_given_explicitly_equals_the_default_and_the_per_batch_host_results(
    synthetic_small: Path, ranker: Ranker
) -> None:
    batches = list(ParquetBatches(synthetic_small / "test", 777))  # the last batch is partial
    assert len(batches) > 2
    default, labels, groups = predict(ranker, batches)
    given, labels2, groups2 = predict(ranker, batches, device=CPU)
    _equal(default, given)
    _equal(default, _old_predict(ranker, batches))
    _equal(labels, labels2)
    assert (groups is None) == (groups2 is None)
    assert sum(len(b) for b in batches) == len(default["ctr"])


def test_evaluate_batches_on_cpu_given_explicitly_equals_the_default(
    synthetic_small: Path, schema: Schema, ranker: Ranker
) -> None:
    prior = label_prior(synthetic_small / "train", schema)
    reader = ParquetBatches(synthetic_small / "valid", 1000)
    assert evaluate_batches(ranker, reader, prior, device=CPU) == evaluate_batches(ranker, reader, prior)


def test_a_non_finite_output_in_a_later_batch_names_the_task_and_its_row_in_the_returned_arrays(
    synthetic_small: Path, schema: Schema
) -> None:
    """The check runs once on the concatenated outputs: the row is counted across batches."""
    torch.manual_seed(0)
    model = build_ranker(schema, CONFIG)
    feature = schema.categorical[0]
    first, second = (b for _, b in zip(range(2), ParquetBatches(synthetic_small / "test", 50), strict=False))
    seen = {int(v) for b in (first, second) for v in b.sparse[feature.name].values()}
    unused = next(i for i in range(feature.num_embeddings - 1, 0, -1) if i not in seen)
    with torch.no_grad():
        model.embedding.ebc.embedding_bags[feature.table].weight[unused] = float("nan")  # type: ignore[union-attr,index]
    batches = [first, _with_id(second, feature.name, 7, unused)]
    message = one_line_error(lambda: predict(model, batches, device=CPU))
    assert message.startswith(f"task 'ctr': the model's output (logit) is nan at row {len(first) + 7}, ")
    assert model.training  # put back in training mode after the error


def test_predictor_loads_on_cpu_given_as_a_name_or_a_device_and_scores_the_same(
    checkpoint: Path, synthetic_small: Path
) -> None:
    default = Predictor.load(checkpoint)
    assert default.device == CPU and next(default.ranker.parameters()).device == CPU
    expected = default.predict_proba(synthetic_small / "test", batch_size=999)
    auto = [] if torch.cuda.is_available() else ["auto"]  # auto is cpu on a machine without a GPU
    devices: list[str | torch.device] = ["cpu", CPU, *auto]
    for device in devices:
        predictor = Predictor.load(checkpoint, device=device)
        assert predictor.device == CPU and next(predictor.ranker.parameters()).device == CPU
        _equal(predictor.predict_proba(synthetic_small / "test", batch_size=999), expected)
        assert predictor.evaluate(synthetic_small / "test") == default.evaluate(synthetic_small / "test")
        streamed = list(predictor.iter_proba(synthetic_small / "test", batch_size=999))
        _equal({"ctr": np.concatenate([p["ctr"] for p in streamed])}, expected)


@NO_GPU
def test_predictor_refuses_a_gpu_this_machine_lacks_before_reading_anything(tmp_path: Path) -> None:
    message = one_line_error(lambda: Predictor.load(tmp_path / "none", device="cuda"))
    assert message.startswith("device 'cuda': torch ") and "sees no GPU on this machine" in message


def _state(schema: Schema, tmp_path: Path) -> tuple[CheckpointDir, torch.nn.Module, torch.optim.Optimizer]:
    from rankers.distributed import shard_ranker, single_process_group

    single_process_group()
    model, optimizer = shard_ranker(
        build_ranker(schema, CONFIG, device=torch.device("meta")), 1e-3, 0.0, 0.05
    )
    for _, opt in optimizer.optimizers:  # type: ignore[attr-defined]  # Adam's moments, as after a step
        opt.init_state()
    return CheckpointDir(tmp_path), model, optimizer


def test_a_gpu_runs_state_resumes_on_cpu_and_restores_the_gpu_rng_on_a_gpu(
    schema: Schema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, model, optimizer = _state(schema, tmp_path)
    ckpt.save_state(model, optimizer, {"epoch": 1, "step": 0})  # a CPU run: no GPU RNG state
    assert (tmp_path / "state" / "rng-0.pt").is_file()
    assert not list((tmp_path / "state").glob("cuda-rng-*"))

    gpu_state = torch.arange(16, dtype=torch.uint8)
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gpu_state)
    ckpt.save_state(model, optimizer, {"epoch": 1, "step": 0}, device=gpu)  # as a GPU run saves it
    assert torch.equal(torch.load(tmp_path / "state" / "cuda-rng-0.pt", weights_only=True), gpu_state)

    def no_gpu(*args: object) -> None:
        raise AssertionError("a CPU run touched the GPU's RNG")

    monkeypatch.setattr(torch.cuda, "set_rng_state", no_gpu)
    cpu_rng = torch.get_rng_state()
    torch.manual_seed(123)
    assert ckpt.load_state(model, optimizer)["epoch"] == 1  # resumed on CPU, the GPU's state unused
    assert torch.equal(torch.get_rng_state(), cpu_rng)

    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    ckpt.load_state(model, optimizer, device=gpu)
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state) and restored[0][1] == gpu


def test_a_gpu_rng_state_that_is_not_one_is_refused_naming_the_file(
    schema: Schema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rankers import safe_dcp

    ckpt, model, optimizer = _state(schema, tmp_path)
    ckpt.save_state(model, optimizer, {"epoch": 1, "step": 0})
    bad = tmp_path / "state" / "cuda-rng-0.pt"
    torch.save({"not": "a state"}, bad)
    assert one_line_error(lambda: safe_dcp.verify(tmp_path / "state")).startswith(f"{bad}: refused")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: None)
    message = one_line_error(lambda: ckpt.load_state(model, optimizer, device=torch.device("cuda", 0)))
    assert message.startswith(f"{bad}: refused, not a saved RNG state")
    assert ckpt.load_state(model, optimizer)["epoch"] == 1  # on CPU the file is not read


def test_bid_config_and_calibrate_take_the_device(checkpoint: Path) -> None:
    import inspect

    from rankers.bidding.fit import calibrate_checkpoint
    from rankers.bidding.run import BidConfig

    assert BidConfig(data="").device == "auto"
    assert dataclasses.replace(BidConfig(data=""), device="cpu").device == "cpu"
    assert inspect.signature(calibrate_checkpoint).parameters["device"].default == "auto"
