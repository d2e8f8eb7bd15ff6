"""EmbeddingArch: tables from the schema, fields by name whatever order the KeyedTensor holds."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from rankers.backbones.layers import fixed_shapes
from rankers.embedding import EmbeddingArch, default_sequence_lookup

SCHEMA = Schema(
    dense=(DenseFeature("d"),),
    categorical=(
        CategoricalFeature("a", 10),
        CategoricalFeature("b", 5),
        CategoricalFeature("a2", 10, table="a"),
    ),
    labels=(Label("y", "ctr"),),
)


def _kjt(keys: list[str], ids: dict[str, list[int]]) -> KeyedJaggedTensor:
    values = torch.tensor([i for k in keys for i in ids[k]])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=torch.ones(len(values), dtype=torch.int32))


def test_fields_are_the_table_rows_in_schema_order() -> None:
    torch.manual_seed(0)
    arch = EmbeddingArch(SCHEMA, embedding_dim=4)
    ids = {"a": [1, 2, 3], "b": [4, 0, 1], "a2": [3, 3, 9]}
    out = arch(torch.zeros(3, 1), _kjt(["a", "b", "a2"], ids))
    assert out.fields.shape == (3, 3, 4)
    assert out.field_names == ("a", "b", "a2")
    tables = {name: m.weight for name, m in arch.ebc.embedding_bags.items()}
    assert set(tables) == {"a", "b"}  # a2 shares a's table
    for f, name in enumerate(["a", "b", "a2"]):
        table = tables["a" if name == "a2" else name]
        torch.testing.assert_close(out.fields[:, f], table[torch.tensor(ids[name])])


def test_shared_table_gives_equal_vectors_for_equal_ids() -> None:
    arch = EmbeddingArch(SCHEMA, embedding_dim=4)
    out = arch(torch.zeros(2, 1), _kjt(["a", "b", "a2"], {"a": [7, 1], "b": [0, 0], "a2": [7, 2]}))
    torch.testing.assert_close(out.fields[0, 0], out.fields[0, 2])
    assert not torch.equal(out.fields[1, 0], out.fields[1, 2])


def test_builds_on_meta() -> None:
    arch = EmbeddingArch(SCHEMA, embedding_dim=8, device=torch.device("meta"))
    assert all(p.device.type == "meta" for p in arch.parameters())


SEQ_SCHEMA = Schema(
    categorical=(
        CategoricalFeature("user", 7),
        CategoricalFeature("item", 20),
        CategoricalFeature("cate", 5),
    ),
    sequences=(
        SequenceFeature("hist_item", 20, 4, "item"),
        SequenceFeature("hist_cate", 5, 4, "cate"),
        SequenceFeature("hist_tag", 3, 4),
    ),
    labels=(Label("y", "ctr"),),
)
SEQ_LENGTHS = {"hist_item": [2, 0, 4], "hist_cate": [2, 0, 4], "hist_tag": [1, 3, 0]}


def _seq_kjt(seed: int = 1) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    sizes = {f.name: f.num_embeddings for f in SEQ_SCHEMA._sparse()}
    lengths = {k: [1, 1, 1] for k in ("user", "item", "cate")} | SEQ_LENGTHS
    keys = list(SEQ_SCHEMA.sparse_keys)
    values = torch.cat([torch.randint(0, sizes[k], (sum(lengths[k]),), generator=g) for k in keys])
    flat = torch.tensor([n for k in keys for n in lengths[k]], dtype=torch.int32)
    return KeyedJaggedTensor(keys=keys, values=values, lengths=flat)


def _pair() -> tuple[EmbeddingArch, EmbeddingArch]:
    torch.manual_seed(0)
    bag = EmbeddingArch(SEQ_SCHEMA, 4, sequence_lookup="bag")
    collection = EmbeddingArch(SEQ_SCHEMA, 4, sequence_lookup="collection")
    renamed = {
        k.replace("embedding_bags", "embeddings") if k.startswith("sequence") else k: v
        for k, v in bag.state_dict().items()
    }
    collection.load_state_dict(renamed)
    return bag, collection


def test_sequences_are_padded_rows_of_the_shared_table() -> None:
    bag, _ = _pair()
    kjt = _seq_kjt()
    out = bag(torch.zeros(3, 0), kjt)
    ids = kjt.to_dict()
    table = bag.sequence_tables.embedding_bags["item"].weight
    seq = out.sequences["hist_item"]
    assert seq.values.shape == (3, 4, 4)  # the longest row of the batch
    assert seq.mask.tolist() == [[True, True, False, False], [False] * 4, [True] * 4]
    torch.testing.assert_close(seq.values[seq.mask], table[ids["hist_item"].values()])
    assert (seq.values[~seq.mask] == 0).all()
    torch.testing.assert_close(out.fields[:, 1], table[ids["item"].values()])  # target on the same table
    assert out.sequences["hist_tag"].values.shape == (3, 3, 4)
    assert set(bag.ebc.embedding_bags) == {"user"}


def test_bag_and_collection_lookups_agree_in_values_and_gradients() -> None:
    bag, collection = _pair()
    kjt = _seq_kjt()
    grads = []
    for arch in (bag, collection):
        out = arch(torch.zeros(3, 0), kjt)
        w = torch.arange(1.0, 5.0)  # weights the dims differently so the gradients differ per dim
        loss = (out.fields * w).sum() + sum((s.values * w).square().sum() for s in out.sequences.values())
        loss.backward()
        grads.append({n.split(".")[-2]: p.grad for n, p in arch.named_parameters()})
        if arch is bag:
            expected = out
    assert grads[0].keys() == grads[1].keys()
    for table in grads[0]:
        torch.testing.assert_close(grads[0][table], grads[1][table])
    out = collection(torch.zeros(3, 0), kjt)
    torch.testing.assert_close(out.fields, expected.fields)
    for name, seq in expected.sequences.items():
        torch.testing.assert_close(out.sequences[name].values, seq.values)
        assert torch.equal(out.sequences[name].mask, seq.mask)


def test_a_batch_without_any_history_gives_one_masked_position() -> None:
    bag, _ = _pair()
    keys = list(SEQ_SCHEMA.sparse_keys)
    kjt = KeyedJaggedTensor(
        keys=keys,
        values=torch.tensor([1, 2, 3]),
        lengths=torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.int32),
    )
    out = bag(torch.zeros(1, 0), kjt)
    assert out.sequences["hist_item"].values.shape == (1, 1, 4)
    assert not out.sequences["hist_item"].mask.any()


@pytest.mark.parametrize("lookup", ["bag", "collection"])
def test_a_sequence_and_its_target_are_one_table(lookup: str) -> None:
    arch = EmbeddingArch(SEQ_SCHEMA, 4, sequence_lookup=lookup)
    assert sorted(arch.table_names()) == ["cate", "hist_tag", "item", "user"]
    assert len(arch.sequence_tables.state_dict()) == 3  # item, cate, hist_tag: one weight each


def test_unknown_sequence_lookup_is_refused() -> None:
    with pytest.raises(ValueError, match="gather"):
        EmbeddingArch(SEQ_SCHEMA, 4, sequence_lookup="gather")


def test_the_default_sequence_lookup_follows_the_runs_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's device decides, not whether this host has a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_sequence_lookup() == "bag"
    assert default_sequence_lookup(torch.device("cpu")) == "bag"
    assert default_sequence_lookup("meta") == "bag"
    assert default_sequence_lookup("cuda") == "collection"
    assert default_sequence_lookup(torch.device("cuda", 1)) == "collection"


@pytest.mark.parametrize("lookup", ["bag", "collection"])
def test_fixed_shapes_pad_to_max_len_with_the_same_values_and_gradients(lookup: str) -> None:
    """Under fixed_shapes every sequence is padded to its max_len (4), not the longest row (3 for
    hist_tag, 0 in a batch without history): the real positions and the gradients are the same."""
    kjt = _seq_kjt()
    runs = []
    for fixed in (False, True):
        torch.manual_seed(0)
        arch = EmbeddingArch(SEQ_SCHEMA, 4, sequence_lookup=lookup)
        with fixed_shapes(fixed):
            out = arch(torch.zeros(3, 0), kjt)
        loss = sum((s.values * torch.arange(1.0, 5.0)).square().sum() for s in out.sequences.values())
        loss.backward()
        runs.append((out, {n: p.grad for n, p in arch.named_parameters()}))
    (eager, eager_grads), (fixed_out, fixed_grads) = runs
    assert eager.sequences["hist_tag"].values.shape == (3, 3, 4)
    for name, seq in fixed_out.sequences.items():
        assert seq.values.shape == (3, 4, 4) and seq.mask.shape == (3, 4)
        want = eager.sequences[name]
        length = want.mask.shape[1]
        assert torch.equal(seq.mask[:, :length], want.mask) and not seq.mask[:, length:].any()
        assert torch.equal(seq.values[:, :length], want.values) and not seq.values[:, length:].any()
    assert fixed_grads.keys() == eager_grads.keys()
    for n, g in eager_grads.items():
        torch.testing.assert_close(fixed_grads[n], g, rtol=0, atol=0)
    empty = KeyedJaggedTensor(
        keys=list(SEQ_SCHEMA.sparse_keys),
        values=torch.tensor([1, 2, 3]),
        lengths=torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.int32),
    )
    with fixed_shapes():
        out = EmbeddingArch(SEQ_SCHEMA, 4, sequence_lookup=lookup)(torch.zeros(1, 0), empty)
    assert out.sequences["hist_item"].values.shape == (1, 4, 4) and not out.sequences["hist_item"].mask.any()
