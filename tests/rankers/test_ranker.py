"""Ranker, RankerConfig and the MLP backbone."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from features.reader import ParquetBatches
from features.schema import Schema
from rankers.backbones import BACKBONES, MLP, BackboneOutput, Embedded, InputSpec, MLPConfig, backbone_class
from rankers.ranker import RankerConfig, build_ranker


def test_unknown_backbone_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'dnnx'.*mlp"):
        RankerConfig(backbone="dnnx")
    with pytest.raises(ValueError, match="dnnx"):
        backbone_class("dnnx")


def test_unknown_backbone_config_field_is_named() -> None:
    with pytest.raises(ValueError, match="hidden_unit"):
        RankerConfig(backbone="mlp", backbone_config={"hidden_unit": (8,)})


def test_config_round_trip_and_lists_become_tuples() -> None:
    config = RankerConfig(backbone="mlp", embedding_dim=8, backbone_config={"hidden_units": [32, 16]})
    again = RankerConfig.from_dict(config.to_dict())
    assert again.make_backbone_config() == MLPConfig(hidden_units=(32, 16))
    assert again.embedding_dim == 8


@pytest.mark.parametrize("bad", [{"hidden_units": ()}, {"dropout": 1.0}, {"hidden_units": (0,)}])
def test_mlp_config_rejects(bad: dict) -> None:
    with pytest.raises(ValueError):
        MLPConfig(**bad)


def test_mlp_one_logit_per_task_from_dense_and_fields() -> None:
    spec = InputSpec(n_dense=3, field_names=("a", "b"), embedding_dim=4)
    model = MLP(spec, MLPConfig(hidden_units=(8,)), tasks=("ctr", "cvr")).eval()
    x = Embedded(dense=torch.randn(5, 3), fields=torch.randn(5, 2, 4), field_names=("a", "b"))
    out = model(x)
    assert set(out.logits) == {"ctr", "cvr"} and all(v.shape == (5,) for v in out.logits.values())
    x2 = Embedded(dense=x.dense.clone(), fields=x.fields.clone(), field_names=x.field_names)
    x2.fields[:, 1] += 1.0  # the second field matters
    assert not torch.allclose(model(x2).logits["ctr"], out.logits["ctr"])


def test_registry_names_map_to_backbones() -> None:
    assert BACKBONES["mlp"] is MLP
    assert MLP.config_class is MLPConfig


def test_ranker_loss_is_weighted_bce_per_task(synthetic_small) -> None:
    schema = Schema.load(synthetic_small)
    ranker = build_ranker(schema, RankerConfig(task_weights=(("ctr", 2.0),)))
    batch = next(iter(ParquetBatches(synthetic_small / "train", batch_size=64)))
    out = ranker(batch)
    assert isinstance(out, BackboneOutput) and out.logits["ctr"].shape == (64,)
    total, per_task = ranker.loss(out, batch.labels)
    expected = F.binary_cross_entropy_with_logits(out.logits["ctr"], batch.labels["ctr"])
    torch.testing.assert_close(per_task["ctr"], expected)
    torch.testing.assert_close(total, 2.0 * expected)
    with pytest.raises(ValueError, match="none of the model's tasks"):
        ranker.loss(out, {"cvr": batch.labels["ctr"]})
