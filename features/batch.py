"""`Batch`: what the reader hands to a model, one TorchRec-pipelineable unit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """A batch of B rows.

    Attributes:
        dense: (B, n_dense) float32.
        sparse: every categorical and sequence key in one KeyedJaggedTensor (stride B).
        labels: task -> (B,) float32 in {0, 1}; empty for unlabeled rows.
        groups: (B,) int64 user ids of the schema's group column (for gAUC), or None.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: dict[str, torch.Tensor]
    groups: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            labels={k: v.to(device=device, non_blocking=non_blocking) for k, v in self.labels.items()},
            groups=None if self.groups is None else self.groups.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        for v in self.labels.values():
            v.record_stream(stream)
        if self.groups is not None:
            self.groups.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels={k: v.pin_memory() for k, v in self.labels.items()},
            groups=None if self.groups is None else self.groups.pin_memory(),
        )
