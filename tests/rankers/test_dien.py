"""DIEN: the evolving GRUs' gating, jagged and padded recurrences agree, padding is inert, and the
auxiliary loss learns the next behaviour."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from rankers.backbones import DIEN, Embedded, InputSpec, Sequence
from rankers.backbones.dien import GRU_TYPES, DIENConfig, JaggedGRU
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


def _copy_to_gru(gru: JaggedGRU) -> torch.nn.GRU:
    ref = torch.nn.GRU(4, 4, batch_first=True)
    ref.weight_ih_l0.data, ref.bias_ih_l0.data = gru.ih.weight.data, gru.ih.bias.data
    ref.weight_hh_l0.data, ref.bias_hh_l0.data = gru.hh.weight.data, gru.hh.bias.data
    return ref


LENGTHS = [5, 2, 0, 3]


def test_plain_gru_equals_torch_gru_on_each_rows_real_steps() -> None:
    torch.manual_seed(0)
    gru = JaggedGRU(4)
    ref = _copy_to_gru(gru)
    x = torch.randn(4, 5, 4)
    mask = torch.arange(5) < torch.tensor(LENGTHS).unsqueeze(1)
    states, final = gru(x, mask)
    assert states is not None
    for row, n in enumerate(LENGTHS):
        if n:
            want, h = ref(x[row : row + 1, :n])
            torch.testing.assert_close(states[row, :n], want[0])
            torch.testing.assert_close(final[row], h[0, 0])
        assert (states[row, n:] == 0).all()
    assert (final[2] == 0).all()
    with mock.patch("torch.compiler.is_compiling", return_value=True):
        padded_states, padded_final = gru(x, mask)
    torch.testing.assert_close(padded_states, states)
    torch.testing.assert_close(padded_final, final)


def test_attention_gates_follow_the_paper() -> None:
    """a = 1: AUGRU and AIGRU are the GRU; AGRU steps h + a (n - h); a = 0 leaves the state at zero
    (AUGRU, AGRU) or feeds zeros (AIGRU)."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, 4)
    mask = torch.arange(5) < torch.tensor(LENGTHS).unsqueeze(1)
    plain = JaggedGRU(4)
    _, want = plain(x, mask)
    ones, zeros = torch.ones(4, 5), torch.zeros(4, 5)
    for gru_type in ("AUGRU", "AIGRU"):
        gru = JaggedGRU(4, gru_type)
        gru.load_state_dict(plain.state_dict())
        torch.testing.assert_close(gru(x, mask, ones)[1], want)
    agru = JaggedGRU(4, "AGRU")
    agru.load_state_dict(plain.state_dict())
    scores = torch.rand(4, 5)
    _, got = agru(x, mask, scores, all_states=False)
    for row, n in enumerate(LENGTHS):
        h = torch.zeros(4)
        for t in range(n):
            gi, gh = agru.ih(x[row, t]), agru.hh(h)
            r = torch.sigmoid(gi[:4] + gh[:4])
            cand = torch.tanh(gi[8:] + r * gh[8:])
            h = h + scores[row, t] * (cand - h)
        torch.testing.assert_close(got[row], h)
    for gru_type in ("AUGRU", "AGRU"):
        assert (JaggedGRU(4, gru_type)(x, mask, zeros)[1] == 0).all()
    aigru = JaggedGRU(4, "AIGRU")
    torch.testing.assert_close(aigru(x, mask, zeros)[1], aigru(torch.zeros_like(x), mask)[1])


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
