"""Seeded backbone inputs shared by the backbone tests."""

from __future__ import annotations

import torch

from rankers.backbones import Embedded, InputSpec, Sequence


def embedded(spec: InputSpec, batch: int, seed: int = 0) -> Embedded:
    """Dense values in [0, 1) and standard-normal field vectors of `spec`'s shapes; each sequence a
    standard-normal (B, L, D) with L its max length, zero past each row's random length (row 0 has the
    full length, the last of several rows none). Sequences of one target-less group share lengths."""
    g = torch.Generator().manual_seed(seed)
    d = spec.embedding_dim
    sequences = {}
    lengths: dict[int, torch.Tensor] = {}
    for name, _, max_len in spec.sequences:
        if max_len not in lengths:
            n = torch.randint(0, max_len + 1, (batch,), generator=g)
            n[0] = max_len
            if batch > 1:
                n[-1] = 0
            lengths[max_len] = n
        mask = torch.arange(max_len) < lengths[max_len].unsqueeze(1)  # (B, L)
        values = torch.randn(batch, max_len, d, generator=g) * mask.unsqueeze(2)
        sequences[name] = Sequence(values, mask)
    return Embedded(
        dense=torch.rand(batch, spec.n_dense, generator=g),
        fields=torch.randn(batch, len(spec.field_names), d, generator=g),
        field_names=spec.field_names,
        sequences=sequences,
    )
