"""Training: tables sharded by DistributedModelParallel with fused rowwise Adagrad, dense Adam,
evaluation every epoch, early stopping on validation AUC, and the best checkpoint kept.

Even in one process the tables go through DMP with TorchRec's fused kernel: an unsharded
EmbeddingBagCollection produces dense gradients for whole tables and was measured an order of
magnitude slower on CPU (../shared/TORCHREC_CPU.md).
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from features.batch import Batch
from features.dataset import dataset_info, file_fingerprint
from features.outputs import StagedOutput, staging_path
from features.reader import ParquetBatches, find_schema, parquet_files
from features.schema import Schema
from rankers import checkpoint
from rankers.distributed import (
    ShardingConfig,
    barrier,
    describe_plan,
    gather_arrays,
    init_process_group,
    is_main,
    shard_ranker,
)
from rankers.embedding import EmbeddingArch
from rankers.metrics import markdown_table, task_metrics
from rankers.pipeline import SparseDistPipeline, check_loss
from rankers.ranker import Ranker, RankerConfig, build_ranker

log = logging.getLogger(__name__)


MONITOR_METRICS = ("auc-logloss", "auc", "logloss")


def monitor_score(metric: str, auc: float | None, logloss: float | None) -> float | None:
    """The validation score (higher is better) of `metric`; None where it is undefined."""
    if logloss is None or (auc is None and metric != "logloss"):
        return None
    return {"auc-logloss": (auc or 0.0) - logloss, "auc": auc or 0.0, "logloss": -logloss}[metric]


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model itself is a RankerConfig)."""

    epochs: int = 10  # upper bound; early stopping usually ends sooner
    batch_size: int = 4096  # training rows per step
    lr: float = 1e-3  # Adam learning rate of the dense parameters
    weight_decay: float = 0.0  # Adam weight decay of the dense parameters
    embedding_lr: float = 0.05  # fused rowwise Adagrad learning rate of the tables
    patience: int = 2  # stop after this many epochs without a better validation score; 0 = never
    # On an epoch without a better validation score: back to the best weights, learning rates x this.
    lr_decay: float = 0.1
    monitor: str = ""  # task whose validation score selects the epoch; "" = the first task
    # The validation score that selects the epoch (MONITOR_METRICS): "auc-logloss" (AUC minus
    # LogLoss, FuxiCTR's default: an epoch that ranks better but is over-confident does not win),
    # "auc", or "logloss" (lower is better; the one that works when validation has one class).
    monitor_metric: str = "auc-logloss"
    shuffle_buffer: int = 262_144  # rows permuted together when reading the training split
    seed: int = 0  # seeds the weights and the shuffle
    eval_batch_size: int = 16_384  # rows per evaluation step
    threads: int = 0  # torch intra-op threads; 0 keeps the current setting (OMP_NUM_THREADS)
    max_steps: int = 0  # stop after this many steps in all (0 = no limit); for benchmarks
    progress: bool = True  # progress bars with loss and examples/s
    # "bf16": training forward passes under bfloat16 autocast (the dense matmuls in bf16, the
    # tables, softmax, loss and optimizer state in fp32); evaluation stays fp32. "fp32": none.
    precision: str = "fp32"
    sharding: str = "table_wise"  # every table's sharding type (rankers.distributed.SHARDING_TYPES)
    # Per-table exceptions, table -> type (a dict is accepted; `--sharding-tables '{"C3": "row_wise"}'`).
    sharding_tables: tuple[tuple[str, str], ...] | dict[str, str] = ()
    # Save everything `--resume` needs every this many steps (and after each epoch); 0 = never.
    checkpoint_every: int = 0
    # Train through TorchRec's TrainPipelineSparseDist (the next batch's input distribution starts
    # before this batch's forward). Same numbers as the plain loop; on CPU nothing overlaps (no
    # streams), so it is off by default (see rankers.pipeline).
    pipeline: bool = False

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
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {self.precision!r}: expected 'fp32' or 'bf16'")
        if min(self.patience, self.threads, self.max_steps, self.shuffle_buffer, self.checkpoint_every) < 0:
            raise ValueError("patience, threads, max_steps, shuffle_buffer and checkpoint_every must be >= 0")


def label_counts(path: Path, schema: Schema) -> dict[str, tuple[int, int]]:
    """(rows, positives) per task over a split, on the rows where the task is measured: with click
    (ctr) and conversion (cvr) labels, cvr over the clicked rows and ctcvr over every row."""
    sums, rows = dict.fromkeys(schema.tasks, 0), 0
    for f in parquet_files(path):
        table = pq.read_table(f, columns=[lab.name for lab in schema.labels])
        rows += table.num_rows
        for lab in schema.labels:
            sums[lab.task] += int(np.asarray(table.column(lab.name)).sum())
    counts = {t: (rows, s) for t, s in sums.items()}
    if "ctr" in sums and "cvr" in sums:
        counts["ctcvr"] = (rows, sums["cvr"])
        counts["cvr"] = (sums["ctr"], sums["cvr"])
    return counts


def label_prior(path: Path, schema: Schema) -> dict[str, float]:
    """Mean of each label over a split (`label_counts`): the constant-prior baseline's prediction."""
    return {t: pos / rows if rows else 0.0 for t, (rows, pos) in label_counts(path, schema).items()}


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[Batch], progress: bool = False, desc: str = "eval"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Probabilities and labels per task over `batches` (model put in eval mode and back), and the
    batches' user ids (for gAUC) when they carry them, else None.

    Each batch is validated first (`EmbeddingArch.check`: ids within their tables, finite dense
    values), and a non-finite output raises ValueError naming the task and the row (its index in
    the returned arrays) instead of passing off a NaN probability.
    """
    was_training = model.training
    model.eval()
    check = _batch_check(model)
    probs: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    groups: list[np.ndarray] = []
    rows = 0
    total = len(batches) if isinstance(batches, Sized) else None
    with tqdm(total=total, unit="batch", desc=desc, disable=not progress, leave=False) as bar:
        for i, batch in enumerate(batches):
            if check is not None:
                check(batch, f"batch {i + 1}")
            out = model(batch)
            for t, logit in out.logits.items():
                _check_output(t, logit, rows)
                probs.setdefault(t, []).append(torch.sigmoid(logit.float()).numpy())
            rows += len(batch)
            for t, y in batch.labels.items():
                labels.setdefault(t, []).append(y.numpy())
            if batch.groups is not None:
                groups.append(batch.groups.numpy())
            bar.update()
    model.train(was_training)
    return (
        {t: np.concatenate(v) for t, v in probs.items()},
        {t: np.concatenate(v) for t, v in labels.items()},
        np.concatenate(groups) if groups else None,
    )


def _batch_check(model: nn.Module) -> Callable[[Batch, str], None] | None:
    """The batch check of the ranker inside `model` (plain, or wrapped by DistributedModelParallel)."""
    return next((m.check for m in model.modules() if isinstance(m, EmbeddingArch)), None)


def _check_output(task: str, logit: torch.Tensor, first_row: int) -> None:
    """Raises ValueError naming `task` and the first row (counted from `first_row`) of a NaN or
    infinite logit: a model with NaN weights must not pass off NaN probabilities."""
    if not logit.numel():
        return
    low, high = torch.aminmax(logit.detach().float())
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return
    row = int((~torch.isfinite(logit)).nonzero()[0])
    raise ValueError(
        f"task {task!r}: the model's output (logit) is {float(logit[row])} at row {first_row + row}, "
        "expected finite values (are the checkpoint's weights NaN or infinite?)"
    )


def evaluate_batches(
    model: nn.Module,
    batches: ParquetBatches,
    prior: dict[str, float],
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, dict[str, Any]]:
    """AUC, LogLoss and the prior's LogLoss per task, and gAUC when the schema names a user column."""
    probs, labels, groups = predict(model, batches, progress=progress, desc=desc)
    # Each rank predicted its own rows: the metrics are over all of them, the same on every rank.
    gathered = gather_arrays(
        {
            **{f"p_{t}": v for t, v in probs.items()},
            **{f"y_{t}": v for t, v in labels.items()},
            "groups": groups,
        }
    )
    probs = {t: gathered[f"p_{t}"] for t in probs}
    labels = {t: gathered[f"y_{t}"] for t in labels}
    return task_metrics(probs, labels, prior, gathered["groups"])


def train_step(
    model: nn.Module,
    ranker: Ranker,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    where: str = "",
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimizer step on `batch`; returns the loss. The fused tables update inside backward.

    The batch is validated first (`EmbeddingArch.check`, ValueError naming the feature); a
    non-finite loss raises `NonFiniteLossError` (a ValueError) before the optimizer steps.
    """
    ranker.embedding.check(batch, where or "this step")
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(batch)
    loss, _ = ranker.loss(out, batch.labels)
    loss.backward()
    check_loss(loss, where or "this step")  # before Adam takes the step, and before any other
    optimizer.step()
    return loss


def _losses(
    model: nn.Module,
    ranker: Ranker,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    config: TrainConfig,
    where: Callable[[int], str],
) -> Iterator[tuple[torch.Tensor, int]]:
    """Trains on each of `batches` in turn, yielding (loss, rows) per step: the plain loop, or
    TorchRec's train pipeline with `config.pipeline`. `where(i)` names step i in errors."""
    if not config.pipeline:
        for i, batch in enumerate(batches):
            yield train_step(model, ranker, optimizer, batch, where(i), config.precision), len(batch)
        return
    pipeline = SparseDistPipeline(model, ranker, optimizer, config.precision, where)
    try:
        while True:
            try:
                yield pipeline.progress(batches)
            except StopIteration:
                return
    finally:
        pipeline.detach()  # evaluation calls the model itself


def _epoch(
    model: nn.Module,
    ranker: Ranker,
    optimizer: torch.optim.Optimizer,
    batches: ParquetBatches,
    epoch: int,
    config: TrainConfig,
    steps_left: int | None,
    steps_per_epoch: int,
    start: int = 0,
    loss_start: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """One pass over the training split; returns mean loss, steps and steady examples/s. A resumed
    epoch skips its first `start` batches (the same ones: the shuffle is seeded by the epoch) and
    carries on the loss sum; `on_step(steps, loss_sum)` follows every step."""
    batches.set_epoch(epoch)
    total = min(steps_per_epoch, start + steps_left) if steps_left is not None else steps_per_epoch
    warm_steps = start + min(10, (total - start) // 5)
    loss_sum, steps, rows, t_warm, rows_warm = torch.tensor(loss_start), start, 0, time.perf_counter(), 0
    with tqdm(
        total=total, unit="step", desc=f"epoch {epoch + 1}", disable=not config.progress, dynamic_ncols=True
    ) as bar:
        # Batches are read in this thread: a prefetch thread was measured 20% slower on 2 cores
        # (it competes with torch's threads and the GIL); reading costs about 3 ms of a 40 ms step.
        bar.update(start)
        todo = itertools.islice(iter(batches), start, total)  # the same batches on every rank
        for loss, n in _losses(
            model, ranker, optimizer, todo, config, lambda i: f"epoch {epoch + 1}, step {start + i + 1}"
        ):
            loss_sum += loss.detach()
            steps += 1
            rows += n
            if on_step is not None:
                on_step(steps, float(loss_sum))
            if steps == warm_steps:
                t_warm, rows_warm = time.perf_counter(), rows
            if steps % 20 == 0 or steps == total:
                mean = float(loss_sum) / steps
                rate = (rows - rows_warm) / max(time.perf_counter() - t_warm, 1e-9)
                bar.set_postfix(loss=f"{mean:.4f}", ex_per_s=f"{rate:,.0f}", refresh=False)
                bar.update(steps - bar.n)
    seconds = time.perf_counter() - t_warm
    return {
        "loss": float(loss_sum) / max(steps, 1),
        "steps": steps,
        "examples_per_s": (rows - rows_warm) / seconds if seconds > 0 and rows > rows_warm else float("nan"),
    }


class _BestWeights:
    """Early stopping with reduce-on-plateau on the validation score (`monitor_score`).

    An epoch with a better score saves its weights. An epoch without one restores the best weights
    and multiplies every learning rate by `lr_decay` (the validation figures of CTR models usually
    peak within an epoch or two, then the tables overfit); optimizer state (Adam moments, Adagrad
    accumulators) is kept. Training stops after `patience` such epochs. Without validation rows
    the last epoch's weights are kept and nothing stops early.
    """

    def __init__(
        self,
        ckpt: checkpoint.CheckpointDir,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
    ) -> None:
        self.ckpt, self.model, self.optimizer, self.config = ckpt, model, optimizer, config
        self.best_score, self.best_epoch, self.bad_epochs = -math.inf, 0, 0

    def end_epoch(self, epoch: int, score: float | None) -> bool:
        """Saves or restores weights after `epoch` (1-based); True when training should stop."""
        if score is None or score > self.best_score:
            self.best_score = self.best_score if score is None else score
            self.best_epoch, self.bad_epochs = epoch, 0
            self.ckpt.save_weights(self.model)
            return False
        self.bad_epochs += 1
        if self.config.lr_decay < 1:
            self.ckpt.load_weights(self.model)
            for group in self.optimizer.param_groups:
                group["lr"] *= self.config.lr_decay
        return bool(self.config.patience) and self.bad_epochs >= self.config.patience


def _check_validation(
    data: Path, evals: dict[str, ParquetBatches], schema: Schema, monitor: str, metric: str
) -> None:
    """ValueError when the validation split cannot select the epoch by `metric`: AUC is undefined
    on a split where the monitored task has one class. Without validation rows, a warning."""
    if "valid" not in evals:
        if is_main():
            log.warning("%s: no validation rows: no early stopping, the last epoch is kept", data)
        return
    rows, positives = label_counts(evals["valid"].path, schema)[monitor]
    if rows == 0:  # cvr with no click in the validation split
        raise ValueError(
            f"{evals['valid'].path}: no rows where task {monitor!r} is measured (its click label has "
            "no positive there), so nothing can select the epoch; monitor another task (--monitor) "
            "or convert with a validation split that holds clicks"
        )
    if metric != "logloss" and positives in (0, rows):
        only = "negatives" if positives == 0 else "positives"
        raise ValueError(
            f"{evals['valid'].path}: task {monitor!r} has only {only} ({positives} positives in {rows} "
            f"rows), so its AUC is undefined and cannot select the epoch (--monitor-metric {metric}); "
            "pass --monitor-metric logloss, or convert with a validation split that holds both classes"
        )


def _selection_warnings(result: dict[str, Any], monitor: str) -> list[str]:
    """What a user must know about the selected epoch: validation LogLoss worse than the prior's."""
    valid = result.get("valid", {}).get(monitor)
    if not valid or valid.get("logloss") is None or valid.get("prior_logloss") is None:
        return []
    if valid["logloss"] <= valid["prior_logloss"]:
        return []
    return [
        f"the selected epoch {result['best_epoch']} has validation {monitor} LogLoss {valid['logloss']:.4f}, "
        f"worse than the constant prior's {valid['prior_logloss']:.4f}: its probabilities are "
        "over-confident (calibrate before bidding, or train with more regularisation)"
    ]


def _readers(
    data: Path, schema: Schema, config: TrainConfig, rank: int = 0, world: int = 1
) -> tuple[ParquetBatches, dict[str, ParquetBatches]]:
    """This rank's shuffled training reader (its share of `batch_size`) and evaluation readers of
    the splits that hold rows."""
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must divide among {world} processes")
    per_rank = config.batch_size // world
    reader = ParquetBatches(
        data / "train",
        per_rank,
        config.shuffle_buffer,
        config.seed,
        schema=schema,
        rank=rank,
        world_size=world,
    )
    if _fewest(reader.num_rows) == 0:  # decided on every rank alike, so none is left waiting
        raise ValueError(f"{data}/train: no training rows for every process")
    # Drop each epoch's short last batch (one row would break batch norm); shuffling varies it.
    reader.drop_last = reader.num_rows >= per_rank
    evals = {}
    for split in ("valid", "test"):
        if (data / split).is_dir():
            r = ParquetBatches(
                data / split, config.eval_batch_size, schema=schema, rank=rank, world_size=world
            )
            fewest, most = _fewest(len(r)), -_fewest(-len(r))  # each eval step is collective too
            if fewest != most:
                raise ValueError(
                    f"{data}/{split}: {fewest} to {most} batches per process; change --eval-batch-size"
                )
            if r.num_rows:
                evals[split] = r
    return reader, evals


def _fewest(n: int) -> int:
    """The smallest `n` over the ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def train(
    data: str | Path,
    out: str | Path,
    ranker_config: RankerConfig = RankerConfig(),
    config: TrainConfig = TrainConfig(),
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Trains on `data/train`, early-stops on `data/valid`, evaluates the best weights on
    `data/test`, and leaves a checkpoint directory at `out` (see rankers.checkpoint).

    Args:
        data: a dataset directory with `train/` and optionally `valid/`, `test/`.
        out: the checkpoint directory to create; an existing one is replaced only with `overwrite`.
        ranker_config: the model.
        config: how to train it.
        overwrite: replace an existing checkpoint directory at `out`.
        resume: continue the run whose checkpoint directory is `out` from its last saved state
            (`checkpoint_every`): weights, optimizer state, RNG, the epoch and the step within it.

    Returns:
        The metrics written to `out/metrics.json`: per-epoch history, best epoch, valid and test
        metrics per task, the prior, and the teacher's figures for synthetic data.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    data, final = Path(data), Path(out).absolute()
    init_process_group()
    output = _open_output(final, overwrite, resume, data)
    ckpt = checkpoint.CheckpointDir(staging_path(final))
    try:
        result = _run(data, ckpt, ranker_config, config, resume)
        if is_main():
            ckpt.write_metrics(result)
            history = result["history"]
            ckpt.write_marker(
                {
                    "epochs": len(history),
                    "best_epoch": result["best_epoch"],
                    "processes": result["processes"],
                    "data_fingerprint": result["data_fingerprint"],  # rows to score must carry it
                }
            )
        barrier()
        if output is not None:
            output.commit()
            log.info("checkpoint complete: %s", final)
    except OSError as e:  # name the output the user asked for, not its staging directory
        _abort(output)
        if e.filename and str(e.filename).startswith(str(ckpt.path)):
            raise OSError(e.errno, e.strerror, str(final)) from None
        raise
    except BaseException:
        _abort(output)
        raise
    return result


def _abort(output: StagedOutput | None) -> None:
    """Rank 0 removes what a failed run staged, or keeps it where it can be resumed."""
    if output is None:
        return
    output.keep_on_error = checkpoint.keep_unfinished(output)
    if output.keep_on_error:
        log.warning(
            "the unfinished run stays at %s: `rankers train --resume %s` continues it",
            output.staging,
            output.final,
        )
    output.abort()


def _open_output(final: Path, overwrite: bool, resume: bool, data: Path) -> StagedOutput | None:
    """Rank 0 opens the run's staged checkpoint (`checkpoint.open_run`); every rank raises if it
    could not, so none is left waiting in a collective."""
    output, error = None, None
    if is_main():
        try:
            output = checkpoint.open_run(final, overwrite, resume, [data])
        except BaseException as e:
            error = e
    message = [None if error is None else str(error)]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise ValueError(message[0])
    return output


def _run(
    data: Path, ckpt: checkpoint.CheckpointDir, ranker_config: RankerConfig, config: TrainConfig, resume: bool
) -> dict[str, Any]:
    """`train` into the staged checkpoint directory `ckpt`; returns the metrics."""
    train_split = data / "train"
    if not train_split.is_dir():
        splits = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        raise ValueError(
            f"{data}: no train split (its splits: {', '.join(splits) or 'none'}); expected a dataset "
            "converted with labels (rows without labels are for `rankers predict`)"
        )
    info = dataset_info(data)  # read strictly, before any work
    schema = find_schema(train_split)
    reader_files = parquet_files(train_split)
    rank, world = dist.get_rank(), dist.get_world_size()
    if not is_main():
        config = replace(config, progress=False)
    reader, evals = _readers(data, schema, config, rank, world)
    steps_per_epoch = _fewest(len(reader))  # every rank takes the same steps (they are collective)
    prior = label_prior(reader.path, schema)
    torch.manual_seed(config.seed)
    ranker = build_ranker(schema, ranker_config, device=torch.device("meta"))
    monitor = config.monitor or ranker.tasks[0]
    if monitor not in ranker.tasks:
        raise ValueError(f"monitor task {monitor!r} is not among the model's tasks {ranker.tasks}")
    _check_validation(data, evals, schema, monitor, config.monitor_metric)
    sharding = ShardingConfig(config.sharding, config.sharding_tables)
    model, optimizer = shard_ranker(ranker, config.lr, config.weight_decay, config.embedding_lr, sharding)
    plan = describe_plan(model.plan, ranker, world)
    columns = list(plan[0]) if plan else []
    if is_main():
        log.info("sharding plan:\n%s", markdown_table(plan, columns))
        ckpt.write_config(schema, ranker_config, config, data, prior)  # resumed: its new --epochs
    best = _BestWeights(ckpt, model, optimizer, config)
    saved: dict[str, Any] = {"epoch": 0, "step": 0, "steps_done": 0, "loss_sum": 0.0, "history": []}
    if resume:
        saved = ckpt.load_state(model, optimizer)
        best.best_score, best.best_epoch, best.bad_epochs = saved["best"]
        if is_main():
            log.info("resuming %s at epoch %d, step %d", ckpt.path, saved["epoch"] + 1, saved["step"])
            if saved.get("stopped"):
                log.info("the run had stopped (early stopping or max_steps): nothing more to train")
    history: list[dict[str, Any]] = saved["history"]
    steps_done = int(saved["steps_done"])

    def save(epoch: int, step: int, loss_sum: float, done: int, stopped: bool = False) -> None:
        best_state = [best.best_score, best.best_epoch, best.bad_epochs]
        progress = {
            "epoch": epoch,
            "step": step,
            "steps_done": done,
            "loss_sum": loss_sum,
            "stopped": stopped,
        }
        ckpt.save_state(model, optimizer, progress | {"history": history, "best": best_state})

    for epoch in range(int(saved["epoch"]), 0 if saved.get("stopped") else config.epochs):
        start = int(saved["step"]) if epoch == saved["epoch"] else 0
        steps_left = config.max_steps - steps_done if config.max_steps else None  # None: no limit
        if steps_left is not None and steps_left <= 0:
            break

        def on_step(
            steps: int, loss_sum: float, epoch: int = epoch, start: int = start, base: int = steps_done
        ) -> None:
            done = base + steps - start
            if config.checkpoint_every and done % config.checkpoint_every == 0 and steps < steps_per_epoch:
                save(epoch, steps, loss_sum, done)

        loss_start = float(saved["loss_sum"]) if start else 0.0
        stats = _epoch(
            model,
            ranker,
            optimizer,
            reader,
            epoch,
            config,
            steps_left,
            steps_per_epoch,
            start,
            loss_start,
            on_step,
        )
        steps_done += int(stats["steps"]) - start
        row: dict[str, Any] = {"epoch": epoch + 1, **stats}
        score, summary = (
            None,
            f"epoch {epoch + 1}: train loss {stats['loss']:.4f} ({stats['examples_per_s']:,.0f} ex/s)",
        )
        if "valid" in evals:
            row["valid"] = evaluate_batches(model, evals["valid"], prior, config.progress, "valid")
            auc, logloss = row["valid"][monitor]["auc"], row["valid"][monitor]["logloss"]
            score = monitor_score(config.monitor_metric, auc, logloss)
            shown = ["-" if v is None else f"{v:.4f}" for v in (auc, logloss)]
            summary += f", valid {monitor} AUC {shown[0]} LogLoss {shown[1]}"
        if is_main():
            log.info(summary)
        history.append(row)
        stop = best.end_epoch(epoch + 1, score)
        stop = bool(stop or (config.max_steps and steps_done >= config.max_steps))
        if config.checkpoint_every:
            save(epoch + 1, 0, 0.0, steps_done, stop)
        if stop:
            break
    ckpt.load_weights(model)
    result: dict[str, Any] = {
        "history": history,
        "best_epoch": best.best_epoch,
        "prior": prior,
        "monitor": monitor,
    }
    for name, r in evals.items():
        result[name] = evaluate_batches(model, r, prior, config.progress, name)
    result["warnings"] = _selection_warnings(result, monitor)
    for w in result["warnings"] if is_main() else ():
        log.warning("%s", w)
    teacher = info.get("teacher")
    if teacher:
        result["teacher"] = teacher
    result["data_fingerprint"] = file_fingerprint(reader_files[0])
    result["train_config"] = asdict(config)
    result["processes"] = world
    result["sharding_plan"] = plan
    # Peak resident memory of each process (ru_maxrss is in KiB on Linux).
    result["peak_rss_mb"] = [
        float(m)
        for m in gather_arrays({"m": np.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])})[
            "m"
        ]
    ]
    return result
