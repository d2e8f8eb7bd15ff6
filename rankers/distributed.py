"""Process groups, sharding plans and DistributedModelParallel for a Ranker's tables, on CPU or CUDA.

Sharding types per table (`ShardingConfig`): table_wise (the default), row_wise, column_wise on
fbgemm's fused kernel, updated inside the backward pass by the fused embedding optimizer
(`TrainConfig.embedding_optimizer`, rowwise Adagrad by default); data_parallel on the dense kernel
(replicated, trained by the dense optimizer with the other dense parameters); "auto" lets the
planner pick among the three sharded types. On CPU TorchRec's planner refuses row-wise for bag
collections although it computes correctly (../shared/TORCHREC_CPU.md), so `RowWiseBagSharder`
offers it; a data-parallel unpooled collection crashes on CPU and is refused up front.

On CUDA the planner is given the GPU's memory (`hbm_cap`, or `TrainConfig.hbm_cap_mb`) and may
also choose fbgemm's UVM-caching kernel: a table that does not fit stays in host memory, with a
GPU cache of `cache_load_factor` of its rows.

Processes come from torchrun's environment (`init_process_group`): gloo on CPU; on CUDA one mixed
group, NCCL for GPU tensors and gloo for the CPU-side collectives, each process on the GPU
`LOCAL_RANK` names. `rankers train --nproc N` launches them (`--nnodes` across machines).
Evaluation gathers every rank's predictions (`gather_arrays`), so metrics are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torchrec.optim as fused_optim
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import CacheParams, ShardingPlan, ShardingType
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from rankers._quiet import quiet_torchrec
from rankers.config import CPU_EMBEDDING_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDED, ShardingConfig
from rankers.devices import backend_for
from rankers.ranker import Ranker, format_bytes, machine_memory

# The fused embedding optimizers by name (TorchRec maps each class to an fbgemm kernel).
FUSED_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": fused_optim.RowWiseAdagrad,
    "adagrad": fused_optim.Adagrad,
    "sgd": fused_optim.SGD,
    "adam": fused_optim.Adam,
    "partial_rowwise_adam": fused_optim.PartialRowWiseAdam,
    "lamb": fused_optim.LAMB,
    "partial_rowwise_lamb": fused_optim.PartialRowWiseLAMB,
}
assert tuple(FUSED_OPTIMIZERS) == EMBEDDING_OPTIMIZERS


@dataclass(frozen=True)
class TableSettings:
    """How the tables are placed and trained, beside their sharding types."""

    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable)
    optimizer: str = "rowwise_adagrad"  # one of EMBEDDING_OPTIMIZERS (CPU: CPU_EMBEDDING_OPTIMIZERS)
    hbm_cap: int | None = None  # bytes of GPU memory per process for tables (None: the GPU's)
    cache_load_factor: float = 0.2  # share of a UVM-cached table's rows in its GPU cache
    batch_size: int | None = None  # rows per step and process (the planner's cost model)

    def __post_init__(self) -> None:
        if self.optimizer not in FUSED_OPTIMIZERS:
            raise ValueError(
                f"embedding optimizer {self.optimizer!r}: expected one of {EMBEDDING_OPTIMIZERS}"
            )
        if self.device.type == "cpu" and self.optimizer not in CPU_EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"embedding optimizer {self.optimizer!r} has no CPU kernel in fbgemm (GPU only); "
                f"expected one of {CPU_EMBEDDING_OPTIMIZERS} on CPU"
            )


class RowWiseBagSharder(EmbeddingBagCollectionSharder):
    """TorchRec's bag-collection sharder, offering row-wise on CPU too (measured correct there)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = list(super().sharding_types(compute_device_type))
        return types if ShardingType.ROW_WISE.value in types else [*types, ShardingType.ROW_WISE.value]


def plan_constraints(
    ranker: Ranker,
    config: ShardingConfig,
    world_size: int = 1,
    device: str = "cpu",
    cache_load_factor: float = 0.2,
) -> dict[str, ParameterConstraints]:
    """Planner constraints per table from `config`; ValueError naming a table for a combination that
    cannot work (an unknown table, a data-parallel unpooled collection on CPU, a fused table whose
    columns per shard are not a multiple of 4). On CUDA a sharded table may take the fused kernel
    or the UVM-caching one (the planner chooses by memory), its cache `cache_load_factor` of its rows."""
    names = ranker.embedding.table_names()
    unknown = sorted(set(dict(config.tables)) - set(names))
    if unknown:
        raise ValueError(f"sharding: tables {unknown} are not the model's; its tables: {names}")
    unpooled = set(ranker.embedding.unpooled_table_names())
    out = {}
    for table in names:
        kind = config.type_of(table)
        if kind == "data_parallel" and table in unpooled and device == "cpu":
            raise ValueError(
                f"table {table}: data_parallel for an unpooled EmbeddingCollection crashes on CPU; "
                f"expected one of {SHARDED} (or the 'bag' sequence lookup)"
            )
        types = list(SHARDED) if kind == "auto" else [kind]
        kernels = ["dense"] if kind == "data_parallel" else ["fused"]
        if device != "cpu" and kind != "data_parallel":
            kernels.append("fused_uvm_caching")
        dim = ranker.embedding.table_shapes[table][1]
        block = dim // world_size if world_size > 1 and dim % world_size == 0 else None
        columns = block if kind == "column_wise" and block else dim
        if kind != "data_parallel" and columns % 4:
            raise ValueError(
                f"table {table}: {columns} columns per shard (embedding dim {dim}); fbgemm's fused "
                "table kernel (torchrec 1.8) needs a multiple of 4: choose an embedding dim that is "
                "one (--embedding-dim), or --sharding data_parallel (dense tables trained by Adam)"
            )
        # FATAL: an id outside the table raises (RuntimeError, measured on CPU) instead of fbgemm's
        # default WARNING, which logs once and looks up row 0 (and trains it). Batches are checked
        # in Python first (features.batch.BatchCheck); this only backs that up.
        out[table] = ParameterConstraints(
            sharding_types=types,
            compute_kernels=kernels,
            min_partition=block,
            bounds_check_mode=None if kind == "data_parallel" else BoundsCheckMode.FATAL,
            cache_params=CacheParams(load_factor=cache_load_factor) if device != "cpu" else None,
        )
    return out


def describe_plan(plan: ShardingPlan, ranker: Ranker, world_size: int) -> list[dict[str, Any]]:
    """One row per table: its sharding type, kernel, ranks and bytes of table held by each rank."""
    sizes = ranker.embedding.table_shapes
    rows = []
    for module_plan in plan.plan.values():
        for table, sharding in module_plan.items():  # type: ignore[attr-defined]
            held, shards = [0] * world_size, 1
            if sharding.sharding_spec is None:  # replicated on every rank
                n, d = sizes[table]
                held = [n * d * 4] * world_size
            else:
                shards = len(sharding.sharding_spec.shards)
                for shard in sharding.sharding_spec.shards:
                    rank = int(str(shard.placement).split("rank:")[1].split("/")[0])
                    held[rank] += shard.shard_sizes[0] * shard.shard_sizes[1] * 4
            rows.append(
                {
                    "table": table,
                    "sharding": sharding.sharding_type,
                    "kernel": sharding.compute_kernel,
                    "shards": shards,
                    "ranks": ",".join(map(str, sorted(set(sharding.ranks or range(world_size))))),
                    **{f"bytes rank {r}": b for r, b in enumerate(held)},
                }
            )
    return rows


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


def _no_plan(ranker: Ranker, world: int, topology: Topology, error: PlannerError) -> str:
    """TorchRec's multi-line PlannerError as one line naming the largest tables and their sizes."""
    shapes = sorted(ranker.embedding.table_shapes.items(), key=lambda item: -item[1][0] * item[1][1])
    tables = ", ".join(f"{t} {n:,} x {d} ({format_bytes(n * d * 4)})" for t, (n, d) in shapes[:5])
    more = f" and {len(shapes) - 5} smaller" if len(shapes) > 5 else ""
    storage = topology.devices[0].storage
    memory = format_bytes(storage.ddr)
    if topology.compute_device != "cpu":
        memory = f"{format_bytes(storage.hbm)} of GPU memory and {memory}"
    reason = str(error).strip().splitlines()[0].strip().rstrip(".")
    return (
        f"sharding: TorchRec found no plan for tables {tables}{more} in {memory} of memory per "
        f"process ({world} process{'es' if world > 1 else ''}; TorchRec: {reason}); expected smaller "
        "tables (num_embeddings in schema.json), a smaller embedding_dim or more processes"
    )


def topology(settings: TableSettings, world: int, local_world: int | None = None) -> Topology:
    """The planner's view of the machines: `world` processes, `local_world` of them per machine
    (torchrun's LOCAL_WORLD_SIZE), each with its share of this machine's memory and, on CUDA, its
    GPU's memory (or `settings.hbm_cap`)."""
    local = local_world or int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    ddr = machine_memory() // max(local, 1)
    if settings.device.type == "cpu":
        return Topology(world_size=world, compute_device="cpu", ddr_cap=ddr, local_world_size=local)
    hbm = settings.hbm_cap or torch.cuda.get_device_properties(settings.device).total_memory
    return Topology(
        world_size=world,
        compute_device=settings.device.type,
        hbm_cap=hbm,
        ddr_cap=ddr,
        local_world_size=local,
    )


def plan_sharding(
    ranker: Ranker,
    sharding: ShardingConfig,
    settings: TableSettings,
    world: int = 1,
    group: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """TorchRec's sharding plan of `ranker`'s tables (agreed over `group` when given, else planned
    in this process alone); ValueError naming the tables where none fits."""
    device = settings.device.type
    constraints = plan_constraints(ranker, sharding, world, device, settings.cache_load_factor)
    layout = topology(settings, world)
    planner = EmbeddingShardingPlanner(
        topology=layout, batch_size=settings.batch_size, constraints=constraints
    )
    try:
        if group is None:
            return planner.plan(ranker, sharders())  # type: ignore[arg-type]
        return planner.collective_plan(ranker, sharders(), group)  # type: ignore[arg-type]
    except PlannerError as e:
        raise ValueError(_no_plan(ranker, world, layout, e)) from None


def sharders() -> list[Any]:
    """The sharders of a ranker's table modules (bags, with row-wise on CPU too; collections)."""
    return [RowWiseBagSharder(), EmbeddingCollectionSharder()]


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
    cuda = device.type == "cuda"
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
        # fused on CUDA: one kernel for every parameter, no per-parameter host loop
        lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=cuda or None),
    )
    return model, CombinedOptimizer([model.fused_optimizer, dense])
