"""The models and inputs of benchmarks/gpu.py on plain torch (no torchrec, no fbgemm_gpu): each
backbone at the CPU benchmarks' shapes over one nn.Embedding holding all its tables, and random
batches of those shapes.

- mlp, finalmlp, autoint_plus: Criteo-like rows (benchmarks/throughput.py): 13 dense values, 26
  categorical fields with Criteo Kaggle's cardinalities capped at `max_vocab`, the configs of
  benchmarks/quality.py MODELS.
- din, dien: UserBehavior-like rows (benchmarks/sequences.py throughput): user_id (10,000), item_id
  (100,000), cate_id (1,000) and aligned histories of items and categories up to 50 long
  (geometric lengths, mean about 17) sharing the item and category tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from features.datasets.synthetic import CRITEO_CARDINALITIES
from rankers.backbones import Backbone, Embedded, InputSpec, Sequence, build_backbone
from rankers.backbones.configs import BACKBONE_CONFIGS

DIM = 16
DNN = {"hidden_units": (256, 128)}
SEQ = {"dnn_units": (256, 128), "attention_units": (64, 16)}
CONFIGS: dict[str, dict[str, Any]] = {  # benchmarks/quality.py MODELS, benchmarks/sequences.py SEQ
    "mlp": DNN,
    "finalmlp": {"mlp1_units": (256, 128), "mlp2_units": (256, 128), "fs_units": (256,), "num_heads": 2},
    "autoint_plus": {"attention_layers": 3, "num_heads": 2, "attention_dim": 16, "dnn_units": (256, 128)},
    "din": SEQ,
    "dien": SEQ,
}
SEQUENCE_MODELS = ("din", "dien")
USER_BEHAVIOR = {"user_id": 10_000, "item_id": 100_000, "cate_id": 1_000}
HISTORIES = {"hist_item_id": "item_id", "hist_cate_id": "cate_id"}  # history -> the field sharing its table
MAX_LEN = 50


@dataclass
class Batch:
    """Rows on a device: dense values, ids offset into the model's one table, histories' ids
    (offset) and masks, labels."""

    dense: torch.Tensor  # (B, n_dense) float32
    ids: torch.Tensor  # (B, F) int64
    labels: torch.Tensor  # (B,) float32
    histories: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (B, L) ids, mask

    def to(self, device: torch.device) -> Batch:
        moved = {k: (ids.to(device), mask.to(device)) for k, (ids, mask) in self.histories.items()}
        return Batch(self.dense.to(device), self.ids.to(device), self.labels.to(device), moved)


class PlainRanker(nn.Module):
    """A backbone over one plain nn.Embedding holding all its tables."""

    def __init__(self, backbone: Backbone, rows: int) -> None:
        super().__init__()
        self.backbone, self.table = backbone, nn.Embedding(rows, DIM)
        nn.init.uniform_(self.table.weight, -0.05, 0.05)

    def embed(self, batch: Batch) -> Embedded:
        sequences = {
            name: Sequence(self.table(ids) * mask.unsqueeze(-1), mask)
            for name, (ids, mask) in batch.histories.items()
        }
        fields = self.table(batch.ids)
        return Embedded(batch.dense, fields, self.backbone.spec.field_names, sequences)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss: BCE of the ctr logit, plus the backbone's auxiliary loss."""
        return loss_of(self.backbone, self.embed(batch), batch.labels)


def loss_of(backbone: Backbone, x: Embedded, labels: torch.Tensor) -> torch.Tensor:
    out = backbone(x)
    loss = F.binary_cross_entropy_with_logits(out.logits["ctr"].float(), labels)
    return loss if out.aux_loss is None else loss + out.aux_loss.float()


def tables(model: str, max_vocab: int) -> dict[str, int]:
    """The model's categorical fields and their table rows."""
    if model in SEQUENCE_MODELS:
        return dict(USER_BEHAVIOR)
    return {f"C{i + 1}": min(n, max_vocab) for i, n in enumerate(CRITEO_CARDINALITIES)}


def spec_of(model: str) -> InputSpec:
    if model in SEQUENCE_MODELS:
        sequences = tuple((name, target, MAX_LEN) for name, target in HISTORIES.items())
        return InputSpec((), tuple(USER_BEHAVIOR), DIM, sequences)
    return InputSpec(tuple(f"I{i}" for i in range(1, 14)), tuple(tables(model, 2)), DIM)


def build(model: str, max_vocab: int, seed: int) -> PlainRanker:
    """The model on CPU, seeded."""
    torch.manual_seed(seed)
    config = BACKBONE_CONFIGS[model](**CONFIGS[model])
    rows = sum(tables(model, max_vocab).values())
    return PlainRanker(build_backbone(model, spec_of(model), config, ("ctr",)), rows)


def make_batch(model: str, rows: int, max_vocab: int, generator: torch.Generator) -> Batch:
    """Random rows of `model`'s shapes on CPU (ids uniform in each table, labels 0/1)."""
    sizes = tables(model, max_vocab)
    offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist(), strict=True))
    ids = torch.stack([torch.randint(0, n, (rows,), generator=generator) for n in sizes.values()], 1)
    ids += torch.tensor(list(offsets.values()))
    spec, histories = spec_of(model), {}
    # Geometric lengths (p = 1/18.5, at least 1) capped at MAX_LEN: mean about 17, as
    # benchmarks/sequences.py; both histories of a row are aligned (one length).
    u = torch.rand(rows, generator=generator).clamp_min(1e-12)
    lengths = (torch.log(u) / np.log(1 - 1 / 18.5)).ceil().clamp(1, MAX_LEN)
    mask = torch.arange(MAX_LEN) < lengths.unsqueeze(1)
    for name, target in HISTORIES.items() if model in SEQUENCE_MODELS else ():
        hist = torch.randint(0, sizes[target], (rows, MAX_LEN), generator=generator) + offsets[target]
        histories[name] = (hist * mask, mask)
    dense = torch.rand(rows, spec.n_dense, generator=generator)
    labels = torch.randint(0, 2, (rows,), generator=generator).float()
    return Batch(dense, ids, labels, histories)
