"""What every backbone shares: its input (`Embedded`), its output and its constructor's contract.

Notation: B batch, F categorical fields, D embedding dim, L sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from features.schema import Schema


class Sequence(NamedTuple):
    """An embedded behaviour sequence: values (B, L, D) and mask (B, L), True where real."""

    values: torch.Tensor
    mask: torch.Tensor


@dataclass
class Embedded:
    """What the embedding tables hand to a backbone.

    Attributes:
        dense: (B, n_dense) float32.
        fields: (B, F, D), one pooled vector per categorical feature, in `field_names` order.
        field_names: the F feature names.
        sequences: sequence name -> Sequence.
    """

    dense: torch.Tensor
    fields: torch.Tensor
    field_names: tuple[str, ...]
    sequences: dict[str, Sequence] = field(default_factory=dict)


class BackboneOutput(NamedTuple):
    """Logits (B,) per task, and an auxiliary loss added to the task losses (DIEN's; the Ranker adds
    its embedding L2 here) or None."""

    logits: dict[str, torch.Tensor]
    aux_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class InputSpec:
    """The shapes a backbone is built for, derived from the schema and the embedding dim.

    Attributes:
        dense_names: the columns of `Embedded.dense`, in order.
        field_names: the F categorical fields, in order.
        embedding_dim: D.
        sequences: sequence name -> (target field sharing its table, max length L).
    """

    dense_names: tuple[str, ...]
    field_names: tuple[str, ...]
    embedding_dim: int
    sequences: tuple[tuple[str, str, int], ...] = ()

    @property
    def n_dense(self) -> int:
        return len(self.dense_names)

    @classmethod
    def from_schema(cls, schema: Schema, embedding_dim: int) -> InputSpec:
        table_field: dict[str, str] = {}
        for f in schema.categorical:
            other = table_field.setdefault(f.table, f.name)
            if other != f.name and any(s.table == f.table for s in schema.sequences):
                raise ValueError(
                    f"table {f.table}: categorical features {other!r} and {f.name!r} share it with a "
                    "sequence, so the sequence's target field is ambiguous; give one of them its own table"
                )
        return cls(
            dense_names=tuple(f.name for f in schema.dense),
            field_names=tuple(f.name for f in schema.categorical),
            embedding_dim=embedding_dim,
            sequences=tuple((s.name, table_field.get(s.table, ""), s.max_len) for s in schema.sequences),
        )


class Backbone(nn.Module):
    """The interface every model implements: `Embedded` in, logits per task out.

    Subclasses set `config_class` (a frozen dataclass) and take `(spec, config, tasks)` (ESMM its
    two built towers besides); `rankers.backbones.registry.build_backbone` builds any of them by
    name. They never see a KeyedJaggedTensor, never call `.to()`, and hold no loss or optimizer.

    Args:
        spec: the input shapes.
        config: an instance of `config_class`.
        tasks: the task names, one logit each.
    """

    config_class: ClassVar[type]
    # Which label each task's loss is taken against, where that is not the task's own (ESMM: ctcvr
    # against the conversion label, no loss on cvr); None: every task against its own label.
    loss_labels: ClassVar[dict[str, str] | None] = None
    tasks: tuple[str, ...]

    def __init__(self, spec: InputSpec, config: Any, tasks: tuple[str, ...]) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks {tasks}: expected one or more distinct task names")
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.spec, self.config, self.tasks = spec, config, tuple(tasks)

    def forward(self, x: Embedded) -> BackboneOutput:
        raise NotImplementedError
