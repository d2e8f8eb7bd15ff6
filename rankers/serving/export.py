"""`export`: a checkpoint -> one TorchScript file that scores rows without this library.

TorchRec's inference path builds it: the pooled tables become TorchRec's quantized
`EmbeddingBagCollection` (fbgemm's int-N table kernels, which run on CPU) at the chosen precision,
the model is traced with `torchrec.fx.symbolic_trace` and scripted, and the input checks and the
calibration (`rankers.serving.artifact`) are scripted around it. The file carries, as TorchScript
extra files under `rankers/`, the checkpoint's `schema.json`, `config.json`, `calibration.json` (if
any), `spec.json` and `vocabulary.parquet` (if trained on data converted by spec: the loader maps
raw rows with them) and `export.json` (tasks, inputs, precision, the checkpoint's git commit and
path).

Backbones over sequences (DIN, DIEN) are not exported yet: their padding to the batch's longest
history is data-dependent, which tracing cannot keep; `export` refuses them by name.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from rankers._quiet import quiet_torchrec
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
        ValueError: an unknown precision, or a model that cannot be exported yet (sequences).
    """
    from torchrec.fx import symbolic_trace
    from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    from rankers.predictor import Predictor

    if quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r}: expected one of {list(QUANTIZE)}")
    predictor = Predictor.load(checkpoint)
    schema, ranker = predictor.schema, predictor.ranker
    if schema.sequences:
        names = [s.name for s in schema.sequences]
        raise ValueError(
            f"{checkpoint}: its model reads sequences {names}; exporting DIN and DIEN is not done yet "
            "(their padding to the batch's longest history is data-dependent, which tracing cannot keep)"
        )
    ebc = ranker.embedding.ebc
    assert ebc is not None  # a model without sequences has its tables here
    observer = torch.ao.quantization.PlaceholderObserver
    ebc.qconfig = torch.ao.quantization.QConfig(  # type: ignore[assignment,union-attr]
        activation=observer.with_args(dtype=torch.float), weight=observer.with_args(dtype=QUANTIZE[quantize])
    )
    # rows packed to 4 bytes (TorchRec's default pads each row to 16): int8 rows at D=16 take 20 bytes,
    # not 32; fbgemm's CPU kernels read unaligned rows
    setattr(ebc, MODULE_ATTR_ROW_ALIGNMENT_INT, ROW_ALIGNMENT)
    tables = QuantEBC.from_float(ebc)
    tasks, keys = list(ranker.tasks), list(schema.sparse_keys)
    fields = list(ranker.embedding.field_names)
    model = Model(tables, ranker.backbone, keys, fields, tasks, ranker.embedding.embedding_dim).eval()
    model.requires_grad_(False)  # inference only: no autograd graph is recorded
    rows = [f.num_embeddings for f in schema.categorical]
    check = InputCheck([f.name for f in schema.dense], keys, rows)
    with warnings.catch_warnings(), quiet_torchrec():  # TorchScript's notes on torchrec's own code
        warnings.simplefilter("ignore", UserWarning)
        traced = torch.jit.script(symbolic_trace(model))
        served = torch.jit.script(Served(check, traced, _calibrate(tasks, predictor.calibration), tasks))
    info = _info(predictor, quantize, keys)
    # the packed rows (uint8) of each table, and the same table in fp32
    info["table_bytes"] = {
        t: int(b.weight.numel() * b.weight.element_size()) for t, b in tables.embedding_bags.items()
    }
    info["fp32_table_bytes"] = {
        c.name: c.num_embeddings * c.embedding_dim * 4 for c in ebc.embedding_bag_configs()
    }
    present = [name for name in FILES if (Path(checkpoint) / name).is_file()]
    extra: dict[str, str | bytes] = {
        f"rankers/{name}": (Path(checkpoint) / name).read_bytes() for name in present
    }
    extra["rankers/export.json"] = json.dumps(info, indent=1)
    torch.jit.save(served, str(out), _extra_files=extra)
    return Path(out)


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
