"""Process groups, sharding plans and DistributedModelParallel for a Ranker's tables.

This version serves one process; the multi-process launcher, per-table sharding constraints and
row-wise sharding come with the distributed issue.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from rankers._quiet import quiet_torchrec
from rankers.ranker import Ranker


def single_process_group() -> None:
    """A gloo group of one process (an in-memory store, no port), unless one already exists."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def shard_ranker(
    ranker: Ranker, lr: float, weight_decay: float, embedding_lr: float
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Wraps `ranker` (tables on `meta`) in DistributedModelParallel: every table table-wise on the
    fused kernel, updated by rowwise Adagrad inside the backward pass; the dense parameters get
    Adam. Returns the wrapped model and one optimizer over both.
    """
    with quiet_torchrec():
        return _shard(ranker, lr, weight_decay, embedding_lr)


def _shard(
    ranker: Ranker, lr: float, weight_decay: float, embedding_lr: float
) -> tuple[nn.Module, torch.optim.Optimizer]:
    world = dist.get_world_size()
    # Register the fused optimizer before wrapping: a fused table without one trains with SGD.
    # No weight decay on the tables: fbgemm-gpu-cpu 1.8.0's rowwise Adagrad CPU kernel was measured
    # to ignore weight_decay (L2 and decoupled modes alike).
    modules = ranker.embedding.table_modules()
    _apply_optimizer_in_backward(
        RowWiseAdagrad,
        [p for m in modules for p in m.parameters()],
        {"lr": embedding_lr, "eps": 1e-8},
    )
    # A sequence and its target field are one table, so they are always sharded together.
    tables = ranker.embedding.table_names()
    constraints = {
        t: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"]) for t in tables
    }
    topology = Topology(world_size=world, compute_device="cpu", ddr_cap=_memory_bytes() // world)
    sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        ranker, sharders, dist.GroupMember.WORLD
    )
    # One process needs no DistributedDataParallel around the dense part (it would only add
    # an all-reduce of every gradient with itself).
    model = DistributedModelParallel(
        ranker, device=torch.device("cpu"), plan=plan, sharders=sharders, init_data_parallel=world > 1
    )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(model.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    )
    return model, CombinedOptimizer([model.fused_optimizer, dense])
