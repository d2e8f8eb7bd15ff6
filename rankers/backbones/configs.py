"""Every backbone's config dataclass, and `BACKBONE_CONFIGS` (name -> config class). No torch:
the CLI builds its flags from these (a field's comment is its help) without importing a model.

Each backbone module imports its config from here (`from rankers.backbones.din import DINConfig`
still works); presets (`rankers.backbones.presets`) are instances of these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("relu", "dice", "prelu", "sigmoid")  # of layers.activation
GRU_TYPES = ("AUGRU", "AGRU", "AIGRU")  # DIEN's interest evolving layers
ESMM_TASKS = ("ctr", "cvr", "ctcvr")


def check_layers(
    config: Any,
    units: tuple[str, ...] = (),
    activations: tuple[str, ...] = (),
    dropouts: tuple[str, ...] = (),
) -> None:
    """ValueError naming the first field of `config` that is not: for `units`, one or more widths
    >= 1; for `activations`, a name in ACTIVATIONS; for `dropouts`, a rate in [0, 1)."""
    for name in units:
        if not getattr(config, name) or min(getattr(config, name)) < 1:
            raise ValueError(f"{name} {getattr(config, name)}: expected one or more widths >= 1")
    for name in activations:
        if getattr(config, name) not in ACTIVATIONS:
            raise ValueError(f"{name} {getattr(config, name)!r}: expected one of {ACTIVATIONS}")
    for name in dropouts:
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name} {getattr(config, name)} must be in [0, 1)")


_ACTS = ("dnn_activation", "attention_activation")  # DIN's and DIEN's activation fields


@dataclass(frozen=True)
class MLPConfig:
    """The DNN baseline (`mlp.MLP`)."""

    hidden_units: tuple[int, ...] = (256, 128)  # widths of the hidden layers, each >= 1
    dropout: float = 0.0  # dropout rate after each hidden activation, in [0, 1)
    batch_norm: bool = False  # batch norm before each hidden activation

    def __post_init__(self) -> None:
        check_layers(self, units=("hidden_units",), dropouts=("dropout",))


@dataclass(frozen=True)
class AutoIntConfig:
    """AutoInt's self-attentive interacting layers (`autoint.AutoInt`)."""

    attention_layers: int = 3  # interacting layers, >= 1
    num_heads: int = 2  # attention heads per layer, >= 1
    attention_dim: int = 16  # A: output width of a layer, all heads together (a multiple of num_heads)
    residual: bool = True  # add the (projected) input of each layer to its output
    scale: bool = False  # divide scores by sqrt(A / H); the paper does not
    layer_norm: bool = False  # LayerNorm after each residual sum
    dropout: float = 0.0  # dropout rate on attention probabilities and after each DNN layer, in [0, 1)
    dnn_units: tuple[int, ...] = ()  # the parallel DNN of AutoInt+ (AutoIntPlusConfig); () here
    dnn_batch_norm: bool = False  # batch norm in the DNN (needs dnn_units)
    # Numeric features as attention tokens (the paper, FuxiCTR, torch-rechub). False: only the
    # categorical fields attend and the numeric values join the DNN's input as they are
    # (DeepCTR-Torch's AutoInt); T is then F.
    numeric_tokens: bool = True

    def __post_init__(self) -> None:
        if self.attention_layers < 1 or self.num_heads < 1:
            raise ValueError(
                f"attention_layers {self.attention_layers} and num_heads {self.num_heads} must be >= 1"
            )
        if self.attention_dim < 1 or self.attention_dim % self.num_heads:
            raise ValueError(
                f"attention_dim {self.attention_dim} must be a positive multiple of "
                f"num_heads {self.num_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout {self.dropout} must be in [0, 1)")
        if self.dnn_units and min(self.dnn_units) < 1:
            raise ValueError(f"dnn_units {self.dnn_units}: widths must be >= 1")
        if self.dnn_batch_norm and not self.dnn_units:
            raise ValueError("dnn_batch_norm is set but there is no DNN (dnn_units is empty)")
        if type(self) is AutoIntConfig and self.dnn_units:
            raise ValueError(
                f"dnn_units {self.dnn_units}: AutoInt has no DNN; use backbone 'autoint_plus' for one"
            )


@dataclass(frozen=True)
class AutoIntPlusConfig(AutoIntConfig):
    """AutoInt+: AutoInt with a parallel DNN (`autoint.AutoIntPlus`)."""

    dnn_units: tuple[int, ...] = (256, 128)  # widths of the parallel DNN, each >= 1; not empty

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dnn_units:
            raise ValueError("AutoInt+ needs dnn_units (the parallel DNN); use backbone 'autoint' without")


@dataclass(frozen=True)
class FinalMLPConfig:
    """FinalMLP's two gated MLP streams and their bilinear fusion (`finalmlp.FinalMLP`)."""

    mlp1_units: tuple[int, ...] = (256, 128)  # stream 1 widths, each >= 1
    mlp1_dropout: float = 0.0  # stream 1 dropout rate after each hidden layer, in [0, 1)
    mlp1_batch_norm: bool = False  # batch norm in stream 1
    mlp2_units: tuple[int, ...] = (256, 128)  # stream 2 widths, each >= 1
    mlp2_dropout: float = 0.0  # stream 2 dropout rate after each hidden layer, in [0, 1)
    mlp2_batch_norm: bool = False  # batch norm in stream 2
    feature_selection: bool = True  # gate each stream's input; False feeds both the plain tokens
    fs_units: tuple[int, ...] = (256,)  # hidden widths of each gate's MLP, each >= 1
    fs1_context: tuple[
        str, ...
    ] = ()  # comma-separated fields whose embeddings condition gate 1; none: a learned vector
    fs2_context: tuple[
        str, ...
    ] = ()  # comma-separated fields whose embeddings condition gate 2; none: a learned vector
    num_heads: int = 2  # H of the bilinear aggregation, >= 1; divides both streams' output widths

    def __post_init__(self) -> None:
        check_layers(
            self, ("mlp1_units", "mlp2_units", "fs_units"), dropouts=("mlp1_dropout", "mlp2_dropout")
        )
        if not self.feature_selection and (self.fs1_context or self.fs2_context):
            raise ValueError(
                f"fs1_context {self.fs1_context} / fs2_context {self.fs2_context} are set but "
                "feature_selection is off; clear them or turn it on"
            )
        for units in (self.mlp1_units, self.mlp2_units):
            if self.num_heads < 1 or units[-1] % self.num_heads:
                raise ValueError(
                    f"num_heads {self.num_heads} must be >= 1 and divide the streams' output widths "
                    f"({self.mlp1_units[-1]}, {self.mlp2_units[-1]})"
                )


@dataclass(frozen=True)
class DINConfig:
    """DIN's attention over the behaviour sequences and its MLP (`din.DIN`)."""

    dnn_units: tuple[int, ...] = (256, 128)  # MLP widths over [dense, fields, pooled behaviours], each >= 1
    dnn_activation: str = "relu"  # the MLP's activation: relu, dice (the paper's), prelu or sigmoid
    dnn_dropout: float = 0.0  # the MLP's dropout rate, in [0, 1)
    dnn_batch_norm: bool = False  # batch norm in the MLP
    attention_units: tuple[int, ...] = (64, 16)  # the local activation unit's hidden widths, each >= 1
    attention_activation: str = "dice"  # the unit's activation: dice (the paper's), prelu, relu or sigmoid
    attention_dropout: float = 0.0  # the unit's dropout rate, in [0, 1)
    attention_softmax: bool = False  # normalise scores over real positions (not in the paper)
    sequences: tuple[str, ...] = ()  # comma-separated attended sequences; none: every one with a target field

    def __post_init__(self) -> None:
        check_layers(self, ("dnn_units", "attention_units"), _ACTS, ("dnn_dropout", "attention_dropout"))


@dataclass(frozen=True)
class DIENConfig:
    """DIEN's interest extractor GRU, interest evolving layer and MLP (`dien.DIEN`)."""

    dnn_units: tuple[int, ...] = (256, 128)  # MLP widths over [dense, fields, evolved interest], each >= 1
    dnn_activation: str = "relu"  # the MLP's activation: relu, dice, prelu or sigmoid
    dnn_dropout: float = 0.0  # the MLP's dropout rate, in [0, 1)
    dnn_batch_norm: bool = False  # batch norm in the MLP
    gru_type: str = "AUGRU"  # the interest evolving layer: AUGRU, AGRU or AIGRU
    attention_units: tuple[int, ...] = (64, 16)  # widths of the unit scoring h_t vs the target, each >= 1
    attention_activation: str = "dice"  # the unit's activation: dice, prelu, relu or sigmoid
    attention_dropout: float = 0.0  # the unit's dropout rate, in [0, 1)
    attention_softmax: bool = True  # normalise the scores over the history (the paper does)
    aux_loss_weight: float = 1.0  # alpha of the auxiliary loss, >= 0; 0 turns it off
    aux_units: tuple[int, ...] = (100, 50)  # the auxiliary net's hidden widths (the paper's), each >= 1
    sequences: tuple[str, ...] = ()  # comma-separated attended sequences; none: every one with a target field

    def __post_init__(self) -> None:
        units = ("dnn_units", "attention_units", "aux_units")
        check_layers(self, units, _ACTS, ("dnn_dropout", "attention_dropout"))
        if self.gru_type not in GRU_TYPES:
            raise ValueError(f"gru_type {self.gru_type!r}: expected one of {GRU_TYPES}")
        if not 0 <= self.aux_loss_weight < float("inf"):
            raise ValueError(f"aux_loss_weight {self.aux_loss_weight} must be finite and >= 0")


def _pairs(value: Any) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in items))


@dataclass(frozen=True)
class ESMMConfig:
    """ESMM's two towers, each a single-task backbone by name with its config (`esmm.ESMM`)."""

    ctr_tower: str = "mlp"  # the click tower: a single-task backbone (any but esmm; not a preset)
    cvr_tower: str = "mlp"  # the conversion tower: a single-task backbone (any but esmm; not a preset)
    # The click tower's config fields (e.g. '{"hidden_units": [64]}'; kept as (name, value) pairs);
    # none: its defaults.
    ctr_config: tuple[tuple[str, Any], ...] | dict[str, Any] = ()
    # The conversion tower's config fields, as for ctr_config; none: its defaults.
    cvr_config: tuple[tuple[str, Any], ...] | dict[str, Any] = ()

    def __post_init__(self) -> None:
        for name in ("ctr_config", "cvr_config"):
            object.__setattr__(self, name, _pairs(getattr(self, name)))
        for which in ("ctr", "cvr"):
            self.tower(which)  # raises naming a bad tower, field or value

    def tower(self, which: str) -> tuple[str, Any]:
        """The "ctr" or "cvr" tower's backbone name and config object."""
        name, fields = getattr(self, f"{which}_tower"), getattr(self, f"{which}_config")
        config_class = BACKBONE_CONFIGS.get(name)
        if config_class is None or config_class is ESMMConfig:
            towers = sorted(n for n, c in BACKBONE_CONFIGS.items() if c is not ESMMConfig)
            known = "" if name == "esmm" else f"unknown backbone {name!r}; "
            raise ValueError(
                f"{which}_tower {name!r}: {known}expected a single-task backbone by name (not ESMM or a "
                f"preset), one of {towers}"
            )
        unknown = sorted(set(dict(fields)) - {f.name for f in dataclasses.fields(config_class)})
        if unknown:
            raise ValueError(f"{which}_tower {name!r} has no config fields {unknown}")
        return name, config_class(**dict(fields))


BACKBONE_CONFIGS: dict[str, type] = {
    "mlp": MLPConfig,
    "autoint": AutoIntConfig,
    "autoint_plus": AutoIntPlusConfig,
    "finalmlp": FinalMLPConfig,
    "din": DINConfig,
    "dien": DIENConfig,
    "esmm": ESMMConfig,
}
