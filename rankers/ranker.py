"""`Ranker`: embedding tables + a backbone, with binary cross-entropy per task."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from features.batch import Batch
from features.schema import Schema
from rankers.backbones import Backbone, BackboneOutput, InputSpec, build_backbone
from rankers.backbones.base import Embedded
from rankers.config import RankerConfig
from rankers.embedding import EmbeddingArch, default_sequence_lookup, table_bytes


class Ranker(nn.Module):
    """EmbeddingArch -> Backbone -> logits per task; `loss` is BCE per task, weighted.

    Example:
        >>> ranker = build_ranker(schema, RankerConfig(backbone="mlp"), device=torch.device("meta"))
        >>> out = ranker(batch)            # BackboneOutput(logits={"ctr": (B,)}, aux_loss=None)
    """

    def __init__(
        self,
        embedding: EmbeddingArch,
        backbone: Backbone,
        task_weights: dict[str, float],
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.embedding_l2 = embedding_l2
        self.backbone = backbone
        self.tasks = backbone.tasks
        trained = tuple(backbone.loss_labels or self.tasks)  # the tasks that take a loss
        unknown = sorted(set(task_weights) - set(trained))
        if unknown:
            raise ValueError(
                f"task weights name tasks {unknown} that take no loss in this model; its losses: {trained}"
            )
        self.task_weights = {t: float(task_weights.get(t, 1.0)) for t in self.tasks}

    def forward(self, batch: Batch) -> BackboneOutput:
        x = self.embedding(batch.dense, batch.sparse, batch.tables)
        out = self.backbone(x)
        if self.training and self.embedding_l2:
            out = _with_l2_penalty(out, x, self.embedding_l2)
        return out

    def loss(
        self, out: BackboneOutput, labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of BCE-with-logits over the tasks that have labels (each against the label
        the backbone's `loss_labels` names, by default its own), plus the aux loss.

        A cvr task trained against its own label beside a click (ctr) label learns on the clicked
        rows only (conversion rate is defined after a click; evaluation measures it there too).
        ESMM instead trains ctcvr on every row and takes no loss on cvr.
        """
        against = self.backbone.loss_labels or {t: t for t in self.tasks}
        per_task = {}
        for t, label in against.items():
            if label not in labels:
                continue
            logit, y = out.logits[t].float(), labels[label]  # in fp32 whatever the forward ran in
            if t == "cvr" and label == "cvr" and "ctr" in labels:
                clicked = labels["ctr"]
                bce = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
                per_task[t] = (bce * clicked).sum() / clicked.sum().clamp(min=1)
            else:
                per_task[t] = F.binary_cross_entropy_with_logits(logit, y)
        if not per_task:
            raise ValueError(f"batch has labels {sorted(labels)}, none of the model's tasks {self.tasks}")
        total = sum(self.task_weights[t] * v for t, v in per_task.items())
        if out.aux_loss is not None:
            total = total + out.aux_loss.float()
        return total, per_task  # type: ignore[return-value]


def build_ranker(
    schema: Schema, config: RankerConfig, device: torch.device | None = None, memory: int | None = None
) -> Ranker:
    """The ranker for `schema`: tables on `device` (use `meta` before sharding), dense parts on CPU
    (DistributedModelParallel moves them).

    Before allocating anything, refuses (ValueError naming the table or the dense part, the figure
    and the memory) a ranker whose estimate (`memory_needed`) exceeds `memory` bytes, by default
    this machine's memory: the training state when the tables are on `meta` (to be sharded and
    trained), the weights alone elsewhere (inference).
    """
    if not schema.tasks:
        raise ValueError("schema has no labels, so no tasks to train")
    unknown = sorted(set(config.tasks) - set(schema.tasks))
    if unknown:
        raise ValueError(f"tasks {unknown} are not the dataset's; its tasks: {schema.tasks}")
    training = device is not None and torch.device(device).type == "meta"
    _check_memory(schema, config, training, machine_memory() if memory is None else memory)
    dim = config.embedding_dim
    assert dim is not None  # RankerConfig resolves it
    spec = InputSpec.from_schema(schema, dim)
    lookup = config.sequence_lookup or default_sequence_lookup(device)  # "bag" on CPU and meta
    backbone = build_backbone(config.backbone, spec, config.backbone_config, config.tasks or schema.tasks)
    return Ranker(
        EmbeddingArch(schema, dim, device=device, sequence_lookup=lookup),
        backbone,
        dict(config.task_weights),
        embedding_l2=config.embedding_l2 or 0.0,
    )


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_needed(schema: Schema, config: RankerConfig, training: bool = True) -> tuple[dict[str, int], int]:
    """Estimated bytes of the ranker, nothing allocated: (table -> bytes, the dense part's bytes).
    A table takes rows x D x 4, plus one float of rowwise Adagrad state per row with `training`; the
    dense part is the backbone's parameters (counted on the `meta` device) x 4 bytes, x 16 with
    `training` (the parameter, its gradient and Adam's two moments). Activations are not counted."""
    assert config.embedding_dim is not None  # RankerConfig resolves it
    spec = InputSpec.from_schema(schema, config.embedding_dim)
    with torch.device("meta"):
        backbone = build_backbone(config.backbone, spec, config.backbone_config, config.tasks or schema.tasks)
    parameters = sum(p.numel() for p in backbone.parameters())
    tables = table_bytes(schema, config.embedding_dim, optimizer_state=training)
    return tables, parameters * (16 if training else 4)


def _check_memory(schema: Schema, config: RankerConfig, training: bool, memory: int) -> None:
    """Raises ValueError naming what of the ranker (`memory_needed`) exceeds `memory` bytes: a
    table, the dense part, or else their sum."""
    tables, dense = memory_needed(schema, config, training)
    total = sum(tables.values()) + dense
    if total <= memory:
        return
    have = f"more than the {format_bytes(memory)} of memory of this machine"
    if dense > memory:
        per = "16 bytes each with its gradient and Adam's two moments" if training else "4 bytes each"
        raise ValueError(
            f"the {config.backbone} backbone's dense part needs {format_bytes(dense)} "
            f"({dense // (16 if training else 4):,} parameters, {per}), {have}; expected a smaller "
            f"backbone_config {vars(config.backbone_config)}"
        )
    big = max(tables, key=tables.__getitem__)  # there are tables: the dense part alone fits
    if tables[big] > memory:
        state = " with its rowwise Adagrad state" if training else ""
        raise ValueError(
            f"table {big!r} ({schema.tables()[big][0]:,} rows x {config.embedding_dim}) needs "
            f"{format_bytes(tables[big])}{state}, {have}; expected a smaller num_embeddings in schema.json "
            "or embedding_dim"
        )
    need = "to train" if training else "for its weights"
    raise ValueError(
        f"the ranker needs {format_bytes(total)} {need} (tables {format_bytes(total - dense)}, the largest "
        f"{big!r} {format_bytes(tables[big])}; dense part {format_bytes(dense)}), {have}; expected smaller "
        "tables or backbone"
    )


def format_bytes(n: float) -> str:
    """Bytes in the largest decimal unit that keeps the figure >= 1: "1.7 TB"."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def _with_l2_penalty(out: BackboneOutput, x: Embedded, l2: float) -> BackboneOutput:
    """`out` with l2 x the squared norm of the vectors this batch looked up (mean over rows) added
    to its aux loss. Only those vectors: the fused table optimizer never sees a penalty on whole
    tables (FuxiCTR's form), and rows absent from the batch get no gradient."""
    squares = x.fields.square().sum() + sum(s.values.square().sum() for s in x.sequences.values())
    penalty = l2 * squares / x.fields.shape[0]  # padding is zero
    return out._replace(aux_loss=penalty if out.aux_loss is None else out.aux_loss + penalty)


torch.fx.wrap("_with_l2_penalty")  # traced as a call (see rankers.embedding)
