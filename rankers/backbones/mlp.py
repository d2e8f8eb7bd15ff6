"""The DNN baseline: concatenated dense features and field embeddings through an MLP.

Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016; the "DNN" row
of FuxiCTR/BARS benchmarks.

Notation: B batch, F fields, D embedding dim, n_dense dense features.
"""

from __future__ import annotations

import torch
from torch import nn

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec
from rankers.backbones.configs import MLPConfig
from rankers.backbones.layers import MLPBlock


class MLP(Backbone):
    """DNN over [dense, flattened field embeddings], one output logit per task.

    Example:
        >>> spec = InputSpec(
        ...     dense_names=tuple(f"I{i}" for i in range(1, 14)),
        ...     field_names=tuple(f"C{i}" for i in range(1, 27)),
        ...     embedding_dim=16,
        ... )
        >>> model = MLP(spec, MLPConfig(hidden_units=(256, 128)))
    """

    config_class = MLPConfig

    def __init__(
        self, spec: InputSpec, config: MLPConfig = MLPConfig(), tasks: tuple[str, ...] = ("ctr",)
    ) -> None:
        super().__init__(spec, config, tasks)
        in_features = spec.n_dense + len(spec.field_names) * spec.embedding_dim
        self.mlp = MLPBlock(in_features, config.hidden_units, config.dropout, config.batch_norm)
        self.head = nn.Linear(self.mlp.out_features, len(self.tasks))

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, n_dense) and (B, F, D) -> logits (B,) per task."""
        h = torch.cat([x.dense, x.fields.flatten(1)], dim=1)  # (B, n_dense + F*D)
        out = self.head(self.mlp(h))  # (B, n_tasks)
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)})
