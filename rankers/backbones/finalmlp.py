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

from dataclasses import dataclass

import torch
from torch import nn

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Preset
from rankers.backbones.mlp import MLPBlock
from rankers.backbones.tokens import FieldTokens


@dataclass(frozen=True)
class FinalMLPConfig:
    mlp1_units: tuple[int, ...] = (256, 128)  # stream 1 widths
    mlp1_dropout: float = 0.0
    mlp1_batch_norm: bool = False
    mlp2_units: tuple[int, ...] = (256, 128)  # stream 2 widths
    mlp2_dropout: float = 0.0
    mlp2_batch_norm: bool = False
    feature_selection: bool = True  # gate each stream's input; False feeds both the plain tokens
    fs_units: tuple[int, ...] = (256,)  # hidden widths of each gate's MLP
    fs1_context: tuple[str, ...] = ()  # fields whose embeddings condition gate 1; () = learned vector
    fs2_context: tuple[str, ...] = ()  # the same for gate 2
    num_heads: int = 2  # H of the bilinear aggregation; divides both streams' output widths

    def __post_init__(self) -> None:
        for name in ("mlp1_units", "mlp2_units", "fs_units"):
            units = getattr(self, name)
            if not units or min(units) < 1:
                raise ValueError(f"{name} {units}: expected one or more widths >= 1")
        for name in ("mlp1_dropout", "mlp2_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1)")
        if not self.feature_selection and (self.fs1_context or self.fs2_context):
            raise ValueError(
                f"fs1_context {self.fs1_context} / fs2_context {self.fs2_context} are set but "
                "feature_selection is off; clear them or turn it on"
            )
        for units in (self.mlp1_units, self.mlp2_units):
            if self.num_heads < 1 or units[-1] % self.num_heads:
                raise ValueError(
                    f"num_heads {self.num_heads} must be >= 1 and divide the streams' output widths "
                    f"({self.mlp1_units[-1]}, {self.mlp2_units[-1]})"
                )


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


def finalmlp_criteo_x1() -> Preset:
    """FinalMLP as run by BARS on Criteo_x1 with FuxiCTR.

    Source: github.com/reczoo/BARS, ranking/ctr/FinalMLP/FinalMLP_criteo_x1 (the published config,
    as quoted in this library's backbone issue): embedding dim 10, embedding regularizer 1e-5, mlp1 (400, 400,
    400) with batch norm and dropout 0.2, mlp2 (1000,) with batch norm and dropout 0.3, gates with
    hidden (800,), gate 1 context I1..I13, gate 2 context C6, 200 heads, batch 4096, Adam 1e-3
    reduced tenfold on plateau, patience 2; test AUC 0.814902, LogLoss 0.437025, 22,478,162
    parameters. The embedding regularizer keeps FuxiCTR's number, but here it penalises the vectors
    a batch looks up (RankerConfig.embedding_l2), not whole tables: not the same strength. The
    embedding dim is 12, not 10: fbgemm's fused table kernel needs a multiple of 4 columns.
    """
    return Preset(
        backbone="finalmlp",
        config=FinalMLPConfig(
            mlp1_units=(400, 400, 400),
            mlp1_dropout=0.2,
            mlp1_batch_norm=True,
            mlp2_units=(1000,),
            mlp2_dropout=0.3,
            mlp2_batch_norm=True,
            feature_selection=True,
            fs_units=(800,),
            fs1_context=tuple(f"I{i}" for i in range(1, 14)),
            fs2_context=("C6",),
            num_heads=200,
        ),
        embedding_dim=12,
        embedding_l2=1e-5,
        train=(("batch_size", 4096), ("lr", 1e-3), ("lr_decay", 0.1), ("patience", 2), ("epochs", 100)),
        data="Criteo_x1: min category count 1, I1-I13 numeric (normalised in the release)",
        published={"auc": 0.814902, "logloss": 0.437025, "parameters": 22_478_162},
    )
