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
from rankers.backbones import Backbone, BackboneOutput, InputSpec, backbone_class
from rankers.embedding import EmbeddingArch


@dataclass(frozen=True)
class RankerConfig:
    """What to build: the backbone by name with its config, and the embedding dim."""

    backbone: str = "mlp"  # a key of BACKBONES
    embedding_dim: int = 16  # D of every table
    # Fields of the backbone's config as (name, value) pairs; a dict is accepted and converted.
    backbone_config: tuple[tuple[str, Any], ...] | dict[str, Any] = ()
    task_weights: tuple[tuple[str, float], ...] = ()  # loss weight per task; 1 for tasks not named

    def __post_init__(self) -> None:
        backbone_class(self.backbone)  # raises on an unknown name
        if type(self.embedding_dim) is not int or self.embedding_dim < 1:
            raise ValueError(f"embedding_dim {self.embedding_dim!r} must be an integer >= 1")
        items = (
            self.backbone_config.items() if isinstance(self.backbone_config, dict) else self.backbone_config
        )
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items))
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
            embedding_dim=d["embedding_dim"],
            backbone_config=d.get("backbone_config", {}),
            task_weights=tuple((t, float(w)) for t, w in d.get("task_weights", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


class Ranker(nn.Module):
    """EmbeddingArch -> Backbone -> logits per task; `loss` is BCE per task, weighted.

    Example:
        >>> ranker = build_ranker(schema, RankerConfig(backbone="mlp"), device=torch.device("meta"))
        >>> out = ranker(batch)            # BackboneOutput(logits={"ctr": (B,)}, aux_loss=None)
    """

    def __init__(self, embedding: EmbeddingArch, backbone: Backbone, task_weights: dict[str, float]) -> None:
        super().__init__()
        self.embedding = embedding
        self.backbone = backbone
        self.tasks = backbone.tasks
        unknown = sorted(set(task_weights) - set(self.tasks))
        if unknown:
            raise ValueError(
                f"task weights name tasks {unknown} the model does not have; its tasks: {self.tasks}"
            )
        self.task_weights = {t: float(task_weights.get(t, 1.0)) for t in self.tasks}

    def forward(self, batch: Batch) -> BackboneOutput:
        return self.backbone(self.embedding(batch.dense, batch.sparse))

    def loss(
        self, out: BackboneOutput, labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of BCE-with-logits over the tasks that have labels, plus the aux loss."""
        per_task = {
            t: F.binary_cross_entropy_with_logits(out.logits[t], labels[t]) for t in self.tasks if t in labels
        }
        if not per_task:
            raise ValueError(f"batch has labels {sorted(labels)}, none of the model's tasks {self.tasks}")
        total = sum(self.task_weights[t] * v for t, v in per_task.items())
        if out.aux_loss is not None:
            total = total + out.aux_loss
        return total, per_task  # type: ignore[return-value]


def build_ranker(schema: Schema, config: RankerConfig, device: torch.device | None = None) -> Ranker:
    """The ranker for `schema`: tables on `device` (use `meta` before sharding), dense parts on CPU
    (DistributedModelParallel moves them)."""
    if not schema.tasks:
        raise ValueError("schema has no labels, so no tasks to train")
    cls = backbone_class(config.backbone)
    backbone = cls(
        InputSpec.from_schema(schema, config.embedding_dim), config.make_backbone_config(), schema.tasks
    )
    return Ranker(
        EmbeddingArch(schema, config.embedding_dim, device=device), backbone, dict(config.task_weights)
    )
