"""Interaction backbones, one paper per file. `BACKBONES` maps a name to its class."""

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Sequence
from rankers.backbones.mlp import MLP, MLPConfig

BACKBONES: dict[str, type[Backbone]] = {"mlp": MLP}


def backbone_class(name: str) -> type[Backbone]:
    """The class registered as `name`; ValueError listing the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}, expected one of {sorted(BACKBONES)}") from None


__all__ = [
    "BACKBONES",
    "MLP",
    "Backbone",
    "BackboneOutput",
    "Embedded",
    "InputSpec",
    "MLPConfig",
    "Sequence",
    "backbone_class",
]
