"""Training through TorchRec on CUDA: one-rank NCCL DMP steps equal CPU's, `train()` reaches CPU's
test AUC, UVM-cached tables train like fused ones, and a GPU checkpoint predicts the same on CPU.

Needs the TorchRec CUDA stack (torchrec and fbgemm_gpu with its CUDA kernels, `GPU=1 make setup`);
each test is skipped naming what is missing. Everything from rankers that imports torchrec is
imported inside the tests, so this module is collected without it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from tests.gpu._device import gpu_device, ieee_fp32

pytestmark = pytest.mark.gpu

CPU = torch.device("cpu")
STEPS = 5  # of the step-by-step comparison
# Big tables for the UVM test: 26 fields of up to 100,002 rows x 16 (6.4 MB each). With 48 MiB of
# GPU memory for tables, TorchRec 1.8's planner puts 5 of them behind fbgemm's UVM cache and 21 on
# the fused kernel (planned on CPU with a CUDA topology: UVM from 30 to 64 MiB, all fused from 96).
UVM_HBM_CAP_MB = 48


def _stack_missing() -> str | None:
    """What this machine lacks to train through TorchRec on the test device; None: nothing."""
    device = gpu_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        return "needs CUDA"
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except ImportError as e:  # the H200 loan machines have neither
        return f"needs the TorchRec stack (torchrec, fbgemm_gpu: GPU=1 make setup): {e}"
    from rankers.devices import fbgemm_on_cuda  # imports torchrec: only once it is known present

    if device.type == "cuda" and not fbgemm_on_cuda():
        return "fbgemm_gpu has no CUDA kernels here (the CPU build fbgemm-gpu-cpu is in: GPU=1 make setup)"
    return None


@pytest.fixture(scope="module", autouse=True)
def stack() -> None:
    """Skips the module's tests, naming what is missing, before any fixture trains or writes data."""
    missing = _stack_missing()
    if missing:
        pytest.skip(missing)


@pytest.fixture(autouse=True)
def _fresh(stack: None) -> Iterator[None]:
    """Each test in IEEE fp32 without a process group before or after (each run starts the group
    its device needs: NCCL and gloo on CUDA, gloo on CPU)."""
    _no_group()
    with ieee_fp32():
        yield
    _no_group()


def _no_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _synthetic(tmp_path_factory: pytest.TempPathFactory, name: str, **config: Any) -> Path:
    from features.datasets.synthetic import SyntheticConfig, write_synthetic

    out = tmp_path_factory.mktemp(name) / "data"
    return write_synthetic(out, SyntheticConfig(rows=20_000, **config), progress=False)


@pytest.fixture(scope="module")
def small(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/conftest.py's synthetic_small: 20,000 rows with small vocabularies."""
    return _synthetic(tmp_path_factory, "small", max_vocab=1000, min_count=5)


@pytest.fixture(scope="module")
def big_tables(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 rows over tables of up to 100,002 rows (every value kept)."""
    return _synthetic(tmp_path_factory, "big", max_vocab=100_000, min_count=1)


def _train_config(device: torch.device, **fields: Any) -> Any:
    from rankers.config import TrainConfig

    base = TrainConfig(epochs=2, batch_size=1024, embedding_lr=0.02, progress=False, device=str(device))
    return replace(base, **fields)


def _steps(data: Path, out: Path, device: torch.device, weights: Path | None) -> list[float]:
    """The losses of the first STEPS training steps of a one-process run on `device` (the process
    group `train` would start), from the weights saved in `weights` (a CheckpointDir), or saving
    its initial weights there when it holds none."""
    from rankers.checkpoint import CheckpointDir
    from rankers.config import RankerConfig
    from rankers.distributed import init_process_group
    from rankers.run import prepare
    from rankers.train import train_step

    init_process_group(device)
    if device.type == "cuda":
        assert "nccl" in str(dist.get_backend_config()), dist.get_backend_config()
    out.mkdir()
    run = prepare(data, CheckpointDir(out), RankerConfig(), _train_config(device), device)
    initial = CheckpointDir(weights or out)
    if weights:
        initial.load_weights(run.model)
    else:
        initial.save_weights(run.model)
    run.reader.set_epoch(0)
    losses = []
    for batch in itertools.islice(iter(run.reader), STEPS):
        loss = train_step(run.model, run.ranker, run.optimizer, batch, device=device)
        losses.append(float(loss.detach()))
    _no_group()
    return losses


def test_one_rank_nccl_dmp_training_equals_cpus_step_by_step(small: Path, tmp_path: Path) -> None:
    """The same initial weights (the CPU run's, loaded into the GPU run), the same batches: each
    step's loss equal within 1e-4 relative (the first is the forward alone; later ones add fbgemm's
    CUDA against its CPU rowwise Adagrad and Adam on each device)."""
    cpu = _steps(small, tmp_path / "cpu", CPU, None)
    device = gpu_device()
    on_device = _steps(small, tmp_path / "device", device, tmp_path / "cpu")
    assert len(cpu) == len(on_device) == STEPS
    np.testing.assert_allclose(on_device, cpu, rtol=1e-4, err_msg=f"losses on {device} against CPU")
    assert cpu[-1] < cpu[0], f"the CPU reference did not learn: {cpu}"


def _train(data: Path, out: Path, config: Any) -> dict[str, Any]:
    from rankers.config import RankerConfig
    from rankers.train import train

    result = train(data, out, RankerConfig(), config)
    _no_group()
    return result


@pytest.fixture(scope="module")
def gpu_run(small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """`train()` on the test device: its checkpoint directory and metrics."""
    _no_group()
    with ieee_fp32():
        out = tmp_path_factory.mktemp("gpu_run") / "ck"
        return out, _train(small, out, _train_config(gpu_device()))


def test_train_on_the_gpu_reaches_the_cpus_test_auc(
    small: Path, tmp_path: Path, gpu_run: tuple[Path, dict[str, Any]]
) -> None:
    """The tables start from other random values on each device (each draws from its own
    generator), so the runs are not equal step by step; their test AUCs are within 0.005."""
    cpu = _train(small, tmp_path / "cpu", _train_config(CPU))
    on_device = gpu_run[1]
    auc_cpu, auc_device = cpu["test"]["ctr"]["auc"], on_device["test"]["ctr"]["auc"]
    assert auc_cpu > 0.7, f"the CPU reference did not learn: test AUC {auc_cpu:.4f}"
    assert abs(auc_device - auc_cpu) <= 0.005, (
        f"test AUC {auc_device:.4f} on {gpu_device()}, {auc_cpu:.4f} on CPU"
    )
    assert on_device["train_config"]["device"] == str(gpu_device())


def test_a_uvm_cached_table_trains_like_a_fused_one(big_tables: Path, tmp_path: Path) -> None:
    """With `hbm_cap_mb` too small for every table, the plan puts some behind fbgemm's UVM cache
    (`fused_uvm_caching` in metrics.json's sharding_plan); the run reaches the all-fused run's test
    AUC within 0.005."""
    device = gpu_device()
    if device.type != "cuda":
        pytest.skip("UVM caching is a CUDA kernel")
    fused = _train(big_tables, tmp_path / "fused", _train_config(device))
    cached = _train(big_tables, tmp_path / "uvm", _train_config(device, hbm_cap_mb=UVM_HBM_CAP_MB))
    kernels = [row["kernel"] for row in cached["sharding_plan"]]
    assert "fused_uvm_caching" in kernels, f"hbm_cap_mb {UVM_HBM_CAP_MB}: kernels {kernels}"
    assert {row["kernel"] for row in fused["sharding_plan"]} == {"fused"}, fused["sharding_plan"]
    auc_fused, auc_cached = fused["test"]["ctr"]["auc"], cached["test"]["ctr"]["auc"]
    assert auc_fused > 0.7, f"the fused run did not learn: test AUC {auc_fused:.4f}"
    assert abs(auc_cached - auc_fused) <= 0.005, (
        f"test AUC {auc_cached:.4f} UVM-cached, {auc_fused:.4f} fused"
    )


def test_a_gpu_checkpoint_predicts_the_same_on_cpu(small: Path, gpu_run: tuple[Path, dict[str, Any]]) -> None:
    from rankers.predictor import Predictor

    checkpoint, device = gpu_run[0], gpu_device()
    on_cpu = Predictor.load(checkpoint, device="cpu")
    on_device = Predictor.load(checkpoint, device=str(device))
    assert on_cpu.device == CPU and on_device.device.type == device.type
    expected, got = on_cpu.predict_proba(small / "test"), on_device.predict_proba(small / "test")
    assert set(got) == set(expected) == {"ctr"}
    assert len(expected["ctr"]) == 2_000
    np.testing.assert_allclose(got["ctr"], expected["ctr"], rtol=0, atol=1e-5)
