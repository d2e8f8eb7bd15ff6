"""The backbones by name: `BACKBONES` maps a name to its class (its config class is
`configs.BACKBONE_CONFIGS`' entry), `PRESETS` (from `presets`) a published configuration's name to
the function that returns it, and `build_backbone` builds one by name (ESMM with its two towers).
No backbone imports this module; it imports them all.
"""

from __future__ import annotations

from typing import Any

from rankers.backbones import esmm
from rankers.backbones.autoint import AutoInt, AutoIntPlus
from rankers.backbones.base import Backbone, InputSpec
from rankers.backbones.configs import ESMMConfig
from rankers.backbones.dien import DIEN
from rankers.backbones.din import DIN
from rankers.backbones.esmm import ESMM
from rankers.backbones.finalmlp import FinalMLP
from rankers.backbones.mlp import MLP
from rankers.backbones.presets import PRESETS as PRESETS  # re-exported

BACKBONES: dict[str, type[Backbone]] = {
    "mlp": MLP,
    "autoint": AutoInt,
    "autoint_plus": AutoIntPlus,
    "finalmlp": FinalMLP,
    "din": DIN,
    "dien": DIEN,
    "esmm": ESMM,
}


def backbone_class(name: str) -> type[Backbone]:
    """The class registered as `name` (or used by the preset `name`); ValueError listing the names."""
    if name in PRESETS:
        name = PRESETS[name]().backbone
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}, expected one of {sorted(BACKBONES)} or a preset {sorted(PRESETS)}"
        ) from None


def build_backbone(name: str, spec: InputSpec, config: Any, tasks: tuple[str, ...]) -> Backbone:
    """The backbone `name` (or the preset `name`'s) for `spec`, with `config` (an instance of its
    `config_class`) and one logit per task. ESMM's towers are built first, ctr then cvr, each by its
    name and config in the ESMMConfig, and handed to it.

    Example:
        >>> build_backbone("esmm", spec, ESMMConfig(ctr_tower="din"), ("ctr", "cvr"))
    """
    cls = backbone_class(name)
    if cls is ESMM and isinstance(config, ESMMConfig):
        esmm.check_tasks(tasks)
        towers = []
        for which in ("ctr", "cvr"):
            tower, tower_config = config.tower(which)
            towers.append(build_backbone(tower, spec, tower_config, (which,)))
        return ESMM(spec, config, tasks, *towers)
    return cls(spec, config, tasks)
