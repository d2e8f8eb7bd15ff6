"""Ranker, RankerConfig and the MLP backbone."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from features.reader import ParquetBatches
from features.schema import Schema
from rankers.backbones import BACKBONES, MLP, BackboneOutput, Embedded, InputSpec, MLPConfig, backbone_class
from rankers.config import RankerConfig
from rankers.ranker import build_ranker


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
    assert again.backbone_config == MLPConfig(hidden_units=(32, 16))
    assert again.embedding_dim == 8


@pytest.mark.parametrize("bad", [{"hidden_units": ()}, {"dropout": 1.0}, {"hidden_units": (0,)}])
def test_mlp_config_rejects(bad: dict) -> None:
    with pytest.raises(ValueError):
        MLPConfig(**bad)


def test_mlp_one_logit_per_task_from_dense_and_fields() -> None:
    spec = InputSpec(dense_names=("x", "y", "z"), field_names=("a", "b"), embedding_dim=4)
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
    assert backbone_class("finalmlp_criteo_x1") is BACKBONES["finalmlp"]
    assert backbone_class("autoint_plus_criteo_x1") is BACKBONES["autoint_plus"]


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


def test_preset_name_builds_its_backbone_and_fields_given_override_it() -> None:
    from rankers.backbones import PRESETS, FinalMLPConfig

    config = RankerConfig(backbone="finalmlp_criteo_x1", backbone_config={"num_heads": 100})
    assert config.backbone == "finalmlp" and config.preset == "finalmlp_criteo_x1"
    assert config.embedding_dim == 12 and config.embedding_l2 == 1e-5
    built = config.backbone_config
    assert isinstance(built, FinalMLPConfig) and built.num_heads == 100 and built.fs2_context == ("C6",)
    assert RankerConfig(backbone="finalmlp_criteo_x1", embedding_dim=16, embedding_l2=0.0).embedding_l2 == 0.0
    again = RankerConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    assert RankerConfig.from_dict({"backbone": "finalmlp_criteo_x1"}).embedding_l2 == 1e-5
    with pytest.raises(ValueError, match="preset 'bogus'"):
        RankerConfig(backbone="mlp", preset="bogus")
    with pytest.raises(ValueError, match="preset 'finalmlp_criteo_x1' with backbone 'mlp'"):
        RankerConfig(backbone="mlp", preset="finalmlp_criteo_x1")
    for name, preset in PRESETS.items():
        p = preset()
        assert RankerConfig(backbone=name).backbone_config == p.config
        assert 0.5 < p.published["auc"] < 1 and p.train


def test_finalmlp_preset_has_the_published_dense_architecture() -> None:
    """Dense parameters of the preset on Criteo's 13 + 26 fields, counted from the paper's layers."""
    from rankers.backbones import PRESETS, FinalMLP

    p = PRESETS["finalmlp_criteo_x1"]()
    spec = InputSpec(tuple(f"I{i}" for i in range(1, 14)), tuple(f"C{i}" for i in range(1, 27)), 10)
    model = FinalMLP(spec, p.config)
    width = 39 * 10

    def linear(i: int, o: int) -> int:
        return i * o + o

    mlp1 = linear(width, 400) + 2 * linear(400, 400) + 3 * 2 * 400  # three layers with batch norm
    mlp2 = linear(width, 1000) + 2 * 1000
    gates = linear(13 * 10, 800) + linear(800, width) + linear(10, 800) + linear(800, width)
    fusion = linear(400, 1) + linear(1000, 1) + 200 * 2 * 5  # 200 heads of 2 x 5
    numeric = 13 * 10
    assert sum(q.numel() for q in model.parameters()) == mlp1 + mlp2 + gates + fusion + numeric


def test_embedding_l2_is_added_in_training_only(synthetic_small) -> None:
    schema = Schema.load(synthetic_small)
    batch = next(iter(ParquetBatches(synthetic_small / "train", batch_size=32)))
    torch.manual_seed(0)
    ranker = build_ranker(schema, RankerConfig(embedding_l2=0.5))
    out = ranker(batch)
    fields = ranker.embedding(batch.dense, batch.sparse).fields
    assert out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, 0.5 * fields.square().sum() / 32)
    total, per_task = ranker.loss(out, batch.labels)
    torch.testing.assert_close(total, per_task["ctr"] + out.aux_loss)
    assert ranker.eval()(batch).aux_loss is None
    with pytest.raises(ValueError, match="embedding_l2"):
        RankerConfig(embedding_l2=-1.0)
