"""Host syncs per training step (counted by tests/rankers/_syncs.py, on CPU): none from our code under
`fixed_shapes` (what GPU loops run), exactly the documented ones in the eager CPU path, and the
same logits and gradients on both paths.

The batches come from `ParquetBatches` over a small dataset with dense values, three fields, two
aligned behaviour sequences (empty ones, and longer ones cut to max_len) and click and conversion
labels; the models are sharded as training shards them (`rankers.run.prepare`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from features.batch import Batch
from features.reader import ParquetBatches
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from rankers.backbones.layers import fixed_shapes
from rankers.backbones.shapes import static_shapes
from rankers.config import RankerConfig
from rankers.distributed import shard_ranker, single_process_group
from rankers.kernels.gru import fused_applies as packed_fused_applies
from rankers.ranker import Ranker, build_ranker
from tests.rankers._syncs import count_syncs

MAX_LEN = 12
SCHEMA = Schema(
    dense=(DenseFeature("price"),),
    categorical=(
        CategoricalFeature("user_id", 50),
        CategoricalFeature("item_id", 300),
        CategoricalFeature("cate_id", 20),
    ),
    sequences=(
        SequenceFeature("hist_item_id", 300, MAX_LEN, "item_id"),
        SequenceFeature("hist_cate_id", 20, MAX_LEN, "cate_id"),
    ),
    labels=(Label("click", "ctr"), Label("buy", "cvr")),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 rows: history lengths 0 to 20 (cut to 12 by the reader), categories aligned with items."""
    rng = np.random.default_rng(0)
    n = 512
    lengths = np.minimum(rng.geometric(1 / 4, n) - 1, 20)
    items = [rng.integers(0, 300, k).tolist() for k in lengths]
    click = rng.random(n) < 0.3
    table = pa.table(
        {
            "price": pa.array(rng.random(n), pa.float32()),
            "user_id": pa.array(rng.integers(0, 50, n), pa.int64()),
            "item_id": pa.array(rng.integers(0, 300, n), pa.int64()),
            "cate_id": pa.array(rng.integers(0, 20, n), pa.int64()),
            "hist_item_id": pa.array(items, pa.list_(pa.int64())),
            "hist_cate_id": pa.array([[i % 20 for i in h] for h in items], pa.list_(pa.int64())),
            "click": pa.array(click, pa.int8()),
            "buy": pa.array(click & (rng.random(n) < 0.4), pa.int8()),
        }
    )
    out = tmp_path_factory.mktemp("syncs") / "train"
    out.mkdir()
    pq.write_table(table, out / "part.parquet", row_group_size=128)
    SCHEMA.save(out)
    return out


def _sharded(backbone: str, lookup: str, seed: int = 0) -> tuple[nn.Module, Ranker, torch.optim.Optimizer]:
    single_process_group()
    torch.manual_seed(seed)
    config = RankerConfig(backbone=backbone, embedding_dim=8, sequence_lookup=lookup)
    ranker = build_ranker(SCHEMA, config, device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, 1e-3, 0.0, 0.05)
    return model, ranker, optimizer


def _step(model: nn.Module, ranker: Ranker, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    optimizer.zero_grad()
    loss, _ = ranker.loss(model(batch), batch.labels)
    loss.backward()
    optimizer.step()


CASES = [
    ("mlp", "bag"),
    ("finalmlp", "bag"),
    ("autoint_plus", "bag"),
    ("din", "bag"),
    ("din", "collection"),
    ("dien", "bag"),
    ("dien", "collection"),
    ("esmm", "bag"),
]
STEPS = 3


def _library_syncs(ranker: Ranker, optimizer: torch.optim.Optimizer) -> Counter:
    """TorchRec's, fbgemm's and torch.optim's syncs per step, each with its reason. Counted exactly,
    so a new one fails the test."""
    modules = len(ranker.embedding.table_modules())  # each runs one fbgemm kernel (TBE) here
    # torch.optim.Adam, fused (rankers/distributed.py, on every device), keeps each parameter's
    # `step` as a tensor and reads none of them back; the foreach or for-loop Adam would read
    # each one with `.item()` (`_get_value`), counted here if it ever came back.
    return Counter(
        {
            # fbgemm's TBE forward reads its iteration counter `iter_cpu` twice (`.item()`): a CPU
            # tensor by design, so no GPU sync.
            ("aten._local_scalar_dense", f"{_FBGEMM} forward"): 2 * modules,
            # TorchRec's KJT all-to-all builds its recat permutation with `torch.tensor(list,
            # device=...)` in every input dist (`dist_data._get_recat`), one per sharded table
            # module: on a GPU a small blocking host-to-device copy, TorchRec's own.
            ("aten.lift_fresh", "torchrec/distributed/dist_data.py _get_recat"): modules,
        }
    )


_FBGEMM = "fbgemm_gpu/split_table_batched_embeddings_ops_training.py"


def _ours_eager(backbone: str) -> Counter:
    """Our syncs per step on the jagged (eager CPU) path: the list in rankers/backbones/shapes.py."""
    syncs = Counter({("aten._local_scalar_dense", "rankers/embedding.py pad_sequence"): 2})  # per sequence
    if backbone in ("din", "dien"):
        syncs[("aten.equal", "rankers/backbones/layers.py aligned_mask")] = 1  # 2 attended sequences
    if backbone == "din" or (backbone == "dien" and not packed_fused_applies(torch.zeros(1))):
        syncs[("aten.nonzero", "rankers/backbones/layers.py weights")] = 1
    if backbone == "dien" and packed_fused_applies(torch.zeros(1)):  # one packing for both GRUs
        syncs[("aten.nonzero", "rankers/backbones/dien.py __init__")] = 1
        syncs[("aten._local_scalar_dense", "rankers/backbones/dien.py __init__")] = 2
    elif backbone == "dien":  # the step-by-step recurrences
        syncs[("aten._local_scalar_dense", "rankers/backbones/dien.py forward")] = 4  # 2 per GRU
        syncs[("Tensor.tolist", "rankers/backbones/dien.py forward")] = 2  # 1 per GRU
    if backbone == "dien":
        syncs[("aten.nonzero", "rankers/backbones/dien.py auxiliary_loss")] = 1
    return syncs


def _counted(backbone: str, lookup: str, data: Path, fixed: bool) -> tuple[Counter, Counter, Counter]:
    """(syncs of STEPS training steps, the library's expected for them, syncs of one forward in
    evaluation); one step before them is not counted (one-off set-up: TorchRec's first input dist,
    the optimizer's state), nor the batch check (it runs on the host copy, before the batch moves to
    the device, every N steps)."""
    model, ranker, optimizer = _sharded(backbone, lookup)
    batches = iter(ParquetBatches(data, batch_size=64, shuffle_buffer=256))
    total: Counter = Counter()
    for i in range(STEPS + 1):
        batch = next(batches)
        if not i:  # checks every N steps: on the others the KJT's ids per key are the reader's own
            ranker.embedding.check(batch)  # (the check computes and keeps them on the host copy)
        with fixed_shapes(fixed), count_syncs() as syncs:
            _step(model, ranker, optimizer, batch)
        if i:
            total += syncs.sites()
    library = _library_syncs(ranker, optimizer)
    model.eval()
    batch = next(batches)
    with torch.no_grad(), fixed_shapes(fixed), count_syncs() as syncs:
        model(batch)
    return total, Counter({k: STEPS * n for k, n in library.items()}), syncs.sites()


@pytest.mark.parametrize(("backbone", "lookup"), CASES)
def test_no_host_sync_from_our_code_under_fixed_shapes(backbone: str, lookup: str, data: Path) -> None:
    """Forward, loss, backward and optimizer step of a sharded model: the only syncs are the
    library's listed ones (none of them a GPU sync but TorchRec's recat copy)."""
    counted, library, evaluation = _counted(backbone, lookup, data, fixed=True)
    assert counted == library
    assert evaluation == {k: n // STEPS for k, n in library.items() if "optim" not in k[1]}


@pytest.mark.parametrize(("backbone", "lookup"), CASES)
def test_the_eager_paths_syncs_are_the_documented_ones(backbone: str, lookup: str, data: Path) -> None:
    counted, library, _ = _counted(backbone, lookup, data, fixed=False)
    ours = Counter({k: STEPS * n for k, n in _ours_eager(backbone).items()})
    assert counted == library + ours


def _grads(
    backbone: str, lookup: str, batch: Batch, fixed: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (B, K) of an unsharded ranker in training mode, and every gradient and buffer."""
    torch.manual_seed(0)
    ranker = build_ranker(SCHEMA, RankerConfig(backbone=backbone, embedding_dim=8, sequence_lookup=lookup))
    ranker.train()
    torch.manual_seed(1)  # DIEN's in-batch negatives
    with fixed_shapes(fixed):
        out = ranker(batch)
        loss, _ = ranker.loss(out, batch.labels)
    loss.backward()
    state = {f"grad {n}": p.grad for n, p in ranker.named_parameters() if p.grad is not None}
    state |= {f"buffer {n}": b for n, b in ranker.named_buffers()}  # Dice's running statistics
    return torch.stack(list(out.logits.values()), dim=1), state


def _longest(batch: Batch) -> int:
    return int(batch.sparse["hist_item_id"].lengths().max())


@pytest.mark.parametrize("lookup", ["bag", "collection"])
@pytest.mark.parametrize("backbone", ["din", "dien"])
def test_fixed_shapes_give_the_eager_logits_and_gradients(backbone: str, lookup: str, data: Path) -> None:
    """Padded to max_len, every position computed: the same logits, gradients and Dice statistics.
    On a batch whose longest history (the eager path's padded length) is shorter than max_len."""
    batch = next(b for b in ParquetBatches(data, batch_size=32) if _longest(b) < MAX_LEN)
    assert int(batch.sparse["hist_item_id"].lengths().min()) == 0  # rows without history too
    eager_logits, eager = _grads(backbone, lookup, batch, fixed=False)
    fixed_logits, fixed = _grads(backbone, lookup, batch, fixed=True)
    torch.testing.assert_close(fixed_logits, eager_logits, rtol=1e-5, atol=1e-5)
    assert fixed.keys() == eager.keys() and any(k.startswith("grad embedding") for k in eager)
    for name, value in eager.items():
        torch.testing.assert_close(fixed[name], value, rtol=1e-5, atol=1e-5, msg=name)


def test_fixed_shapes_nests_and_restores_the_previous_setting() -> None:
    """An inner `fixed_shapes(False)` (a CPU loop inside a block that asks for fixed shapes, as
    the sync-counting tests do) leaves them on."""
    assert not static_shapes()
    with fixed_shapes(False):
        assert not static_shapes()
    with fixed_shapes():
        assert static_shapes()
        with fixed_shapes(False):
            assert static_shapes()
        assert static_shapes()
        with pytest.raises(RuntimeError), fixed_shapes(False):
            raise RuntimeError
        assert static_shapes()
    assert not static_shapes()


def test_the_training_step_and_loop_add_no_sync_of_their_own(data: Path) -> None:
    """`train_step` as the GPU loop calls it (fixed shapes, the loss folded into a flag read every
    50 steps) and the loop's loss sum: no sync from our code but the batch check, which reads the
    host copy before the batch moves to the device. Reading the flag is the one sync, every N steps."""
    from rankers.pipeline import LossCheck
    from rankers.train import train_step

    model, ranker, optimizer = _sharded("dien", "collection")
    reader = iter(ParquetBatches(data, batch_size=64, shuffle_buffer=256))
    batches = [next(reader) for _ in range(4)]  # made outside the count: they come from host data
    losses, loss_sum, cpu = LossCheck(every=50), torch.zeros(()), torch.device("cpu")
    train_step(model, ranker, optimizer, batches[0], "step 1", device=cpu, losses=(losses, 0))  # set-up
    with fixed_shapes(), count_syncs() as syncs:
        for i, batch in enumerate(batches[1:], start=1):
            loss = train_step(
                model, ranker, optimizer, batch, f"step {i + 1}", device=cpu, losses=(losses, i)
            )
            loss_sum += loss.detach()
    ours = [s for s in syncs.ours() if not s.where.startswith("features/batch.py")]
    assert ours == [] and any(s.where.startswith("features/batch.py") for s in syncs.ours())
    with count_syncs() as syncs:
        losses.flush()
    assert [s.site for s in syncs.ours()] == ["rankers/pipeline.py flush"]  # the first bad step (none)
