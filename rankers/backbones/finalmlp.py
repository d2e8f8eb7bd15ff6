"""FinalMLP: two MLP streams with feature gating, fused by multi-head bilinear aggregation.

Mao et al., "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction", AAAI 2023. Each stream
sees the field tokens through its own feature-selection gate, `2 * sigmoid(MLP(context))`, whose
context is the embeddings of chosen fields (or a learned vector when none are chosen). The streams'
outputs o1, o2 are split into H heads and fused as `w1.o1 + w2.o2 + sum_h o1_h^T W_h o2_h + b`.

Context fields reuse the tokens the streams see (numeric ones value-scaled, categorical ones from the
shared tables), where FuxiCTR gives the context its own embedding tables.

Notation: B batch, T tokens (numeric + categorical fields), D embedding dim, H heads, d1/d2 the
streams' output widths, K tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec
from rankers.backbones.configs import FinalMLPConfig
from rankers.backbones.layers import FieldTokens, MLPBlock


class FeatureGate(nn.Module):
    """One stream's gate: context (B, C*D) -> weights (B, T*D) in (0, 2), 1 where uninformative."""

    def __init__(
        self, tokens: FieldTokens, context: tuple[str, ...], dim: int, units: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.index = tokens.index(context, "feature-selection context") if context else []
        # The learned context starts small but not at zero (FuxiCTR's zeros leave the gate's first
        # weights without a gradient until the context has moved).
        self.bias = None if context else nn.Parameter(torch.randn(1, dim) * 1e-2)
        self.mlp = MLPBlock(dim * max(1, len(context)), units, dropout=0.0, batch_norm=False)
        self.out = nn.Linear(self.mlp.out_features, tokens.count * dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            context = self.bias.expand(tokens.shape[0], -1)  # (B, D)
        else:
            context = tokens[:, self.index].flatten(1)  # (B, C*D)
        return 2 * torch.sigmoid(self.out(self.mlp(context)))  # (B, T*D)


class BilinearFusion(nn.Module):
    """Multi-head bilinear aggregation of two streams: (B, d1), (B, d2) -> (B, K)."""

    def __init__(self, d1: int, d2: int, heads: int, outputs: int) -> None:
        super().__init__()
        self.heads, self.outputs = heads, outputs
        self.linear1, self.linear2 = nn.Linear(d1, outputs), nn.Linear(d2, outputs)  # FuxiCTR's w_x, w_y
        self.w = nn.Parameter(torch.empty(heads, d1 // heads, d2 // heads * outputs))  # W_h per task
        nn.init.xavier_normal_(self.w)

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        b = o1.shape[0]
        h1 = o1.view(b, self.heads, -1).transpose(0, 1)  # (H, B, d1/H)
        h2 = o2.view(b, self.heads, -1, 1)  # (B, H, d2/H, 1)
        left = torch.bmm(h1, self.w).transpose(0, 1)  # (B, H, d2/H * K)
        bilinear = (left.view(b, self.heads, -1, self.outputs) * h2).sum(dim=(1, 2))  # (B, K)
        return self.linear1(o1) + self.linear2(o2) + bilinear


class FinalMLP(Backbone):
    """FinalMLP: gated field tokens through two MLP streams, fused bilinearly per head.

    Example:
        >>> config = FinalMLPConfig(fs1_context=("I1", "I2"), fs2_context=("C6",), num_heads=2)
        >>> model = FinalMLP(spec, config)
    """

    config_class = FinalMLPConfig

    def __init__(
        self, spec: InputSpec, config: FinalMLPConfig = FinalMLPConfig(), tasks: tuple[str, ...] = ("ctr",)
    ) -> None:
        super().__init__(spec, config, tasks)
        self.tokens = FieldTokens(spec)
        d, width = spec.embedding_dim, self.tokens.count * spec.embedding_dim
        self.gate1 = self.gate2 = None
        if config.feature_selection:
            self.gate1 = FeatureGate(self.tokens, config.fs1_context, d, config.fs_units)
            self.gate2 = FeatureGate(self.tokens, config.fs2_context, d, config.fs_units)
        self.mlp1 = MLPBlock(width, config.mlp1_units, config.mlp1_dropout, config.mlp1_batch_norm)
        self.mlp2 = MLPBlock(width, config.mlp2_units, config.mlp2_dropout, config.mlp2_batch_norm)
        self.fusion = BilinearFusion(
            self.mlp1.out_features, self.mlp2.out_features, config.num_heads, len(self.tasks)
        )

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, N) dense and (B, F, D) fields -> logits (B,) per task."""
        tokens = self.tokens(x)  # (B, T, D)
        flat = tokens.flatten(1)  # (B, T*D)
        in1 = in2 = flat
        if self.gate1 is not None and self.gate2 is not None:
            in1, in2 = flat * self.gate1(tokens), flat * self.gate2(tokens)
        out = self.fusion(self.mlp1(in1), self.mlp2(in2))  # (B, K)
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)})
