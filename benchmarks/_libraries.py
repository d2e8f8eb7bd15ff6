"""One training run of each library for benchmarks/compare.py, in the process it runs in: ours
(`rankers`, `rankers_adam`), DeepCTR-Torch 0.3.0's and torch-rechub 0.9.0's, on the same parquet
splits and shapes. compare.py starts one process per run (`--worker`) and calls `worker` there.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LIBRARIES = ("rankers", "rankers_adam", "deepctr_torch", "torch_rechub")
MODELS = ("mlp", "autoint_plus", "autoint_plus_fields", "din", "din_dice", "dien", "dien_dice", "esmm")
FIELD_MODELS = ("mlp", "autoint_plus", "autoint_plus_fields")
SEQUENCE_MODELS = ("din", "din_dice", "dien", "dien_dice")
# The peers' AutoInt differ: torch-rechub's numeric features are attention tokens (as ours by
# default), DeepCTR-Torch's join the DNN only ("autoint_plus_fields": ours with numeric_tokens off).
SUPPORTS = {
    "rankers": set(MODELS),
    "rankers_adam": set(MODELS),
    "deepctr_torch": {"mlp", "autoint_plus_fields", "din", "dien", "esmm"},
    "torch_rechub": {"mlp", "autoint_plus", "din_dice", "dien_dice", "esmm"},
}
EMBED, UNITS, LR = 16, (256, 128), 1e-3


def _arrays(split: Path, all_labels: bool = False) -> tuple[dict[str, np.ndarray], Any]:
    """Columns as numpy arrays; a sequence as (N, max_len) ids, its most recent max_len first
    to last and zero-padded after (our reader keeps the same ids), with its length in
    `<name>_length`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.reader import find_schema, parquet_files

    schema = find_schema(split)
    table = pq.read_table(parquet_files(split))
    x = {f.name: table.column(f.name).to_numpy().astype(np.int64) for f in schema.categorical}
    x |= {f.name: table.column(f.name).to_numpy().astype(np.float32) for f in schema.dense}
    for f in schema.sequences:
        column = pa.chunked_array(table.column(f.name)).combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy()
        lengths = np.minimum(np.diff(offsets), f.max_len)
        out = np.zeros((len(lengths), f.max_len), dtype=np.int64)
        for i, (end, n) in enumerate(zip(offsets[1:], lengths, strict=True)):
            out[i, :n] = values[end - n : end]
        x[f.name], x[f"{f.name}_length"] = out, lengths.astype(np.int64)
    if all_labels:
        return x, {lab.name: table.column(lab.name).to_numpy().astype(np.float32) for lab in schema.labels}
    return x, table.column(schema.labels[0].name).to_numpy().astype(np.float32)


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p))}


def _ours(job: dict[str, Any], adam_tables: bool) -> dict[str, Any]:
    from rankers.config import RankerConfig, TrainConfig
    from rankers.train import train

    backbone = {
        "mlp": {"hidden_units": UNITS},
        "autoint_plus": {"dnn_units": UNITS},
        "autoint_plus_fields": {"dnn_units": UNITS, "numeric_tokens": False},
        "din": {"dnn_units": UNITS},
        "din_dice": {"dnn_units": UNITS, "dnn_activation": "dice"},
        # DeepCTR-Torch's DIEN without negative sampling: no auxiliary loss, relu attention unit
        "dien": {"dnn_units": UNITS, "aux_loss_weight": 0.0, "attention_activation": "relu"},
        "dien_dice": {
            "dnn_units": UNITS,
            "aux_loss_weight": 0.0,
            "attention_activation": "relu",
            "dnn_activation": "dice",
        },
        "esmm": {"ctr_config": {"hidden_units": UNITS}, "cvr_config": {"hidden_units": UNITS}},
    }[job["model"]]
    name = {"autoint_plus_fields": "autoint_plus", "din_dice": "din", "dien_dice": "dien"}.get(
        job["model"], job["model"]
    )
    tasks = ("ctr",) if job["model"] in SEQUENCE_MODELS else ()
    ranker = RankerConfig(backbone=name, embedding_dim=EMBED, backbone_config=backbone, tasks=tasks)
    config = TrainConfig(
        epochs=job["epochs"],
        batch_size=job["batch"],
        lr=LR,
        embedding_lr=0.02,
        patience=0,
        lr_decay=1.0,
        seed=job["seed"],
        progress=False,
        sharding="data_parallel" if adam_tables else "table_wise",
    )
    with tempfile.TemporaryDirectory() as tmp:
        # The test split stands in for the valid one, so train() scores it after every epoch (its
        # AUC against the epoch, as the peers' below); the figures are the last epoch's, as the
        # peers' (train() itself would report the best epoch's weights).
        view = Path(tmp) / "data"
        view.mkdir()
        for part in Path(job["data"]).iterdir():
            if part.name != "valid":
                (view / part.name).symlink_to(part.resolve())
        (view / "valid").symlink_to((Path(job["data"]) / "test").resolve())
        history = train(view, Path(tmp) / "ck", ranker, config)["history"]
    task = "ctcvr" if job["model"] == "esmm" else "ctr"  # ctcvr is the figure ESMM is for
    last = history[-1]["valid"]
    out = {
        "auc": last[task]["auc"],
        "logloss": last[task]["logloss"],
        "epoch_auc": [h["valid"][task]["auc"] for h in history],
        "examples_per_s": history[-1]["examples_per_s"],
    }
    return out | ({"ctr_auc": last["ctr"]["auc"]} if task == "ctcvr" else {})


def _deepctr(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import AutoInt, DeepFM

    from features.reader import find_schema

    data = Path(job["data"])
    schema = find_schema(data / "train")
    cols = [
        SparseFeat(f.name, vocabulary_size=f.num_embeddings, embedding_dim=EMBED) for f in schema.categorical
    ]
    cols += [DenseFeat(f.name, 1) for f in schema.dense]
    common = {"dnn_hidden_units": UNITS, "l2_reg_embedding": 0.0, "seed": job["seed"], "device": "cpu"}
    if job["model"] == "esmm":
        from deepctr_torch.models.multitask import ESMM

        model = ESMM(
            cols, tower_dnn_hidden_units=UNITS, l2_reg_linear=0.0, l2_reg_embedding=0.0, seed=job["seed"]
        )
        model.compile(
            torch.optim.Adam(model.parameters(), lr=LR), ["binary_crossentropy", "binary_crossentropy"]
        )
        x, labels = _arrays(data / "train", all_labels=True)
        y = np.stack([labels["click"], labels["click"] * labels["conversion"]], axis=1)
        xt, lt = _arrays(data / "test", all_labels=True)
        epoch_auc = []
        for _ in range(job["epochs"]):
            start = time.perf_counter()
            model.fit(x, y, batch_size=job["batch"], epochs=1, verbose=0, shuffle=True)
            seconds = time.perf_counter() - start
            p = model.predict(xt, batch_size=16_384)
            out: dict[str, Any] = _metrics(lt["click"] * lt["conversion"], p[:, 1])
            epoch_auc.append(out["auc"])
        out |= {"ctr_auc": _metrics(lt["click"], p[:, 0])["auc"], "epoch_auc": epoch_auc}
        return out | {"examples_per_s": len(y) / seconds}
    if job["model"] in SEQUENCE_MODELS:
        from deepctr_torch.inputs import VarLenSparseFeat
        from deepctr_torch.models import DIEN, DIN

        first = schema.sequences[0].name
        cols += [
            VarLenSparseFeat(
                SparseFeat(
                    f.name, vocabulary_size=f.num_embeddings, embedding_dim=EMBED, embedding_name=f.table
                ),
                maxlen=f.max_len,
                length_name=f"{first}_length",
            )
            for f in schema.sequences
        ]
        history = [f.table for f in schema.sequences]  # DeepCTR pairs hist_<name> with <name>
        if job["model"] == "din":
            model = DIN(cols, history, att_hidden_size=(64, 16), att_activation="Dice", **common)
        else:
            model = DIEN(cols, history, gru_type="AUGRU", use_negsampling=False, **common)
    elif job["model"] == "mlp":
        model = DeepFM(cols, cols, use_fm=False, l2_reg_linear=0.0, **common)
    else:
        model = AutoInt(cols, cols, att_layer_num=3, att_head_num=2, att_res=True, **common)
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), "binary_crossentropy")
    x, y = _arrays(data / "train")
    xt, yt = _arrays(data / "test")
    epoch_auc = []
    for _ in range(job["epochs"]):
        start = time.perf_counter()
        model.fit(x, y, batch_size=job["batch"], epochs=1, verbose=0, shuffle=True)
        seconds = time.perf_counter() - start
        out = _metrics(yt, model.predict(xt, batch_size=16_384))
        epoch_auc.append(out["auc"])
    return out | {"epoch_auc": epoch_auc, "examples_per_s": len(y) / seconds}


def _rechub(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.ranking import AutoInt, WideDeep
    from torch_rechub.trainers import CTRTrainer
    from torch_rechub.utils.data import DataGenerator

    from features.reader import find_schema

    data = Path(job["data"])
    schema = find_schema(data / "train")
    sparse = [SparseFeature(f.name, vocab_size=f.num_embeddings, embed_dim=EMBED) for f in schema.categorical]
    dense = [DenseFeature(f.name) for f in schema.dense]
    mlp = {"dims": list(UNITS), "dropout": 0.0, "activation": "relu"}
    torch.manual_seed(job["seed"])
    if job["model"] == "esmm":
        return _rechub_esmm(job, sparse)
    x, y = _arrays(data / "train")
    xt, yt = _arrays(data / "test")
    loss_mode = True
    if job["model"] == "dien_dice":  # its DNN activation is Dice, fixed
        from torch_rechub.basic.features import SequenceFeature
        from torch_rechub.models.ranking import DIEN

        targets = {f.table for f in schema.sequences}

        def history(prefix: str) -> list[Any]:
            return [
                SequenceFeature(
                    prefix + f.name,
                    vocab_size=f.num_embeddings,
                    embed_dim=EMBED,
                    pooling="concat",
                    shared_with=f.table,
                    padding_idx=0,
                )
                for f in schema.sequences
            ]

        for f in schema.sequences:  # the auxiliary loss's negatives, at weight 0
            x["neg_" + f.name], xt["neg_" + f.name] = x[f.name], xt[f.name]
        target = [
            SparseFeature(f.name, vocab_size=f.num_embeddings, embed_dim=EMBED, padding_idx=0)
            for f in schema.categorical
            if f.name in targets
        ]
        others = [t for t in sparse if t.name not in targets]
        model = DIEN(others, history(""), history("neg_"), target, {"dims": list(UNITS)}, alpha=0.0)
        loss_mode = False
    elif job["model"] == "din_dice":
        from torch_rechub.basic.features import SequenceFeature
        from torch_rechub.models.ranking import DIN

        targets = {f.table for f in schema.sequences}
        histories = [
            SequenceFeature(
                f.name, vocab_size=f.num_embeddings, embed_dim=EMBED, pooling="concat", shared_with=f.table
            )
            for f in schema.sequences
        ]
        target = [t for t in sparse if t.name in targets]
        others = [t for t in sparse if t.name not in targets]
        # Its DNN activation is Dice, fixed; its attention unit (64, 16) with Dice, no softmax.
        model = DIN(
            others, histories, target, {"dims": list(UNITS)}, {"dims": [64, 16], "activation": "dice"}
        )
    elif job["model"] == "mlp":
        model = WideDeep(wide_features=dense, deep_features=sparse + dense, mlp_params=mlp)
    else:
        model = AutoInt(sparse, dense, num_layers=3, num_heads=2, dropout=0.0, mlp_params=mlp)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = CTRTrainer(
            model,
            optimizer_params={"lr": LR, "weight_decay": 0.0},
            n_epoch=job["epochs"],
            model_path=tmp,
            loss_mode=loss_mode,
        )
        train_dl, _, test_dl = DataGenerator(x, y).generate_dataloader(
            x_val=xt, y_val=yt, x_test=xt, y_test=yt, batch_size=job["batch"]
        )
        epoch_auc = []
        for _ in range(job["epochs"]):
            start = time.perf_counter()
            trainer.train_one_epoch(train_dl, log_interval=10**9)
            seconds = time.perf_counter() - start
            out = _metrics(yt, trainer.predict(model, test_dl))
            epoch_auc.append(out["auc"])
    return out | {"epoch_auc": epoch_auc, "examples_per_s": len(y) / seconds}


def _rechub_esmm(job: dict[str, Any], sparse: list[Any]) -> dict[str, Any]:
    """torch-rechub's ESMM (its fields split in two halves as its user and item features; the
    towers see all of them concatenated either way) trained by its MTLTrainer."""
    import torch
    from torch_rechub.models.multi_task import ESMM
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    data = Path(job["data"])
    mlp = {"dims": list(UNITS), "dropout": 0.0, "activation": "relu"}
    half = len(sparse) // 2
    model = ESMM(sparse[:half], sparse[half:], cvr_params=mlp, ctr_params=mlp)
    x, labels = _arrays(data / "train", all_labels=True)
    xt, lt = _arrays(data / "test", all_labels=True)

    def targets(lab: dict[str, np.ndarray]) -> np.ndarray:  # its outputs: cvr, ctr, ctcvr
        return np.stack([lab["conversion"], lab["click"], lab["click"] * lab["conversion"]], axis=1)

    train_dl, _, test_dl = DataGenerator(x, targets(labels)).generate_dataloader(
        x_val=xt, y_val=targets(lt), x_test=xt, y_test=targets(lt), batch_size=job["batch"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = MTLTrainer(
            model,
            task_types=["classification"] * 3,
            optimizer_params={"lr": LR, "weight_decay": 0.0},
            n_epoch=job["epochs"],
            model_path=tmp,
        )
        epoch_auc = []
        for _ in range(job["epochs"]):
            start = time.perf_counter()
            trainer.train_one_epoch(train_dl)
            seconds = time.perf_counter() - start
            model.eval()
            with torch.no_grad():  # its predict() expects batches without labels
                p = torch.cat([model(xb) for xb, _ in test_dl]).numpy()
            out: dict[str, Any] = _metrics(lt["click"] * lt["conversion"], p[:, 2])
            epoch_auc.append(out["auc"])
    out |= {"ctr_auc": _metrics(lt["click"], p[:, 1])["auc"], "epoch_auc": epoch_auc}
    return out | {"examples_per_s": len(labels["click"]) / seconds}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One (library, model, dataset, seed) in this process."""
    import torch

    if job["model"] not in SUPPORTS[job["library"]]:  # each library's last branch is its AutoInt
        raise ValueError(f"{job['library']} has no {job['model']}; it has {sorted(SUPPORTS[job['library']])}")

    torch.set_num_threads(2)
    run = {
        "rankers": lambda: _ours(job, adam_tables=False),
        "rankers_adam": lambda: _ours(job, adam_tables=True),
        "deepctr_torch": lambda: _deepctr(job),
        "torch_rechub": lambda: _rechub(job),
    }[job["library"]]
    start = time.perf_counter()
    out = run()
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out
