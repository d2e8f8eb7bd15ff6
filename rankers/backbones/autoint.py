"""AutoInt and AutoInt+: multi-head self-attention over field tokens.

Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks",
CIKM 2019. Every field (numeric ones as value-scaled vectors) is a token; each interacting layer is
multi-head self-attention with a residual connection and ReLU, and the flattened last layer gives
the logit. AutoInt+ (section 5.5 of the paper) sums that logit with a DNN's over the same tokens.

Notation: B batch, T tokens (numeric + categorical fields), D embedding dim, H heads, A attention
dim (all heads together, A = H * A/H, FuxiCTR's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Preset
from rankers.backbones.mlp import MLPBlock
from rankers.backbones.tokens import FieldTokens


@dataclass(frozen=True)
class AutoIntConfig:
    attention_layers: int = 3  # interacting layers
    num_heads: int = 2  # heads per layer
    attention_dim: int = 16  # A: output width of a layer, all heads together
    residual: bool = True  # add the (projected) input of each layer to its output
    scale: bool = False  # divide scores by sqrt(A / H); the paper does not
    layer_norm: bool = False  # LayerNorm after each residual sum
    dropout: float = 0.0  # on attention probabilities and after each DNN layer
    dnn_units: tuple[int, ...] = ()  # the parallel DNN of AutoInt+ (AutoIntPlusConfig); () here
    dnn_batch_norm: bool = False  # batch norm in the DNN
    # Numeric features as attention tokens (the paper, FuxiCTR, torch-rechub). False: only the
    # categorical fields attend and the numeric values join the DNN's input as they are
    # (DeepCTR-Torch's AutoInt); T is then F.
    numeric_tokens: bool = True

    def __post_init__(self) -> None:
        if self.attention_layers < 1 or self.num_heads < 1:
            raise ValueError(
                f"attention_layers {self.attention_layers} and num_heads {self.num_heads} must be >= 1"
            )
        if self.attention_dim < 1 or self.attention_dim % self.num_heads:
            raise ValueError(
                f"attention_dim {self.attention_dim} must be a positive multiple of "
                f"num_heads {self.num_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout {self.dropout} must be in [0, 1)")
        if self.dnn_units and min(self.dnn_units) < 1:
            raise ValueError(f"dnn_units {self.dnn_units}: widths must be >= 1")
        if self.dnn_batch_norm and not self.dnn_units:
            raise ValueError("dnn_batch_norm is set but there is no DNN (dnn_units is empty)")
        if type(self) is AutoIntConfig and self.dnn_units:
            raise ValueError(
                f"dnn_units {self.dnn_units}: AutoInt has no DNN; use backbone 'autoint_plus' for one"
            )


@dataclass(frozen=True)
class AutoIntPlusConfig(AutoIntConfig):
    dnn_units: tuple[int, ...] = (256, 128)  # the parallel DNN; must not be empty

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dnn_units:
            raise ValueError("AutoInt+ needs dnn_units (the parallel DNN); use backbone 'autoint' without")


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

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.dim // self.heads)  # (B, T, 3, H, A/H)
        # Heads folded into the batch, contiguous, so the batched matmuls take MKL's/oneDNN's
        # batched path rather than a per-matrix loop with copies.
        qkv = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * self.heads, t, -1)  # (3, B*H, T, A/H)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention probabilities (B, H, T, T); each row sums to one over the T fields."""
        q, k, _ = self._heads(x)
        return self._probabilities(q, k).view(x.shape[0], self.heads, x.shape[1], x.shape[1])

    def _probabilities(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(q, k.transpose(1, 2))  # (B*H, T, T)
        if self.scale:
            scores = scores * (self.dim // self.heads) ** -0.5
        return torch.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self._heads(x)
        # Batched matmuls rather than PyTorch's fused CPU attention, which was measured 2x slower
        # at these shapes (T about 39, head dim 8); see benchmarks/NOTES.md.
        # Blocks of B*H computed in cache with a recomputing backward were measured slower still
        # (per-block op overhead outweighs the memory traffic saved).
        p = F.dropout(self._probabilities(q, k), self.dropout, self.training)  # (B*H, T, T)
        out = torch.bmm(p.to(v.dtype), v).view(b, self.heads, t, -1)  # (B, H, T, A/H)
        out = out.transpose(1, 2).reshape(b, t, self.dim)  # (B, T, A)
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


def autoint_plus_criteo_x1() -> Preset:
    """AutoInt+ as run by BARS on Criteo_x1 (FuxiCTR 1.2.2, experiment AutoInt_criteo_x1_005_a4b5787e).

    Source: github.com/reczoo/BARS, ranking/ctr/AutoInt/AutoInt+_criteo_x1 (README and log):
    embedding dim 10, embedding regularizer 1e-5, 3 attention layers, 2 heads, attention dim 256,
    residual, layer norm, no scaling, DNN (400, 400, 400) with batch norm, dropout 0.1, batch 4096,
    Adam 1e-3 reduced tenfold on plateau, patience 2; test AUC 0.813939, LogLoss 0.437892,
    23,844,454 parameters. That run also had `use_wide` (a first-order logistic-regression term
    with one weight per id); this library has no first-order tables, so the preset leaves it out.
    The embedding regularizer keeps FuxiCTR's number, but here it penalises the vectors a batch
    looks up (RankerConfig.embedding_l2), not whole tables: not the same strength. The embedding
    dim is 12, not 10: fbgemm's fused table kernel needs a multiple of 4 columns.
    """
    return Preset(
        backbone="autoint_plus",
        config=AutoIntPlusConfig(
            attention_layers=3,
            num_heads=2,
            attention_dim=256,
            residual=True,
            scale=False,
            layer_norm=True,
            dropout=0.1,
            dnn_units=(400, 400, 400),
            dnn_batch_norm=True,
        ),
        embedding_dim=12,
        embedding_l2=1e-5,
        train=(("batch_size", 4096), ("lr", 1e-3), ("lr_decay", 0.1), ("patience", 2), ("epochs", 100)),
        data="Criteo_x1: min category count 1, I1-I13 numeric (normalised in the release)",
        published={"auc": 0.813939, "logloss": 0.437892, "parameters": 23_844_454},
    )
