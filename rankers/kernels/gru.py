"""A GRU over packed sequences in one op per direction (rankers/kernels/gru.cpp): DIEN's interest
extractor and interest evolving layer (AUGRU, AGRU) without one autograd node per gate per step.

`packed_gru(gi, batch_sizes, w_hh, b_hh, scores, gru_type)` takes the input projections of every
real position, packed time-major with the rows sorted by length (step t's rows are the first
`batch_sizes[t]`, torch's PackedSequence layout), and returns the state after every position in
the same order. Gates follow torch.nn.GRU (r, z, n; the paper's update gate u = 1 - z); AUGRU
scales u by the score, AGRU replaces it. `fused_applies` says whether the op runs here (CPU,
float32, eager, the kernel built); `rankers.backbones.dien.JaggedGRU` keeps its step-by-step
formulas for everything else, and the two agree to float tolerance in values and gradients
(tests/rankers/test_kernels.py). The op's backward is not itself differentiable (no double
backward).

Example:
    >>> states = packed_gru(ih(x_packed), batch_sizes, hh.weight, hh.bias, scores_packed, "AUGRU")
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula

from rankers.kernels.build import Kernel

MODES = {"GRU": 0, "AUGRU": 1, "AGRU": 2}  # AIGRU is the GRU on scaled inputs


def fused_applies(x: torch.Tensor) -> bool:
    """Whether `packed_gru` runs for inputs like `x`: CPU, float32 without autocast (whose matmuls
    would hand it bf16), eager, the kernel built here."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    return KERNEL.applies()


def prepare() -> bool:
    """Build (first time on this machine) and load the kernel now; True where it is available."""
    return KERNEL.ready()


def packed_gru(
    gi: torch.Tensor,
    batch_sizes: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor,
    scores: torch.Tensor | None,
    gru_type: str = "GRU",
) -> torch.Tensor:
    """Packed input projections gi (N, 3W) (input bias included), batch_sizes (steps,) int64 on the
    CPU (positive, nonincreasing, summing to N), w_hh (3W, W), b_hh (3W,), scores (N,) for AUGRU
    and AGRU -> the states (N, W) in gi's order."""
    mode = MODES[gru_type if gru_type in MODES else "GRU"]
    if mode == MODES["GRU"]:
        scores = gi.new_empty(0)
    elif scores is None:
        raise ValueError(f"gru_type {gru_type!r} needs attention scores")
    states, _ = torch.ops.rankers_kernels.gru_fwd(gi, batch_sizes, w_hh, b_hh, scores, mode)
    return states


def _register() -> None:
    """Fake kernels (shapes for torch.compile) and autograd for the C++ ops."""
    lib = "rankers_kernels::"

    @torch.library.register_fake(lib + "gru_fwd")
    def _fwd_fake(
        gi: torch.Tensor,
        batch_sizes: torch.Tensor,
        w_hh: torch.Tensor,
        b_hh: torch.Tensor,
        scores: torch.Tensor,
        mode: int,
    ) -> Any:
        n, width = gi.shape[0], w_hh.shape[1]
        return gi.new_empty((n, width)), gi.new_empty((n, 4 * width))

    @torch.library.register_fake(lib + "gru_bwd")
    def _bwd_fake(
        grad: torch.Tensor,
        states: torch.Tensor,
        gates: torch.Tensor,
        batch_sizes: torch.Tensor,
        w_hh: torch.Tensor,
        scores: torch.Tensor,
        mode: int,
    ) -> Any:
        n, width = states.shape
        dscores = states.new_empty((n,) if mode else (0,))
        dgi = states.new_empty((n, 3 * width))
        return dgi, w_hh.new_empty(w_hh.shape), w_hh.new_empty(3 * width), dscores

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        _, batch_sizes, w_hh, _, scores, mode = inputs
        states, gates = output
        ctx.save_for_backward(states, gates, batch_sizes, w_hh, scores)
        ctx.mode = mode
        ctx.mark_non_differentiable(gates)

    def backward(ctx: Any, grad_states: torch.Tensor | None, _grad_gates: Any) -> Any:
        states, gates, batch_sizes, w_hh, scores = ctx.saved_tensors
        if grad_states is None:
            grad_states = torch.zeros_like(states)
        dgi, dw, db, dscores = torch.ops.rankers_kernels.gru_bwd(
            grad_states, states, gates, batch_sizes, w_hh, scores, ctx.mode
        )
        return dgi, None, dw, db, (dscores if ctx.mode else None), None

    torch.library.register_autograd(lib + "gru_fwd", backward, setup_context=setup_context)

    # FLOPs as torch's FlopCounterMode counts the step formulas' matmuls: the hidden projection at
    # every step after the first (forward), its input gradient there and the weight gradient
    # (backward); the input projection is a Linear outside the op, counted on its own.
    ops = torch.ops.rankers_kernels

    @register_flop_formula(ops.gru_fwd, get_raw=True)
    def _fwd_flops(
        gi: torch.Tensor, batch_sizes: torch.Tensor, w_hh: torch.Tensor, *_: Any, **__: Any
    ) -> int:
        stepped = gi.shape[0] - (int(batch_sizes[0]) if batch_sizes.numel() else 0)
        return 2 * stepped * w_hh.shape[0] * w_hh.shape[1]

    @register_flop_formula(ops.gru_bwd, get_raw=True)
    def _bwd_flops(
        grad: torch.Tensor,
        states: torch.Tensor,
        gates: torch.Tensor,
        batch_sizes: torch.Tensor,
        w_hh: torch.Tensor,
        *_: Any,
        **__: Any,
    ) -> int:
        stepped = states.shape[0] - (int(batch_sizes[0]) if batch_sizes.numel() else 0)
        return 2 * (stepped + states.shape[0]) * w_hh.shape[0] * w_hh.shape[1]


KERNEL = Kernel("gru", _register)
