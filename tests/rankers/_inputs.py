"""Seeded backbone inputs shared by the backbone tests."""

from __future__ import annotations

import torch

from rankers.backbones import Embedded, InputSpec


def embedded(spec: InputSpec, batch: int, seed: int = 0) -> Embedded:
    """Dense values in [0, 1) and standard-normal field vectors of `spec`'s shapes."""
    g = torch.Generator().manual_seed(seed)
    return Embedded(
        dense=torch.rand(batch, spec.n_dense, generator=g),
        fields=torch.randn(batch, len(spec.field_names), spec.embedding_dim, generator=g),
        field_names=spec.field_names,
    )
