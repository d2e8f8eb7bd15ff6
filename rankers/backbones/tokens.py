"""Field tokens: every input field as one D-vector, the input of the field-interaction backbones.

Numeric features become value-scaled field vectors, `x_m * v_m` (Song et al., AutoInt, CIKM 2019,
section 4.2; FuxiCTR's numeric embedding), so attention and gating see numeric and categorical
fields alike. A zero value gives a zero token, as in the paper.

Notation: B batch, F categorical fields, N numeric features, T = N + F tokens, D embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn

from rankers.backbones.base import Embedded, InputSpec


class FieldTokens(nn.Module):
    """(B, N) numeric values and (B, F, D) field embeddings -> (B, T, D) tokens, numeric first.

    Example:
        >>> tokens = FieldTokens(spec)
        >>> tokens(x).shape             # (B, spec.n_dense + len(spec.field_names), D)

    Args:
        spec: the input shapes; `names` lists the tokens in order (dense names, then field names).
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.names = spec.dense_names + spec.field_names
        self.numeric: nn.Parameter | None = None
        if spec.n_dense:
            self.numeric = nn.Parameter(torch.empty(spec.n_dense, spec.embedding_dim))  # (N, D)
            nn.init.normal_(self.numeric, std=1e-2)  # FuxiCTR's default embedding initialiser

    @property
    def count(self) -> int:
        return len(self.names)

    def index(self, names: tuple[str, ...], what: str) -> list[int]:
        """Token positions of `names`; ValueError naming the unknown ones and listing the known."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"{what}: no input field named {unknown}; the fields are {list(self.names)}")
        return [self.names.index(n) for n in names]

    def forward(self, x: Embedded) -> torch.Tensor:
        if self.numeric is None:
            return x.fields
        numeric = x.dense.unsqueeze(-1) * self.numeric  # (B, N, D)
        return torch.cat([numeric, x.fields], dim=1)  # (B, T, D)
