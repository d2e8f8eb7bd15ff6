"""DIEN: the evolving GRUs' gating, jagged and padded recurrences agree, padding is inert, and the
auxiliary loss learns the next behaviour."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from rankers.backbones import DIEN, Embedded, InputSpec, Sequence
from rankers.backbones.dien import GRU_TYPES, DIENConfig, InterestEvolving
from tests.rankers._inputs import embedded
from tests.rankers.test_din import _with_padding

SPEC = InputSpec(
    dense_names=("price",),
    field_names=("user", "item", "cate"),
    embedding_dim=4,
    sequences=(("hist_item", "item", 7), ("hist_cate", "cate", 7)),
)


@pytest.mark.parametrize("gru_type", GRU_TYPES)
def test_jagged_and_padded_recurrences_agree(gru_type: str) -> None:
    torch.manual_seed(0)
    model = DIEN(SPEC, DIENConfig(gru_type=gru_type)).eval()
    x = embedded(SPEC, 9)
    jagged = model(x).logits["ctr"]
    with mock.patch("torch.compiler.is_compiling", return_value=True):
        torch.testing.assert_close(model(x).logits["ctr"], jagged)


@pytest.mark.parametrize("gru_type", GRU_TYPES)
def test_padded_positions_change_no_output(gru_type: str) -> None:
    torch.manual_seed(0)
    model = DIEN(SPEC, DIENConfig(gru_type=gru_type, attention_softmax=gru_type != "AGRU")).eval()
    x = embedded(SPEC, 7)
    out = model(x).logits["ctr"]
    torch.testing.assert_close(model(_with_padding(x, -2.0)).logits["ctr"], out, rtol=0, atol=0)
    x.sequences["hist_cate"].values[0, 3] += 1.0  # a real position does change it
    assert not torch.equal(model(x).logits["ctr"][0], out[0])


@pytest.mark.parametrize("gru_type", ["AUGRU", "AGRU"])
def test_zero_attention_leaves_the_state_unchanged(gru_type: str) -> None:
    torch.manual_seed(0)
    gru = InterestEvolving(4, gru_type)
    states, mask = torch.randn(3, 5, 4), torch.ones(3, 5, dtype=torch.bool)
    assert (gru(states, torch.zeros(3, 5), mask) == 0).all()
    assert (gru(states, torch.full((3, 5), 0.5), mask) != 0).any()


def test_evolving_state_is_the_state_after_each_rows_last_real_step() -> None:
    torch.manual_seed(0)
    gru = InterestEvolving(4, "AUGRU")
    states, scores = torch.randn(3, 5, 4), torch.rand(3, 5)
    mask = torch.arange(5) < torch.tensor([5, 2, 0]).unsqueeze(1)
    got = gru(states, scores, mask)
    for row, n in enumerate([5, 2, 0]):
        h = torch.zeros(1, 4)
        for t in range(n):
            h = gru.step(gru.ih(states[row, t : t + 1]), h, scores[row, t].view(1, 1))
        torch.testing.assert_close(got[row : row + 1], h)


def test_aux_loss_only_in_training_and_weighted() -> None:
    torch.manual_seed(0)
    x = embedded(SPEC, 8)
    once, twice = DIEN(SPEC, DIENConfig(aux_loss_weight=1.0)), DIEN(SPEC, DIENConfig(aux_loss_weight=2.0))
    twice.load_state_dict(once.state_dict())
    torch.manual_seed(1)  # the same negatives for both
    aux1 = once(x).aux_loss
    torch.manual_seed(1)
    aux2 = twice(x).aux_loss
    assert aux1 is not None and aux2 is not None and float(aux1.detach()) > 0
    torch.testing.assert_close(aux2, 2.0 * aux1)
    assert once.eval()(x).aux_loss is None
    assert DIEN(SPEC, DIENConfig(aux_loss_weight=0.0))(x).aux_loss is None


def test_aux_loss_falls_when_the_next_behaviour_is_predictable() -> None:
    """Histories walk a fixed cycle of 12 behaviour vectors, so e_{t+1} follows from h_t; the aux loss
    (next behaviour against another row's) must fall well below its start."""
    torch.manual_seed(0)
    vocab = torch.randn(12, 8)
    model = DIEN(SPEC, DIENConfig(aux_loss_weight=1.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        start = torch.randint(0, 12, (32, 1), generator=g)
        ids = (start + torch.arange(7)) % 12  # (B, L)
        values = vocab[ids]  # (B, L, 8)
        mask = torch.ones(32, 7, dtype=torch.bool)
        x = Embedded(
            dense=torch.rand(32, 1),
            fields=torch.randn(32, 3, 4),
            field_names=SPEC.field_names,
            sequences={
                "hist_item": Sequence(values[..., :4], mask),
                "hist_cate": Sequence(values[..., 4:], mask),
            },
        )
        aux = model(x).aux_loss
        assert aux is not None
        opt.zero_grad()
        aux.backward()
        opt.step()
        losses.append(float(aux.detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="LSTM"):
        DIENConfig(gru_type="LSTM")
    with pytest.raises(ValueError, match="-1"):
        DIENConfig(aux_loss_weight=-1.0)
