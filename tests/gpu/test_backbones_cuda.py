"""Every backbone computes on CUDA what it computes on CPU: logits, the auxiliary loss, gradients of
the inputs and of every parameter, and batch norm's running statistics, in eval and train mode, in
fp32 and under bfloat16 autocast. Needs torch and the backbones only (no torchrec, no fbgemm_gpu).

The CUDA model is a copy of the CPU one (same weights), dropout is switched off (its masks come
from each device's own generator) and DIEN's one random draw (the row shift picking its auxiliary
negatives) is made the same on both. TF32 is switched off, so fp32 rounds alike on both devices.
The CUDA side runs each backbone's jagged path (eager mode's default) and, inside `fixed_shapes`,
its static path (what training and evaluation run on a GPU); CPU runs the jagged path, as CPU
training does (CPU's static path against its jagged one passes the same tolerances).

Tolerances, each against a scale (an element may differ by `tol * scale`, and by `tol` of itself):
outputs (logits, DIEN's auxiliary loss) against their own largest magnitude; gradients against the
largest of all gradients (a gradient that cancels to about zero, such as the bias before a batch
norm in training mode, is rounding noise on both devices, so its own scale means nothing); batch
norm's running statistics against 1 (they start at 0 and 1).
- fp32: 1e-4 everywhere. Measured on CPU, fp32 against float64 at these shapes: at most 6e-7 of
  those scales; CUDA sums in other orders (blocked reductions), which moves the last bits only.
- bf16 (autocast on both devices): each device rounds every matmul's inputs and output to
  bfloat16 (8 significant bits), so two bf16 runs differ from each other about as much as each
  differs from fp32. Measured on CPU, bf16 against fp32 at these shapes: outputs within 1.0e-2 of
  their scale, all gradients together 6.2e-2 apart in relative L2 norm (a cancelled gradient is
  noise elementwise), running statistics 2.4e-4. Allowed: outputs 3e-2, gradients 0.15 in relative
  L2 norm over all of them, statistics 1e-3. A wrong kernel is off by the values' own size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from rankers.backbones import BACKBONES, Backbone, Embedded, Sequence, build_backbone
from rankers.backbones.shapes import fixed_shapes
from tests.gpu._device import gpu_device, ieee_fp32
from tests.rankers._inputs import embedded
from tests.rankers.test_backbones import FIXED_TASKS, OPTIONS, SPEC

pytestmark = pytest.mark.gpu

FP32 = 1e-4
BF16 = {"output": 3e-2, "grad": 0.15, "buffer": 1e-3}  # "grad": relative L2 norm, all together
VARIANTS = [(name, "default") for name in BACKBONES] + [(name, "options") for name in OPTIONS]
BATCH = 64
CPU = torch.device("cpu")


def build(name: str, variant: str) -> Backbone:
    """The backbone `name` for SPEC with two tasks (ESMM its own), its options switched on with
    `variant` "options", every dropout rate 0."""
    options = OPTIONS[name] if variant == "options" else {}
    options = {k: 0.0 if "dropout" in k else v for k, v in options.items()}
    config = BACKBONES[name].config_class(**options)
    return build_backbone(name, SPEC, config, FIXED_TASKS.get(name, ("ctr", "cvr")))


_randint = torch.randint


def _seeded_randint(*args: Any, device: Any = None, generator: Any = None, **kwargs: Any) -> torch.Tensor:
    """torch.randint drawn on CPU from a fixed seed, then moved: the same draw on every device."""
    seeded = torch.Generator().manual_seed(0)
    return _randint(*args, generator=seeded, **kwargs).to(device or "cpu")


def _on(x: Embedded, device: torch.device) -> Embedded:
    """A copy of `x` on `device` whose float inputs are leaves that require grad."""
    seqs = {
        name: Sequence(s.values.to(device, copy=True).requires_grad_(), s.mask.to(device))
        for name, s in x.sequences.items()
    }
    return Embedded(
        x.dense.to(device, copy=True).requires_grad_(),
        x.fields.to(device, copy=True).requires_grad_(),
        x.field_names,
        seqs,
    )


def _step(model: Backbone, x: Embedded, precision: str) -> dict[str, torch.Tensor]:
    """Forward under `precision` and backward of the summed task losses (and auxiliary loss): every
    output, input gradient, parameter gradient and buffer by name, on CPU in fp32."""
    device = x.fields.device
    labels = torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(1)).float().to(device)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "randint", _seeded_randint)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
    loss = sum(F.binary_cross_entropy_with_logits(v.float(), labels) for v in out.logits.values())
    if out.aux_loss is not None:
        loss = loss + out.aux_loss.float()
    loss.backward()  # type: ignore[union-attr]
    got = {f"output logit {t}": v for t, v in out.logits.items()}
    if out.aux_loss is not None:
        got["output aux loss"] = out.aux_loss
    got |= {"grad dense": x.dense.grad, "grad fields": x.fields.grad}
    got |= {f"grad {n}": s.values.grad for n, s in x.sequences.items() if s.values.grad is not None}
    got |= {f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    got |= {f"buffer {n}": b for n, b in model.named_buffers() if b.is_floating_point()}
    return {k: v.detach().float().cpu().clone() for k, v in got.items() if v is not None}


def _naming(prefix: str) -> Callable[[str], str]:
    return lambda message: f"{prefix}: {message}"


def assert_same(
    cuda: dict[str, torch.Tensor], cpu: dict[str, torch.Tensor], precision: str, what: str
) -> None:
    """`cuda` holds the tensors of `cpu` (keys "output ...", "grad ...", "buffer ..."), each within
    the module docstring's tolerance of `precision`; AssertionError naming `what` and the tensor."""
    assert sorted(cuda) == sorted(cpu), f"{what}: {sorted(set(cuda) ^ set(cpu))} on one device only"
    grads = [k for k in cpu if k.startswith("grad ")]
    largest_grad = max(float(cpu[k].abs().max()) for k in grads)
    for key, expected in cpu.items():
        kind = key.split()[0]
        if kind == "grad" and precision == "bf16":
            continue  # in norm, below
        tol = FP32 if precision == "fp32" else BF16[kind]
        own = float(expected.abs().max()) if expected.numel() else 0.0
        scale = {"grad": largest_grad, "buffer": max(own, 1.0)}.get(kind, own)
        torch.testing.assert_close(
            cuda[key], expected, rtol=tol, atol=tol * scale, msg=_naming(f"{what} {key}")
        )
    if precision == "bf16":
        diff = torch.cat([(cuda[k] - cpu[k]).flatten() for k in grads]).norm()
        err = float(diff / torch.cat([cpu[k].flatten() for k in grads]).norm())
        assert err <= BF16["grad"], f"{what}: gradients {err:.3g} apart in relative L2 norm, > {BF16['grad']}"


@pytest.mark.parametrize("shapes", ["jagged", "static"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_cuda_logits_and_gradients_equal_cpus(
    name: str, variant: str, mode: str, precision: str, shapes: str
) -> None:
    """`shapes` "static": the GPU side inside `fixed_shapes`, as the training and evaluation loops
    run it on a GPU (every position computed, padding masked); CPU always takes the jagged path."""
    device = gpu_device()
    torch.manual_seed(0)
    on_cpu = build(name, variant).train(mode == "train")
    on_gpu = copy.deepcopy(on_cpu).to(device)
    x = embedded(SPEC, BATCH)
    with ieee_fp32():
        with fixed_shapes(shapes == "static"):
            cuda = _step(on_gpu, _on(x, device), precision)
        cpu = _step(on_cpu, _on(x, CPU), precision)
    assert any(k.startswith("grad ") for k in cpu), f"{name}: no gradient computed"
    assert_same(cuda, cpu, precision, f"{name} ({variant}, {mode}, {precision}, {shapes}) on {device}")
