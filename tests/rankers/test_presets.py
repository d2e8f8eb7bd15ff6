"""`rankers.config.resolve`: one place where a preset's name becomes its RankerConfig and
TrainConfig, for the CLI and for Python; configs and presets load without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rankers.backbones.configs import BACKBONE_CONFIGS, FinalMLPConfig, MLPConfig
from rankers.backbones.presets import PRESETS
from rankers.config import RankerConfig, TrainConfig, resolve


def test_a_preset_resolves_to_its_model_and_training_settings_with_overrides() -> None:
    ranker, train = resolve("finalmlp_criteo_x1", {"embedding_dim": 4}, {"epochs": 1})
    preset = PRESETS["finalmlp_criteo_x1"]()
    assert ranker.preset == "finalmlp_criteo_x1" and ranker.backbone == "finalmlp"
    assert ranker.backbone_config == preset.config and ranker.embedding_dim == 4
    assert ranker.embedding_l2 == preset.embedding_l2
    assert train == TrainConfig(**dict(preset.train) | {"epochs": 1})
    ranker, _ = resolve("finalmlp_criteo_x1", {"backbone_config": {"num_heads": 100}})
    assert ranker.backbone_config == FinalMLPConfig(**vars(preset.config) | {"num_heads": 100})
    with pytest.raises(ValueError, match=r"train fields \['epoch'\]: unknown; expected some of \['epochs'"):
        resolve("finalmlp_criteo_x1", train={"epoch": 1})


def test_a_backbone_resolves_to_the_defaults_and_holds_a_typed_config() -> None:
    ranker, train = resolve("mlp", {"backbone_config": {"hidden_units": [8]}})
    assert train == TrainConfig() and ranker.backbone_config == MLPConfig(hidden_units=(8,))
    assert RankerConfig(backbone_config=MLPConfig(dropout=0.5)).backbone_config.dropout == 0.5
    assert RankerConfig().to_dict()["backbone_config"] == {
        "hidden_units": (256, 128),
        "dropout": 0.0,
        "batch_norm": False,
    }
    assert set(BACKBONE_CONFIGS) == {"mlp", "autoint", "autoint_plus", "finalmlp", "din", "dien", "esmm"}


def test_configs_and_presets_import_no_torch() -> None:
    code = (
        "import sys\nimport rankers.config, rankers.backbones.configs, rankers.backbones.presets\n"
        "print(sorted(m for m in ('torch', 'torchrec', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
