"""The configs a run is made of: `RankerConfig` (what to build) and `TrainConfig` (how to train),
and `resolve`, the one place a backbone or preset name becomes both.

Both are frozen dataclasses checked in `__post_init__`; every field is a CLI flag and a TOML key
whose help is the field's comment (`rankers._args`), and a checkpoint's config.json holds both
(`RankerConfig.to_dict`, `asdict`; read back by `rankers.checkpoint.checkpoint_config`). Importing
this module imports no torch (`rankers --help` stays fast). A RankerConfig whose `sequence_lookup`
is left "" takes the training device's (resolved when the run starts, `rankers.run.prepare`).

Example:
    >>> ranker, train = resolve("finalmlp_criteo_x1", {"embedding_dim": 8}, {"epochs": 3})
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankers.backbones.presets import Preset

SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise", "data_parallel")
SHARDED = ("table_wise", "row_wise", "column_wise")
SEQUENCE_LOOKUPS = ("bag", "collection")  # how rankers.embedding looks a sequence up
MONITOR_METRICS = ("auc-logloss", "auc", "logloss")
PRECISIONS = ("fp32", "bf16", "auto")
DEVICES = ("auto", "cpu", "cuda")  # also cuda:N (rankers.devices.resolve_device)
# The tables' fused optimizers (fbgemm, applied inside the backward pass): those fbgemm's CPU kernels
# have, then those only its CUDA kernels have.
CPU_EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
EMBEDDING_OPTIMIZERS = (
    *CPU_EMBEDDING_OPTIMIZERS,
    "adam",
    "partial_rowwise_adam",
    "lamb",
    "partial_rowwise_lamb",
)


def presets() -> dict[str, Any]:
    """The presets by name (name -> the function returning it)."""
    from rankers.backbones.presets import PRESETS

    return PRESETS


def backbone_configs() -> dict[str, type]:
    """Each registered backbone's config dataclass by name."""
    from rankers.backbones.configs import BACKBONE_CONFIGS

    return BACKBONE_CONFIGS


def config_class(name: str) -> type:
    """The config dataclass of the backbone `name` (or of the preset `name`'s backbone); ValueError
    listing the backbones and presets."""
    if name in presets():
        name = preset(name).backbone
    configs = backbone_configs()
    if name not in configs:
        raise ValueError(
            f"unknown backbone {name!r}, expected one of {sorted(configs)} or a preset {sorted(presets())}"
        )
    return configs[name]


def preset(name: str) -> Preset:
    """The preset `name`; ValueError listing the presets."""
    if name not in presets():
        raise ValueError(f"unknown preset {name!r}, expected one of {sorted(presets())}")
    return presets()[name]()


def resolve(
    backbone: str, ranker: dict[str, Any] | None = None, train: dict[str, Any] | None = None
) -> tuple[RankerConfig, TrainConfig]:
    """The configs of a run of `backbone`, a backbone or a preset: `ranker` (RankerConfig fields;
    `backbone_config` a dict of the backbone's fields) and `train` (TrainConfig fields) over the
    preset's model and training settings, or over the defaults.

    Raises:
        ValueError: an unknown name, or a field out of its range.
    """
    for cls, given, what in ((RankerConfig, ranker or {}, "ranker"), (TrainConfig, train or {}, "train")):
        known = [f.name for f in fields(cls) if f.name != "backbone"]  # the backbone: the first argument
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"{what} fields {unknown}: unknown; expected some of {known}")
    base = dict(preset(backbone).train) if backbone in presets() else {}
    return RankerConfig(backbone=backbone, **(ranker or {})), TrainConfig(**base | (train or {}))


@dataclass(frozen=True)
class ShardingConfig:
    """How the tables are sharded: one type for all, and per-table exceptions."""

    sharding_type: str = "table_wise"  # one of SHARDING_TYPES, for every table not named in `tables`
    tables: tuple[tuple[str, str], ...] | dict[str, str] = ()  # table -> its sharding type

    def __post_init__(self) -> None:
        items = self.tables.items() if isinstance(self.tables, dict) else self.tables
        object.__setattr__(self, "tables", tuple(sorted((str(t), str(v)) for t, v in items)))
        for where, value in (("sharding_type", self.sharding_type), *self.tables):
            if value not in SHARDING_TYPES:
                raise ValueError(f"{where}: sharding type {value!r}, expected one of {SHARDING_TYPES}")

    def type_of(self, table: str) -> str:
        return dict(self.tables).get(table, self.sharding_type)


@dataclass(frozen=True)
class RankerConfig:
    """What to build: the backbone by name with its config, and the embedding tables.

    `backbone` may name a preset (e.g. "finalmlp_criteo_x1"): its backbone, config, embedding dim
    and embedding L2 are taken, fields given here override them (a dict of `backbone_config` fields
    over the preset's config; a config object replaces it), and `preset` records the name.
    """

    backbone: str = "mlp"  # the backbone, or a preset (its model; flags override it)
    embedding_dim: int | None = None  # D of every table, >= 1; unset: the preset's, else 16
    # The backbone's config dataclass (e.g. MLPConfig); a dict or (name, value) pairs of its fields
    # are accepted and converted. Written to config.json as an object of its fields.
    backbone_config: Any = ()
    # Loss weight per task, >= 0 (e.g. '{"ctr": 1, "cvr": 2}'); 1 for tasks not named.
    task_weights: tuple[tuple[str, float], ...] | dict[str, float] = ()
    # L2 penalty on the embedding vectors each example looks up, lambda * sum ||e||^2 averaged over
    # the batch (the tables' fused optimizer applies no weight decay), >= 0; unset: the preset's, else 0.
    embedding_l2: float | None = None
    preset: str = ""  # the preset this config came from ("" for none); set when `backbone` names one
    # How sequences are looked up: bag (faster on CPU) or collection (the GPU's); unset: the one
    # for the training device (`rankers.embedding.default_sequence_lookup`), written to the checkpoint.
    sequence_lookup: str = ""
    tasks: tuple[str, ...] = ()  # comma-separated tasks to train, among the dataset's; unset: all its labels

    def __post_init__(self) -> None:
        given, dim, l2 = self.backbone_config, self.embedding_dim, self.embedding_l2
        if self.backbone in presets():
            chosen = preset(self.backbone)
            if not is_dataclass(given):  # fields over the preset's config
                given = asdict(chosen.config) | _items(given)
            dim = chosen.embedding_dim if dim is None else dim
            l2 = chosen.embedding_l2 if l2 is None else l2
            object.__setattr__(self, "preset", self.backbone)
            object.__setattr__(self, "backbone", chosen.backbone)
        if self.preset and (self.preset not in presets() or preset(self.preset).backbone != self.backbone):
            raise ValueError(
                f"preset {self.preset!r} with backbone {self.backbone!r}: expected '' or a preset of "
                f"that backbone among {sorted(presets())}"
            )
        object.__setattr__(self, "backbone_config", _backbone_config(self.backbone, given))
        if isinstance(l2, bool) or not isinstance(l2, (int, float, type(None))):
            raise ValueError(f"embedding_l2 {l2!r} must be a number >= 0 (or None: the preset's, else 0)")
        dim, l2 = 16 if dim is None else dim, 0.0 if l2 is None else float(l2)
        if type(dim) is not int or dim < 1:
            raise ValueError(f"embedding_dim {dim!r} must be an integer >= 1")
        if not 0 <= l2 < float("inf"):
            raise ValueError(f"embedding_l2 {l2!r} must be finite and >= 0")
        if self.sequence_lookup and self.sequence_lookup not in SEQUENCE_LOOKUPS:
            raise ValueError(f"sequence_lookup {self.sequence_lookup!r}: expected one of {SEQUENCE_LOOKUPS}")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "embedding_dim", dim)
        object.__setattr__(self, "embedding_l2", l2)
        weights = self.task_weights
        pairs: tuple[tuple[str, float], ...] = tuple(
            weights.items() if isinstance(weights, dict) else weights
        )
        object.__setattr__(self, "task_weights", pairs)
        for task, weight in pairs:
            number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if not number or not 0 <= weight < float("inf"):
                raise ValueError(f"task weight {weight!r} for {task!r} must be a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json [ranker]") -> RankerConfig:
        """The config `to_dict` wrote (a checkpoint's config.json [ranker]), read strictly: `backbone`
        required, unknown keys refused, every value type-checked, `backbone_config` against the
        backbone's config dataclass (and an ESMM tower's config against the tower's).

        Raises:
            ValueError: naming `where`, the key and the value.
        """
        from features.strict import check_fields, check_keys

        check_keys(d, where, required=("backbone",), optional=None)
        values = check_fields(cls, d, where)
        try:
            backbone_config_class = config_class(values["backbone"])
        except ValueError as e:
            raise ValueError(f"{where} backbone: {e}") from None
        inner = f"{where} backbone_config"
        given = check_fields(backbone_config_class, dict(values.get("backbone_config", ())), inner)
        for tower in ("ctr", "cvr"):  # ESMM's towers: each one's fields against its own config class
            if f"{tower}_config" in given:
                try:
                    tower_class = config_class(given.get(f"{tower}_tower", "mlp"))
                except ValueError:
                    continue  # ESMMConfig refuses the name below
                check_fields(tower_class, dict(given[f"{tower}_config"]), f"{inner} {tower}_config")
        try:
            return cls(**values | {"backbone_config": given})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _items(config: Any) -> dict[str, Any]:
    """A backbone config given as a dict or (name, value) pairs, as a dict."""
    return dict(config.items() if isinstance(config, dict) else config)


def _backbone_config(backbone: str, config: Any) -> Any:
    """The config dataclass of `backbone` from `config`: an instance of it, or its fields as a dict or
    (name, value) pairs (lists become tuples); ValueError naming unknown fields."""
    cls = config_class(backbone)  # raises on an unknown name
    if is_dataclass(config) and not isinstance(config, type):
        if not isinstance(config, cls):
            raise ValueError(f"backbone_config {config!r}: backbone {backbone!r} takes a {cls.__name__}")
        return config
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in _items(config).items()}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"backbone {backbone!r} has no config fields {unknown}; expected {sorted(known)}")
    return cls(**given)


def monitor_score(metric: str, auc: float | None, logloss: float | None) -> float | None:
    """The validation score (higher is better) of `metric`; None where it is undefined."""
    if logloss is None or (auc is None and metric != "logloss"):
        return None
    return {"auc-logloss": (auc or 0.0) - logloss, "auc": auc or 0.0, "logloss": -logloss}[metric]


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model itself is a RankerConfig)."""

    epochs: int = 10  # passes over the training split, >= 1 (an upper bound: early stopping ends sooner)
    batch_size: int = 4096  # training rows per step, >= 1 (the global batch over all processes)
    lr: float = 1e-3  # Adam learning rate of the dense parameters, > 0
    weight_decay: float = 0.0  # Adam weight decay of the dense parameters, >= 0
    embedding_lr: float = 0.05  # learning rate of the tables' fused optimizer (--embedding-optimizer), > 0
    patience: int = 2  # stop after this many epochs without a better validation score, >= 0 (0: never)
    # On an epoch without a better validation score, go back to the best weights and multiply both
    # learning rates by this, in (0, 1] (1: neither).
    lr_decay: float = 0.1
    # Task whose validation score selects the epoch (one of the dataset's tasks, e.g. ctr, cvr,
    # ctcvr); unset: the model's first task.
    monitor: str = ""
    # The validation score that selects the epoch: auc-logloss (AUC minus LogLoss, FuxiCTR's
    # default: an epoch that ranks better but is over-confident does not win), auc, or logloss
    # (lower is better; the one to use when validation has one class).
    monitor_metric: str = "auc-logloss"
    shuffle_buffer: int = 262_144  # rows permuted together when reading the training split, >= 0
    seed: int = 0  # seeds the weights and the shuffle
    eval_batch_size: int = 16_384  # rows per evaluation step, >= 1
    threads: int = 0  # torch intra-op threads, >= 0 (0: keep the current setting, OMP_NUM_THREADS)
    max_steps: int = 0  # stop after this many steps in all, >= 0 (0: no limit); for benchmarks
    progress: bool = True  # show progress bars with the loss and examples/s on stderr
    # Precision of the training forward passes: bf16 (under bfloat16 autocast: the dense matmuls in
    # bf16, the tables, softmax, loss and optimizer state in fp32), fp32, or auto (bf16 where the
    # device multiplies bf16 natively: a GPU with bf16, a CPU with AVX512-BF16 or AMX; else fp32;
    # the run logs which and metrics.json records it); evaluation stays fp32.
    precision: str = "fp32"
    # Every table's sharding type: table_wise, row_wise, column_wise, data_parallel or auto (the
    # planner's choice).
    sharding: str = "table_wise"
    # Per-table exceptions to --sharding, table -> type (e.g. '{"C3": "row_wise"}').
    sharding_tables: tuple[tuple[str, str], ...] | dict[str, str] = ()
    # Save everything `--resume` needs every this many steps (and after each epoch), >= 0 (0: never).
    checkpoint_every: int = 0
    # Train through TorchRec's TrainPipelineSparseDist (the next batch's copy to the GPU and its
    # input distribution overlap this batch's compute). Same numbers as the plain loop; on CPU
    # nothing overlaps (no streams), so it is off by default (see rankers.pipeline).
    pipeline: bool = False
    # Where to train: auto (this process's GPU where torch sees one, else cpu), cpu, cuda or cuda:N.
    device: str = "auto"
    # The tables' fused optimizer, updating them inside the backward pass at --embedding-lr:
    # rowwise_adagrad, adagrad or sgd (CPU and GPU); adam, partial_rowwise_adam, lamb or
    # partial_rowwise_lamb (GPU only: fbgemm has no CPU kernel for them).
    embedding_optimizer: str = "rowwise_adagrad"
    # MiB of GPU memory per process the sharding planner may fill with tables, >= 0 (0: the GPU's
    # memory); a table that does not fit is placed in host memory behind a GPU cache (fbgemm's
    # UVM-caching kernel). Unused on CPU.
    hbm_cap_mb: int = 0
    # Share of a UVM-cached table's rows its GPU cache holds, in (0, 1) (TorchRec refuses 1). Unused on CPU.
    cache_load_factor: float = 0.2
    # Check the training loss for NaN/infinity every this many steps, >= 0 (0: every step on CPU,
    # every 50 steps on GPU, where each check waits for the GPU). The error names the first bad step.
    check_every: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be >= 1")
        for name in ("lr", "embedding_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)} must be > 0")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay {self.lr_decay} must be in (0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay {self.weight_decay} must be >= 0")
        tables = self.sharding_tables
        pairs = tables.items() if isinstance(tables, dict) else tables
        object.__setattr__(self, "sharding_tables", tuple(sorted((str(t), str(v)) for t, v in pairs)))
        ShardingConfig(self.sharding, self.sharding_tables)  # raises naming a bad type
        if self.monitor_metric not in MONITOR_METRICS:
            raise ValueError(f"monitor_metric {self.monitor_metric!r}: expected one of {MONITOR_METRICS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r}: expected one of {DEVICES} or cuda:N")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"embedding_optimizer {self.embedding_optimizer!r}: expected one of {EMBEDDING_OPTIMIZERS}"
            )
        if not 0 < self.cache_load_factor < 1:
            raise ValueError(f"cache_load_factor {self.cache_load_factor} must be in (0, 1)")
        counts = ("patience", "threads", "max_steps", "shuffle_buffer", "checkpoint_every", "hbm_cap_mb")
        for name in (*counts, "check_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} must be >= 0")
