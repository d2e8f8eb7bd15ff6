"""The device the gpu tests put against CPU, and switches that make CUDA's fp32 arithmetic IEEE."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def gpu_device() -> torch.device:
    """cuda (the current GPU); $GPU_TESTS_DEVICE where set (cpu: a dry run of the tests' logic)."""
    return torch.device(os.environ.get("GPU_TESTS_DEVICE", "cuda"))


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """No TF32 in CUDA matmuls or cuDNN while inside: fp32 on the GPU rounds like fp32 on CPU.
    Restores the previous settings on the way out."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
