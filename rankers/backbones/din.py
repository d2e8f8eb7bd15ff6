"""DIN: attention of the candidate over the user's behaviours, pooled into an MLP.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018. The local
activation unit scores each behaviour k against the query q (the candidate's target fields) with an
MLP over [q, k, q - k, q * k]; the behaviours are summed weighted by their scores (no softmax by
default, as in the paper, so the pooled vector keeps the strength of the interest), and the result
joins the other fields' embeddings in the MLP.

Sequences and targets: the attended sequences (`sequences`, by default every sequence whose table a
categorical field shares) are concatenated per position into one behaviour vector, and their target
fields into the query, as FuxiCTR does for (cate_his, brand_his) with (cate_id, brand). They must be
aligned (equal lengths per row); the first one's mask is used. Sequences not attended to (one with
no target field, e.g. behaviour types) are sum-pooled over their real positions.

Jagged attention: in eager mode the activation unit runs on the real positions only (gathered from
the padded batch), so its cost follows the mean history length, not the longest; under
`torch.compile` it runs on all positions with the padding masked (static shapes). Both give the same
values in eval mode; in training, Dice's batch statistics under compile include the padded
positions (eager: real positions only). The unit's first layer over [q, k, q-k, q*k] is computed
as q.(Wq+Wd) once per row plus [k, q*k].[Wk-Wd; Wp] per position: the same linear map, with half
the work per position.

Notation: B batch, F categorical fields, D embedding dim, L longest sequence in the batch, G
attended sequences (the behaviour vector has G*D values), N real positions in the batch, K tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Preset

if TYPE_CHECKING:
    from rankers.backbones.dien import DIENConfig

ACTIVATIONS = ("relu", "dice", "prelu", "sigmoid")


@dataclass(frozen=True)
class DINConfig:
    dnn_units: tuple[int, ...] = (256, 128)  # MLP widths over [dense, fields, pooled behaviours]
    dnn_activation: str = "relu"  # one of ACTIVATIONS ("dice" is the paper's)
    dnn_dropout: float = 0.0
    dnn_batch_norm: bool = False
    attention_units: tuple[int, ...] = (64, 16)  # the local activation unit's hidden widths
    attention_activation: str = "dice"  # the paper's unit uses Dice (or PReLU)
    attention_dropout: float = 0.0
    attention_softmax: bool = False  # normalise scores over real positions (not in the paper)
    sequences: tuple[str, ...] = ()  # attended sequences; () = every one with a target field

    def __post_init__(self) -> None:
        for name in ("dnn_units", "attention_units"):
            units = getattr(self, name)
            if not units or min(units) < 1:
                raise ValueError(f"{name} {units}: expected one or more widths >= 1")
        for name in ("dnn_activation", "attention_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {ACTIVATIONS}")
        for name in ("dnn_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1)")


class Dice(nn.Module):
    """Dice (DIN section 4.3): p(x) x + (1 - p(x)) alpha x, p = sigmoid(BatchNorm(x)) without affine,
    over the last dim of (N, H) inputs; alpha is learned per unit. A training batch of fewer than two
    rows (one real behaviour in the whole batch) is normalised with the running statistics."""

    def __init__(self, width: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(width, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, H)."""
        bn = self.bn
        batch_stats = self.training and x.shape[0] > 1
        z = F.batch_norm(
            x, bn.running_mean, bn.running_var, None, None, batch_stats, bn.momentum or 0.0, bn.eps
        )
        p = torch.sigmoid(z)
        return x * (p + (1 - p) * self.alpha)


def activation(name: str, width: int) -> nn.Module:
    if name == "dice":
        return Dice(width)
    if name == "prelu":
        return nn.PReLU(width)
    return nn.ReLU() if name == "relu" else nn.Sigmoid()


def mlp_block(in_features: int, units: tuple[int, ...], act: str, dropout: float, bn: bool) -> nn.Sequential:
    """Linear -> [BatchNorm] -> activation -> [Dropout] per width."""
    layers: list[nn.Module] = []
    for width in units:
        layers += [nn.Linear(in_features, width), *([nn.BatchNorm1d(width)] if bn else [])]
        layers += [activation(act, width), *([nn.Dropout(dropout)] if dropout else [])]
        in_features = width
    return nn.Sequential(*layers)


class ActivationUnit(nn.Module):
    """The local activation unit: a score per behaviour from [q, k, q - k, q * k] (DIN figure 2).

    Args:
        width: the query's and each behaviour's size (G*D).
        units: hidden widths; the first layer holds the weight over the 4*width concatenation.
        act: hidden activation.
        dropout: after each hidden activation.
    """

    def __init__(self, width: int, units: tuple[int, ...], act: str, dropout: float) -> None:
        super().__init__()
        self.width = width
        self.first = nn.Linear(4 * width, units[0])
        self.first_act = activation(act, units[0])
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.rest = mlp_block(units[0], units[1:], act, dropout, False)
        self.out = nn.Linear(units[-1], 1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """query (B, W) with keys (N, W) of rows `rows` (N,) -> scores (N,); or with keys (B, L, W)
        and rows None -> scores (B, L)."""
        wq, wk, wd, wp = self.first.weight.split(self.width, dim=1)  # each (H1, W)
        per_row = query @ (wq + wd).T + self.first.bias  # (B, H1): the query's part, once per row
        if rows is None:
            q = query.unsqueeze(1)  # (B, 1, W)
            h = per_row.unsqueeze(1) + keys @ (wk - wd).T + (q * keys) @ wp.T  # (B, L, H1)
            flat = h.flatten(0, 1)  # (B*L, H1)
        else:
            q = query[rows]  # (N, W)
            flat = per_row[rows] + keys @ (wk - wd).T + (q * keys) @ wp.T  # (N, H1)
        scores = self.out(self.rest(self.dropout(self.first_act(flat)))).squeeze(-1)  # (N,) / (B*L,)
        return scores

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
        if torch.compiler.is_compiling():
            scores = self(query, keys, None).view(b, length)  # (B, L)
        else:  # real positions only
            index = mask.flatten().nonzero().squeeze(1)  # (N,)
            real = self(query, keys.flatten(0, 1)[index], index // length)  # (N,)
            scores = torch.zeros(b * length, dtype=real.dtype, device=real.device)
            scores = scores.index_put((index,), real).view(b, length)  # (B, L)
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
    if not torch.compiler.is_compiling():
        for name in names[1:]:
            if not torch.equal(x.sequences[name].mask, mask):
                rows = (x.sequences[name].mask != mask).any(1).nonzero().flatten().tolist()
                raise ValueError(
                    f"sequences {names[0]!r} and {name!r} differ in length in rows {rows[:5]} of the "
                    "batch; attended sequences must be aligned (one behaviour per position)"
                )
    return mask


class InterestMLP(nn.Module):
    """What DIN and DIEN share around their interest vector: the attended sequences' query, keys and
    mask (`inputs`), and the MLP over [dense, fields, interest, sum-pooled other sequences] with one
    logit per task (`forward`).

    Args:
        spec: the input shapes.
        config: a DINConfig or DIENConfig (its `sequences` and `dnn_*` fields).
        tasks: K.
    """

    def __init__(self, spec: InputSpec, config: DINConfig | DIENConfig, tasks: int) -> None:
        super().__init__()
        self.sequence_names, self.target_fields, self.pooled_names = attended(spec, config.sequences)
        self.width = len(self.sequence_names) * spec.embedding_dim  # W = G*D
        d = spec.embedding_dim
        in_features = spec.n_dense + len(spec.field_names) * d + self.width + len(self.pooled_names) * d
        units = config.dnn_units
        self.mlp = mlp_block(
            in_features, units, config.dnn_activation, config.dnn_dropout, config.dnn_batch_norm
        )
        self.head = nn.Linear(units[-1], tasks)

    def inputs(self, x: Embedded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query (B, W), the behaviours (B, L, W) and their mask (B, L)."""
        query = x.fields[:, self.target_fields].flatten(1)  # (B, W)
        keys = torch.cat([x.sequences[n].values for n in self.sequence_names], dim=2)  # (B, L, W)
        return query, keys, aligned_mask(x, self.sequence_names)

    def forward(self, x: Embedded, interest: torch.Tensor) -> torch.Tensor:
        """The interest (B, W) with the other inputs -> logits (B, K)."""
        pooled = [
            (x.sequences[n].values * x.sequences[n].mask.unsqueeze(2)).sum(1) for n in self.pooled_names
        ]
        h = torch.cat([x.dense, x.fields.flatten(1), interest, *pooled], dim=1)  # (B, n_dense+F*D+W+...)
        return self.head(self.mlp(h))


class DIN(Backbone):
    """Deep Interest Network: target attention over the behaviour sequence, then an MLP.

    Example:
        >>> spec = InputSpec((), ("user", "item", "cate"), 16, (("hist_item", "item", 50),
        ...                                                      ("hist_cate", "cate", 50)))
        >>> model = DIN(spec, DINConfig())   # attends over [hist_item, hist_cate] from [item, cate]
    """

    config_class = DINConfig

    def __init__(
        self, spec: InputSpec, config: DINConfig = DINConfig(), tasks: tuple[str, ...] = ("ctr",)
    ) -> None:
        super().__init__(spec, config, tasks)
        self.softmax = config.attention_softmax
        self.interest_mlp = InterestMLP(spec, config, len(self.tasks))
        self.attention = ActivationUnit(
            self.interest_mlp.width,
            config.attention_units,
            config.attention_activation,
            config.attention_dropout,
        )

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, n_dense), (B, F, D) and sequences (B, L, D) -> logits (B,) per task."""
        query, keys, mask = self.interest_mlp.inputs(x)  # (B, W), (B, L, W), (B, L)
        interest = self.attention.pool(query, keys, mask, self.softmax)  # (B, W)
        out = self.interest_mlp(x, interest)  # (B, K)
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)})


def din_taobaoad_x1() -> Preset:
    """BARS DIN_taobaoad_x1_012_13c23a36 (FuxiCTR 2.0.1; reczoo/BARS ranking/ctr/DIN/DIN_taobaoad_x1):
    attention_hidden_units [512, 256] with ReLU, attention_dropout 0.4, no softmax; dnn_hidden_units
    [512, 256, 128] relu, net_dropout 0.1, no batch norm; embedding_dim 32, embedding_regularizer
    5e-6; Adam lr 1e-3, batch 8192, early_stop_patience 1 (reduce lr x0.1 on plateau).
    Published (test = 2017-05-13): AUC 0.652399, gAUC 0.576459, LogLoss 0.192445.
    """
    return Preset(
        backbone="din",
        config=DINConfig(
            dnn_units=(512, 256, 128),
            dnn_dropout=0.1,
            attention_units=(512, 256),
            attention_activation="relu",
            attention_dropout=0.4,
        ),
        embedding_dim=32,
        embedding_l2=5e-6,
        train=(("lr", 1e-3), ("batch_size", 8192), ("patience", 1), ("lr_decay", 0.1)),
        data="TaobaoAd_x1: train 2017-05-06..12, test 2017-05-13, min count 10 (convert with "
        "--min-count 10), histories of cate, brand and btag up to 50. BARS attends over (cate_his, "
        "brand_his, btag_his) from (cate_id, brand, btag); `convert taobao-ad` writes no target btag, "
        "so here the attention covers (hist_cate_id, hist_brand) and hist_btag is sum-pooled: not "
        "directly comparable to the published figures",
        published={"auc": 0.652399, "gauc": 0.576459, "logloss": 0.192445},
    )
