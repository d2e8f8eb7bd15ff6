"""Training: tables sharded by DistributedModelParallel with fused rowwise Adagrad, dense Adam,
evaluation every epoch, early stopping on the validation score (`TrainConfig.monitor_metric`), and the
best checkpoint kept.

Even in one process the tables go through DMP with TorchRec's fused kernel: an unsharded
EmbeddingBagCollection produces dense gradients for whole tables and was measured an order of
magnitude slower on CPU (../shared/TORCHREC_CPU.md).

`train` opens the staged checkpoint directory; `_loop` is the run itself, over a `RunState`
(rankers.run) that a checkpoint saves for `--resume`.
"""

from __future__ import annotations

import itertools
import logging
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from features.batch import Batch
from features.outputs import staging_path
from rankers.backbones.layers import fixed_shapes
from rankers.checkpoint import CheckpointDir
from rankers.config import RankerConfig, TrainConfig, monitor_score
from rankers.devices import autocast, pinned, resolve_device, resolve_precision, synchronize, to_device
from rankers.distributed import barrier, gather_arrays, init_process_group, is_main
from rankers.evaluation import evaluate_batches
from rankers.pipeline import LossCheck, SparseDistPipeline, check_loss
from rankers.planning import TableSettings
from rankers.ranker import Ranker
from rankers.run import Run, RunState, prepare
from rankers.staging import abort, open_output

log = logging.getLogger(__name__)


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
    device = resolve_device(config.device)  # refuses cuda where there is none, before any work
    precision, why = resolve_precision(config.precision, device)
    TableSettings(device=device, optimizer=config.embedding_optimizer)  # refuses a GPU-only one on CPU
    init_process_group(device)
    if is_main() and config.precision == "auto":
        log.info("precision %s (%s)", precision, why)
    output = open_output(final, overwrite, resume, data)
    ckpt = CheckpointDir(staging_path(final))
    try:
        result = _loop(prepare(data, ckpt, ranker_config, config, device, precision), resume)
        if is_main():
            ckpt.write_metrics(result)
            marker = {"epochs": len(result["history"]), "best_epoch": result["best_epoch"]}
            # rows to score must carry the data's fingerprint
            ckpt.write_marker(marker | {k: result[k] for k in ("processes", "data_fingerprint")})
        barrier()
        if output is not None:
            output.commit()
            log.info("checkpoint complete: %s", final)
    except OSError as e:  # name the output the user asked for, not its staging directory
        abort(output)
        if e.filename and str(e.filename).startswith(str(ckpt.path)):
            raise OSError(e.errno, e.strerror, str(final)) from None
        raise
    except BaseException:
        abort(output)
        raise
    return result


def _loop(run: Run, resume: bool) -> dict[str, Any]:
    """Epochs from where `run` stands until `epochs`, early stopping or `max_steps`; then the best
    weights are evaluated. Returns the metrics."""
    config, state = run.config, _resumed(run) if resume else RunState()
    while state.epoch < config.epochs and not state.stopped:
        if config.max_steps and state.steps_done >= config.max_steps:
            break
        row: dict[str, Any] = {"epoch": state.epoch + 1, **_train_epoch(run, state)}
        score = _validate(run, row)
        state.history.append(row)
        stop = _keep_best(run, state, score)
        state.next_epoch(stopped=stop or bool(config.max_steps and state.steps_done >= config.max_steps))
        if config.checkpoint_every:
            run.save(state)
    run.ckpt.load_weights(run.model)
    return _result(run, state)


def _resumed(run: Run) -> RunState:
    """The state (weights, optimizer, RNG and progress) the run saved last."""
    state = RunState.from_progress(run.ckpt.load_state(run.model, run.optimizer))
    if is_main():
        log.info("resuming %s at epoch %d, step %d", run.ckpt.path, state.epoch + 1, state.step)
        if state.stopped:
            log.info("the run had stopped (early stopping or max_steps): nothing more to train")
    return state


def _train_epoch(run: Run, state: RunState) -> dict[str, float]:
    """One pass over the training split from `state.step` (a resumed epoch skips the batches it
    took: the shuffle is seeded by the epoch), saving state every `checkpoint_every` steps.
    Returns the epoch's mean loss, steps and steady examples/s.

    Nothing here reads a value from the device every step: the loss sum stays on the device and
    is read for the progress bar every 20 steps and when the state is saved."""
    config, epoch, start, device = run.config, state.epoch, state.step, run.device
    run.reader.set_epoch(epoch)
    left = config.max_steps - state.steps_done if config.max_steps else None  # None: no limit
    total = min(run.steps_per_epoch, start + left) if left is not None else run.steps_per_epoch
    warm_steps = start + min(10, (total - start) // 5)
    loss_sum = torch.tensor(state.loss_sum, device=device)
    rows, t_warm, rows_warm = 0, time.perf_counter(), 0
    every, desc = config.checkpoint_every, f"epoch {epoch + 1}"
    losses = LossCheck(config.check_every or (1 if device.type == "cpu" else 50))
    bar = tqdm(total=total, unit="step", desc=desc, disable=not config.progress, dynamic_ncols=True)
    with bar:
        # Batches are read in this thread on CPU: a prefetch thread was measured 20% slower on 2
        # cores (it competes with torch's threads and the GIL); reading costs about 3 ms of a 40 ms
        # step. On a GPU host with cores to spare, `pinned` reads and pins them in a thread.
        bar.update(start)
        todo = itertools.islice(iter(run.reader), start, total)  # the same batches on every rank
        where = lambda i: f"epoch {epoch + 1}, step {start + i + 1}"  # noqa: E731
        for loss, n in _losses(run, pinned(todo, device), where, losses):
            loss_sum += loss.detach()
            state.took_step()
            rows += n
            if every and state.steps_done % every == 0 and state.step < run.steps_per_epoch:
                losses.flush()  # nothing non-finite is saved
                state.loss_sum = float(loss_sum)
                run.save(state)
            if state.step == warm_steps:
                synchronize(device)
                t_warm, rows_warm = time.perf_counter(), rows
            if state.step % 20 == 0 or state.step == total:
                mean = float(loss_sum) / state.step  # waits for the device
                rate = (rows - rows_warm) / max(time.perf_counter() - t_warm, 1e-9)
                bar.set_postfix(loss=f"{mean:.4f}", ex_per_s=f"{rate:,.0f}", refresh=False)
                bar.update(state.step - bar.n)
        losses.flush()
    synchronize(device)
    seconds = time.perf_counter() - t_warm
    state.loss_sum = float(loss_sum)
    return {
        "loss": state.loss_sum / max(state.step, 1),
        "steps": state.step,
        "examples_per_s": (rows - rows_warm) / seconds if seconds > 0 and rows > rows_warm else float("nan"),
    }


def _losses(
    run: Run, batches: Iterator[Batch], where: Callable[[int], str], losses: LossCheck
) -> Iterator[tuple[torch.Tensor, int]]:
    """Trains on each of `batches` (on the host) in turn, yielding (loss, rows) per step: the plain
    loop, or TorchRec's train pipeline with `config.pipeline`. `where(i)` names step i in errors."""
    model, ranker, optimizer, precision = run.model, run.ranker, run.optimizer, run.precision
    if not run.config.pipeline:
        for i, batch in enumerate(batches):
            loss = train_step(model, ranker, optimizer, batch, where(i), precision, run.device, (losses, i))
            yield loss, len(batch)
        return
    pipeline = SparseDistPipeline(model, ranker, optimizer, precision, where, run.device, losses)
    try:
        while True:
            try:
                yield pipeline.progress(batches)
            except StopIteration:
                return
    finally:
        pipeline.detach()  # evaluation calls the model itself


def train_step(
    model: nn.Module,
    ranker: Ranker,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    where: str = "",
    precision: str = "fp32",
    device: torch.device | None = None,
    losses: tuple[LossCheck, int] | None = None,
) -> torch.Tensor:
    """One optimizer step on `batch`; returns the loss. The fused tables update inside backward.

    The batch is validated first, where it is (`EmbeddingArch.check`, ValueError naming the
    feature), then moved to `device` (by default its own). A non-finite loss raises
    `NonFiniteLossError` (a ValueError) before the optimizer steps, or, given `losses` (a check
    and this step's number), when that check next reads its flag (`LossCheck`).
    """
    ranker.embedding.check(batch, where or "this step")
    device = batch.dense.device if device is None else device
    batch = to_device(batch, device)
    optimizer.zero_grad()
    with autocast(device, precision), fixed_shapes(device.type != "cpu"):
        out = model(batch)
    loss, _ = ranker.loss(out, batch.labels)
    loss.backward()
    if losses is None:
        check_loss(loss, where or "this step")  # before Adam takes the step, and before any other
    else:
        losses[0].add(loss, losses[1], where or "this step")
    optimizer.step()
    return loss


def _validate(run: Run, row: dict[str, Any]) -> float | None:
    """Evaluates the epoch of `row` on the validation split (into `row["valid"]`) and logs its line;
    returns its score (`monitor_score`), None without validation rows."""
    score, summary = (
        None,
        f"epoch {row['epoch']}: train loss {row['loss']:.4f} ({row['examples_per_s']:,.0f} ex/s)",
    )
    if "valid" in run.evals:
        row["valid"] = evaluate_batches(
            run.model, run.evals["valid"], run.prior, run.config.progress, "valid", device=run.device
        )
        auc, logloss = row["valid"][run.monitor]["auc"], row["valid"][run.monitor]["logloss"]
        score = monitor_score(run.config.monitor_metric, auc, logloss)
        shown = ["-" if v is None else f"{v:.4f}" for v in (auc, logloss)]
        summary += f", valid {run.monitor} AUC {shown[0]} LogLoss {shown[1]}"
    if is_main():
        log.info(summary)
    return score


def _keep_best(run: Run, state: RunState, score: float | None) -> bool:
    """Early stopping with reduce-on-plateau on the validation `score` of the epoch just trained;
    True when training should stop.

    An epoch with a better score saves its weights. An epoch without one restores the best weights
    and multiplies every learning rate by `lr_decay` (the validation figures of CTR models usually
    peak within an epoch or two, then the tables overfit); optimizer state (Adam moments, Adagrad
    accumulators) is kept. Training stops after `patience` such epochs. Without validation rows
    the last epoch's weights are kept and nothing stops early.
    """
    config = run.config
    if score is None or score > state.best_score:
        state.best_score = state.best_score if score is None else score
        state.best_epoch, state.bad_epochs = state.epoch + 1, 0
        run.ckpt.save_weights(run.model)
        return False
    state.bad_epochs += 1
    if config.lr_decay < 1:
        run.ckpt.load_weights(run.model)
        for group in run.optimizer.param_groups:
            group["lr"] *= config.lr_decay
    return bool(config.patience) and state.bad_epochs >= config.patience


def _result(run: Run, state: RunState) -> dict[str, Any]:
    """metrics.json: the history, the best epoch and the best weights' figures on valid and test."""
    result: dict[str, Any] = {
        "history": state.history,
        "best_epoch": state.best_epoch,
        "prior": run.prior,
        "monitor": run.monitor,
    }
    for name, r in run.evals.items():
        result[name] = evaluate_batches(run.model, r, run.prior, run.config.progress, name, device=run.device)
    result["warnings"] = _selection_warnings(result, run.monitor)
    for w in result["warnings"] if is_main() else ():
        log.warning("%s", w)
    if run.info.get("teacher"):
        result["teacher"] = run.info["teacher"]
    result["data_fingerprint"] = run.fingerprint
    result["train_config"] = asdict(run.config)
    result["processes"] = dist.get_world_size()
    result["precision"] = run.precision
    result["device"] = run.device.type if run.device.type == "cpu" else torch.cuda.get_device_name(run.device)
    result["sharding_plan"] = run.plan
    # Peak resident memory of each process (ru_maxrss is in KiB on Linux).
    rss = np.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    result["peak_rss_mb"] = [float(m) for m in gather_arrays({"m": rss})["m"]]
    return result


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
