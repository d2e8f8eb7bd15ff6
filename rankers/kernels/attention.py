"""Multi-head self-attention over field tokens: softmax(scale Q K^T) V per (example, head).

`field_attention(qkv, scale)` takes queries, keys and values as the projection lays them out,
one (B, T, 3, H, d) view, and returns (B, T, H, d); the backward hands back the projection's
gradient in one buffer. On CPU in float32 with T <= 64 it runs the fused C++
kernel (field_attention.cpp: forward and backward without the (B, H, T, T) probabilities ever
leaving cache, no permute copies); everywhere else (GPUs, bf16, more tokens, a machine where the
kernel cannot be built, `RANKERS_KERNELS=off`) it runs `reference_attention`, today's batched
matmuls. Both agree to float tolerance in values and gradients (tests/rankers/test_kernels.py).

The kernel is a registered torch op with a fake (meta) implementation and autograd, so
`torch.compile` captures it without a graph break, and it is deterministic (each slice is computed
by one thread in a fixed order). Its backward is not itself differentiable (no double backward).

Example:
    >>> qkv = linear(x).view(b, t, 3, heads, dim // heads)
    >>> out = field_attention(qkv, scale=1.0).reshape(b, t, dim)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula

from rankers.kernels.build import Kernel

MAX_TOKENS = 64  # the kernel's limit on T; more tokens take the reference formulas


def reference_attention(
    qkv: torch.Tensor, scale: float, dropout: float = 0.0, training: bool = False
) -> torch.Tensor:
    """softmax(scale Q K^T) V with dropout on the probabilities: (B, T, 3, H, d) -> (B, T, H, d).
    Heads are folded into the batch (contiguous) so the matmuls take the batched GEMM path."""
    b, t, _, h, d = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * h, t, d).unbind(0)  # (B*H, T, d) each
    scores = torch.bmm(q, k.transpose(1, 2))
    if scale != 1.0:
        scores = scores * scale
    p = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), dropout, training)
    out = torch.bmm(p.to(v.dtype), v)  # (B*H, T, d)
    return out.view(b, h, t, d).transpose(1, 2)


def fused_applies(qkv: torch.Tensor, dropout: float = 0.0, training: bool = False) -> bool:
    """Whether the fused kernel computes attention over `qkv` (B, T, 3, H, d): CPU, float32,
    T <= 64, no dropout being applied, and the kernel built on this machine."""
    if qkv.device.type != "cpu" or qkv.dtype != torch.float32 or not 1 <= qkv.shape[1] <= MAX_TOKENS:
        return False
    if dropout > 0 and training:
        return False
    return KERNEL.applies()  # built in eager (`prepare`), never while dynamo traces


def prepare() -> bool:
    """Build (first time on this machine) and load the kernel now, before any tracing or timing;
    layers that use it call this when they are built. True where it is available."""
    return KERNEL.ready()


def field_attention(
    qkv: torch.Tensor, scale: float = 1.0, dropout: float = 0.0, training: bool = False
) -> torch.Tensor:
    """Attention of every token over every token, per head: queries, keys and values as one
    (B, T, 3, H, d) tensor (the projection's output viewed per head) -> (B, T, H, d); the fused
    kernel where `fused_applies`, the reference formulas elsewhere."""
    if fused_applies(qkv, dropout, training):
        return torch.ops.rankers_kernels.field_attention_fwd(qkv, float(scale))[0]
    return reference_attention(qkv, scale, dropout, training)


def _register() -> None:
    """Fake kernels (shapes for torch.compile) and autograd for the C++ ops."""
    lib = "rankers_kernels::"

    @torch.library.register_fake(lib + "field_attention_fwd")
    def _fwd_fake(qkv: torch.Tensor, scale: float) -> Any:
        b, t, _, h, d = qkv.shape
        return qkv.new_empty((b, t, h, d)), qkv.new_empty((b, h, t))

    @torch.library.register_fake(lib + "field_attention_bwd")
    def _bwd_fake(
        grad: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float
    ) -> Any:
        return qkv.new_empty(qkv.shape)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        qkv, scale = inputs
        out, lse = output
        ctx.save_for_backward(qkv, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)

    def backward(ctx: Any, grad_out: torch.Tensor, _grad_lse: torch.Tensor | None) -> Any:
        qkv, out, lse = ctx.saved_tensors
        return torch.ops.rankers_kernels.field_attention_bwd(grad_out, qkv, out, lse, ctx.scale), None

    torch.library.register_autograd(lib + "field_attention_fwd", backward, setup_context=setup_context)

    # FLOPs as torch's FlopCounterMode counts the reference formulas (their four batched matmuls
    # forward, eight backward); the backward's recomputed scores are not counted.
    ops = torch.ops.rankers_kernels

    @register_flop_formula(ops.field_attention_fwd)
    def _fwd_flops(qkv_shape: torch.Size, *_: Any, **__: Any) -> int:
        b, t, _three, h, d = qkv_shape
        return 4 * b * h * t * t * d

    @register_flop_formula(ops.field_attention_bwd)
    def _bwd_flops(_grad: torch.Size, qkv_shape: torch.Size, *_: Any, **__: Any) -> int:
        b, t, _three, h, d = qkv_shape
        return 8 * b * h * t * t * d


KERNEL = Kernel("field_attention", _register)
