"""Counts host syncs: the calls that, on a GPU, make the host wait until the GPU's queue has run.

Works on any device, CPU included, by watching the ops themselves (`TorchDispatchMode`), not timing:
- a value read back: `aten._local_scalar_dense` (`.item()`, `int(t)`, `float(t)`, `bool(t)`, `if t:`),
  `aten.equal`, `Tensor.tolist`, `Tensor.numpy`;
- an output whose size depends on the data: `aten.nonzero` (also `torch.where(mask)`),
  `aten.masked_select`, `aten.index.Tensor` / `aten.index_put_` with a boolean index (`x[mask]`),
  `aten.repeat_interleave` without `output_size`, `aten._unique*` / `aten.unique*`, `aten.bincount`;
- a blocking copy between devices (`aten._to_copy` / `aten.copy_` across devices without
  `non_blocking`; only seen where a second device exists);
- `aten.lift_fresh`: a tensor made from host data (`torch.tensor(list)`, `torch.from_numpy`): with
  `device=` a GPU, a blocking host-to-device copy (on CPU a plain copy, listed for what it would be
  there); a lone scalar (`t[i:] = 0`) is not counted. So make batches outside the counted block.
`aten.nonzero_static` is not counted: its size is given, so it does not sync.

Each is recorded with where it was called from: the innermost frame outside torch and the
standard library (ours, or TorchRec's and fbgemm's Python code).

Example:
    >>> with count_syncs() as syncs:
    ...     loss = ranker.loss(model(batch), batch.labels)[0]
    >>> syncs.calls                 # [Sync(op="aten._local_scalar_dense", where="rankers/x.py:12 f"), ...]
    >>> syncs.ours()                # those called from rankers/, features/ or benchmarks/
    >>> syncs.sites()               # Counter({("aten.nonzero", "rankers/x.py f"): 3, ...})
"""

from __future__ import annotations

import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[2]
OURS = ("rankers/", "features/", "benchmarks/")  # the repository's packages, relative to REPO
_TORCH = str(Path(torch.__file__).resolve().parent)
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve())
_SKIP = {str(Path(__file__).resolve())}  # files whose frames are passed over (this one)

_aten = torch.ops.aten
_READ_BACK = {_aten._local_scalar_dense.default, _aten.equal.default}
_DATA_SIZED = {
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.bincount.default,
    _aten._unique.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
}


class Sync(NamedTuple):
    """One host sync: the op and the innermost frame outside torch and the standard library."""

    op: str  # "aten._local_scalar_dense", "Tensor.tolist", ...
    where: str  # "rankers/embedding.py:58 pad_sequence" (site-packages paths from the package)

    @property
    def site(self) -> str:
        """`where` without the line number ("rankers/embedding.py pad_sequence"): a stable key."""
        path, _, function = self.where.partition(" ")
        return f"{path.rsplit(':', 1)[0]} {function}"

    @property
    def ours(self) -> bool:
        return self.where.startswith(OURS)


class SyncCounter:
    """The syncs seen in a `count_syncs` block, in order (`calls`)."""

    def __init__(self) -> None:
        self.calls: list[Sync] = []

    def ours(self) -> list[Sync]:
        """The syncs called from this repository's packages."""
        return [s for s in self.calls if s.ours]

    def sites(self) -> Counter[tuple[str, str]]:
        """(op, site) -> how many times."""
        return Counter((s.op, s.site) for s in self.calls)

    def clear(self) -> None:
        self.calls.clear()

    def record(self, op: str) -> None:
        self.calls.append(Sync(op, _where()))


def _short(path: str) -> str:
    """A package's files from the package ("torchrec/x.py"), ours from the repository root."""
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1]
    return path[len(str(REPO)) + 1 :] if path.startswith(str(REPO) + "/") else path


def _where() -> str:
    frame = sys._getframe(1)
    while frame is not None:
        path = str(Path(frame.f_code.co_filename).resolve())
        if not path.startswith((_TORCH + "/", _STDLIB + "/")) and path not in _SKIP:
            return f"{_short(path)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def _is_sync(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if func in _READ_BACK or func in _DATA_SIZED:
        return True
    if func is _aten.lift_fresh.default:  # a Python scalar (`t[i:] = 0`) is filled in, not copied
        return args[0].dim() > 0
    if func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in args[1]
            if i is not None
        )
    if func is _aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    if func is _aten._to_copy.default:
        device = kwargs.get("device")
        return (
            device is not None and torch.device(device) != args[0].device and not kwargs.get("non_blocking")
        )
    if func is _aten.copy_.default:
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        return args[0].device != args[1].device and not non_blocking
    return False


class _SyncMode(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.counter.record(str(func.overloadpacket))
        return func(*args, **kwargs)


def _patched(counter: SyncCounter, name: str) -> Callable[..., Any]:
    original = getattr(torch.Tensor, name)

    def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter.record(f"Tensor.{name}")
        return original(self, *args, **kwargs)

    return method


@contextmanager
def count_syncs() -> Iterator[SyncCounter]:
    """Records every host sync made inside the block (see the module docstring) in the counter."""
    counter = SyncCounter()
    saved = {name: torch.Tensor.__dict__.get(name) for name in ("tolist", "numpy")}
    for name in saved:
        setattr(torch.Tensor, name, _patched(counter, name))
    try:
        with _SyncMode(counter):
            yield counter
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
