"""Sharding plans: per-table types, the up-front refusals, and (2 processes, gloo) sharded models
that compute and train exactly like the unsharded model with the same weights."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from features.batch import Batch
from features.reader import table_batches
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from rankers.config import RankerConfig, ShardingConfig
from rankers.distributed import shard_ranker
from rankers.planning import describe_plan, plan_constraints
from rankers.ranker import build_ranker
from rankers.train import train_step

SCHEMA = Schema(
    dense=(DenseFeature("d"),),
    categorical=(CategoricalFeature("a", 64), CategoricalFeature("b", 48), CategoricalFeature("a2", 64, "a")),
    labels=(Label("y", "ctr"),),
)
DIM, B, STEPS = 64, 32, 3  # dim 64: the planner splits column-wise in 32-wide shards


def _leave() -> None:
    """A worker's clean exit without interpreter shutdown, where a native thread's static
    destructor sometimes aborted a finished process on a loaded machine (see rankers/cli/launch.py)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batch(rank: int) -> Batch:
    """Rank `rank`'s half of a fixed global batch of 2B rows."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(7)
    n = 2 * B
    table = pa.table(
        {
            "d": pa.array(rng.random(n), pa.float32()),
            "a": pa.array(rng.integers(0, 64, n), pa.int64()),
            "b": pa.array(rng.integers(0, 48, n), pa.int64()),
            "a2": pa.array(rng.integers(0, 64, n), pa.int64()),
            "y": pa.array(rng.integers(0, 2, n), pa.int8()),
        }
    )
    return next(table_batches(table.slice(rank * B, B) if rank >= 0 else table, SCHEMA, batch_size=n))


def _tables() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"a": torch.randn(64, DIM, generator=g) * 0.1, "b": torch.randn(48, DIM, generator=g) * 0.1}


def _load_tables(model: torch.nn.Module, tables: dict[str, torch.Tensor]) -> None:
    """Copies full tables into the sharded model: each rank its own shards."""
    state = model.state_dict()
    for key, value in state.items():
        table = key.split(".")[-2]
        if table not in tables or not key.endswith("weight"):
            continue
        if hasattr(value, "local_shards"):
            for shard in value.local_shards():
                (r, c), (n, d) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(tables[table][r : r + n, c : c + d])
        else:
            value.copy_(tables[table])
    model.load_state_dict(state)


def _check_shards(model: torch.nn.Module, tables: dict[str, torch.Tensor]) -> None:
    """Each rank's shards (or replicas) of `tables` equal the reference's slices."""
    checked = set()
    for key, value in model.state_dict().items():
        table = key.split(".")[-2]
        if table not in tables or not key.endswith("weight"):
            continue
        shards = value.local_shards() if hasattr(value, "local_shards") else None
        if shards is None:  # data-parallel: a full replica
            torch.testing.assert_close(value, tables[table], rtol=1e-4, atol=1e-5)
        for shard in shards or ():
            (r, c), (n, d) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            # float32 sums in another order (fused kernel, all-to-all) differ by ~1e-6
            want = tables[table][r : r + n, c : c + d]
            torch.testing.assert_close(shard.tensor, want, rtol=1e-4, atol=1e-5)
        checked.add(table)
    assert checked == set(tables), checked


def _worker(rank: int, world: int, port: int, sharding_type: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        ranker = build_ranker(SCHEMA, RankerConfig(embedding_dim=DIM), device=torch.device("meta"))
        model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.1, ShardingConfig(sharding_type=sharding_type))
        plan = describe_plan(model.plan, ranker, world)
        if sharding_type == "row_wise":  # really split: both ranks hold rows of each table
            assert all(row[f"bytes rank {r}"] > 0 for row in plan for r in range(world)), plan
        if sharding_type == "column_wise":  # split in 32-wide column shards (placed by the planner)
            assert all(row["shards"] == 2 for row in plan), plan
        tables = _tables()
        _load_tables(model, tables)
        reference = build_ranker(SCHEMA, RankerConfig(embedding_dim=DIM))
        reference.backbone.load_state_dict(ranker.backbone.state_dict())
        for name, weight in tables.items():
            reference.embedding.ebc.embedding_bags[name].weight.data.copy_(weight)
        mine, everyone = _batch(rank), _batch(-1)
        torch.testing.assert_close(model(mine).logits["ctr"], reference(mine).logits["ctr"])
        # The same steps: the sharded model on its half, the reference on the whole global batch.
        ref_tables = [reference.embedding.ebc.embedding_bags[t].weight for t in tables]
        replicated = sharding_type == "data_parallel"  # tables trained by Adam with the dense part
        adam = torch.optim.Adam(
            [*reference.backbone.parameters(), *(ref_tables if replicated else [])], lr=1e-3
        )
        ref_adagrad = [] if replicated else ref_tables
        # Rowwise Adagrad keeps one accumulator per row of each shard: a column-wise table has one
        # per row and column block (2 blocks here), the others one per row.
        blocks = 2 if sharding_type == "column_wise" else 1
        states = [torch.zeros(w.shape[0], blocks) for w in ref_adagrad]
        for _ in range(STEPS):
            train_step(model, ranker, optimizer, mine)
            adam.zero_grad()
            for w in ref_adagrad:
                w.grad = None
            loss, _ = reference.loss(reference(everyone), everyone.labels)
            loss.backward()
            adam.step()
            with torch.no_grad():
                for w, state in zip(ref_adagrad, states, strict=True):
                    g = w.grad.view(w.shape[0], blocks, -1)  # type: ignore[union-attr]
                    state += g.square().mean(2)
                    w -= (0.1 * g / (state.sqrt().unsqueeze(2) + 1e-8)).view_as(w)
        _check_shards(model, {t: reference.embedding.ebc.embedding_bags[t].weight.detach() for t in tables})
        # Adam divides by sqrt(v): float-order noise on a near-zero gradient can move a weight by up to
        # about lr (1e-3) in a step; everything else agrees to float precision.
        for p, q in zip(ranker.backbone.parameters(), reference.backbone.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-5)
        if rank == 0:
            Path(out).write_text(repr(plan))
    finally:
        dist.destroy_process_group()
    _leave()


@pytest.mark.distributed
@pytest.mark.parametrize("sharding_type", ["table_wise", "row_wise", "column_wise", "data_parallel"])
def test_two_process_sharded_model_computes_and_trains_like_the_unsharded_one(
    sharding_type: str, tmp_path: Path
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "plan.txt"
    mp.spawn(_worker, args=(2, _free_port(), sharding_type, str(out)), nprocs=2, join=True)
    assert sharding_type in out.read_text()


def test_constraints_name_the_table_of_an_impossible_combination() -> None:
    ranker = build_ranker(SCHEMA, RankerConfig(embedding_dim=DIM), device=torch.device("meta"))
    c = plan_constraints(ranker, ShardingConfig("auto", {"b": "data_parallel"}))
    assert c["a"].sharding_types == ["table_wise", "row_wise", "column_wise"]
    assert c["b"].sharding_types == ["data_parallel"] and c["b"].compute_kernels == ["dense"]
    with pytest.raises(ValueError, match=r"tables \['c'\] are not the model's"):
        plan_constraints(ranker, ShardingConfig(tables={"c": "row_wise"}))
    with pytest.raises(ValueError, match="sharding type 'grid'"):
        ShardingConfig("grid")
    seq = Schema(
        categorical=(CategoricalFeature("item", 10),),
        sequences=(SequenceFeature("hist", 10, 5, "item"),),
        labels=(Label("y", "ctr"),),
    )
    config = RankerConfig(backbone="din", sequence_lookup="collection")
    collection = build_ranker(seq, config, torch.device("meta"))
    with pytest.raises(ValueError, match="table item: data_parallel for an unpooled EmbeddingCollection"):
        plan_constraints(collection, ShardingConfig("data_parallel"))


def test_a_fused_table_of_columns_not_a_multiple_of_4_is_refused_by_name() -> None:
    ten = build_ranker(SCHEMA, RankerConfig(embedding_dim=10), device=torch.device("meta"))
    with pytest.raises(
        ValueError, match=r"table a: 10 columns per shard \(embedding dim 10\).*multiple of 4"
    ):
        plan_constraints(ten, ShardingConfig("table_wise"))
    assert plan_constraints(ten, ShardingConfig("data_parallel"))["a"].compute_kernels == ["dense"]
    twelve = build_ranker(SCHEMA, RankerConfig(embedding_dim=12), device=torch.device("meta"))
    plan_constraints(twelve, ShardingConfig("column_wise"), world_size=1)
    with pytest.raises(ValueError, match=r"table a: 6 columns per shard \(embedding dim 12\)"):
        plan_constraints(twelve, ShardingConfig("column_wise"), world_size=2)


def _load_worker(rank: int, world: int, port: int, ckpt: str, data: str, out: str) -> None:
    import numpy as np

    from features.reader import ParquetBatches
    from rankers.checkpoint import CheckpointDir
    from rankers.distributed import gather_arrays
    from rankers.evaluation import predict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        directory = CheckpointDir(ckpt)
        schema = Schema.load(ckpt)
        ranker = build_ranker(
            schema, RankerConfig.from_dict(directory.config()["ranker"]), torch.device("meta")
        )
        model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05, ShardingConfig("row_wise"))
        directory.load_weights(model)
        # The resume state saved at the end of an epoch re-shards too: load it, write it again.
        progress = directory.load_state(model, optimizer)
        CheckpointDir(Path(out).parent / "resaved").save_state(model, optimizer, progress)
        reader = ParquetBatches(Path(data), 500, schema=schema, labels=False, rank=rank, world_size=world)
        probs, _, _ = predict(model, reader)
        p = gather_arrays({"p": probs["ctr"]})["p"]
        if rank == 0:
            np.save(out, p)
    finally:
        dist.destroy_process_group()
    _leave()


@pytest.mark.distributed
def test_a_one_process_checkpoint_loads_row_wise_in_two_processes(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """The reverse of the CLI test (2 -> 1): weights saved by one process, loaded by two sharding
    the tables row-wise, give the same predictions as the single-process Predictor. The resume
    state saved at the end of the epoch loads in two processes, and what they save of it again
    loads in one as the same model and optimizer state (Adagrad and Adam included)."""
    import numpy as np

    from rankers.cli import main
    from rankers.predictor import Predictor

    ckpt = tmp_path / "ck"
    (tmp_path / "resaved").mkdir()
    args = ["train", "--data", str(synthetic_small), "--out", str(ckpt), "--epochs", "1", "--max-steps", "5"]
    assert main([*args, "--batch-size", "256", "--checkpoint-every", "100", "--no-progress"]) == 0
    want = Predictor.load(ckpt).predict_proba(synthetic_small / "test")["ctr"]
    out = tmp_path / "p.npy"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(
        _load_worker, args=(2, _free_port(), str(ckpt), str(synthetic_small / "test"), str(out)), nprocs=2
    )
    got = np.load(out)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    first, again = (_resume_state(ckpt, d) for d in (ckpt, tmp_path / "resaved"))
    assert first.keys() == again.keys()
    assert any("momentum1" in k for k in first) and any(".exp_avg" in k for k in first), sorted(first)
    for k, v in first.items():
        assert torch.equal(v, again[k]), k
    assert any(k.endswith("momentum1") and v.abs().sum() > 0 for k, v in first.items())


def _resume_state(ckpt: Path, state_of: Path) -> dict[str, torch.Tensor]:
    """Model and optimizer tensors (flattened, by name) after `load_state` of `state_of` in one
    process, into the model of checkpoint `ckpt`."""
    from rankers.checkpoint import CheckpointDir
    from rankers.distributed import single_process_group

    single_process_group()
    schema = Schema.load(ckpt)
    ranker = build_ranker(
        schema, RankerConfig.from_dict(CheckpointDir(ckpt).config()["ranker"]), torch.device("meta")
    )
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    CheckpointDir(state_of).load_state(model, optimizer)
    out: dict[str, torch.Tensor] = {}

    def flatten(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v)
        elif hasattr(value, "local_shards"):  # one process holds every shard
            out[prefix] = value.local_shards()[0].tensor.clone()
        elif isinstance(value, torch.Tensor):
            out[prefix] = value.clone()

    flatten("model", model.state_dict())
    flatten("optim", optimizer.state_dict()["state"])
    return out
