"""Where a ranker's tables go: the sharding plan over the processes and their memory.

Sharding types per table (`ShardingConfig`): table_wise (the default), row_wise, column_wise on
fbgemm's fused kernel, updated inside the backward pass by the fused embedding optimizer
(`TableSettings.optimizer`, rowwise Adagrad by default); data_parallel on the dense kernel
(replicated, trained by the dense optimizer with the other dense parameters); "auto" lets the
planner pick among the three sharded types. On CPU TorchRec's planner refuses row-wise for bag
collections although it computes correctly (../shared/TORCHREC_CPU.md), so `RowWiseBagSharder`
offers it; a data-parallel unpooled collection crashes on CPU and is refused up front.

On CUDA the planner is given the GPU's memory (`hbm_cap`, or `TrainConfig.hbm_cap_mb`) and may
also choose fbgemm's UVM-caching kernel: a table that does not fit stays in host memory, with a
GPU cache of `cache_load_factor` of its rows. The planner needs no GPU to plan for one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torchrec.optim as fused_optim
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import CacheParams, ShardingPlan, ShardingType

from rankers.config import CPU_EMBEDDING_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDED, ShardingConfig
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
