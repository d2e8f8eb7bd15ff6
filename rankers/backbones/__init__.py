"""Interaction backbones, one paper per file. `BACKBONES` maps a name to its class and `PRESETS` a
published configuration's name to the function that returns it."""

from collections.abc import Callable

from rankers.backbones.autoint import (
    AutoInt,
    AutoIntConfig,
    AutoIntPlus,
    AutoIntPlusConfig,
    autoint_plus_criteo_x1,
)
from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Preset, Sequence
from rankers.backbones.dien import DIEN, DIENConfig, dien_taobaoad_x1
from rankers.backbones.din import DIN, DINConfig, din_taobaoad_x1
from rankers.backbones.esmm import ESMM, ESMMConfig
from rankers.backbones.finalmlp import FinalMLP, FinalMLPConfig, finalmlp_criteo_x1
from rankers.backbones.mlp import MLP, MLPConfig

BACKBONES: dict[str, type[Backbone]] = {
    "mlp": MLP,
    "autoint": AutoInt,
    "autoint_plus": AutoIntPlus,
    "finalmlp": FinalMLP,
    "din": DIN,
    "dien": DIEN,
    "esmm": ESMM,
}

PRESETS: dict[str, Callable[[], Preset]] = {
    "autoint_plus_criteo_x1": autoint_plus_criteo_x1,
    "din_taobaoad_x1": din_taobaoad_x1,
    "dien_taobaoad_x1": dien_taobaoad_x1,
    "finalmlp_criteo_x1": finalmlp_criteo_x1,
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


__all__ = [
    "BACKBONES",
    "DIEN",
    "DIN",
    "ESMM",
    "MLP",
    "PRESETS",
    "AutoInt",
    "AutoIntConfig",
    "AutoIntPlus",
    "AutoIntPlusConfig",
    "Backbone",
    "BackboneOutput",
    "DIENConfig",
    "DINConfig",
    "ESMMConfig",
    "Embedded",
    "FinalMLP",
    "FinalMLPConfig",
    "InputSpec",
    "MLPConfig",
    "Preset",
    "Sequence",
    "backbone_class",
]
