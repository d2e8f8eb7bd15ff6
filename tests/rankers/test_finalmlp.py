"""FinalMLP specifics: context-driven feature gates and the multi-head bilinear fusion."""

from __future__ import annotations

import pytest
import torch

from rankers.backbones import FinalMLP, FinalMLPConfig, InputSpec
from rankers.backbones.finalmlp import BilinearFusion
from tests.rankers._inputs import embedded

SPEC = InputSpec(dense_names=("I1", "I2"), field_names=("C1", "C2", "C3"), embedding_dim=4)


def test_gates_change_with_their_context_only() -> None:
    torch.manual_seed(0)
    model = FinalMLP(SPEC, FinalMLPConfig(fs1_context=("C2",), fs2_context=("I1", "C3"))).eval()
    assert model.gate1 is not None and model.gate2 is not None
    x = embedded(SPEC, 6)
    tokens = model.tokens(x)
    g1, g2 = model.gate1(tokens), model.gate2(tokens)
    assert g1.shape == (6, 5 * 4) and ((g1 > 0) & (g1 < 2)).all()
    assert not torch.allclose(g1[0], g1[1])  # rows with different contexts get different gates

    changed = tokens.clone()
    changed[:, 3] += 1.0  # C2: gate 1's context, not gate 2's
    assert not torch.allclose(model.gate1(changed), g1)
    torch.testing.assert_close(model.gate2(changed), g2)
    changed = tokens.clone()
    changed[:, 0] += 1.0  # I1: gate 2's context
    torch.testing.assert_close(model.gate1(changed), g1)
    assert not torch.allclose(model.gate2(changed), g2)


def test_without_context_the_gate_is_one_learned_vector_for_all_rows() -> None:
    torch.manual_seed(0)
    model = FinalMLP(SPEC, FinalMLPConfig()).eval()
    assert model.gate1 is not None
    g = model.gate1(model.tokens(embedded(SPEC, 6)))
    torch.testing.assert_close(g, g[:1].expand_as(g))


def test_gated_streams_feed_the_fusion() -> None:
    torch.manual_seed(0)
    model = FinalMLP(SPEC, FinalMLPConfig(fs1_context=("C1",), mlp1_units=(8,), mlp2_units=(6,))).eval()
    assert model.gate1 is not None and model.gate2 is not None
    x = embedded(SPEC, 6)
    tokens = model.tokens(x)
    flat = tokens.flatten(1)
    o1, o2 = model.mlp1(flat * model.gate1(tokens)), model.mlp2(flat * model.gate2(tokens))
    torch.testing.assert_close(model(x).logits["ctr"], model.fusion(o1, o2)[:, 0])


def test_bilinear_fusion_matches_the_per_head_formula() -> None:
    torch.manual_seed(0)
    fusion = BilinearFusion(d1=6, d2=4, heads=2, outputs=3)
    o1, o2 = torch.randn(5, 6), torch.randn(5, 4)
    w = fusion.w.view(2, 3, 2, 3)  # (H, d1/H, d2/H, K)
    expected = fusion.linear1(o1) + fusion.linear2(o2)
    for h in range(2):
        x, y = o1[:, 3 * h : 3 * h + 3], o2[:, 2 * h : 2 * h + 2]
        expected = expected + torch.einsum("bi,ijk,bj->bk", x, w[h], y)
    torch.testing.assert_close(fusion(o1, o2), expected)


def test_unknown_context_field_is_named() -> None:
    with pytest.raises(ValueError, match=r"no input field named \['C9'\].*'I1'"):
        FinalMLP(SPEC, FinalMLPConfig(fs1_context=("C9",)))


def test_context_without_feature_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_selection"):
        FinalMLP(SPEC, FinalMLPConfig(feature_selection=False, fs1_context=("C1",)))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"num_heads": 3}, "num_heads 3 must be >= 1 and divide"),
        ({"mlp1_units": ()}, "mlp1_units"),
        ({"fs_units": (0,)}, "fs_units"),
        ({"mlp2_dropout": 1.0}, "mlp2_dropout"),
    ],
)
def test_config_rejects(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FinalMLPConfig(**bad)
