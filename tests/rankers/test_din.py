"""DIN: attention over real positions only, the jagged and padded paths agree, padding is inert."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

from rankers.backbones import BACKBONES, DIN, Embedded, InputSpec, Sequence
from rankers.backbones.din import DINConfig
from rankers.backbones.layers import ActivationUnit, Dice
from tests.rankers._inputs import embedded

SPEC = InputSpec(
    dense_names=("price",),
    field_names=("user", "item", "cate"),
    embedding_dim=4,
    sequences=(("hist_item", "item", 6), ("hist_cate", "cate", 6), ("hist_tag", "", 6)),
)


def _with_padding(x: Embedded, value: float) -> Embedded:
    """`x` with every padded position of every sequence set to `value`."""
    seqs = {
        k: Sequence(torch.where(s.mask.unsqueeze(2), s.values, torch.full_like(s.values, value)), s.mask)
        for k, s in x.sequences.items()
    }
    return Embedded(x.dense, x.fields, x.field_names, seqs)


@pytest.mark.parametrize("softmax", [False, True])
def test_attention_is_zero_on_masked_positions(softmax: bool) -> None:
    torch.manual_seed(0)
    unit = ActivationUnit(8, (16, 8), "dice", 0.0).eval()
    x = embedded(SPEC, 7)
    keys = torch.cat([x.sequences["hist_item"].values, x.sequences["hist_cate"].values], dim=2)
    mask = x.sequences["hist_item"].mask
    w = unit.weights(x.fields[:, 1:].flatten(1), keys, mask, softmax)
    assert (w[~mask] == 0).all()
    assert (w[mask] != 0).all()
    if softmax:
        sums = w.sum(1)
        torch.testing.assert_close(sums[mask.any(1)], torch.ones(int(mask.any(1).sum())))


@pytest.mark.parametrize("config", [DINConfig(), DINConfig(attention_softmax=True, dnn_activation="dice")])
def test_padded_positions_change_no_output(config: DINConfig) -> None:
    torch.manual_seed(0)
    model = DIN(SPEC, config).eval()
    x = embedded(SPEC, 7)
    out = model(x).logits["ctr"]
    torch.testing.assert_close(model(_with_padding(x, 3.0)).logits["ctr"], out, rtol=0, atol=0)
    # ... while a real position does change it
    x.sequences["hist_item"].values[0, 0] += 1.0
    assert not torch.equal(model(x).logits["ctr"][0], out[0])


def test_jagged_and_padded_attention_agree_in_training_and_eval_mode() -> None:
    """In training, Dice's batch statistics are taken over the real positions on both paths (the
    padded path masks them), so the padded path gives the same logits and running statistics."""
    torch.manual_seed(0)
    model = DIN(SPEC, DINConfig(attention_activation="dice")).train()
    twin = copy.deepcopy(model)
    x = embedded(SPEC, 9)
    jagged = model(x).logits["ctr"]
    with mock.patch("torch.compiler.is_compiling", return_value=True):
        padded = twin(x).logits["ctr"]
    torch.testing.assert_close(padded, jagged)  # padding stays out of the batch statistics
    variances = [v for k, v in model.state_dict().items() if k.endswith("running_var")]
    assert variances and all(not torch.equal(v, torch.ones_like(v)) for v in variances)  # updated
    for k, v in model.state_dict().items():  # the same running statistics
        torch.testing.assert_close(twin.state_dict()[k], v, msg=k)
    model.eval()
    jagged = model(x).logits["ctr"]
    with mock.patch("torch.compiler.is_compiling", return_value=True):
        torch.testing.assert_close(model(x).logits["ctr"], jagged)


def test_attention_sum_pools_without_softmax() -> None:
    """The pooled interest is the score-weighted sum of the real behaviours."""
    torch.manual_seed(0)
    unit = ActivationUnit(4, (8,), "relu", 0.0)
    q, keys = torch.randn(2, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    w = unit.weights(q, keys, mask, softmax=False)
    pooled = unit.pool(q, keys, mask, softmax=False)
    torch.testing.assert_close(pooled[1], w[1, 0] * keys[1, 0])
    torch.testing.assert_close(pooled[0], w[0, 0] * keys[0, 0] + w[0, 1] * keys[0, 1])


def test_first_layer_equals_the_concatenation_form() -> None:
    """The split first layer computes Linear([q, k, q - k, q * k]) exactly."""
    torch.manual_seed(0)
    unit = ActivationUnit(4, (8,), "relu", 0.0)
    unit.first_act, unit.out = torch.nn.Identity(), torch.nn.Identity()  # expose the first layer
    q, keys = torch.randn(2, 4), torch.randn(2, 3, 4)
    got = unit(q, keys, None).view(2, 3, 8)
    qq = q.unsqueeze(1).expand_as(keys)
    want = unit.first(torch.cat([qq, keys, qq - keys, qq * keys], dim=2))
    torch.testing.assert_close(got, want)


def test_dice_interpolates_between_identity_and_alpha() -> None:
    dice = Dice(2).eval()
    dice.alpha.data = torch.tensor([0.5, 0.5])
    x = torch.tensor([[100.0, -100.0]])  # running stats mean 0, var 1: p = 1 then 0
    torch.testing.assert_close(dice(x), torch.tensor([[100.0, -50.0]]))


@pytest.mark.parametrize("name", ["din", "dien"])
def test_one_real_behaviour_in_a_training_batch_trains(name: str) -> None:
    """Dice cannot take batch statistics of one row: it falls back to its running statistics."""
    torch.manual_seed(0)
    x = embedded(SPEC, 4)
    for seq in x.sequences.values():
        seq.mask[:] = False
        seq.mask[0, 0] = True
    cls = BACKBONES[name]
    out = cls(SPEC, cls.config_class(attention_activation="dice")).train()(x)
    assert torch.isfinite(out.logits["ctr"]).all()


def test_unaligned_attended_sequences_are_refused() -> None:
    model = DIN(SPEC, DINConfig())
    x = embedded(SPEC, 4)
    x.sequences["hist_cate"].mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        model(x)
    unequal = InputSpec((), ("item", "cate"), 4, (("hist_item", "item", 6), ("hist_cate", "cate", 5)))
    with pytest.raises(ValueError, match="max lengths"):
        DIN(unequal, DINConfig())


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="swish"):
        DINConfig(attention_activation="swish")
    with pytest.raises(ValueError, match="hist_brand"):
        DIN(SPEC, DINConfig(sequences=("hist_brand",)))
    with pytest.raises(ValueError, match="hist_tag"):
        DIN(SPEC, DINConfig(sequences=("hist_tag",)))
    no_target = InputSpec((), ("user",), 4, (("hist_tag", "", 5),))
    with pytest.raises(ValueError, match="target"):
        DIN(no_target, DINConfig())
