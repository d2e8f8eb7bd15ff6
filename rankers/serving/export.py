"""`export`: a checkpoint -> one TorchScript file that scores rows without this library.

TorchRec's inference path builds it: the pooled tables become TorchRec's quantized
`EmbeddingBagCollection` (fbgemm's int-N table kernels, which run on CPU) at the chosen precision,
the model is traced with `torchrec.fx.symbolic_trace` and scripted, and the input checks and the
calibration (`rankers.serving.artifact`) are scripted around it. The file carries, as TorchScript
extra files under `rankers/`, the checkpoint's `schema.json`, `config.json`, `calibration.json` (if
any), `spec.json` and `vocabulary.parquet` (if trained on data converted by spec: the loader maps
raw rows with them) and `export.json` (tasks, inputs, precision, the checkpoint's git commit and
path).

Models over sequences (DIN, DIEN) are traced on their static-shape paths (`rankers.backbones.layers
.static_shapes`): every sequence padded to the longest max_len, every position computed and masked,
DIEN's recurrences unrolled; each table a sequence reads is a quantized collection of its own,
looked up one id per bag (`rankers.serving.artifact.Model`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankers._quiet import quiet_torchrec
from rankers.backbones.layers import exporting
from rankers.calibration import Calibration
from rankers.serving.artifact import Calibrate, InputCheck, Model, Served

QUANTIZE = {"none": torch.float, "fp16": torch.half, "int8": torch.qint8, "int4": torch.quint4x2}
METHODS = {"identity": 1, "platt": 2, "isotonic": 3}
ROW_ALIGNMENT = 4  # bytes a quantized table row is padded to
FILES = ("schema.json", "config.json", "calibration.json", "spec.json", "vocabulary.parquet")


def export(checkpoint: str | Path, out: str | Path, quantize: str = "int8") -> Path:
    """Writes the artifact of `checkpoint` to `out` (see the module doc) and returns `out`.

    Args:
        checkpoint: a checkpoint directory written by `rankers train`.
        out: the file to write.
        quantize: table precision: none (fp32), fp16, int8 (rowwise, fbgemm) or int4.

    Raises:
        ValueError: an unknown precision.
    """
    from torchrec.fx import symbolic_trace

    from rankers.predictor import Predictor

    if quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r}: expected one of {list(QUANTIZE)}")
    predictor = Predictor.load(checkpoint)
    schema, ranker = predictor.schema, predictor.ranker
    tasks, keys = list(ranker.tasks), list(schema.sparse_keys)
    fields = list(ranker.embedding.field_names)
    ebc = ranker.embedding.ebc
    pooled = None if ebc is None else _quantized(ebc, quantize)
    model = _model(ranker, schema, pooled, quantize, keys, fields, tasks)
    model.eval().requires_grad_(False)  # inference only: no autograd graph is recorded
    sparse: dict[str, Any] = {f.name: f for f in schema.categorical} | {s.name: s for s in schema.sequences}
    rows = [sparse[k].num_embeddings for k in keys]
    max_lens = [getattr(sparse[k], "max_len", 0) for k in keys]  # sequences: at most max_len ids a row
    check = InputCheck([f.name for f in schema.dense], keys, rows, max_lens)
    with warnings.catch_warnings(), quiet_torchrec():  # TorchScript's notes on torchrec's own code
        warnings.simplefilter("ignore", UserWarning)
        with exporting():  # the backbones' static-shape paths: no data-dependent shapes to trace
            traced = torch.jit.script(symbolic_trace(model))
        served = torch.jit.script(Served(check, traced, _calibrate(tasks, predictor.calibration), tasks))
    info = _info(predictor, quantize, keys)
    info["table_bytes"], info["fp32_table_bytes"] = _table_bytes(model)  # packed rows; the same in fp32
    present = [name for name in FILES if (Path(checkpoint) / name).is_file()]
    extra: dict[str, str | bytes] = {
        f"rankers/{name}": (Path(checkpoint) / name).read_bytes() for name in present
    }
    extra["rankers/export.json"] = json.dumps(info, indent=1)
    torch.jit.save(served, str(out), _extra_files=extra)
    return Path(out)


def _quantized(ebc: nn.Module, quantize: str) -> nn.Module:
    """TorchRec's quantized EmbeddingBagCollection of `ebc` at `quantize`, rows packed to
    `ROW_ALIGNMENT` bytes (TorchRec pads each row to 16: int8 rows at D=16 take 20 bytes, not 32;
    fbgemm's CPU kernels read unaligned rows)."""
    from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    observer = torch.ao.quantization.PlaceholderObserver
    weight = observer.with_args(dtype=QUANTIZE[quantize])
    qconfig = torch.ao.quantization.QConfig(activation=observer.with_args(dtype=torch.float), weight=weight)
    ebc.qconfig = qconfig  # type: ignore[assignment]  # from_float reads it
    setattr(ebc, MODULE_ATTR_ROW_ALIGNMENT_INT, ROW_ALIGNMENT)
    return QuantEBC.from_float(ebc)


def _model(
    ranker: Any,
    schema: Any,
    pooled: nn.Module | None,
    quantize: str,
    keys: list[str],
    fields: list[str],
    tasks: list[str],
) -> nn.Module:
    """`Model` of a ranker: its pooled tables (quantized already), and each sequence table (its
    weights from the ranker's bag or collection lookup) as a quantized collection of one feature,
    looked up per id."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    from rankers.backbones.dien import JaggedGRU

    arch = ranker.embedding
    source = arch.sequence_tables
    tables = nn.ModuleDict()
    for table in arch.sequence_features:
        rows, dim = arch.table_shapes[table]
        ebc = EmbeddingBagCollection(
            [EmbeddingBagConfig(name=table, embedding_dim=dim, num_embeddings=rows, feature_names=[table])]
        )
        weights = source.embedding_bags if hasattr(source, "embedding_bags") else source.embeddings
        ebc.embedding_bags[table].weight.data.copy_(weights[table].weight.data)
        tables[table] = _quantized(ebc, quantize)
    pad = max((s.max_len for s in schema.sequences), default=0)
    for module in ranker.backbone.modules():
        if isinstance(module, JaggedGRU):
            module.steps = pad  # every sequence is padded to `pad`: the loop unrolls when traced
    return Model(
        pooled,
        list(arch.pooled_keys),
        tables,
        {t: list(f) for t, f in arch.sequence_features.items()},
        dict.fromkeys((s.name for s in schema.sequences), pad),
        ranker.backbone,
        keys,
        fields,
        tasks,
    )


def _table_bytes(model: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """Each quantized table's packed rows in bytes, and the same table's fp32 bytes."""
    packed, fp32 = {}, {}
    for module in model.modules():
        for name, bag in getattr(module, "embedding_bags", {}).items():
            packed[name] = int(bag.weight.numel() * bag.weight.element_size())
        for config in getattr(module, "_embedding_bag_configs", []):
            fp32[config.name] = config.num_embeddings * config.embedding_dim * 4
    return packed, fp32


def _calibrate(tasks: list[str], calibration: Calibration | None) -> Calibrate:
    methods, xs, ys, bounds = [], [], [], []
    for t in tasks:
        c = calibration.tasks.get(t) if calibration is not None else None
        methods.append(0 if c is None else METHODS[c.method])
        xs.append(torch.tensor(c.x if c is not None and c.x else [0.0], dtype=torch.float32))
        ys.append(torch.tensor(c.y if c is not None and c.y else [0.0], dtype=torch.float32))
        bounds.append([c.low, c.high] if c is not None else [0.0, 1.0])
    return Calibrate(methods, xs, ys, bounds)


def _info(predictor: Any, quantize: str, keys: list[str]) -> dict[str, Any]:
    from rankers.checkpoint import CheckpointDir

    marker = CheckpointDir(predictor.path).marker() or {}
    calibration = predictor.calibration
    return {
        "format": 1,
        "row_alignment": ROW_ALIGNMENT,
        "tasks": list(predictor.tasks),
        "dense": [f.name for f in predictor.schema.dense],
        "sparse": keys,
        "multi": [f.name for f in predictor.schema.multi],
        "quantize": quantize,
        "calibrated": {t: c.method for t, c in calibration.tasks.items()} if calibration else {},
        "checkpoint": str(Path(predictor.path).resolve()),
        "git": marker.get("git"),
        "data_fingerprint": marker.get("data_fingerprint"),
    }
