"""EmbeddingArch: tables from the schema, fields by name whatever order the KeyedTensor holds."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from rankers.embedding import EmbeddingArch

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


def test_sequences_are_refused_until_supported() -> None:
    schema = Schema(
        categorical=(CategoricalFeature("item", 5),), sequences=(SequenceFeature("hist", 5, 3, "item"),)
    )
    with pytest.raises(ValueError, match="hist"):
        EmbeddingArch(schema, embedding_dim=4)
