"""When the backbones and the embedding take their static-shape paths (`static_shapes`).

Two paths compute the same values (and, in training, the same gradients and batch statistics):
- jagged (the default in eager mode): only the real positions of the padded sequences are computed,
  and sequences are padded to the longest row of the batch. Their shapes follow the data, so they
  read sizes back from the tensors (`nonzero`, `tolist`, `int(t)`): free on CPU, where this path
  was measured faster since its cost follows the mean history length, not the longest.
- static: every position up to the sequence feature's `max_len` is computed and the padding masked;
  no shape depends on the data, so nothing is read back to the host.

The static path is taken under `torch.compile` (data-dependent shapes would break the graph), while
`rankers.serving.export` traces (`exporting`), and inside `fixed_shapes`: on a GPU every read-back
(`.item()`, `int(t)`, `.tolist()`, `nonzero()`, a boolean-mask index) makes the host wait until the
GPU's queue has drained, so the host can no longer run ahead queueing kernels; the training and
evaluation loops enter `fixed_shapes` on any device but the CPU.

The jagged path's host syncs per training step (tests/rankers/test_host_syncs.py asserts this list):
one `int(lengths.max())` per sequence (`rankers.embedding.pad_sequence`); for DIN and DIEN one
`torch.equal` per attended sequence after the first (`layers.aligned_mask`); for DIN one `nonzero`
(`ActivationUnit.weights`); for DIEN one `nonzero` in `auxiliary_loss` and, where its fused
recurrence runs (rankers/kernels/gru.py: CPU, float32), one `nonzero` and two `int()` in
`dien.Packing`, shared by both GRUs and the attention (elsewhere `ActivationUnit.weights`'
`nonzero` and, per `JaggedGRU`, `int(active[0])` twice and `active.tolist()` once). The static
path has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_TRACING_FOR_EXPORT = False  # set by `exporting()`
_FIXED = False  # set by `fixed_shapes()`


def tracing_for_export() -> bool:
    """Whether `rankers.serving.export` is tracing: the artifact must not call the library's own
    compiled ops (it loads without rankers), so the backbones keep to torch's."""
    return _TRACING_FOR_EXPORT


def static_shapes() -> bool:
    """Whether the static-shape paths are taken (every position computed, padding masked, no host
    syncs): under `torch.compile`, while `rankers.serving.export` traces, and in `fixed_shapes`."""
    return _FIXED or _TRACING_FOR_EXPORT or torch.compiler.is_compiling()


@contextmanager
def exporting() -> Iterator[None]:
    """The backbones take their static-shape paths inside this block (for fx tracing)."""
    global _TRACING_FOR_EXPORT
    _TRACING_FOR_EXPORT = True
    try:
        yield
    finally:
        _TRACING_FOR_EXPORT = False


@contextmanager
def fixed_shapes(enabled: bool = True) -> Iterator[None]:
    """`static_shapes()` is True inside this block when `enabled` (nestable: `enabled=False` inside
    an enclosing block leaves it on; the previous setting returns on exit). For GPUs: no per-step
    host sync stalls the GPU's queue. On CPU the jagged paths are faster (they skip the padding),
    so CPU loops leave this off.

    Example:
        >>> with fixed_shapes(device.type != "cpu"):
        ...     loss = train_step(model, ranker, optimizer, batch)
    """
    global _FIXED
    previous, _FIXED = _FIXED, _FIXED or enabled  # off inside an enclosing block: still on
    try:
        yield
    finally:
        _FIXED = previous
