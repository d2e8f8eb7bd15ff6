"""Published configurations: the model, how it was trained, and what it scored. Torch-free data
(`rankers.config.resolve` turns a preset's name into its RankerConfig and TrainConfig).

Their names are accepted wherever a backbone name is (`RankerConfig(backbone=...)`, `--backbone`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rankers.backbones.configs import AutoIntPlusConfig, DIENConfig, DINConfig, FinalMLPConfig


@dataclass(frozen=True)
class Preset:
    """A published configuration: the model, how it was trained, and what it scored.

    Presets are plain zero-argument functions, all in this module (`finalmlp_criteo_x1()`); their
    names are accepted wherever a backbone name is (`RankerConfig(backbone=...)`, `--backbone`).

    Attributes:
        backbone: the registered backbone name.
        config: that backbone's config.
        embedding_dim: D.
        embedding_l2: the embedding regularizer (see RankerConfig.embedding_l2).
        train: TrainConfig fields as (name, value) pairs.
        data: how the published run prepared its data.
        published: the published test figures (auc, logloss, parameters).
    """

    backbone: str
    config: Any
    embedding_dim: int
    embedding_l2: float
    train: tuple[tuple[str, Any], ...]
    data: str
    published: dict[str, float]


# What BARS's Criteo_x1 runs share: FuxiCTR's training (Adam 1e-3 reduced tenfold on plateau,
# patience 2) and the data.
_BARS_CRITEO_TRAIN = (("batch_size", 4096), ("lr", 1e-3), ("lr_decay", 0.1), ("patience", 2), ("epochs", 100))
_CRITEO_X1 = "Criteo_x1: min category count 1, I1-I13 numeric (normalised in the release)"


def autoint_plus_criteo_x1() -> Preset:
    """AutoInt+ as run by BARS on Criteo_x1 (FuxiCTR 1.2.2, experiment AutoInt_criteo_x1_005_a4b5787e).

    Source: github.com/reczoo/BARS, ranking/ctr/AutoInt/AutoInt+_criteo_x1 (README and log):
    embedding dim 10, embedding regularizer 1e-5, 3 attention layers, 2 heads, attention dim 256,
    residual, layer norm, no scaling, DNN (400, 400, 400) with batch norm, dropout 0.1, batch 4096,
    Adam 1e-3 reduced tenfold on plateau, patience 2; test AUC 0.813939, LogLoss 0.437892,
    23,844,454 parameters. That run also had `use_wide` (a first-order logistic-regression term
    with one weight per id); this library has no first-order tables, so the preset leaves it out.
    The embedding regularizer keeps FuxiCTR's number, but here it penalises the vectors a batch
    looks up (RankerConfig.embedding_l2), not whole tables: not the same strength. The embedding
    dim is 12, not 10: fbgemm's fused table kernel needs a multiple of 4 columns.
    """
    return Preset(
        backbone="autoint_plus",
        config=AutoIntPlusConfig(
            attention_layers=3,
            num_heads=2,
            attention_dim=256,
            residual=True,
            scale=False,
            layer_norm=True,
            dropout=0.1,
            dnn_units=(400, 400, 400),
            dnn_batch_norm=True,
        ),
        embedding_dim=12,
        embedding_l2=1e-5,
        train=_BARS_CRITEO_TRAIN,
        data=_CRITEO_X1,
        published={"auc": 0.813939, "logloss": 0.437892, "parameters": 23_844_454},
    )


def finalmlp_criteo_x1() -> Preset:
    """FinalMLP as run by BARS on Criteo_x1 with FuxiCTR.

    Source: github.com/reczoo/BARS, ranking/ctr/FinalMLP/FinalMLP_criteo_x1 (the published config,
    as quoted in this library's backbone issue): embedding dim 10, embedding regularizer 1e-5, mlp1 (400, 400,
    400) with batch norm and dropout 0.2, mlp2 (1000,) with batch norm and dropout 0.3, gates with
    hidden (800,), gate 1 context I1..I13, gate 2 context C6, 200 heads, batch 4096, Adam 1e-3
    reduced tenfold on plateau, patience 2; test AUC 0.814902, LogLoss 0.437025, 22,478,162
    parameters. The embedding regularizer keeps FuxiCTR's number, but here it penalises the vectors
    a batch looks up (RankerConfig.embedding_l2), not whole tables: not the same strength. The
    embedding dim is 12, not 10: fbgemm's fused table kernel needs a multiple of 4 columns.
    """
    return Preset(
        backbone="finalmlp",
        config=FinalMLPConfig(
            mlp1_units=(400, 400, 400),
            mlp1_dropout=0.2,
            mlp1_batch_norm=True,
            mlp2_units=(1000,),
            mlp2_dropout=0.3,
            mlp2_batch_norm=True,
            feature_selection=True,
            fs_units=(800,),
            fs1_context=tuple(f"I{i}" for i in range(1, 14)),
            fs2_context=("C6",),
            num_heads=200,
        ),
        embedding_dim=12,
        embedding_l2=1e-5,
        train=_BARS_CRITEO_TRAIN,
        data=_CRITEO_X1,
        published={"auc": 0.814902, "logloss": 0.437025, "parameters": 22_478_162},
    )


def din_taobaoad_x1() -> Preset:
    """BARS DIN_taobaoad_x1_012_13c23a36 (FuxiCTR 2.0.1; reczoo/BARS ranking/ctr/DIN/DIN_taobaoad_x1):
    attention_hidden_units [512, 256] with ReLU, attention_dropout 0.4, no softmax; dnn_hidden_units
    [512, 256, 128] relu, net_dropout 0.1, no batch norm; embedding_dim 32, embedding_regularizer
    5e-6; Adam lr 1e-3, batch 8192, early_stop_patience 1 (reduce lr x0.1 on plateau).
    Published (test = 2017-05-13): AUC 0.652399, gAUC 0.576459, LogLoss 0.192445.
    """
    return Preset(
        backbone="din",
        config=DINConfig(
            dnn_units=(512, 256, 128),
            dnn_dropout=0.1,
            attention_units=(512, 256),
            attention_activation="relu",
            attention_dropout=0.4,
        ),
        embedding_dim=32,
        embedding_l2=5e-6,
        train=(("lr", 1e-3), ("batch_size", 8192), ("patience", 1), ("lr_decay", 0.1)),
        data="TaobaoAd_x1: train 2017-05-06..12, test 2017-05-13, min count 10 (convert with "
        "--min-count 10), histories of cate, brand and btag up to 50. BARS attends over (cate_his, "
        "brand_his, btag_his) from (cate_id, brand, btag); `convert taobao-ad` writes no target btag, "
        "so here the attention covers (hist_cate_id, hist_brand) and hist_btag is sum-pooled: not "
        "directly comparable to the published figures",
        published={"auc": 0.652399, "gauc": 0.576459, "logloss": 0.192445},
    )


def dien_taobaoad_x1() -> Preset:
    """BARS DIEN_taobaoad_x1_019_5d9b3874 (FuxiCTR 2.0.2; reczoo/BARS ranking/ctr/DIEN/DIEN_taobaoad_x1):
    AUGRU, din_attention with hidden units [512, 256] and Dice, attention softmax, attention_dropout 0;
    aux_loss_alpha 0 (aux net [100, 50] ReLU unused); dnn_hidden_units [512, 256, 128] ReLU,
    net_dropout 0.1, no batch norm; embedding_dim 32, embedding_regularizer 5e-6; Adam lr 1e-3,
    batch 8192, early_stop_patience 1 (reduce lr x0.1 on plateau).
    Published (test = 2017-05-13): AUC 0.652937, gAUC 0.576916, LogLoss 0.192840.
    """
    return Preset(
        backbone="dien",
        config=DIENConfig(
            dnn_units=(512, 256, 128),
            dnn_dropout=0.1,
            gru_type="AUGRU",
            attention_units=(512, 256),
            attention_activation="dice",
            attention_softmax=True,
            aux_loss_weight=0.0,
            aux_units=(100, 50),
        ),
        embedding_dim=32,
        embedding_l2=5e-6,
        train=(("lr", 1e-3), ("batch_size", 8192), ("patience", 1), ("lr_decay", 0.1)),
        data="TaobaoAd_x1: train 2017-05-06..12, test 2017-05-13, min count 10 (convert with "
        "--min-count 10), histories of cate, brand and btag up to 50. BARS attends over (cate_his, "
        "brand_his, btag_his) from (cate_id, brand, btag); `convert taobao-ad` writes no target btag, "
        "so here the attention covers (hist_cate_id, hist_brand) and hist_btag is sum-pooled: not "
        "directly comparable to the published figures",
        published={"auc": 0.652937, "gauc": 0.576916, "logloss": 0.192840},
    )


PRESETS: dict[str, Callable[[], Preset]] = {
    "autoint_plus_criteo_x1": autoint_plus_criteo_x1,
    "din_taobaoad_x1": din_taobaoad_x1,
    "dien_taobaoad_x1": dien_taobaoad_x1,
    "finalmlp_criteo_x1": finalmlp_criteo_x1,
}
