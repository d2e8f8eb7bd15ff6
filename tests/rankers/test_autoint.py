"""AutoInt and AutoInt+ specifics: attention over fields, numeric tokens, the parallel DNN."""

from __future__ import annotations

import pytest
import torch

from rankers.backbones import AutoInt, AutoIntConfig, AutoIntPlus, AutoIntPlusConfig, InputSpec
from rankers.backbones.autoint import InteractingLayer
from rankers.backbones.layers import FieldTokens
from tests.rankers._inputs import embedded

SPEC = InputSpec(dense_names=("I1", "I2"), field_names=("C1", "C2", "C3"), embedding_dim=8)


def test_attention_weights_sum_to_one_over_fields() -> None:
    torch.manual_seed(0)
    layer = InteractingLayer(8, AutoIntConfig(num_heads=2, attention_dim=16))
    tokens = torch.randn(4, 5, 8)
    weights = layer.attention(tokens)
    assert weights.shape == (4, 2, 5, 5) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 2, 5))


@pytest.mark.parametrize("scale", [False, True])
def test_layer_is_relu_of_attention_weighted_values(scale: bool) -> None:
    """The paper's eq. 5-6 from the raw weights: per head softmax(<q, k>) weighted sums of values,
    heads concatenated (eq. 7), ReLU (eq. 8)."""
    torch.manual_seed(0)
    config = AutoIntConfig(num_heads=2, attention_dim=16, residual=False, scale=scale)
    layer = InteractingLayer(8, config).eval()
    tokens = torch.randn(4, 5, 8)
    w_q, w_k, w_v = layer.qkv.weight.split(16)  # (16, 8) each: W_Query, W_Key, W_Value
    heads, weights = [], []
    for h in range(2):
        rows = slice(8 * h, 8 * h + 8)
        q, k, v = (tokens @ w[rows].T for w in (w_q, w_k, w_v))  # (B, T, 8)
        a = torch.softmax(q @ k.transpose(1, 2) * (8**-0.5 if scale else 1.0), dim=-1)  # (B, T, T)
        weights.append(a)
        heads.append(a @ v)
    torch.testing.assert_close(layer.attention(tokens), torch.stack(weights, dim=1))
    torch.testing.assert_close(layer(tokens), torch.relu(torch.cat(heads, dim=-1)))


def test_residual_projects_only_when_widths_differ() -> None:
    assert isinstance(InteractingLayer(16, AutoIntConfig(attention_dim=16)).res, torch.nn.Identity)
    assert isinstance(InteractingLayer(8, AutoIntConfig(attention_dim=16)).res, torch.nn.Linear)
    assert InteractingLayer(8, AutoIntConfig(attention_dim=16, residual=False)).res is None


def test_numeric_features_are_value_scaled_vectors() -> None:
    tokens = FieldTokens(SPEC)
    x = embedded(SPEC, 4)
    t = tokens(x)
    assert t.shape == (4, 5, 8) and tokens.names == ("I1", "I2", "C1", "C2", "C3")
    assert tokens.numeric is not None
    torch.testing.assert_close(t[:, 0], x.dense[:, :1] * tokens.numeric[0])
    torch.testing.assert_close(t[:, 2:], x.fields)
    x.dense[0, 1] = 0.0
    assert tokens(x)[0, 1].abs().sum() == 0  # a zero value is a zero token, as in the paper


def test_dense_values_change_the_logit() -> None:
    torch.manual_seed(0)
    model = AutoInt(SPEC).eval()
    x = embedded(SPEC, 4)
    before = model(x).logits["ctr"]
    x.dense[:, 0] += 1.0
    assert not torch.allclose(model(x).logits["ctr"], before)


def test_autoint_plus_adds_a_dnn_logit() -> None:
    torch.manual_seed(0)
    model = AutoIntPlus(SPEC, AutoIntPlusConfig(dnn_units=(8,))).eval()
    assert model.dnn is not None and model.dnn_head is not None
    x = embedded(SPEC, 4)
    tokens = model.tokens(x)
    h = tokens
    for layer in model.layers:
        h = layer(h)
    expected = model.head(h.flatten(1)) + model.dnn_head(model.dnn(tokens.flatten(1)))
    torch.testing.assert_close(model(x).logits["ctr"], expected[:, 0])
    assert AutoInt(SPEC).dnn is None


def test_without_numeric_tokens_only_fields_attend_and_numbers_join_the_dnn() -> None:
    """DeepCTR-Torch's AutoInt shape: attention over the F categorical fields, the DNN over the
    raw numeric values and the flattened fields."""
    torch.manual_seed(0)
    model = AutoIntPlus(SPEC, AutoIntPlusConfig(dnn_units=(8,), numeric_tokens=False)).eval()
    assert model.tokens is None and model.dnn is not None and model.dnn_head is not None
    assert model.head.in_features == 3 * 16 and model.dnn[0].in_features == 2 + 3 * 8
    x = embedded(SPEC, 4)
    h = x.fields
    for layer in model.layers:
        h = layer(h)
    flat = torch.cat([x.dense, x.fields.flatten(1)], 1)
    expected = model.head(h.flatten(1)) + model.dnn_head(model.dnn(flat))
    torch.testing.assert_close(model(x).logits["ctr"], expected[:, 0])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"attention_dim": 15, "num_heads": 2}, "multiple of num_heads 2"),
        ({"num_heads": 0}, "num_heads 0"),
        ({"attention_layers": 0}, "attention_layers 0"),
        ({"dropout": 1.0}, "dropout"),
        ({"dnn_units": (0,)}, "dnn_units"),
        ({"dnn_units": (16,)}, "autoint_plus"),
        ({"dnn_batch_norm": True}, "dnn_batch_norm"),
    ],
)
def test_config_rejects(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutoIntConfig(**bad)


def test_autoint_plus_needs_a_dnn() -> None:
    with pytest.raises(ValueError, match="dnn_units"):
        AutoIntPlusConfig(dnn_units=())


def test_bf16_autocast_trains_close_to_fp32() -> None:
    """Under bfloat16 autocast the layer's outputs and gradients stay within bf16's precision."""
    torch.manual_seed(0)
    layer = InteractingLayer(8, AutoIntConfig(num_heads=2, attention_dim=16))
    tokens = torch.randn(64, 9, 8, requires_grad=True)
    out = layer(tokens)
    (grad,) = torch.autograd.grad(out.square().mean(), tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = layer(tokens)
    (grad16,) = torch.autograd.grad(out16.float().square().mean(), tokens)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out, rtol=0.05, atol=0.05)
    torch.testing.assert_close(grad16, grad, rtol=0.1, atol=grad.abs().max().item() * 0.05)
