"""Where a run computes: the device a name stands for, the process-group backend that goes with it,
autocast on that device, and batches moved there.

`resolve_device("auto")` is `cuda:LOCAL_RANK` where torch sees a GPU (and fbgemm has its CUDA
kernels) and `cpu` elsewhere; `"cuda"` on a machine without one is refused with a line saying so.
Everything that takes a device (training, evaluation, the Predictor, the checkpoints' RNG state)
takes it from here, so a CPU run on a CUDA host never touches the GPU.

Example:
    >>> device = resolve_device("auto")          # cpu here; cuda:0 on a one-GPU machine
    >>> with autocast(device, "bf16"):
    ...     out = model(to_device(batch, device))
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from features.batch import Batch

DEVICES = ("auto", "cpu", "cuda")  # the names a config or a flag takes (also "cuda:N")


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` stands for: "cpu"; "cuda" (this process's GPU, `cuda:LOCAL_RANK` under
    torchrun; cuda:0 where each process sees one GPU); "cuda:N" (one process per machine); or
    "auto" (cuda where torch sees a GPU and fbgemm has CUDA kernels, else cpu). ValueError for an
    unknown name, a GPU this machine does not have, or fbgemm's CPU build."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() and fbgemm_on_cuda() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise ValueError(f"device {name!r}: expected one of {DEVICES} or cuda:N")
    local_rank, local_world = (
        int(os.environ.get(k, d)) for k, d in (("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"))
    )
    index = local_rank if name == "cuda" else _index(name)
    if name != "cuda" and local_world > 1:
        raise ValueError(
            f"device {name!r} with {local_world} processes on this machine would put them all on one "
            "GPU; expected --device cuda or auto (each process takes the GPU LOCAL_RANK names)"
        )
    if not torch.cuda.is_available():
        build = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise ValueError(
            f"device {name!r}: torch {torch.__version__} (built {build}) sees no GPU on this machine; "
            "expected --device cpu or auto (set up the CUDA stack with `GPU=1 make setup`)"
        )
    if not fbgemm_on_cuda():
        raise ValueError(
            f"device {name!r}: the installed fbgemm_gpu is the CPU build (fbgemm-gpu-cpu), whose table "
            "kernels do not run on a GPU; expected --device cpu, or the CUDA stack (`GPU=1 make setup`)"
        )
    count = torch.cuda.device_count()
    if name == "cuda" and count == 1:
        index = 0  # one GPU visible to each process (CUDA_VISIBLE_DEVICES set per process)
    if not 0 <= index < count:
        raise ValueError(f"device cuda:{index}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def fbgemm_on_cuda() -> bool:
    """Whether the installed fbgemm_gpu has CUDA kernels: torch may see a GPU while fbgemm is the
    CPU build (`make setup` without GPU=1 on a GPU machine), and then only cpu works."""
    import fbgemm_gpu  # noqa: F401  (registers its operators)

    return bool(
        torch._C._dispatch_has_kernel_for_dispatch_key("fbgemm::asynchronous_complete_cumsum", "CUDA")
    )


def _index(name: str) -> int:
    index = name.split(":", 1)[1]
    if not index.isdigit():
        raise ValueError(f"device {name!r}: expected cuda:N with N a GPU index")
    return int(index)


def backend_for(device: torch.device) -> str:
    """The process-group backend: gloo on CPU; on CUDA NCCL for the GPU tensors and gloo for the
    CPU-side collectives (gathering predictions, agreeing on step counts) in one mixed group."""
    return "gloo" if device.type == "cpu" else f"cpu:gloo,{device.type}:nccl"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` multiplies bfloat16 natively, and what it has: a GPU with bf16 support, or a
    CPU with AVX512-BF16 or AMX tiles (elsewhere oneDNN converts bf16 to fp32 for fp32 units)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(device)} ({'bf16' if ok else 'no bf16'})"
    units = [
        name
        for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
        if getattr(torch.cpu, probe, lambda: False)()
    ]
    return bool(units), f"CPU with {', '.join(units)}" if units else "CPU without AVX512-BF16 or AMX"


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """`precision` ("fp32", "bf16" or "auto") as run on `device`, and why: auto is bf16 where the
    device multiplies bf16 natively (`native_bf16`), else fp32."""
    if precision != "auto":
        return precision, "asked for"
    native, what = native_bf16(device)
    return ("bf16" if native else "fp32"), f"auto: {what}"


def autocast(device: torch.device, precision: str) -> AbstractContextManager[None]:
    """bfloat16 autocast on `device`'s type with precision "bf16"; a no-op with "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device`: itself on its own device; a non-blocking copy when its tensors are pinned
    (the copy overlaps the GPU's work), a plain one otherwise."""
    if batch.dense.device == device:
        return batch
    return batch.to(device, non_blocking=batch.dense.is_pinned())


def pinned(batches: Iterator[Batch], device: torch.device, threads: int | None = None) -> Iterator[Batch]:
    """`batches` in page-locked memory where `device` is a GPU (so `to_device` copies without
    blocking); unchanged on CPU. On a host with cores to spare (more than 2, or `threads` > 0) a
    background thread reads and pins up to 2 batches ahead; a reader's error is raised here, in
    order (on 2 cores a reading thread was measured to slow training: it competes with torch's)."""
    if device.type == "cpu":
        yield from batches
        return
    spare = (os.cpu_count() or 1) > 2 if threads is None else threads > 0
    pinned_batches = (batch.pin_memory() if batch.dense.device.type == "cpu" else batch for batch in batches)
    yield from prefetch(pinned_batches, depth=2) if spare else pinned_batches


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`items` produced by a background thread up to `depth` ahead; an exception it raises is
    raised here after the items before it. Stops the thread when the consumer stops early."""
    done, box = object(), queue.Queue[Any](maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        """Waits for room unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        torch.set_num_threads(1)  # this thread's own setting: pinning copies must not take every core
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:  # handed to the consumer
            put((done, e))

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = box.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def synchronize(device: torch.device) -> None:
    """Waits for `device`'s queued work (for timing); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the backbone inside `model` (a Ranker, plain or wrapped by
    DistributedModelParallel): where its batches must be; cpu for a model without one."""
    for m in model.modules():
        backbone = getattr(m, "backbone", None)
        if isinstance(backbone, torch.nn.Module):
            return next((p.device for p in backbone.parameters()), torch.device("cpu"))
    return torch.device("cpu")
