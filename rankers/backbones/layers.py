"""The blocks several backbones share: the MLP, Dice and the activation table, field tokens, and
DIN's activation unit with the interest MLP around it (DIN and DIEN). A block used by one model stays
in that model's file.

- `MLPBlock`: Linear -> [BatchNorm] -> activation -> [Dropout] per width.
- `Dice` (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, section
  4.3) and `activation`, one of `ACTIVATIONS` by name.
- `FieldTokens`: numeric features as value-scaled field vectors `x_m * v_m` (Song et al., AutoInt,
  CIKM 2019, section 4.2; FuxiCTR's numeric embedding), so attention and gating see numeric and
  categorical fields alike; a zero value gives a zero token, as in the paper.
- `ActivationUnit`: DIN's local activation unit, an MLP over [q, k, q - k, q * k] scoring each
  behaviour k against the query q (DIN figure 2). In eager mode it runs on the real positions only
  (gathered from the padded batch), so its cost follows the mean history length, not the longest;
  under `shapes.static_shapes()` (compile, export, `fixed_shapes`) it runs on all positions with the
  padding masked. Both give the same values and gradients: Dice's batch statistics are taken over
  the real positions only on both paths. Its first layer over [q, k, q-k, q*k] is computed
  as q.(Wq+Wd) once per row plus [k, q*k].[Wk-Wd; Wp] per position: the same linear map, with half
  the work per position.
- `InterestMLP`: the attended sequences (`sequences`, by default every sequence whose table a
  categorical field shares) concatenated per position into one behaviour vector, and their target
  fields into the query, as FuxiCTR does for (cate_his, brand_his) with (cate_id, brand). They must
  be aligned (equal lengths per row); the first one's mask is used. Sequences not attended to (one
  with no target field, e.g. behaviour types) are sum-pooled over their real positions and join the
  MLP with the dense values, the fields and the interest vector.

Notation: B batch, F categorical fields, N numeric features, T = N + F tokens, D embedding dim, L
padded length (longest sequence in the batch; max_len under static shapes), G attended sequences,
W = G*D the behaviour vector, P real positions in the batch, H hidden width, K tasks.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from rankers.backbones.base import Embedded, InputSpec
from rankers.backbones.configs import ACTIVATIONS as ACTIVATIONS  # re-exported
from rankers.backbones.shapes import exporting as exporting  # re-exported
from rankers.backbones.shapes import fixed_shapes as fixed_shapes  # re-exported
from rankers.backbones.shapes import static_shapes


class Dice(nn.Module):
    """Dice (DIN section 4.3): p(x) x + (1 - p(x)) alpha x, p = sigmoid(BatchNorm(x)) without affine,
    over the last dim of (N, H) inputs; alpha is learned per unit. A training batch of fewer than two
    rows (one real behaviour in the whole batch) is normalised with the running statistics."""

    def __init__(self, width: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(width, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """(N, H) -> (N, H); in training, the statistics are taken over the rows where `real` (N,)
        is True (all rows without it)."""
        bn = self.bn
        if real is not None and self.training:
            z = self._masked(x, real)
        else:
            batch_stats = self.training and x.shape[0] > 1
            z = F.batch_norm(
                x, bn.running_mean, bn.running_var, None, None, batch_stats, bn.momentum or 0.0, bn.eps
            )
        p = torch.sigmoid(z)
        return x * (p + (1 - p) * self.alpha)

    def _masked(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Training-mode batch norm over the `real` rows only, without reading their count back to
        the host: the running statistics when fewer than two rows are real, as in `forward`. In
        float32 whatever the input's dtype (bf16 sums over many rows would lose the mean)."""
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        xf = x.float()
        w = real.to(xf.dtype).unsqueeze(1)  # (N, 1)
        n = w.sum()
        mean = (xf * w).sum(0) / n.clamp(min=1)  # (H,)
        var = ((xf - mean).square() * w).sum(0) / n.clamp(min=1)  # biased, as batch_norm normalises
        enough = n > 1
        z = torch.where(
            enough,
            (xf - mean) * torch.rsqrt(var + bn.eps),
            (xf - bn.running_mean) * torch.rsqrt(bn.running_var + bn.eps),
        ).to(x.dtype)
        with torch.no_grad():  # batch_norm's update: momentum, the unbiased variance
            m = bn.momentum or 0.0
            unbiased = var * n / (n - 1).clamp(min=1)
            bn.running_mean.copy_(torch.where(enough, (1 - m) * bn.running_mean + m * mean, bn.running_mean))
            bn.running_var.copy_(torch.where(enough, (1 - m) * bn.running_var + m * unbiased, bn.running_var))
        return z


def activation(name: str, width: int) -> nn.Module:
    """The activation `name` (one of ACTIVATIONS) over `width` units."""
    if name == "dice":
        return Dice(width)
    if name == "prelu":
        return nn.PReLU(width)
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r}: expected one of {ACTIVATIONS}")
    return nn.ReLU() if name == "relu" else nn.Sigmoid()


class MLPBlock(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> [Dropout] per width; `out_features` is the last width
    (`in_features` without widths).

    Example:
        >>> MLPBlock(64, (256, 128), dropout=0.1, act="dice")(torch.randn(8, 64)).shape
        torch.Size([8, 128])
    """

    def __init__(
        self,
        in_features: int,
        units: tuple[int, ...],
        dropout: float = 0.0,
        batch_norm: bool = False,
        act: str = "relu",
    ) -> None:
        layers: list[nn.Module] = []
        for width in units:
            layers += [nn.Linear(in_features, width), *([nn.BatchNorm1d(width)] if batch_norm else [])]
            layers += [activation(act, width), *([nn.Dropout(dropout)] if dropout else [])]
            in_features = width
        super().__init__(*layers)
        self.out_features = in_features


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


class ActivationUnit(nn.Module):
    """The local activation unit: a score per behaviour from [q, k, q - k, q * k] (DIN figure 2).

    Args:
        width: the query's and each behaviour's size (W).
        units: hidden widths; the first layer holds the weight over the 4*W concatenation.
        act: hidden activation, one of ACTIVATIONS.
        dropout: after each hidden activation.
    """

    def __init__(self, width: int, units: tuple[int, ...], act: str, dropout: float) -> None:
        super().__init__()
        self.width = width
        self.first = nn.Linear(4 * width, units[0])
        self.first_act = activation(act, units[0])
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.rest = MLPBlock(units[0], units[1:], dropout, act=act)
        self.out = nn.Linear(units[-1], 1)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        rows: torch.Tensor | None,
        real: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, W) with keys (P, W) of rows `rows` (P,) -> scores (P,); or with keys (B, L, W),
        rows None and `real` (B*L,) marking the real positions (Dice's statistics are taken over
        them) -> scores (B*L,)."""
        wq, wk, wd, wp = self.first.weight.split(self.width, dim=1)  # each (H1, W)
        per_row = query @ (wq + wd).T + self.first.bias  # (B, H1): the query's part, once per row
        if rows is None:
            q = query.unsqueeze(1)  # (B, 1, W)
            h = per_row.unsqueeze(1) + keys @ (wk - wd).T + (q * keys) @ wp.T  # (B, L, H1)
            flat = h.flatten(0, 1)  # (B*L, H1)
        else:  # index_select: its gradient (index_add_) was measured 2x faster than an index's
            q = query.index_select(0, rows)  # (P, W)
            flat = per_row.index_select(0, rows) + keys @ (wk - wd).T + (q * keys) @ wp.T  # (P, H1)
        for layer in (self.first_act, self.dropout, *self.rest):
            flat = layer(flat, real) if isinstance(layer, Dice) else layer(flat)
        return self.out(flat).squeeze(-1)  # (P,) / (B*L,)

    def pool(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, softmax: bool
    ) -> torch.Tensor:
        """Attention-weighted sum of keys (B, L, W) under mask (B, L) -> (B, W)."""
        weights = self.weights(query, keys, mask, softmax)  # (B, L)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, 1, L) @ (B, L, W) -> (B, W)

    def weights(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, softmax: bool
    ) -> torch.Tensor:
        """Scores (B, L), zero on padding (softmax over the real positions when asked)."""
        b, length = mask.shape
        if static_shapes():
            scores = self(query, keys, None, mask.flatten()).view(b, length)  # (B, L)
        else:  # real positions only
            index = mask.flatten().nonzero().squeeze(1)  # (P,)
            real = self(query, keys.flatten(0, 1).index_select(0, index), index // length)  # (P,)
            return self.normalise(real, index, mask, softmax)
        return self.normalise(scores, None, mask, softmax)

    def normalise(
        self, scores: torch.Tensor, index: torch.Tensor | None, mask: torch.Tensor, softmax: bool
    ) -> torch.Tensor:
        """Scores (B, L), or (P,) at the grid places `index` (P,) of the real positions -> the
        weights (B, L): softmax over each row's real positions when asked, zero on padding."""
        if index is not None:
            grid = scores.new_zeros(mask.numel()).index_copy(0, index, scores)
            scores = grid.view(mask.shape)
        if softmax:
            scores = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
            return torch.nan_to_num(scores, nan=0.0)  # rows without history: all zero
        return scores.masked_fill(~mask, 0.0)


def attended(spec: InputSpec, chosen: tuple[str, ...]) -> tuple[list[str], list[int], list[str]]:
    """The attended sequences, their targets' field indices, and the other sequences (pooled)."""
    targets = {name: target for name, target, _ in spec.sequences}
    max_lens = {name: max_len for name, _, max_len in spec.sequences}
    names = list(chosen) or [n for n, t in targets.items() if t]
    for name in names:
        if name not in targets:
            raise ValueError(f"sequence {name!r} is not in the input; its sequences: {sorted(targets)}")
        if not targets[name]:
            raise ValueError(f"sequence {name!r} shares its table with no categorical field to attend from")
    if not names:
        raise ValueError(
            f"no sequence shares a table with a categorical field (sequences {spec.sequences}); "
            "DIN needs a behaviour history and its target field"
        )
    if len({max_lens[n] for n in names}) > 1:
        raise ValueError(
            f"attended sequences {names} have max lengths {[max_lens[n] for n in names]}; they are "
            "concatenated per position, so they must be aligned (equal max_len and lengths)"
        )
    fields = [spec.field_names.index(targets[n]) for n in names]
    return names, fields, [n for n in targets if n not in names]


def aligned_mask(x: Embedded, names: list[str]) -> torch.Tensor:
    """The mask (B, L) shared by the attended sequences; in eager mode, ValueError if they differ."""
    mask = x.sequences[names[0]].mask
    if not static_shapes():
        for name in names[1:]:
            if not torch.equal(x.sequences[name].mask, mask):
                other = x.sequences[name].mask
                rows = (other.sum(1) != mask.sum(1)).nonzero().flatten().tolist()
                raise ValueError(
                    f"sequences {names[0]!r} and {name!r} differ in length in rows {rows[:5]} of the "
                    "batch; attended sequences must be aligned (one behaviour per position)"
                )
    return mask


class InterestConfig(Protocol):
    """The config fields `InterestMLP` reads (DINConfig and DIENConfig have them)."""

    @property
    def sequences(self) -> tuple[str, ...]: ...  # attended sequences; () = every one with a target
    @property
    def dnn_units(self) -> tuple[int, ...]: ...
    @property
    def dnn_activation(self) -> str: ...
    @property
    def dnn_dropout(self) -> float: ...
    @property
    def dnn_batch_norm(self) -> bool: ...


class InterestMLP(nn.Module):
    """What DIN and DIEN share around their interest vector: the attended sequences' query, keys and
    mask (`inputs`), and the MLP over [dense, fields, interest, sum-pooled other sequences] with one
    logit per task (`forward`).

    Args:
        spec: the input shapes.
        config: its `sequences` and `dnn_*` fields (a DINConfig or DIENConfig).
        tasks: K.
    """

    def __init__(self, spec: InputSpec, config: InterestConfig, tasks: int) -> None:
        super().__init__()
        self.sequence_names, self.target_fields, self.pooled_names = attended(spec, config.sequences)
        # On the model's device: indexing with a list would copy it from the host on every call.
        self.target_index: torch.Tensor
        self.register_buffer("target_index", torch.tensor(self.target_fields), persistent=False)
        self.width = len(self.sequence_names) * spec.embedding_dim  # W = G*D
        d = spec.embedding_dim
        in_features = spec.n_dense + len(spec.field_names) * d + self.width + len(self.pooled_names) * d
        units = config.dnn_units
        self.mlp = MLPBlock(
            in_features, units, config.dnn_dropout, config.dnn_batch_norm, config.dnn_activation
        )
        self.head = nn.Linear(units[-1], tasks)

    def inputs(self, x: Embedded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query (B, W), the behaviours (B, L, W) and their mask (B, L)."""
        query = x.fields.index_select(1, self.target_index).flatten(1)  # (B, W)
        mask = aligned_mask(x, self.sequence_names)  # first: unaligned sequences cannot be joined
        keys = torch.cat([x.sequences[n].values for n in self.sequence_names], dim=2)  # (B, L, W)
        return query, keys, mask

    def forward(self, x: Embedded, interest: torch.Tensor) -> torch.Tensor:
        """The interest (B, W) with the other inputs -> logits (B, K)."""
        pooled = [
            (x.sequences[n].values * x.sequences[n].mask.unsqueeze(2)).sum(1) for n in self.pooled_names
        ]
        h = torch.cat([x.dense, x.fields.flatten(1), interest, *pooled], dim=1)  # (B, n_dense+F*D+W+...)
        return self.head(self.mlp(h))
