"""The fused field-attention kernel (rankers/kernels) against the reference formulas, its torch-op
conformance (schema, fake kernel, autograd, torch.compile, determinism) and the fallback where the
kernel cannot be built or does not apply.

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

from rankers.backbones.autoint import InteractingLayer
from rankers.backbones.configs import AutoIntConfig
from rankers.kernels.attention import MAX_TOKENS, field_attention, fused_applies, reference_attention

ROOT = Path(__file__).resolve().parents[2]


def _qkv(b: int, t: int, h: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, h, d, generator=g, dtype=dtype)


@pytest.fixture(scope="module", autouse=True)
def kernel_built() -> None:
    assert fused_applies(_qkv(1, 2, 1, 4)), "the fused kernel should build here (g++ and ninja are present)"


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
    qkv = torch.randn(4, 39, 3, 2, 8, requires_grad=True)
    assert not fused_applies(qkv)
    out = field_attention(qkv)
    out.sum().backward()
    torch.testing.assert_close(out, reference_attention(qkv, 1.0), rtol=0, atol=0)
    print("fallback:", why_not("field_attention"))
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
        assert "reference formulas" in done.stderr
    else:
        assert "RANKERS_KERNELS=off" in done.stdout and "could not be built" not in done.stderr
