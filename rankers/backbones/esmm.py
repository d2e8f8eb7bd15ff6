"""ESMM: CTR and CVR towers over shared embeddings, trained on the entire impression space.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
Conversion Rate", SIGIR 2018. pCVR is never fitted on clicked impressions alone (where it is
defined, and sample-selection biased): the model is trained on every impression through
pCTCVR = pCTR * pCVR against "click and conversion", and pCTR against click. Both towers read the
same embedding tables (the paper's feature-representation transfer).

Towers are any single-task backbone of `BACKBONES` (MLP by default; DIN, DIEN, AutoInt, FinalMLP
...), chosen per tower with its config. ESMM is handed its two towers built
(`rankers.backbones.registry.build_backbone` builds them from the config, ctr then cvr), so this
file knows no backbone but its own. The ctcvr logit is computed in log space:

    log p = logsigmoid(a) + logsigmoid(b)
    log(1 - p) = logaddexp(logsigmoid(-a), logsigmoid(a) + logsigmoid(-b))

(1 - sigmoid(a) sigmoid(b) = sigmoid(-a) + sigmoid(a) sigmoid(-b)), so sigmoid(logit) = pCTR * pCVR
to float precision, and BCE-with-logits on it stays exact when p is tiny or near 1.

Losses (`loss_labels`): ctr against the click label, ctcvr against the conversion label (which
implies a click, so it is "click and conversion"), none on cvr. Tower auxiliary losses (DIEN's) add.

Notation: B batch, K = 3 tasks (ctr, cvr, ctcvr).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.nn import functional as F

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec
from rankers.backbones.configs import ESMMConfig

TASKS = ("ctr", "cvr", "ctcvr")


def check_tasks(tasks: tuple[str, ...]) -> None:
    """ValueError unless `tasks` hold the click and conversion labels ESMM trains on."""
    missing = sorted({"ctr", "cvr"} - set(tasks))
    if missing:
        raise ValueError(
            f"ESMM trains on click and conversion labels: tasks {tuple(tasks)} lack {missing} "
            "(the dataset needs Label(..., task='ctr') and Label(..., task='cvr'))"
        )


def ctcvr_logit(ctr: torch.Tensor, cvr: torch.Tensor) -> torch.Tensor:
    """The logit of sigmoid(ctr) * sigmoid(cvr), from the two logits (B,), computed in log space."""
    log_p = F.logsigmoid(ctr) + F.logsigmoid(cvr)
    log_not_p = torch.logaddexp(F.logsigmoid(-ctr), F.logsigmoid(ctr) + F.logsigmoid(-cvr))
    return log_p - log_not_p


class ESMM(Backbone):
    """Entire Space Multi-Task Model with configurable towers.

    Example:
        >>> config = ESMMConfig(ctr_tower="din", cvr_config={"hidden_units": (256, 128)})
        >>> model = build_backbone("esmm", spec, config, ("ctr", "cvr"))  # rankers.backbones.registry
        >>> out = model(x)   # logits for "ctr", "cvr" and "ctcvr"

    Args:
        spec: the input shapes (both towers see all of it).
        config: the towers' names and configs.
        tasks: must hold "ctr" and "cvr" (the click and conversion labels); the model's tasks are
            always ("ctr", "cvr", "ctcvr").
        ctr_tower: the built ctr tower, as `config` describes it, with tasks ("ctr",).
        cvr_tower: the built cvr tower, with tasks ("cvr",).
    """

    config_class = ESMMConfig
    loss_labels: ClassVar[dict[str, str] | None] = {"ctr": "ctr", "ctcvr": "cvr"}

    def __init__(
        self,
        spec: InputSpec,
        config: ESMMConfig,
        tasks: tuple[str, ...] = TASKS,
        ctr_tower: Backbone | None = None,
        cvr_tower: Backbone | None = None,
    ) -> None:
        super().__init__(spec, config, TASKS)  # checks the config's type
        check_tasks(tasks)
        if ctr_tower is None or cvr_tower is None:
            raise TypeError(
                "ESMM takes its ctr and cvr towers built (rankers.backbones.registry.build_backbone "
                "builds ESMM with both from its config)"
            )
        for which, tower in (("ctr", ctr_tower), ("cvr", cvr_tower)):
            name, tower_config = config.tower(which)  # what the config (and a checkpoint) says
            if tower.tasks != (which,) or tower.config != tower_config or tower.spec != spec:
                raise ValueError(
                    f"{which}_tower: expected a {name!r} backbone over ESMM's input spec with tasks "
                    f"({which!r},) and {tower_config}, got a {type(tower).__name__} with tasks "
                    f"{tower.tasks} and {tower.config}"
                )
        self.ctr_tower, self.cvr_tower = ctr_tower, cvr_tower

    def forward(self, x: Embedded) -> BackboneOutput:
        """Embedded inputs -> logits (B,) for ctr, cvr and ctcvr, and the towers' auxiliary losses."""
        ctr, cvr = self.ctr_tower(x), self.cvr_tower(x)
        a, b = ctr.logits["ctr"].float(), cvr.logits["cvr"].float()  # fp32 even under bf16 autocast
        aux = [o.aux_loss for o in (ctr, cvr) if o.aux_loss is not None]
        return BackboneOutput(
            {"ctr": a, "cvr": b, "ctcvr": ctcvr_logit(a, b)},
            sum(aux) if aux else None,  # type: ignore[arg-type]
        )
