"""`Ranker`: embedding tables + a backbone, with binary cross-entropy per task."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from features.batch import Batch
from features.schema import Schema
from rankers.backbones import PRESETS, Backbone, BackboneOutput, InputSpec, backbone_class
from rankers.backbones.base import Embedded
from rankers.embedding import SEQUENCE_LOOKUPS, EmbeddingArch, default_sequence_lookup


@dataclass(frozen=True)
class RankerConfig:
    """What to build: the backbone by name with its config, and the embedding tables.

    `backbone` may name a preset (`PRESETS`, e.g. "finalmlp_criteo_x1"): its backbone, config,
    embedding dim and embedding L2 are taken, and fields given here override them; `preset` then
    records the name.
    """

    backbone: str = "mlp"  # a key of BACKBONES, or of PRESETS
    embedding_dim: int | None = None  # D of every table; None: the preset's, else 16
    # Fields of the backbone's config as (name, value) pairs; a dict is accepted and converted.
    backbone_config: tuple[tuple[str, Any], ...] | dict[str, Any] = ()
    task_weights: tuple[tuple[str, float], ...] = ()  # loss weight per task; 1 for tasks not named
    # L2 penalty on the embedding vectors each example looks up, lambda * sum ||e||^2 averaged over
    # the batch (the tables' fused optimizer applies no weight decay); None: the preset's, else 0.
    embedding_l2: float | None = None
    preset: str = ""  # the preset this config came from ("" for none); set when `backbone` names one
    # How sequences are looked up (rankers.embedding): "bag" (fast on CPU) or "collection";
    # "" picks the one for the training device (CPU here: "bag"); kept with a checkpoint.
    sequence_lookup: str = ""
    tasks: tuple[str, ...] = ()  # the tasks to train, a subset of the dataset's; () for all of them

    def __post_init__(self) -> None:
        items = dict(
            self.backbone_config.items() if isinstance(self.backbone_config, dict) else self.backbone_config
        )
        dim, l2 = self.embedding_dim, self.embedding_l2
        if self.backbone in PRESETS:
            preset = PRESETS[self.backbone]()
            items = asdict(preset.config) | items
            dim = preset.embedding_dim if dim is None else dim
            l2 = preset.embedding_l2 if l2 is None else l2
            object.__setattr__(self, "preset", self.backbone)
            object.__setattr__(self, "backbone", preset.backbone)
        backbone_class(self.backbone)  # raises on an unknown name
        if self.preset and (self.preset not in PRESETS or PRESETS[self.preset]().backbone != self.backbone):
            raise ValueError(
                f"preset {self.preset!r} with backbone {self.backbone!r}: expected '' or a preset of "
                f"that backbone among {sorted(PRESETS)}"
            )
        dim, l2 = 16 if dim is None else dim, 0.0 if l2 is None else float(l2)
        if type(dim) is not int or dim < 1:
            raise ValueError(f"embedding_dim {dim!r} must be an integer >= 1")
        if not 0 <= l2 < float("inf"):
            raise ValueError(f"embedding_l2 {l2!r} must be finite and >= 0")
        lookup = self.sequence_lookup or default_sequence_lookup()
        if lookup not in SEQUENCE_LOOKUPS:
            raise ValueError(f"sequence_lookup {lookup!r}: expected one of {SEQUENCE_LOOKUPS}")
        object.__setattr__(self, "sequence_lookup", lookup)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "embedding_dim", dim)
        object.__setattr__(self, "embedding_l2", l2)
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items.items()))
        object.__setattr__(self, "backbone_config", frozen)
        for task, weight in self.task_weights:
            if not weight >= 0 or weight == float("inf"):
                raise ValueError(f"task weight {weight!r} for {task!r} must be finite and >= 0")
        self.make_backbone_config()

    def make_backbone_config(self) -> Any:
        """The backbone's config dataclass from `backbone_config` (lists become tuples)."""
        cls = backbone_class(self.backbone).config_class
        known = {f.name for f in fields(cls)}
        given = dict(self.backbone_config)
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(
                f"backbone {self.backbone!r} has no config fields {unknown}; expected {sorted(known)}"
            )
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backbone_config"] = asdict(self.make_backbone_config())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerConfig:
        return cls(
            backbone=d["backbone"],
            embedding_dim=d.get("embedding_dim"),
            backbone_config=d.get("backbone_config", {}),
            task_weights=tuple((t, float(w)) for t, w in d.get("task_weights", ())),
            embedding_l2=d.get("embedding_l2"),
            preset=d.get("preset", ""),
            sequence_lookup=d.get("sequence_lookup", ""),
            tasks=tuple(d.get("tasks", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


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
        x = self.embedding(batch.dense, batch.sparse)
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


def build_ranker(schema: Schema, config: RankerConfig, device: torch.device | None = None) -> Ranker:
    """The ranker for `schema`: tables on `device` (use `meta` before sharding), dense parts on CPU
    (DistributedModelParallel moves them)."""
    if not schema.tasks:
        raise ValueError("schema has no labels, so no tasks to train")
    unknown = sorted(set(config.tasks) - set(schema.tasks))
    if unknown:
        raise ValueError(f"tasks {unknown} are not the dataset's; its tasks: {schema.tasks}")
    cls = backbone_class(config.backbone)
    dim = config.embedding_dim
    assert dim is not None  # RankerConfig resolves it
    spec = InputSpec.from_schema(schema, dim)
    backbone = cls(spec, config.make_backbone_config(), config.tasks or schema.tasks)
    return Ranker(
        EmbeddingArch(schema, dim, device=device, sequence_lookup=config.sequence_lookup),
        backbone,
        dict(config.task_weights),
        embedding_l2=config.embedding_l2 or 0.0,
    )


def _with_l2_penalty(out: BackboneOutput, x: Embedded, l2: float) -> BackboneOutput:
    """`out` with l2 x the squared norm of the vectors this batch looked up (mean over rows) added
    to its aux loss. Only those vectors: the fused table optimizer never sees a penalty on whole
    tables (FuxiCTR's form), and rows absent from the batch get no gradient."""
    squares = x.fields.square().sum() + sum(s.values.square().sum() for s in x.sequences.values())
    penalty = l2 * squares / x.fields.shape[0]  # padding is zero
    return out._replace(aux_loss=penalty if out.aux_loss is None else out.aux_loss + penalty)


torch.fx.wrap("_with_l2_penalty")  # traced as a call (see rankers.embedding)
