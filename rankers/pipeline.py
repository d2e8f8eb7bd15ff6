"""Training through TorchRec's `TrainPipelineSparseDist`.

The pipeline keeps up to three batches in flight: while batch i trains, batch i+1's ids are
already distributed to the ranks owning their table shards (`input_dist`) and batch i+2 is read.
It finds each sharded table module's input by fx-tracing the model, so `EmbeddingArch` calls the
tables on the batch's KJT and does everything else in fx-wrapped functions.

Where it works, measured on CPU with gloo (tests/rankers/test_pipeline.py):
- Every model trains to the same losses and weights as the plain loop, in one and two processes.
- Models without sequences have their pooled tables pipelined.
- Sequence models (DIN, DIEN) run under the pipeline, but their tables are not pipelined: their
  lookups take KJTs built from the batch's (the pooled keys selected, the sequence ids regrouped
  per table), which TorchRec reports as "input modifications" and runs in the forward as usual.
- On CPU nothing overlaps (gloo collectives run in line, there are no streams), so the pipeline
  is for parity with GPU runs, not speed; `TrainConfig.pipeline` is off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from features.batch import Batch
from rankers._quiet import quiet_torchrec
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
    ) -> None:
        self._loss: torch.Tensor | None = None
        self._step, self._fetched, self._where = 0, 0, where
        self._check = ranker.embedding.check

        def forward(batch: Batch | None) -> tuple[torch.Tensor, Any]:
            assert batch is not None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(batch)
            self._loss, _ = ranker.loss(out, batch.labels)
            return self._loss, (self._loss.detach(), len(batch))

        super().__init__(model, optimizer, torch.device("cpu"), custom_model_fwd=forward)

    def _pipeline_model(self, *args: Any, **kwargs: Any) -> None:
        # TorchRec warns on every set-up which tables it could not pipeline (see the module note).
        with quiet_torchrec():
            super()._pipeline_model(*args, **kwargs)

    def _next_batch(self, dataloader_iter: Iterator[Batch]) -> Batch | None:
        batch = super()._next_batch(dataloader_iter)
        if batch is not None:
            self._check(batch, self._where(self._fetched))
            self._fetched += 1
        return batch

    def _optimizer_step(self) -> None:
        assert self._loss is not None
        check_loss(self._loss, self._where(self._step))  # before Adam takes the step, and any other
        self._step += 1
        super()._optimizer_step()
