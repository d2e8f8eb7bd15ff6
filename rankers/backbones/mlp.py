"""The DNN baseline: concatenated dense features and field embeddings through an MLP.

Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016; the "DNN" row
of FuxiCTR/BARS benchmarks.

Notation: B batch, F fields, D embedding dim, n_dense dense features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec


@dataclass(frozen=True)
class MLPConfig:
    hidden_units: tuple[int, ...] = (256, 128)  # widths of the hidden layers
    dropout: float = 0.0  # after each hidden activation
    batch_norm: bool = False  # before each hidden activation

    def __post_init__(self) -> None:
        if not self.hidden_units or min(self.hidden_units) < 1:
            raise ValueError(f"hidden_units {self.hidden_units}: expected one or more widths >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout {self.dropout} must be in [0, 1)")


class MLPBlock(nn.Sequential):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per width; the building block other backbones reuse."""

    def __init__(self, in_features: int, units: tuple[int, ...], dropout: float, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for width in units:
            layers.append(nn.Linear(in_features, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_features = width
        super().__init__(*layers)
        self.out_features = in_features


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
