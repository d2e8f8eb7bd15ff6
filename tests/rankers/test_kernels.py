"""The fused kernels (rankers/kernels: field attention, the packed GRU) against the reference
formulas, their torch-op conformance (schema, fake kernel, autograd, torch.compile, determinism) and
the fallback where a kernel cannot be built or does not apply.

The kernel is built on first use (about 15-30 s once per machine, cached by torch); `make test`
also runs this file with ATen's SIMD paths switched off, which builds and tests the portable
variant.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rankers.backbones import InputSpec
from rankers.backbones.autoint import InteractingLayer
from rankers.backbones.configs import GRU_TYPES, AutoIntConfig, DIENConfig
from rankers.backbones.dien import DIEN, JaggedGRU
from rankers.kernels.attention import MAX_TOKENS, field_attention, fused_applies, reference_attention
from rankers.kernels.build import Kernel, why_not
from rankers.kernels.gru import fused_applies as packed_fused_applies
from rankers.kernels.gru import packed_gru
from tests.rankers._inputs import embedded

ROOT = Path(__file__).resolve().parents[2]


def _qkv(b: int, t: int, h: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, h, d, generator=g, dtype=dtype)


@pytest.fixture(scope="module", autouse=True)
def kernel_built() -> None:
    """The kernels must build where the tests run (README: a C++ compiler and ninja); only an
    explicit RANKERS_KERNELS=off skips this file (the other backbone tests then cover the fallback)."""
    if os.environ.get("RANKERS_KERNELS", "").lower() in ("off", "0", "false", "no"):
        pytest.skip("RANKERS_KERNELS=off: the kernels are switched off")
    assert fused_applies(_qkv(1, 2, 1, 4)), f"attention kernel not built: {why_not('field_attention')}"
    assert packed_fused_applies(torch.zeros(1)), f"GRU kernel not built: {why_not('gru')}"


@pytest.mark.parametrize(
    "b, t, h, d, scale",
    [
        (5, 39, 2, 8, 1.0),
        (3, 26, 2, 8, 8**-0.5),
        (4, 64, 3, 16, 0.25),
        (2, 1, 2, 5, 1.0),
        (3, 20, 1, 32, 1.0),
        (7, 9, 4, 4, 0.5),
        (2, 13, 2, 12, 1.0),
    ],
)
def test_matches_the_reference_formulas_in_values_and_gradients(
    b: int, t: int, h: int, d: int, scale: float
) -> None:
    qkv64 = _qkv(b, t, h, d, dtype=torch.float64).requires_grad_()
    ref = reference_attention(qkv64, scale)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ref_grad,) = torch.autograd.grad(ref, qkv64, grad)

    qkv = qkv64.detach().float().requires_grad_()
    out = field_attention(qkv, scale)
    (got_grad,) = torch.autograd.grad(out, qkv, grad.float())
    assert out.shape == (b, t, h, d) and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad.double(), ref_grad, rtol=1e-5, atol=1e-5)


def test_rows_are_probability_weighted_values() -> None:
    """One head, one example: each output row is a convex combination of the value rows."""
    qkv = _qkv(1, 6, 1, 4)
    out = field_attention(qkv)[0, :, 0]
    q, k, v = qkv[0, :, 0, 0], qkv[0, :, 1, 0], qkv[0, :, 2, 0]
    p = torch.softmax(q @ k.T, dim=1)
    torch.testing.assert_close(out, p @ v, rtol=1e-5, atol=1e-6)


def test_reads_strided_inputs_through_their_strides() -> None:
    base = _qkv(6, 10, 2, 8)
    strided = torch.cat([base, base], dim=3)[..., ::2, :]  # (B, T, 3, 2, 8) with a head stride of 2 heads
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        field_attention(strided), field_attention(strided.contiguous()), rtol=0, atol=0
    )
    last = base.transpose(-1, -2).contiguous().transpose(-1, -2)  # head dim not unit-stride
    torch.testing.assert_close(field_attention(last), reference_attention(base, 1.0), rtol=1e-5, atol=1e-5)


def test_opcheck_schema_fake_kernel_and_autograd() -> None:
    qkv = _qkv(3, 11, 2, 8).requires_grad_()
    torch.library.opcheck(torch.ops.rankers_kernels.field_attention_fwd.default, (qkv, 0.5))


def test_compiles_without_graph_breaks_and_matches_eager() -> None:
    layer = InteractingLayer(16, AutoIntConfig())
    x = torch.randn(32, 39, 16, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (ref_grad,) = torch.autograd.grad(layer(x).square().sum(), x)
    torch.testing.assert_close(out, layer(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6)


def test_deterministic_forward_and_backward() -> None:
    qkv = _qkv(64, 39, 2, 8).requires_grad_()
    runs = []
    for _ in range(2):
        out = field_attention(qkv)
        (grad,) = torch.autograd.grad(out, qkv, torch.ones_like(out))
        runs.append((out, grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("case", ["dropout in training", "bf16", "too many tokens", "float64"])
def test_reference_formulas_where_the_kernel_does_not_apply(case: str) -> None:
    qkv, dropout, training = _qkv(2, 5, 2, 8), 0.0, False
    if case == "dropout in training":
        dropout, training = 0.5, True
    elif case == "bf16":
        qkv = qkv.bfloat16()
    elif case == "too many tokens":
        qkv = _qkv(2, MAX_TOKENS + 1, 2, 8)
    else:
        qkv = qkv.double()
    assert not fused_applies(qkv, dropout, training)
    torch.manual_seed(0)
    out = field_attention(qkv, 1.0, dropout, training)
    torch.manual_seed(0)
    torch.testing.assert_close(out, reference_attention(qkv, 1.0, dropout, training), rtol=0, atol=0)
    assert fused_applies(_qkv(2, 5, 2, 8), 0.5, False), "dropout is not applied in eval: the kernel runs"


def test_the_op_names_a_bad_shape() -> None:
    with pytest.raises(RuntimeError, match=r"qkv must be \(B, T, 3, H, d\)"):
        torch.ops.rankers_kernels.field_attention_fwd(torch.randn(2, 5, 4, 2, 8), 1.0)
    with pytest.raises(RuntimeError, match="65 tokens, expected 1 to 64"):
        torch.ops.rankers_kernels.field_attention_fwd(torch.randn(2, 65, 3, 2, 8), 1.0)


_FALLBACK = textwrap.dedent(
    """
    import logging, torch
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from rankers.kernels.attention import fused_applies, field_attention, reference_attention
    from rankers.kernels.build import why_not
    from rankers.kernels.gru import fused_applies as gru_applies
    from rankers.backbones.dien import JaggedGRU
    qkv = torch.randn(4, 39, 3, 2, 8, requires_grad=True)
    assert not fused_applies(qkv)
    out = field_attention(qkv)
    out.sum().backward()
    torch.testing.assert_close(out, reference_attention(qkv, 1.0), rtol=0, atol=0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    assert not gru_applies(x)
    states, final = JaggedGRU(8, "AUGRU")(x, torch.ones(3, 5, dtype=torch.bool), torch.rand(3, 5))
    (states.sum() + final.sum()).backward()
    print("fallback:", why_not("field_attention"), "|", why_not("gru"))
    """
)


@pytest.mark.parametrize("how", ["no compiler", "RANKERS_KERNELS=off"])
def test_falls_back_to_the_reference_formulas_where_the_kernel_cannot_be_built(
    how: str, tmp_path: Path
) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "PYTHONPATH": str(ROOT)}
    if how == "no compiler":
        env["CXX"] = str(tmp_path / "no-such-compiler")
    else:
        env["RANKERS_KERNELS"] = "off"
    done = subprocess.run(
        [sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fallback:" in done.stdout
    if how == "no compiler":
        assert "WARNING the field_attention kernel could not be built" in done.stderr
        assert "WARNING the gru kernel could not be built" in done.stderr
        assert "reference formulas" in done.stderr
    else:
        assert "RANKERS_KERNELS=off" in done.stdout and "could not be built" not in done.stderr


# --- the packed GRU (rankers/kernels/gru.cpp) ---------------------------------------------------


def _sequences(
    b: int, length: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (b,), generator=g)
    lengths[0], lengths[1] = length, 0
    mask = torch.arange(length) < lengths.unsqueeze(1)
    x = torch.randn(b, length, width, generator=g, dtype=torch.float64) * mask.unsqueeze(2)
    return x, mask, torch.rand(b, length, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("gru_type", ["GRU", *GRU_TYPES])
@pytest.mark.parametrize("width", [20, 32])
def test_packed_gru_matches_the_step_formulas_in_values_and_gradients(gru_type: str, width: int) -> None:
    """The fused op (float32) against JaggedGRU's step-by-step formulas in float64 (which never take
    the op): every state, each row's final state, and the gradients of inputs, scores and weights."""
    x, mask, scores = _sequences(37, 12, width)
    ref_gru = JaggedGRU(width, gru_type).double()
    gru = JaggedGRU(width, gru_type)
    gru.load_state_dict({k: v.float() for k, v in ref_gru.state_dict().items()})
    scored = gru_type != "GRU"

    def run(model: JaggedGRU, dtype: torch.dtype) -> list[torch.Tensor]:
        xs = x.to(dtype).requires_grad_()
        sc = scores.to(dtype).requires_grad_()
        states, final = model(xs, mask, sc if scored else None)
        assert states is not None
        g = torch.Generator().manual_seed(3)
        weights = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (states, final)]
        loss = (states * weights[0]).sum() + (final * weights[1]).sum()
        inputs = [xs, *model.parameters()] + ([sc] if scored else [])
        return [states, final, *torch.autograd.grad(loss, inputs)]

    assert packed_fused_applies(x.float()) and not packed_fused_applies(x)
    with torch.autocast("cpu", torch.bfloat16):
        assert not packed_fused_applies(x.float())
    for got, want in zip(run(gru, torch.float32), run(ref_gru, torch.float64), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_dien_with_the_fused_recurrence_equals_the_step_formulas(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole model in training (AUGRU, Dice attention, auxiliary loss): logits, auxiliary loss and
    every parameter's gradient agree with the op switched off."""
    spec = InputSpec((), ("user", "item", "cate"), 8, (("hist_item", "item", 10), ("hist_cate", "cate", 10)))
    torch.manual_seed(0)
    model = DIEN(spec, DIENConfig(dnn_units=(16,), attention_units=(8,), aux_units=(8,)))
    x = embedded(spec, 64, seed=1)

    def run() -> list[torch.Tensor]:
        torch.manual_seed(5)  # the auxiliary loss's negatives
        out = model(x)
        assert out.aux_loss is not None
        loss = out.logits["ctr"].square().sum() + out.aux_loss
        return [out.logits["ctr"], out.aux_loss, *torch.autograd.grad(loss, list(model.parameters()))]

    fused = run()
    monkeypatch.setattr("rankers.backbones.dien.packed_fused_applies", lambda x: False)
    for got, want in zip(fused, run(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _packed_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    batch_sizes = torch.tensor([5, 5, 3, 2, 2, 1])
    n, width = int(batch_sizes.sum()), 8
    gi = torch.randn(n, 3 * width, generator=g)
    w_hh, b_hh = torch.randn(3 * width, width, generator=g) * 0.3, torch.randn(3 * width, generator=g)
    return gi, batch_sizes, w_hh, b_hh, torch.rand(n, generator=g)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_packed_gru_opcheck_schema_fake_kernel_and_autograd(mode: int) -> None:
    gi, batch_sizes, w_hh, b_hh, scores = _packed_inputs()
    args = (gi.requires_grad_(), batch_sizes, w_hh.requires_grad_(), b_hh.requires_grad_())
    scores = scores.requires_grad_() if mode else gi.new_empty(0)
    torch.library.opcheck(torch.ops.rankers_kernels.gru_fwd.default, (*args, scores, mode))


def test_packed_gru_compiles_without_graph_breaks_and_is_deterministic() -> None:
    gi, batch_sizes, w_hh, b_hh, scores = _packed_inputs()
    gi.requires_grad_()

    def f(gi: torch.Tensor) -> torch.Tensor:
        return packed_gru(gi, batch_sizes, w_hh, b_hh, scores, "AUGRU").square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(gi), gi)
    (eager,) = torch.autograd.grad(f(gi), gi)
    (again,) = torch.autograd.grad(f(gi), gi)
    torch.testing.assert_close(grad, eager, rtol=1e-6, atol=1e-6)
    assert torch.equal(eager, again)


def test_packed_gru_names_bad_batch_sizes() -> None:
    gi, _, w_hh, b_hh, scores = _packed_inputs()
    with pytest.raises(RuntimeError, match="positive and nonincreasing"):
        packed_gru(gi, torch.tensor([5, 6, 3, 2]), w_hh, b_hh, scores, "AUGRU")
    with pytest.raises(RuntimeError, match="sum to 17, the packed inputs have 18 rows"):
        packed_gru(gi, torch.tensor([5, 5, 3, 2, 2]), w_hh, b_hh, scores, "AUGRU")
    with pytest.raises(ValueError, match="needs attention scores"):
        packed_gru(gi, torch.tensor([5, 5, 3, 2, 2, 1]), w_hh, b_hh, None, "AGRU")


def test_a_kernel_whose_ops_cannot_be_registered_falls_back_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def register() -> None:
        calls.append(1)
        raise RuntimeError("already registered")

    monkeypatch.setattr("rankers.kernels.build.load_extension", lambda name: True)
    kernel = Kernel("field_attention", register)
    assert not kernel.ready() and not kernel.ready() and not kernel.applies()
    assert len(calls) == 1, "a half-registered kernel is never registered again"
    assert "could not be registered (RuntimeError: already registered)" in caplog.text
