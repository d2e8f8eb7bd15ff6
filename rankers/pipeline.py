"""Training through TorchRec's `TrainPipelineSparseDist`.

The pipeline keeps up to three batches in flight: while batch i trains, batch i+1's ids are
already distributed to the ranks owning their table shards (`input_dist`) and batch i+2 is read.
It finds each sharded table module's input by fx-tracing the model, so `EmbeddingArch` calls the
tables on KJTs taken from the batch and does everything else in fx-wrapped functions.

Where it works, measured on CPU with gloo (tests/rankers/test_pipeline.py):
- Every model trains to the same losses and weights as the plain loop, in one and two processes.
- Every table module is pipelined, sequence models' too: each batch, checked on the host, gets
  the KJT of each table module (`EmbeddingArch.table_inputs`: the pooled keys; the sequence
  tables' keys, or their ids one per bag) as `Batch.tables` before TorchRec copies it, and the
  model takes them from there while the pipeline runs (`EmbeddingArch.inputs_from_batch`).
- On CPU nothing overlaps (gloo collectives run in line, there are no streams), so the pipeline
  is for parity with GPU runs, not speed; `TrainConfig.pipeline` is off by default.
- On CUDA the pipeline copies each batch from pinned memory on its own stream and distributes its
  ids while the previous batch computes; the loss is checked every `TrainConfig.check_every` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from features.batch import Batch
from rankers._quiet import quiet_torchrec
from rankers.backbones.layers import fixed_shapes
from rankers.devices import autocast
from rankers.ranker import Ranker


class NonFiniteLossError(FloatingPointError, ValueError):
    """A training loss that became NaN or infinite; a ValueError, so the CLI prints one line."""


def check_loss(loss: torch.Tensor, where: str) -> None:
    """Raises NonFiniteLossError naming `where` unless `loss` is finite (call before the optimizer
    steps: the fused tables have already updated in backward, Adam has not)."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {float(loss.detach())} at {where}; expected a finite loss "
            "(lower the learning rates, or check the data for extreme dense values)"
        )


class LossCheck:
    """The finite-loss check of a training loop, every `every` steps.

    With `every` 1 each step's loss is read before the optimizer steps (`check_loss`). Otherwise
    (on a GPU, where reading a value waits for every queued kernel) each step only folds its loss
    into a flag on the device, read every `every` steps and by `flush()`; the error still names the
    first non-finite step, and says how many more steps the weights took after it.

    Example:
        >>> losses = LossCheck(every=50)
        >>> losses.add(loss, step=i, where=f"step {i + 1}")   # before optimizer.step()
        >>> losses.flush()                                     # before saving or evaluating
    """

    def __init__(self, every: int = 1) -> None:
        self.every = max(1, every)
        self._first: torch.Tensor | None = None  # the first bad step's index, -1 while none
        self._value: torch.Tensor | None = None  # its loss
        self._names: dict[int, str] = {}
        self._pending = 0
        self._last = ""

    def add(self, loss: torch.Tensor, step: int, where: str) -> None:
        """Checks (or records for the next check) the loss of the step numbered `step`."""
        if self.every == 1:
            check_loss(loss, where)
            return
        loss = loss.detach().float()
        if self._first is None or self._value is None:
            self._first, self._value = torch.full((), -1, device=loss.device), loss.new_zeros(())
        bad = ~torch.isfinite(loss) & (self._first < 0)
        self._first = torch.where(bad, step, self._first)
        self._value = torch.where(bad, loss, self._value)
        self._names[step], self._pending, self._last = where, self._pending + 1, where
        if self._pending >= self.every:
            self.flush()

    def flush(self) -> None:
        """Reads the recorded flag: NonFiniteLossError naming the first non-finite step, if any."""
        if self._first is None or self._value is None or not self._pending:
            return
        first = int(self._first)  # the one read from the device
        names, last = self._names, self._last
        self._pending, self._names = 0, {}
        if first >= 0:
            raise NonFiniteLossError(
                f"training loss became {float(self._value)} at {names.get(first, first)}; expected a "
                "finite loss (lower the learning rates, or check the data for extreme dense values). "
                f"The loss is checked every {self.every} steps on this device: the weights took the "
                f"steps up to {last}, and nothing was saved after the bad step"
            )


class SparseDistPipeline(TrainPipelineSparseDist[Batch, tuple[torch.Tensor, int]]):
    """TorchRec's pipeline over a DistributedModelParallel `model` of `ranker`: each `progress()`
    trains one batch and returns (its loss, its rows). Each batch is validated as it is taken from
    the iterator (`ranker.embedding.check`), before its ids are distributed, and a non-finite loss
    raises before the optimizer steps; both name the step with `where(i)` (i counts from 0)."""

    def __init__(
        self,
        model: nn.Module,
        ranker: Ranker,
        optimizer: torch.optim.Optimizer,
        precision: str = "fp32",
        where: Callable[[int], str] = str,
        device: torch.device = torch.device("cpu"),
        losses: LossCheck | None = None,
    ) -> None:
        self._loss: torch.Tensor | None = None
        self._step, self._fetched, self._where = 0, 0, where
        self._check = ranker.embedding.check
        # Every table module takes its KJT from the batch (`Batch.tables`, built in `_next_batch`),
        # so TorchRec finds them all when it traces the model, and pipelines them all.
        self._embedding = ranker.embedding
        self._embedding.inputs_from_batch = True
        self._pin = device.type != "cpu"
        self._losses = losses or LossCheck()

        def forward(batch: Batch | None) -> tuple[torch.Tensor, Any]:
            assert batch is not None
            with autocast(device, precision), fixed_shapes(device.type != "cpu"):
                out = model(batch)
            self._loss, _ = ranker.loss(out, batch.labels)
            return self._loss, (self._loss.detach(), len(batch))

        super().__init__(model, optimizer, device, custom_model_fwd=forward)

    def _pipeline_model(self, *args: Any, **kwargs: Any) -> None:
        # TorchRec warns on every set-up which tables it could not pipeline (see the module note).
        with quiet_torchrec():
            super()._pipeline_model(*args, **kwargs)

    def _next_batch(self, dataloader_iter: Iterator[Batch]) -> Batch | None:
        batch = super()._next_batch(dataloader_iter)
        if batch is not None:
            self._check(batch, self._where(self._fetched))
            tables = self._embedding.table_inputs(batch.sparse)  # on the host, before the copy
            if self._pin:  # so their copy overlaps the compute too
                tables = {k: v if v is batch.sparse else v.pin_memory() for k, v in tables.items()}
            batch.tables = tables
            self._fetched += 1
        return batch

    def detach(self) -> nn.Module:
        """The model with its own forward again (for evaluation): the tables take KJTs built from
        the batch's in the forward."""
        self._embedding.inputs_from_batch = False
        return super().detach()

    def _optimizer_step(self) -> None:
        assert self._loss is not None
        self._losses.add(self._loss, self._step, self._where(self._step))  # before Adam's step
        self._step += 1
        super()._optimizer_step()
