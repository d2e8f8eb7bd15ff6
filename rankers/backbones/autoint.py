"""AutoInt and AutoInt+: multi-head self-attention over field tokens.

Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks",
CIKM 2019. Every field (numeric ones as value-scaled vectors) is a token; each interacting layer is
multi-head self-attention with a residual connection and ReLU, and the flattened last layer gives
the logit. AutoInt+ (section 5.5 of the paper) sums that logit with a DNN's over the same tokens.

Notation: B batch, T tokens (numeric + categorical fields), D embedding dim, H heads, A attention
dim (all heads together, A = H * A/H, FuxiCTR's convention).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec
from rankers.backbones.configs import AutoIntConfig, AutoIntPlusConfig
from rankers.backbones.layers import FieldTokens, MLPBlock
from rankers.backbones.shapes import tracing_for_export
from rankers.kernels.attention import field_attention, prepare, reference_attention


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer (the paper's eq. 5-8): (B, T, D_in) -> (B, T, A)."""

    def __init__(self, in_dim: int, config: AutoIntConfig) -> None:
        super().__init__()
        self.heads, self.dim, self.dropout = config.num_heads, config.attention_dim, config.dropout
        self.scale = config.scale
        self.qkv = nn.Linear(in_dim, 3 * self.dim, bias=False)  # W_Query, W_Key, W_Value of all heads
        self.res = None
        if config.residual:
            self.res = nn.Linear(in_dim, self.dim, bias=False) if in_dim != self.dim else nn.Identity()
        self.norm = nn.LayerNorm(self.dim) if config.layer_norm else None
        prepare()  # the fused CPU kernel: built once per machine, loaded once per process

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values: (B, T, 3, H, A/H), a view of one projection."""
        b, t, _ = x.shape
        return self.qkv(x).view(b, t, 3, self.heads, self.dim // self.heads)

    @property
    def _scale(self) -> float:
        return (self.dim // self.heads) ** -0.5 if self.scale else 1.0

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention probabilities (B, H, T, T); each row sums to one over the T fields."""
        q, k, _ = self._heads(x).unbind(2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) * self._scale
        return torch.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # The fused CPU kernel (rankers/kernels) where it applies, batched matmuls elsewhere;
        # measured in benchmarks/README.md ("Where a training step goes").
        attend = reference_attention if tracing_for_export() else field_attention
        out = attend(self._heads(x), self._scale, self.dropout, self.training)  # (B, T, H, A/H)
        out = out.reshape(b, t, self.dim)  # (B, T, A)
        if self.res is not None:
            out = out + self.res(x)
        if self.norm is not None:
            out = self.norm(out)
        return torch.relu(out)


class AutoInt(Backbone):
    """AutoInt: stacked interacting layers over field tokens, then a linear layer per task.

    Example:
        >>> model = AutoInt(spec, AutoIntConfig(attention_layers=3, num_heads=2, attention_dim=16))
    """

    config_class: ClassVar[type] = AutoIntConfig

    def __init__(
        self, spec: InputSpec, config: AutoIntConfig = AutoIntConfig(), tasks: tuple[str, ...] = ("ctr",)
    ) -> None:
        super().__init__(spec, config, tasks)
        self.tokens = FieldTokens(spec) if config.numeric_tokens else None
        count = self.tokens.count if self.tokens is not None else len(spec.field_names)
        dims = [spec.embedding_dim] + [config.attention_dim] * config.attention_layers
        self.layers = nn.ModuleList(InteractingLayer(d, config) for d in dims[:-1])
        self.head = nn.Linear(count * config.attention_dim, len(self.tasks))
        self.dnn, self.dnn_head = None, None
        if config.dnn_units:
            in_features = count * spec.embedding_dim + (0 if config.numeric_tokens else spec.n_dense)
            self.dnn = MLPBlock(in_features, config.dnn_units, config.dropout, config.dnn_batch_norm)
            self.dnn_head = nn.Linear(self.dnn.out_features, len(self.tasks))

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, N) dense and (B, F, D) fields -> logits (B,) per task."""
        tokens = self.tokens(x) if self.tokens is not None else x.fields  # (B, T, D)
        h = tokens
        for layer in self.layers:
            h = layer(h)  # (B, T, A)
        out = self.head(h.flatten(1))  # (B, n_tasks)
        if self.dnn is not None and self.dnn_head is not None:
            flat = (
                tokens.flatten(1) if self.tokens is not None else torch.cat([x.dense, tokens.flatten(1)], 1)
            )
            out = out + self.dnn_head(self.dnn(flat))
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)})


class AutoIntPlus(AutoInt):
    """AutoInt+: AutoInt with a parallel DNN whose logit is added (paper section 5.5)."""

    config_class = AutoIntPlusConfig

    def __init__(
        self,
        spec: InputSpec,
        config: AutoIntPlusConfig = AutoIntPlusConfig(),
        tasks: tuple[str, ...] = ("ctr",),
    ) -> None:
        super().__init__(spec, config, tasks)
