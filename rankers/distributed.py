"""Process groups and DistributedModelParallel for a Ranker's tables, on CPU or CUDA.

The tables are sharded as `rankers.planning` plans them and trained inside the backward pass by
their fused optimizer; the dense parameters (data-parallel tables included) by Adam.

Processes come from torchrun's environment (`init_process_group`): gloo on CPU; on CUDA one mixed
group, NCCL for GPU tensors and gloo for the CPU-side collectives, each process on the GPU
`LOCAL_RANK` names. `rankers train --nproc N` launches them (`--nnodes` across machines).
Evaluation gathers every rank's predictions (`gather_arrays`), so metrics are exact.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from rankers._quiet import quiet_torchrec
from rankers.config import ShardingConfig
from rankers.devices import backend_for
from rankers.planning import FUSED_OPTIMIZERS, TableSettings, plan_sharding, sharders
from rankers.ranker import Ranker


def init_process_group(device: torch.device = torch.device("cpu")) -> None:
    """The process group torchrun describes in the environment, or a one-process group when not
    launched by torchrun; nothing if one exists. On CUDA this process's GPU becomes the current
    device and the group is mixed (`backend_for`: NCCL for GPU tensors, gloo for CPU ones)."""
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    if dist.is_initialized():
        if device.type == "cuda" and "nccl" not in str(dist.get_backend_config()):
            raise ValueError(
                f"this process already has a process group ({dist.get_backend_config()}) without NCCL, "
                "which cannot move GPU tensors between ranks; expected none before training on CUDA "
                "(run it in a fresh process)"
            )
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend_for(device), timeout=timedelta(minutes=30))
    else:
        single_process_group(device)


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes files and logs."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_arrays(arrays: dict[str, Any]) -> dict[str, Any]:
    """Every rank's numpy arrays under each key, concatenated in rank order (identical on all ranks)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return arrays
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in arrays}


def single_process_group(device: torch.device = torch.device("cpu")) -> None:
    """A group of one process (an in-memory store, no port; `backend_for(device)`), unless one
    already exists."""
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)


def shard_ranker(
    ranker: Ranker,
    lr: float,
    weight_decay: float,
    embedding_lr: float,
    sharding: ShardingConfig = ShardingConfig(),
    settings: TableSettings = TableSettings(),
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Wraps `ranker` (tables on `meta`) in DistributedModelParallel over the current process group
    on `settings.device`: tables sharded as `sharding` says, the sharded ones updated inside the
    backward pass by the fused `settings.optimizer`; the dense parameters (data-parallel tables
    included) get Adam. Returns the wrapped model and one optimizer over both; `model.plan` is the
    sharding plan (see `describe_plan`). Where TorchRec's planner finds no plan (tables larger than
    memory), a one-line ValueError names the tables and their sizes. Fused tables raise on an id
    outside them (`plan_constraints`).
    """
    with quiet_torchrec():
        return _shard(ranker, lr, weight_decay, embedding_lr, sharding, settings)


def _shard(
    ranker: Ranker,
    lr: float,
    weight_decay: float,
    embedding_lr: float,
    sharding: ShardingConfig,
    settings: TableSettings,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    world, device = dist.get_world_size(), settings.device
    # Register the fused optimizer before wrapping: a fused table without one trains with SGD.
    # No weight decay on the tables: fbgemm-gpu-cpu 1.8.0's rowwise Adagrad CPU kernel was measured
    # to ignore weight_decay (L2 and decoupled modes alike). Data-parallel tables are dense
    # parameters: Adam trains them.
    fused = [
        p
        for m in ranker.embedding.table_modules()
        for name, p in m.named_parameters()
        if sharding.type_of(name.split(".")[-2]) != "data_parallel"
    ]
    kwargs = {"lr": embedding_lr} | ({} if settings.optimizer == "sgd" else {"eps": 1e-8})
    _apply_optimizer_in_backward(FUSED_OPTIMIZERS[settings.optimizer], fused, kwargs)
    # A sequence and its target field are one table, so they are always sharded together.
    plan = plan_sharding(ranker, sharding, settings, world, dist.GroupMember.WORLD)
    # DMP moves the dense part only when it wraps it in DistributedDataParallel (several
    # processes); one process needs no DDP (it would all-reduce every gradient with itself), so
    # the backbone is moved here. The tables are on `meta` until DMP materialises them on `device`.
    ranker.backbone.to(device)
    model = DistributedModelParallel(
        ranker, device=device, plan=plan, sharders=sharders(), init_data_parallel=world > 1
    )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(model.named_parameters())),
        # fused: one kernel for every parameter, no per-parameter loop of small ops (on CPU too:
        # AutoInt+ at batch 256 took 8.3 ms a step fused against 8.9 with the foreach default)
        lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True),
    )
    return model, CombinedOptimizer([model.fused_optimizer, dense])
