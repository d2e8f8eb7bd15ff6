"""A training run's two halves: `Run`, what is fixed once it starts (the sharded model and its
optimizer, the readers, the prior, the monitored task), built and checked by `prepare`; and
`RunState`, what changes step by step (epoch, step, loss, history, the best epoch), saved in the
checkpoint's `state/progress.json` for `--resume`.

The RNG state of every rank and the learning rates travel with the optimizer state
(`rankers.checkpoint.CheckpointDir.save_state`); everything else that a resumed run needs to take
the same steps is here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from features.dataset import dataset_info, file_fingerprint
from features.reader import ParquetBatches, find_schema, parquet_files
from features.schema import Schema
from rankers.checkpoint import CheckpointDir
from rankers.config import RankerConfig, ShardingConfig, TrainConfig
from rankers.devices import resolve_precision
from rankers.distributed import is_main, shard_ranker
from rankers.embedding import default_sequence_lookup
from rankers.evaluation import label_counts, label_prior
from rankers.metrics import markdown_table
from rankers.planning import TableSettings, describe_plan
from rankers.ranker import Ranker, build_ranker

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run stands. `epoch` is the 0-based epoch in progress (the number finished), `step`
    the steps taken in it and `loss_sum` their summed loss (a resumed epoch skips those batches
    and carries the sum on), `steps_done` the steps of the whole run (for `max_steps`)."""

    epoch: int = 0
    step: int = 0
    steps_done: int = 0
    loss_sum: float = 0.0
    stopped: bool = False  # by early stopping or max_steps: a resumed run trains no more
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per finished epoch
    best_score: float = -math.inf  # the best validation score (`monitor_score`) so far
    best_epoch: int = 0  # 1-based epoch of the best score, whose weights are kept
    bad_epochs: int = 0  # epochs since the best one

    def to_progress(self) -> dict[str, Any]:
        """The JSON of `state/progress.json` (the keys the checkpoint format has always had)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "steps_done": self.steps_done,
            "loss_sum": self.loss_sum,
            "stopped": self.stopped,
            "history": self.history,
            "best": [self.best_score, self.best_epoch, self.bad_epochs],
        }

    @classmethod
    def from_progress(cls, progress: dict[str, Any]) -> RunState:
        """The state `to_progress` wrote (`CheckpointDir.load_state` returns it)."""
        best_score, best_epoch, bad_epochs = progress["best"]
        return cls(
            epoch=int(progress["epoch"]),
            step=int(progress["step"]),
            steps_done=int(progress["steps_done"]),
            loss_sum=float(progress["loss_sum"]),
            stopped=bool(progress.get("stopped")),
            history=progress["history"],
            best_score=best_score,
            best_epoch=best_epoch,
            bad_epochs=bad_epochs,
        )

    def took_step(self) -> None:
        """Counts a training step (the loop sets `loss_sum` before the state is saved: reading the
        loss every step would wait for the GPU every step)."""
        self.step, self.steps_done = self.step + 1, self.steps_done + 1

    def next_epoch(self, stopped: bool) -> None:
        """Moves on after an epoch's end."""
        self.epoch, self.step, self.loss_sum, self.stopped = self.epoch + 1, 0, 0.0, stopped


@dataclass
class Run:
    """What a training run is made of, fixed once it starts (`prepare`)."""

    config: TrainConfig
    ckpt: CheckpointDir  # the staged checkpoint directory
    ranker: Ranker
    model: nn.Module  # the ranker wrapped by DistributedModelParallel
    optimizer: torch.optim.Optimizer
    reader: ParquetBatches  # this rank's shuffled training rows
    evals: dict[str, ParquetBatches]  # "valid" and "test" where they hold rows
    steps_per_epoch: int  # the same on every rank (each step is collective)
    prior: dict[str, float]  # task -> positive rate of the training rows
    monitor: str  # the task whose validation score selects the epoch
    plan: list[dict[str, Any]]  # the sharding plan, a row per table
    info: dict[str, Any]  # the dataset's dataset.json
    train_files: list[Path]  # the training split's parquet files
    device: torch.device  # where the model computes (`TrainConfig.device` resolved)
    precision: str  # the training forward's, fp32 or bf16 (`TrainConfig.precision` resolved)

    @property
    def fingerprint(self) -> str | None:
        """The training data's (`features.dataset.file_fingerprint`): rows to score must carry it."""
        return file_fingerprint(self.train_files[0])

    def save(self, state: RunState) -> None:
        """Everything `--resume` needs to continue from `state`."""
        self.ckpt.save_state(self.model, self.optimizer, state.to_progress())


def prepare(
    data: Path,
    ckpt: CheckpointDir,
    ranker_config: RankerConfig,
    config: TrainConfig,
    device: torch.device = torch.device("cpu"),
    precision: str = "",
) -> Run:
    """Checks `data`, builds the readers and the sharded model on `device` (seeded by
    `config.seed`), and on rank 0 logs the sharding plan and writes the checkpoint's schema.json
    and config.json (with the sequence lookup of `device` where the config leaves it unset)."""
    train_split = data / "train"
    if not train_split.is_dir():
        splits = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        raise ValueError(
            f"{data}: no train split (its splits: {', '.join(splits) or 'none'}); expected a dataset "
            "converted with labels (rows without labels are for `rankers predict`)"
        )
    info = dataset_info(data)  # read strictly, before any work
    schema = find_schema(train_split)
    train_files = parquet_files(train_split)
    world = dist.get_world_size()
    if not is_main():
        config = replace(config, progress=False)
    reader, evals = _readers(data, schema, config, dist.get_rank(), world)
    steps_per_epoch = fewest(len(reader))  # every rank takes the same steps (they are collective)
    prior = label_prior(reader.path, schema)
    torch.manual_seed(config.seed)
    if not ranker_config.sequence_lookup:
        ranker_config = replace(ranker_config, sequence_lookup=default_sequence_lookup(device))
    ranker = build_ranker(schema, ranker_config, device=torch.device("meta"))
    monitor = config.monitor or ranker.tasks[0]
    if monitor not in ranker.tasks:
        raise ValueError(f"monitor task {monitor!r} is not among the model's tasks {ranker.tasks}")
    _check_validation(data, evals, schema, monitor, config.monitor_metric)
    sharding = ShardingConfig(config.sharding, config.sharding_tables)
    settings = TableSettings(
        device=device,
        optimizer=config.embedding_optimizer,
        hbm_cap=config.hbm_cap_mb * 2**20 or None,
        cache_load_factor=config.cache_load_factor,
        batch_size=config.batch_size // world,
    )
    model, optimizer = shard_ranker(
        ranker, config.lr, config.weight_decay, config.embedding_lr, sharding, settings
    )
    plan = describe_plan(model.plan, ranker, world)
    if is_main():
        log.info("sharding plan:\n%s", markdown_table(plan, list(plan[0]) if plan else []))
        ckpt.write_config(schema, ranker_config, config, data, prior)  # resumed: its new --epochs
    return Run(
        config=config,
        ckpt=ckpt,
        ranker=ranker,
        model=model,
        optimizer=optimizer,
        reader=reader,
        evals=evals,
        steps_per_epoch=steps_per_epoch,
        prior=prior,
        monitor=monitor,
        plan=plan,
        info=info,
        train_files=train_files,
        device=device,
        precision=precision or resolve_precision(config.precision, device)[0],
    )


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
    if fewest(reader.num_rows) == 0:  # decided on every rank alike, so none is left waiting
        raise ValueError(f"{data}/train: no training rows for every process")
    # Drop each epoch's short last batch (one row would break batch norm); shuffling varies it.
    reader.drop_last = reader.num_rows >= per_rank
    evals = {}
    for split in ("valid", "test"):
        if (data / split).is_dir():
            r = ParquetBatches(
                data / split, config.eval_batch_size, schema=schema, rank=rank, world_size=world
            )
            least, most = fewest(len(r)), -fewest(-len(r))  # each eval step is collective too
            if least != most:
                raise ValueError(
                    f"{data}/{split}: {least} to {most} batches per process; change --eval-batch-size"
                )
            if r.num_rows:
                evals[split] = r
    return reader, evals


def fewest(n: int) -> int:
    """The smallest `n` over the ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


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
