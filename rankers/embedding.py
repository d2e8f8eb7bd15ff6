"""`EmbeddingArch`: the TorchRec embedding tables, the only TorchRec part of a model.

Built from the schema, on any device including `meta`, so `DistributedModelParallel` can
materialise and shard it with fused kernels (see rankers.train). It is called on the batch's
KeyedJaggedTensor directly so TorchRec's train pipeline can find and overlap the lookups.

Notation: B batch, F categorical fields, D embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.schema import Schema
from rankers.backbones.base import Embedded


class EmbeddingArch(nn.Module):
    """One pooled vector per categorical feature from an `EmbeddingBagCollection`.

    Example:
        >>> arch = EmbeddingArch(schema, embedding_dim=16, device=torch.device("meta"))

    Args:
        schema: the dataset's schema; one table per distinct `table` name.
        embedding_dim: D.
        device: where the tables are allocated (`meta` for sharding later).
    """

    def __init__(self, schema: Schema, embedding_dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        if schema.sequences:
            raise ValueError(
                f"sequence features {[s.name for s in schema.sequences]} are not embedded by this "
                "version of EmbeddingArch"
            )
        if not schema.categorical:
            raise ValueError("schema has no categorical features to embed")
        self.field_names = tuple(f.name for f in schema.categorical)
        self.embedding_dim = embedding_dim
        self.ebc = EmbeddingBagCollection(schema.table_configs(embedding_dim), device=device)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> Embedded:
        """dense (B, n_dense) and a KJT of F keys -> Embedded with fields (B, F, D)."""
        kt = self.ebc(sparse)
        if kt.keys() == list(self.field_names):
            fields = kt.values().view(-1, len(self.field_names), self.embedding_dim)  # (B, F, D)
        else:  # sharding may reorder keys: read them by name
            by_key = kt.to_dict()
            fields = torch.stack([by_key[k] for k in self.field_names], dim=1)  # (B, F, D)
        return Embedded(dense=dense, fields=fields, field_names=self.field_names)
