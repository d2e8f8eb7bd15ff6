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

Jagged recurrences: in eager mode the GRUs step only the rows still inside their history (rows
sorted by length, the active set shrinking), so the cost follows the real positions. On CPU in
float32 both run as one fused op each (rankers/kernels/gru.cpp) over the real positions packed
time-major (`Packing`, shared with the attention unit); elsewhere step by step in torch ops. Under
`shapes.static_shapes()` (compile, export, `fixed_shapes`) both run over all L positions with the
padding masked and read nothing back to the host. All three give the same values and gradients
(with attention dropout in training, the same in distribution: the fused path's attention unit
sees the real positions in another order, so one seed draws other masks).
Padding comes after the real positions, so it never reaches them.

Sequences and targets are chosen as in DIN (`layers.InterestMLP`): the attended sequences are
concatenated per position and their target fields form the query.

Notation: B batch, F categorical fields, D embedding dim, L padded length (the longest sequence in
the batch; the max_len under static shapes), W = G*D the behaviour vector of G attended sequences
(also the GRUs' hidden size), K tasks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec
from rankers.backbones.configs import GRU_TYPES as GRU_TYPES  # re-exported
from rankers.backbones.configs import DIENConfig
from rankers.backbones.layers import ActivationUnit, InterestMLP, MLPBlock
from rankers.backbones.shapes import static_shapes
from rankers.kernels.gru import fused_applies as packed_fused_applies
from rankers.kernels.gru import packed_gru, prepare


class JaggedGRU(nn.Module):
    """A GRU over padded sequences that steps only the rows still inside their history, optionally
    driven by attention scores a_t (the interest evolving layer).

    Gates follow torch.nn.GRU: r, z from sigmoid, n = tanh(x_n + r * h_n); the paper's update gate is
    u = 1 - z. GRU: h' = h + u*(n - h); AUGRU: h' = h + a*u*(n - h); AGRU: h' = h + a*(n - h);
    AIGRU: the GRU on a*x. Rows are sorted by length so the active rows are a shrinking prefix; on CPU
    this was measured 2x faster than torch.nn.GRU on the padded batch (and 3x than packed) at
    B=4096, L=50, mean length 17, forward and backward, and the fused op (`run_packed`, on CPU in
    float32) 1.7x faster again at B=1024, L=50, mean 37. Under `static_shapes()` every step runs on
    every row, padding masked; the values are the same. `steps` (set by
    `rankers.serving.export`, whose sequences are padded to their max_len) fixes the number of
    steps, so tracing unrolls the loop.

    Args:
        width: W, the input and state size.
        gru_type: "GRU", or one of GRU_TYPES (scores then required).
    """

    def __init__(self, width: int, gru_type: str = "GRU") -> None:
        super().__init__()
        self.gru_type = gru_type
        self.ih = nn.Linear(width, 3 * width)
        self.hh = nn.Linear(width, 3 * width)
        self.steps: int | None = None  # the padded length, when it is fixed (export)
        prepare()  # the fused CPU recurrence: built once per machine, loaded once per process

    def step(self, gi: torch.Tensor, h: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
        """Input projections gi (n, 3W), state h (n, W), scores a (n, 1) -> next state (n, W)."""
        xr, xz, xn = gi.chunk(3, dim=1)
        hr, hz, hn = self.hh(h).chunk(3, dim=1)
        r, u = torch.sigmoid(xr + hr), 1 - torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        if a is not None and self.gru_type == "AUGRU":
            u = a * u
        elif a is not None and self.gru_type == "AGRU":
            u = a
        return h + u * (n - h)

    def forward(
        self,
        inputs: torch.Tensor,
        mask: torch.Tensor,
        scores: torch.Tensor | None = None,
        all_states: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """inputs (B, L, W), mask (B, L), scores (B, L) -> (with `all_states` the states at every
        step, zero on padding, (B, L, W), else None; the state after each row's last real step, zero
        without history, (B, W))."""
        b, length, width = inputs.shape
        if not static_shapes() and packed_fused_applies(inputs):
            packing = Packing(mask)
            if packing.empty:
                none = inputs.new_zeros(b, length, width) if all_states else None
                return none, inputs.new_zeros(b, width)
            packed_scores = None if scores is None else packing.pack(scores)
            packed = self.run_packed(packing.pack(inputs), packing, packed_scores)
            return (packing.unpack(packed) if all_states else None), packing.final(packed)
        a = None if scores is None else scores.unsqueeze(2)  # (B, L, 1)
        if a is not None and self.gru_type == "AIGRU":
            inputs = inputs * a
        if static_shapes():
            gi, h, states = self.ih(inputs), inputs.new_zeros(b, width), []  # gi (B, L, 3W)
            for t in range(length if self.steps is None else self.steps):
                h = torch.where(mask[:, t : t + 1], self.step(gi[:, t], h, None if a is None else a[:, t]), h)
                states.append(h)
            return (torch.stack(states, dim=1) * mask.unsqueeze(2) if all_states else None), h
        lengths = mask.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        active = (lengths.unsqueeze(0) > torch.arange(length, device=mask.device).unsqueeze(1)).sum(1)
        # One tensor per step (unbind): slicing a step out of (B, L, W) would cost a full-size
        # gradient buffer per step in the backward pass. Inputs are projected on the active rows.
        x_steps = inputs[order].unbind(1)
        a_steps: tuple[torch.Tensor, ...] = () if a is None else a[order].unbind(1)
        h, done, steps, where = inputs.new_zeros(int(active[0]), width), [], [], []
        for t, n in enumerate(active.tolist()):
            if n < h.shape[0]:  # rows whose history ended: their state is final
                done.append(h[n:])
                h = h[:n]
            if n == 0:
                break
            h = self.step(self.ih(x_steps[t][:n]), h, a_steps[t][:n] if a_steps else None)
            if all_states:
                steps.append(h)
                where.append(order[:n] * length + t)  # its rows' places in the (B*L) grid
        done.append(h)
        ended = torch.cat([*reversed(done), inputs.new_zeros(b - int(active[0]), width)])  # sorted order
        final = torch.zeros_like(ended).index_copy(0, order, ended)  # (B, W) in batch order
        if not all_states:
            return None, final
        grid = inputs.new_zeros(b * length, width)
        if steps:
            grid = grid.index_copy(0, torch.cat(where), torch.cat(steps))
        return grid.view(b, length, width), final

    def run_packed(self, x: torch.Tensor, packing: Packing, scores: torch.Tensor | None) -> torch.Tensor:
        """The fused CPU op (rankers/kernels/gru.cpp) over packed positions: inputs (N, W) and
        scores (N,) in `packing`'s order -> the state after each position (N, W). The input
        projection is one matmul over every real position."""
        if scores is not None and self.gru_type == "AIGRU":
            x = x * scores.unsqueeze(1)
        hh = self.hh
        return packed_gru(self.ih(x), packing.batch_sizes, hh.weight, hh.bias, scores, self.gru_type)


class Packing:
    """The real positions of a (B, L) mask (real positions first in each row), packed time-major
    with the rows sorted by length, torch's PackedSequence order: step t's rows are the first
    `batch_sizes[t]`. Gathers and scatters use index_select/index_copy, whose gradients are the
    same two ops (an index's accumulating scatter was measured 2x slower here)."""

    def __init__(self, mask: torch.Tensor) -> None:
        b, length = mask.shape
        lengths = mask.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        steps, rows = mask[order].T.nonzero(as_tuple=True)  # time-major, rows in sorted order
        self.shape = (b, length)
        self.flat = order[rows] * length + steps  # (N,) each position's place in the (B*L) grid
        active = mask.sum(0)  # (L,) rows inside their history at each step (real positions first)
        n0 = int(active[0]) if b and length else 0
        self.batch_sizes = active[: int(lengths.max()) if n0 else 0]
        self.rows = order[:n0]  # the rows with a history, longest first
        starts = torch.cumsum(self.batch_sizes, 0) - self.batch_sizes  # each step's first packed row
        self.last = starts[lengths[self.rows] - 1] + torch.arange(n0, device=mask.device)  # (n0,)

    @property
    def empty(self) -> bool:
        return self.flat.numel() == 0

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...)."""
        return x.reshape(self.shape[0] * self.shape[1], *x.shape[2:]).index_select(0, self.flat)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, W) -> (B, L, W), zero on padding."""
        b, length = self.shape
        grid = packed.new_zeros(b * length, packed.shape[1]).index_copy(0, self.flat, packed)
        return grid.view(b, length, packed.shape[1])

    def final(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, W) -> each row's state at its last real position (B, W), zero without history."""
        out = packed.new_zeros(self.shape[0], packed.shape[1])
        return out.index_copy(0, self.rows, packed.index_select(0, self.last))


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
        self.softmax = config.attention_softmax
        self.interest_mlp = InterestMLP(spec, config, len(self.tasks))
        width = self.interest_mlp.width
        self.extractor = JaggedGRU(width)
        units = config.aux_units
        self.aux_first = nn.Linear(2 * width, units[0])  # the aux net over [h_t, e]
        self.aux_rest = nn.Sequential(nn.ReLU(), MLPBlock(units[0], units[1:]), nn.Linear(units[-1], 1))
        self.attention = ActivationUnit(
            width, config.attention_units, config.attention_activation, config.attention_dropout
        )
        self.evolving = JaggedGRU(width, config.gru_type)
        self.aux_loss_weight = config.aux_loss_weight

    def extract(self, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Behaviours (B, L, W) -> interest states (B, L, W); zero on padding."""
        states, _ = self.extractor(behaviours, mask)
        assert states is not None
        return states

    def auxiliary_loss(
        self, states: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """BCE of the aux net telling e_{t+1} (label 1) from another row's behaviour there (label 0),
        averaged over the pairs where both exist. Eager mode scores the real pairs only."""
        b, length = mask.shape
        shift = torch.randint(1, max(b, 2), (), device=mask.device)
        other = (torch.arange(b, device=mask.device) + shift) % b  # another row (none when B = 1)
        if static_shapes():  # every pair, padding masked
            h, pos, neg = states[:, :-1], behaviours[:, 1:], behaviours[other, 1:]  # (B, L-1, W)
            pos_mask = mask[:, 1:]
            neg_mask = pos_mask & mask[other, 1:] & (b > 1)
        else:  # the P pairs whose next behaviour is real
            rows, steps = mask[:, 1:].nonzero(as_tuple=True)  # (P,)
            flat_states, flat_behaviours = states.flatten(0, 1), behaviours.flatten(0, 1)  # (B*L, W)
            h = flat_states[rows * length + steps]  # (P, W)
            pos = flat_behaviours[rows * length + steps + 1]
            neg = flat_behaviours[other[rows] * length + steps + 1]
            pos_mask = torch.ones_like(rows, dtype=torch.bool)
            neg_mask = mask[other[rows], steps + 1] & (b > 1)
        # [h, e] -> first layer as h.Wh + e.We: the h part is shared by the positive and negative;
        # both go through the rest of the net as one batch (2P rows).
        w_h, w_e = self.aux_first.weight.split(h.shape[-1], dim=1)
        shared = h @ w_h.T + self.aux_first.bias
        pre = torch.cat([shared + pos @ w_e.T, shared + neg @ w_e.T])
        logits = self.aux_rest(pre).squeeze(-1)  # (2P,) or (2B, L-1)
        labels = torch.cat([torch.ones_like(shared[..., 0]), torch.zeros_like(shared[..., 0])])
        weights = torch.cat([pos_mask, neg_mask]).to(logits.dtype)
        total = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum()
        return total / weights.sum().clamp(min=1)

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, n_dense), (B, F, D) and sequences (B, L, D) -> logits (B,) per task, and the weighted
        auxiliary loss in training mode."""
        query, behaviours, mask = self.interest_mlp.inputs(x)  # (B, W), (B, L, W), (B, L)
        packing = None
        if not static_shapes() and packed_fused_applies(behaviours):
            packing = Packing(mask)
        if packing is not None and not packing.empty:  # both GRUs on the same packed positions
            packed_states = self.extractor.run_packed(packing.pack(behaviours), packing, None)  # (N, W)
            states = packing.unpack(packed_states)  # (B, L, W)
            real = self.attention(query, packed_states, packing.flat // mask.shape[1])  # (N,)
            scores = self.attention.normalise(real, packing.flat, mask, self.softmax)  # (B, L)
            evolved = self.evolving.run_packed(packed_states, packing, packing.pack(scores))
            interest = packing.final(evolved)  # (B, W)
        else:
            states = self.extract(behaviours, mask)  # (B, L, W)
            scores = self.attention.weights(query, states, mask, self.softmax)  # (B, L)
            _, interest = self.evolving(states, mask, scores, all_states=False)  # (B, W)
        out = self.interest_mlp(x, interest)  # (B, K)
        aux = None
        if self.training and self.aux_loss_weight > 0:
            aux = self.aux_loss_weight * self.auxiliary_loss(states, behaviours, mask)
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)}, aux)
