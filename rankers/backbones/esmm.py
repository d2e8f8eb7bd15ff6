"""ESMM: CTR and CVR towers over shared embeddings, trained on the entire impression space.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
Conversion Rate", SIGIR 2018. pCVR is never fitted on clicked impressions alone (where it is
defined, and sample-selection biased): the model is trained on every impression through
pCTCVR = pCTR * pCVR against "click and conversion", and pCTR against click. Both towers read the
same embedding tables (the paper's feature-representation transfer).

Towers are any single-task backbone of `BACKBONES` (MLP by default; DIN, DIEN, AutoInt, FinalMLP
...), chosen per tower with its config. The ctcvr logit is computed in log space:

    log p = logsigmoid(a) + logsigmoid(b)
    log(1 - p) = logaddexp(logsigmoid(-a), logsigmoid(a) + logsigmoid(-b))

(1 - sigmoid(a) sigmoid(b) = sigmoid(-a) + sigmoid(a) sigmoid(-b)), so sigmoid(logit) = pCTR * pCVR
to float precision, and BCE-with-logits on it stays exact when p is tiny or near 1.

Losses (`loss_labels`): ctr against the click label, ctcvr against the conversion label (which
implies a click, so it is "click and conversion"), none on cvr. Tower auxiliary losses (DIEN's) add.

Notation: B batch, K = 3 tasks (ctr, cvr, ctcvr).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec

TASKS = ("ctr", "cvr", "ctcvr")


def _pairs(value: Any) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in items))


@dataclass(frozen=True)
class ESMMConfig:
    ctr_tower: str = "mlp"  # a single-task backbone of BACKBONES
    cvr_tower: str = "mlp"
    # Each tower's config fields as (name, value) pairs (a dict is accepted); () = its defaults.
    ctr_config: tuple[tuple[str, Any], ...] | dict[str, Any] = ()
    cvr_config: tuple[tuple[str, Any], ...] | dict[str, Any] = ()

    def __post_init__(self) -> None:
        for name in ("ctr_config", "cvr_config"):
            object.__setattr__(self, name, _pairs(getattr(self, name)))
        from rankers.backbones import PRESETS, backbone_class

        for which, tower, fields in (
            ("ctr_tower", self.ctr_tower, self.ctr_config),
            ("cvr_tower", self.cvr_tower, self.cvr_config),
        ):
            if tower == "esmm" or tower in PRESETS:
                raise ValueError(
                    f"{which} {tower!r}: expected a single-task backbone by name (not ESMM or a preset)"
                )
            config_class = backbone_class(tower).config_class
            unknown = sorted(set(dict(fields)) - {f.name for f in dataclasses.fields(config_class)})
            if unknown:
                raise ValueError(f"{which} {tower!r} has no config fields {unknown}")
            config_class(**dict(fields))  # type: ignore[arg-type]  # raises naming a bad value


def ctcvr_logit(ctr: torch.Tensor, cvr: torch.Tensor) -> torch.Tensor:
    """The logit of sigmoid(ctr) * sigmoid(cvr), from the two logits (B,), computed in log space."""
    log_p = F.logsigmoid(ctr) + F.logsigmoid(cvr)
    log_not_p = torch.logaddexp(F.logsigmoid(-ctr), F.logsigmoid(ctr) + F.logsigmoid(-cvr))
    return log_p - log_not_p


class ESMM(Backbone):
    """Entire Space Multi-Task Model with configurable towers.

    Example:
        >>> model = ESMM(spec, ESMMConfig(ctr_tower="din", cvr_tower="mlp",
        ...                               cvr_config={"hidden_units": (256, 128)}), ("ctr", "cvr"))
        >>> out = model(x)   # logits for "ctr", "cvr" and "ctcvr"

    Args:
        spec: the input shapes (both towers see all of it).
        config: the towers.
        tasks: must hold "ctr" and "cvr" (the click and conversion labels); the model's tasks are
            always ("ctr", "cvr", "ctcvr").
    """

    config_class = ESMMConfig
    loss_labels: ClassVar[dict[str, str] | None] = {"ctr": "ctr", "ctcvr": "cvr"}

    def __init__(
        self, spec: InputSpec, config: ESMMConfig | None = None, tasks: tuple[str, ...] = TASKS
    ) -> None:
        from rankers.backbones import backbone_class

        config = ESMMConfig() if config is None else config  # not a default: it checks the registry
        super().__init__(spec, config, TASKS)  # checks the config's type
        missing = sorted({"ctr", "cvr"} - set(tasks))
        if missing:
            raise ValueError(
                f"ESMM trains on click and conversion labels: tasks {tuple(tasks)} lack {missing} "
                "(the dataset needs Label(..., task='ctr') and Label(..., task='cvr'))"
            )
        towers = {}
        for task, name, fields in (
            ("ctr", config.ctr_tower, config.ctr_config),
            ("cvr", config.cvr_tower, config.cvr_config),
        ):
            cls = backbone_class(name)
            towers[task] = cls(spec, cls.config_class(**dict(fields)), (task,))  # type: ignore[arg-type]
        self.ctr_tower, self.cvr_tower = towers["ctr"], towers["cvr"]

    def forward(self, x: Embedded) -> BackboneOutput:
        """Embedded inputs -> logits (B,) for ctr, cvr and ctcvr, and the towers' auxiliary losses."""
        ctr, cvr = self.ctr_tower(x), self.cvr_tower(x)
        a, b = ctr.logits["ctr"].float(), cvr.logits["cvr"].float()  # fp32 even under bf16 autocast
        aux = [o.aux_loss for o in (ctr, cvr) if o.aux_loss is not None]
        return BackboneOutput(
            {"ctr": a, "cvr": b, "ctcvr": ctcvr_logit(a, b)},
            sum(aux) if aux else None,  # type: ignore[arg-type]
        )
