"""The device everywhere, on CPU: device names, backends, the tables' placement and optimizers,
the deferred loss check, the launch commands, and a whole run with the device given explicitly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from features.schema import CategoricalFeature, DenseFeature, Label, Schema
from rankers.cli import main
from rankers.cli.launch import torchrun_command, without_nproc
from rankers.config import EMBEDDING_OPTIMIZERS, RankerConfig, ShardingConfig, TrainConfig
from rankers.devices import backend_for, resolve_device
from rankers.pipeline import LossCheck, NonFiniteLossError
from rankers.planning import TableSettings, describe_plan, plan_sharding
from rankers.predictor import Predictor
from rankers.ranker import build_ranker
from rankers.train import train
from tests.conftest import one_line_error

SHORT = TrainConfig(epochs=2, batch_size=256, embedding_lr=0.02, max_steps=30, progress=False)
CUDA = torch.device("cuda", 0)


def test_device_names_resolve_or_are_refused_in_one_line() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )
    with pytest.raises(ValueError, match="expected one of"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="cuda:N"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        message = one_line_error(lambda: resolve_device("cuda"))
        assert "sees no GPU" in message and "--device cpu" in message


def test_auto_is_cpu_where_fbgemm_is_the_cpu_build_even_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make setup` without GPU=1 on a GPU machine: torch sees the GPU, fbgemm's kernels are CPU
    only (as here), so auto stays on CPU and an explicit cuda says why not."""
    from rankers import devices

    assert not devices.fbgemm_on_cuda()  # this machine's fbgemm-gpu-cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cpu")
    assert "CPU build" in one_line_error(lambda: resolve_device("cuda"))


def test_one_gpu_index_for_several_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert "all on one GPU" in one_line_error(lambda: resolve_device("cuda:1"))


def test_the_backend_is_gloo_on_cpu_and_mixed_on_cuda() -> None:
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(CUDA) == "cpu:gloo,cuda:nccl"


def test_prefetch_keeps_order_raises_the_readers_error_in_place_and_stops_early() -> None:
    import threading

    from rankers.devices import prefetch

    assert list(prefetch(iter(range(7)), depth=2)) == list(range(7))

    def failing() -> Iterator[int]:
        yield from (1, 2)
        raise ValueError("part-3.parquet: row 9 bad")

    got = []
    with pytest.raises(ValueError, match="row 9"):
        for x in prefetch(failing()):
            got.append(x)
    assert got == [1, 2]
    stream = prefetch(iter(range(1000)), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early: the thread ends instead of waiting for room
    for thread in threading.enumerate():
        if thread.name == "batch-prefetch":
            thread.join(timeout=5)
            assert not thread.is_alive()


def test_train_config_checks_the_device_settings() -> None:
    assert TrainConfig().device == "auto" and TrainConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match="device 'gpu'"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match="embedding_optimizer 'adamw'"):
        TrainConfig(embedding_optimizer="adamw")
    for factor in (0, 1):  # TorchRec refuses a cache as large as its table
        with pytest.raises(ValueError, match="cache_load_factor"):
            TrainConfig(cache_load_factor=factor)
    with pytest.raises(ValueError, match="hbm_cap_mb"):
        TrainConfig(hbm_cap_mb=-1)


@pytest.mark.parametrize("name", ["adam", "partial_rowwise_adam", "lamb", "partial_rowwise_lamb"])
def test_gpu_only_embedding_optimizers_are_refused_on_cpu(name: str) -> None:
    with pytest.raises(ValueError, match="no CPU kernel"):
        TableSettings(device=torch.device("cpu"), optimizer=name)
    assert TableSettings(device=CUDA, optimizer=name).optimizer == name  # built, not run, here


BIG = Schema(
    dense=(DenseFeature("d"),),
    categorical=(CategoricalFeature("big", 1_000_000), CategoricalFeature("small", 100)),
    labels=(Label("y", "ctr"),),
)


@pytest.mark.parametrize(("cap_mb", "kernel"), [(0, "fused"), (150, "fused_uvm_caching")])
def test_a_table_larger_than_the_gpu_memory_is_planned_uvm_cached(cap_mb: int, kernel: str) -> None:
    """The planner runs without a GPU: a 256 MB table fits a 80 GB GPU (fused kernel) and not 150 MB,
    where it stays in host memory behind a GPU cache; the small table stays fused. On CPU the
    UVM-caching kernel is never offered."""
    ranker = build_ranker(BIG, RankerConfig(embedding_dim=64), device=torch.device("meta"))
    settings = TableSettings(device=CUDA, hbm_cap=(cap_mb or 80_000) * 2**20, batch_size=4096)
    kernels = {
        r["table"]: r["kernel"]
        for r in describe_plan(plan_sharding(ranker, ShardingConfig(), settings), ranker, 1)
    }
    assert kernels == {"big": kernel, "small": "fused"}
    on_cpu = plan_sharding(ranker, ShardingConfig(), TableSettings(batch_size=4096))
    assert {r["kernel"] for r in describe_plan(on_cpu, ranker, 1)} == {"fused"}


def test_the_loss_check_every_n_steps_names_the_first_bad_step() -> None:
    check = LossCheck(every=3)
    check.add(torch.tensor(0.7), 0, "step 1")
    check.add(torch.tensor(float("nan")), 1, "step 2")  # recorded on the device, not read yet
    with pytest.raises(NonFiniteLossError, match=r"nan at step 2; .* every 3 steps.* up to step 3"):
        check.add(torch.tensor(float("inf")), 2, "step 3")  # the third step reads the flag
    flushed = LossCheck(every=3)
    flushed.add(torch.tensor(0.5), 0, "step 1")
    flushed.add(torch.tensor(float("nan")), 1, "step 2")
    with pytest.raises(NonFiniteLossError, match="nan at step 2"):
        flushed.flush()  # the end of an epoch, or a checkpoint
    fine = LossCheck(every=3)
    fine.add(torch.tensor(0.5), 0, "step 1")
    fine.flush()
    every_step = LossCheck(every=1)
    with pytest.raises(NonFiniteLossError, match="inf at step 1"):
        every_step.add(torch.tensor(float("inf")), 0, "step 1")


def test_the_launch_commands_for_one_and_several_machines() -> None:
    argv = ["train", "--data", "d", "--nproc", "2", "--nnodes=2", "--rdzv-endpoint", "h:29500", "--rdzv-id=r"]
    assert without_nproc(argv) == ["train", "--data", "d"]
    one = torchrun_command(2)
    assert "--standalone" in one and "--nproc_per_node=2" in one
    several = torchrun_command(4, 2, "node0:29500", "run7")
    assert "--standalone" not in several
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29500", "--rdzv_id=run7"} <= set(
        several
    )
    with pytest.raises(ValueError, match="--rdzv-endpoint HOST:PORT"):
        torchrun_command(1, 2, "")


@pytest.mark.shared_data
def test_train_on_an_explicit_cpu_device_is_the_default_run(criteo_8k_2k: Path, tmp_path: Path) -> None:
    """`device="cpu"` given explicitly trains exactly as the default (auto, which is cpu here): the
    same losses, metrics and predictions; metrics.json says where it ran."""
    if torch.cuda.is_available():
        pytest.skip("auto is cuda on this machine")
    model = RankerConfig(backbone="mlp", embedding_dim=8)
    default = train(criteo_8k_2k, tmp_path / "auto", model, SHORT)
    explicit = train(criteo_8k_2k, tmp_path / "cpu", model, replace(SHORT, device="cpu"))
    for row in (*default["history"], *explicit["history"]):
        row.pop("examples_per_s")
    assert default["history"] == explicit["history"] and default["test"] == explicit["test"]
    assert explicit["device"] == "cpu"
    p = Predictor.load(tmp_path / "cpu", device="cpu").predict_proba(criteo_8k_2k / "test")["ctr"]
    q = Predictor.load(tmp_path / "auto").predict_proba(criteo_8k_2k / "test")["ctr"]
    assert np.array_equal(p, q)


@pytest.mark.shared_data
@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_the_other_cpu_embedding_optimizers_train(criteo_8k_2k: Path, tmp_path: Path, optimizer: str) -> None:
    """Each CPU fused optimizer trains the tables (the loss falls below the prior's) and is recorded."""
    lr = {"adagrad": 0.02, "sgd": 0.5}[optimizer]
    config = replace(SHORT, device="cpu", embedding_optimizer=optimizer, embedding_lr=lr, max_steps=60)
    result = train(criteo_8k_2k, tmp_path / optimizer, RankerConfig(embedding_dim=8), config)
    assert result["train_config"]["embedding_optimizer"] == optimizer
    assert result["test"]["ctr"]["logloss"] < result["test"]["ctr"]["prior_logloss"]


@pytest.mark.shared_data
def test_a_sequence_model_runs_the_whole_cpu_path_with_the_device_given(
    tmp_path: Path, userbehavior: Path
) -> None:
    """DIN through the CLI with `--device cpu`: the pipeline, a mid-epoch checkpoint,
    evaluation, and a Predictor on the given device; the lookup is the CPU's (bag) when unset."""
    data = userbehavior
    out = tmp_path / "din"
    main(
        [
            "train", "--data", str(data), "--out", str(out), "--backbone", "din", "--embedding-dim", "8",
            "--epochs", "1", "--batch-size", "256", "--max-steps", "12", "--checkpoint-every", "5",
            "--pipeline", "--device", "cpu", "--no-progress",
        ]
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["device"] == "cpu" and config["ranker"]["sequence_lookup"] == "bag"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cpu" and 0 < metrics["test"]["ctr"]["auc"] < 1  # 12 steps: no skill asked
    probs = Predictor.load(out, device="cpu").predict_proba(data / "test")["ctr"]
    assert probs.shape == (metrics["test"]["ctr"]["rows"],) and np.isfinite(probs).all()


def test_train_on_a_missing_gpu_is_refused_before_any_work(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    message = one_line_error(
        lambda: train(tmp_path / "nowhere", tmp_path / "out", RankerConfig(), replace(SHORT, device="cuda"))
    )
    assert "sees no GPU" in message
    assert not (tmp_path / "out").exists()


def test_a_gpu_only_embedding_optimizer_on_cpu_is_refused_before_any_work(tmp_path: Path) -> None:
    config = replace(SHORT, device="cpu", embedding_optimizer="lamb")
    message = one_line_error(lambda: train(tmp_path / "nowhere", tmp_path / "out", RankerConfig(), config))
    assert "'lamb' has no CPU kernel" in message and not (tmp_path / "out").exists()


def test_every_embedding_optimizer_has_a_fused_class() -> None:
    from rankers.planning import FUSED_OPTIMIZERS

    assert tuple(FUSED_OPTIMIZERS) == EMBEDDING_OPTIMIZERS


@pytest.mark.distributed
@pytest.mark.shared_data
def test_two_machines_meet_at_the_rendezvous_endpoint(criteo_8k_2k: Path, tmp_path: Path) -> None:
    """`--nnodes 2 --rdzv-endpoint HOST:PORT`, the same command started twice (two "machines" on
    this one, one process each): torchrun's c10d rendezvous ranks them, they train as one run of two
    processes into the shared --out."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "rankers", "train", "--data", str(criteo_8k_2k), "--out", str(out),
        "--embedding-dim", "8", "--epochs", "1", "--max-steps", "4", "--batch-size", "256",
        "--device", "cpu", "--no-progress", "--nproc", "1", "--nnodes", "2",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    machines = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [m.communicate(timeout=240)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(
        logs[0].splitlines()[-20:] + logs[1].splitlines()[-20:]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["history"][0]["steps"] == 4


@pytest.mark.shared_data
def test_a_table_input_that_is_the_batchs_kjt_is_moved_once(criteo_8k_2k: Path) -> None:
    from features.reader import ParquetBatches

    batch = next(iter(ParquetBatches(criteo_8k_2k / "test", 32)))
    other = batch.sparse.permute(list(range(len(batch.sparse.keys())))[::-1])
    batch.tables = {"pooled": batch.sparse, "sequence": other}
    moved = batch.to(torch.device("cpu"))
    assert moved.tables["pooled"] is moved.sparse and moved.tables["sequence"] is not moved.sparse
    assert torch.equal(moved.tables["sequence"].values(), other.values())
