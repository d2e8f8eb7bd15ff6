"""DIEN: interests extracted from the behaviour sequence by a GRU, evolved under target attention.

Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019.
- Interest extractor: a GRU over the behaviour vectors e_t gives interest states h_t. Its auxiliary
  loss asks h_t to tell the next behaviour e_{t+1} from a negative one, through a small MLP on
  [h_t, e]; it is returned as `aux_loss`, weighted by `aux_loss_weight`, in training only.
- Interest evolving layer: scores a_t of each h_t against the target (DIN's activation unit, softmax
  over the real positions as in the paper's equation 6), then a GRU whose update is driven by them:
  AUGRU (update gate scaled by a_t, the paper's choice), AGRU (a_t replaces the update gate) or
  AIGRU (input scaled by a_t). Its final state joins the other fields in the MLP.

Negatives for the auxiliary loss are sampled in the model, in-batch: each row takes the behaviours
of another row of the batch (a random cyclic shift of the rows, never the row itself), position by
position, where both rows have one. The data carries no negatives.

Jagged recurrences: in eager mode the extractor runs on packed sequences, and the evolving GRU
steps only the rows still inside their history (rows sorted by length, the active set shrinking),
so the cost follows the real positions; under `torch.compile` both run over all L positions with
the padding masked (same values). Padding comes after the real positions, so it never reaches them.

Sequences and targets are chosen as in DIN (rankers.backbones.din): the attended sequences are
concatenated per position and their target fields form the query.

Notation: B batch, F categorical fields, D embedding dim, L longest sequence in the batch, W = G*D
the behaviour vector of G attended sequences (also the GRUs' hidden size), K tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Preset
from rankers.backbones.din import ACTIVATIONS, ActivationUnit, attended, mlp_block

GRU_TYPES = ("AUGRU", "AGRU", "AIGRU")


@dataclass(frozen=True)
class DIENConfig:
    dnn_units: tuple[int, ...] = (256, 128)  # MLP widths over [dense, fields, evolved interest]
    dnn_activation: str = "relu"  # one of din.ACTIVATIONS
    dnn_dropout: float = 0.0
    dnn_batch_norm: bool = False
    gru_type: str = "AUGRU"  # the interest evolving layer: AUGRU, AGRU or AIGRU
    attention_units: tuple[int, ...] = (64, 16)  # the activation unit scoring h_t against the target
    attention_activation: str = "dice"
    attention_dropout: float = 0.0
    attention_softmax: bool = True  # the paper normalises the scores over the history
    aux_loss_weight: float = 1.0  # alpha of the auxiliary loss; 0 turns it off
    aux_units: tuple[int, ...] = (100, 50)  # the auxiliary net's hidden widths (the paper's)
    sequences: tuple[str, ...] = ()  # attended sequences; () = every one with a target field

    def __post_init__(self) -> None:
        for name in ("dnn_units", "attention_units", "aux_units"):
            units = getattr(self, name)
            if not units or min(units) < 1:
                raise ValueError(f"{name} {units}: expected one or more widths >= 1")
        for name in ("dnn_activation", "attention_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {ACTIVATIONS}")
        for name in ("dnn_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1)")
        if self.gru_type not in GRU_TYPES:
            raise ValueError(f"gru_type {self.gru_type!r}: expected one of {GRU_TYPES}")
        if not 0 <= self.aux_loss_weight < float("inf"):
            raise ValueError(f"aux_loss_weight {self.aux_loss_weight} must be finite and >= 0")


class InterestEvolving(nn.Module):
    """A GRU over the interest states whose update is driven by the attention scores a_t.

    Gates follow torch.nn.GRU: r, z from sigmoid, n = tanh(x_n + r * h_n); the paper's update gate is
    u = 1 - z. AUGRU: h' = h + a*u*(n - h); AGRU: h' = h + a*(n - h); AIGRU: the GRU on a*x.
    """

    def __init__(self, width: int, gru_type: str) -> None:
        super().__init__()
        self.gru_type = gru_type
        self.ih = nn.Linear(width, 3 * width)
        self.hh = nn.Linear(width, 3 * width)

    def step(self, gi: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Input projections gi (n, 3W), state h (n, W), scores a (n, 1) -> next state (n, W)."""
        xr, xz, xn = gi.chunk(3, dim=1)
        hr, hz, hn = self.hh(h).chunk(3, dim=1)
        r, u = torch.sigmoid(xr + hr), 1 - torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        gate = {"AUGRU": a * u, "AGRU": a, "AIGRU": u}[self.gru_type]
        return h + gate * (n - h)

    def forward(self, states: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, W), scores (B, L), mask (B, L) -> the state after each row's last real step,
        (B, W); zero for rows without history."""
        a = scores.unsqueeze(2)  # (B, L, 1)
        gi = self.ih(states * a if self.gru_type == "AIGRU" else states)  # (B, L, 3W)
        b, length, width = states.shape
        if torch.compiler.is_compiling():  # static shapes: every step, padding masked
            h = states.new_zeros(b, width)
            for t in range(length):
                h = torch.where(mask[:, t : t + 1], self.step(gi[:, t], h, a[:, t]), h)
            return h
        lengths = mask.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        active = (lengths.unsqueeze(0) > torch.arange(length, device=mask.device).unsqueeze(1)).sum(1)
        gi, a = gi[order], a[order]
        h, done = states.new_zeros(int(active[0]), width), []
        for t, n in enumerate(active.tolist()):
            if n < h.shape[0]:  # rows whose history ended: their state is final
                done.append(h[n:])
                h = h[:n]
            if n == 0:
                break
            h = self.step(gi[:n, t], h, a[:n, t])
        done.append(h)
        ended = torch.cat([*reversed(done), states.new_zeros(b - int(active[0]), width)])  # sorted order
        return torch.zeros_like(ended).index_copy(0, order, ended)  # (B, W) in batch order


class DIEN(Backbone):
    """Deep Interest Evolution Network: GRU interest extractor with auxiliary loss, attention-driven
    interest evolving layer, MLP.

    Example:
        >>> spec = InputSpec((), ("user", "item", "cate"), 16, (("hist_item", "item", 50),
        ...                                                      ("hist_cate", "cate", 50)))
        >>> model = DIEN(spec, DIENConfig(gru_type="AUGRU", aux_loss_weight=1.0))
        >>> out = model(x)   # out.aux_loss is the weighted auxiliary loss in training mode
    """

    config_class = DIENConfig

    def __init__(
        self, spec: InputSpec, config: DIENConfig = DIENConfig(), tasks: tuple[str, ...] = ("ctr",)
    ) -> None:
        super().__init__(spec, config, tasks)
        self.sequence_names, target_fields, self.pooled_names = attended(spec, config.sequences)
        self.target_fields = target_fields
        self.softmax = config.attention_softmax
        width = len(self.sequence_names) * spec.embedding_dim
        self.extractor = nn.GRU(width, width, batch_first=True)
        self.aux_net = nn.Sequential(
            mlp_block(2 * width, config.aux_units, "relu", 0.0, False), nn.Linear(config.aux_units[-1], 1)
        )
        self.attention = ActivationUnit(
            width, config.attention_units, config.attention_activation, config.attention_dropout
        )
        self.evolving = InterestEvolving(width, config.gru_type)
        self.aux_loss_weight = config.aux_loss_weight
        in_features = (
            spec.n_dense
            + len(spec.field_names) * spec.embedding_dim
            + width
            + len(self.pooled_names) * spec.embedding_dim
        )
        self.mlp = mlp_block(
            in_features, config.dnn_units, config.dnn_activation, config.dnn_dropout, config.dnn_batch_norm
        )
        self.head = nn.Linear(config.dnn_units[-1], len(self.tasks))

    def extract(self, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Behaviours (B, L, W) -> interest states (B, L, W); zero on padding."""
        if torch.compiler.is_compiling():
            states, _ = self.extractor(behaviours)  # causal: padding after a row's end never reaches it
        else:
            lengths = mask.sum(1).clamp(min=1).cpu()  # empty rows run one (masked) step
            packed = pack_padded_sequence(behaviours, lengths, batch_first=True, enforce_sorted=False)
            states, _ = pad_packed_sequence(
                self.extractor(packed)[0], batch_first=True, total_length=mask.shape[1]
            )
        return states * mask.unsqueeze(2)

    def auxiliary_loss(
        self, states: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """BCE of the aux net telling e_{t+1} (label 1) from another row's behaviour there (label 0),
        averaged over the pairs where both exist."""
        b = mask.shape[0]
        shift = torch.randint(1, max(b, 2), (), device=mask.device)
        other = (torch.arange(b, device=mask.device) + shift) % b  # another row (none when B = 1)
        h, pos, neg = states[:, :-1], behaviours[:, 1:], behaviours[other, 1:]  # (B, L-1, W)
        pos_mask = mask[:, 1:]
        neg_mask = pos_mask & mask[other, 1:] & (b > 1)
        logits_pos = self.aux_net(torch.cat([h, pos], dim=2)).squeeze(2)  # (B, L-1)
        logits_neg = self.aux_net(torch.cat([h, neg], dim=2)).squeeze(2)  # (B, L-1)
        loss = F.binary_cross_entropy_with_logits(logits_pos, torch.ones_like(logits_pos), reduction="none")
        loss_neg = F.binary_cross_entropy_with_logits(
            logits_neg, torch.zeros_like(logits_neg), reduction="none"
        )
        total = (loss * pos_mask).sum() + (loss_neg * neg_mask).sum()
        return total / (pos_mask.sum() + neg_mask.sum()).clamp(min=1)

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, n_dense), (B, F, D) and sequences (B, L, D) -> logits (B,) per task, and the weighted
        auxiliary loss in training mode."""
        query = x.fields[:, self.target_fields].flatten(1)  # (B, W)
        behaviours = torch.cat([x.sequences[n].values for n in self.sequence_names], dim=2)  # (B, L, W)
        mask = x.sequences[self.sequence_names[0]].mask  # (B, L)
        states = self.extract(behaviours, mask)  # (B, L, W)
        scores = self.attention.weights(query, states, mask, self.softmax)  # (B, L)
        interest = self.evolving(states, scores, mask)  # (B, W)
        pooled = [
            (x.sequences[n].values * x.sequences[n].mask.unsqueeze(2)).sum(1) for n in self.pooled_names
        ]
        h = torch.cat([x.dense, x.fields.flatten(1), interest, *pooled], dim=1)
        out = self.head(self.mlp(h))  # (B, K)
        aux = None
        if self.training and self.aux_loss_weight > 0:
            aux = self.aux_loss_weight * self.auxiliary_loss(states, behaviours, mask)
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)}, aux)


def dien_taobaoad_x1() -> Preset:
    """BARS DIEN_taobaoad_x1_019_5d9b3874 (FuxiCTR 2.0.2; reczoo/BARS ranking/ctr/DIEN/DIEN_taobaoad_x1):
    AUGRU, din_attention with hidden units [512, 256] and Dice, attention softmax, attention_dropout 0;
    aux_loss_alpha 0 (aux net [100, 50] ReLU unused); dnn_hidden_units [512, 256, 128] ReLU,
    net_dropout 0.1, no batch norm; embedding_dim 32, embedding_regularizer 5e-6; Adam lr 1e-3,
    batch 8192, early_stop_patience 1 (reduce lr x0.1 on plateau).
    Published (test = 2017-05-13): AUC 0.652937, gAUC 0.576916, LogLoss 0.192840.
    """
    return Preset(
        backbone="dien",
        config=DIENConfig(
            dnn_units=(512, 256, 128),
            dnn_dropout=0.1,
            gru_type="AUGRU",
            attention_units=(512, 256),
            attention_activation="dice",
            attention_softmax=True,
            aux_loss_weight=0.0,
            aux_units=(100, 50),
        ),
        embedding_dim=32,
        embedding_l2=5e-6,
        train=(("lr", 1e-3), ("batch_size", 8192), ("patience", 1), ("lr_decay", 0.1)),
        data="TaobaoAd_x1: train 2017-05-06..12, test 2017-05-13, min count 10, histories of cate, "
        "brand and btag up to 50 (BARS attends over (cate_his, brand_his, btag_his) from (cate_id, "
        "brand, btag))",
        published={"auc": 0.652937, "gauc": 0.576916, "logloss": 0.192840},
    )
