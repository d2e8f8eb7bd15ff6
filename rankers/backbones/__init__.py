"""Interaction backbones, one paper per file, with their shared blocks in `layers`, their configs
in `configs` and the published presets in `presets` (those two import no torch). The registry
(`BACKBONES`, `PRESETS`, `backbone_class`, `build_backbone`) lives in `registry`; no backbone module
imports the package or the registry.

The names below are imported when first used, so `rankers.backbones.configs` and
`rankers.backbones.presets` load without torch (`rankers --help` stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankers.backbones.autoint import AutoInt, AutoIntPlus
    from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec, Sequence
    from rankers.backbones.configs import (
        AutoIntConfig,
        AutoIntPlusConfig,
        DIENConfig,
        DINConfig,
        ESMMConfig,
        FinalMLPConfig,
        MLPConfig,
    )
    from rankers.backbones.dien import DIEN
    from rankers.backbones.din import DIN
    from rankers.backbones.esmm import ESMM
    from rankers.backbones.finalmlp import FinalMLP
    from rankers.backbones.mlp import MLP
    from rankers.backbones.presets import PRESETS, Preset
    from rankers.backbones.registry import BACKBONES, backbone_class, build_backbone

_WHERE = {
    "configs": (
        "AutoIntConfig",
        "AutoIntPlusConfig",
        "DIENConfig",
        "DINConfig",
        "ESMMConfig",
        "FinalMLPConfig",
        "MLPConfig",
    ),
    "presets": ("PRESETS", "Preset"),
    "registry": ("BACKBONES", "backbone_class", "build_backbone"),
    "base": ("Backbone", "BackboneOutput", "Embedded", "InputSpec", "Sequence"),
    "autoint": ("AutoInt", "AutoIntPlus"),
    "dien": ("DIEN",),
    "din": ("DIN",),
    "esmm": ("ESMM",),
    "finalmlp": ("FinalMLP",),
    "mlp": ("MLP",),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
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
    "build_backbone",
]


def __getattr__(name: str) -> Any:
    """`rankers.backbones.NAME`, imported from its module on first use."""
    if name not in _MODULE:
        raise AttributeError(f"module 'rankers.backbones' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rankers.backbones.{_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
