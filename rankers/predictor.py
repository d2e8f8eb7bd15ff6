"""`Predictor`: a trained ranker loaded from its checkpoint directory alone, for new rows.

Example:
    >>> predictor = Predictor.load("runs/mlp")
    >>> predictor.predict_proba("data/criteo/test")      # {"ctr": array of shape (N,)}

Probabilities are calibrated where the checkpoint holds a calibration (`rankers calibrate`), and
`calibrated` says whether it does; `raw=True` gives the model's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import torch

from features.batch import Batch
from features.dataset import FINGERPRINT_KEY, file_fingerprint
from features.reader import ParquetBatches, find_schema, parquet_files, table_batches
from features.schema import Schema
from rankers._quiet import quiet_torchrec
from rankers.calibration import Calibration
from rankers.checkpoint import CheckpointDir
from rankers.evaluation import predict, task_metrics
from rankers.ranker import Ranker, build_ranker

Rows: TypeAlias = str | Path | pa.Table | Batch


class Predictor:
    """Probabilities per task from a checkpoint directory written by `rankers train`.

    The tables are plain (unsharded) EmbeddingBagCollections on CPU: inference needs no
    backward, so the fused kernels' advantage does not apply.

    Args:
        ranker: the model, in eval mode.
        schema: the training data's schema (labels included).
        prior: training base rate per task, for the constant-prior baseline.
    """

    def __init__(
        self,
        ranker: Ranker,
        schema: Schema,
        prior: dict[str, float] | None = None,
        path: Path | None = None,
        calibration: Calibration | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.ranker = ranker.eval()
        self.schema = schema
        self.prior = prior or {}
        self.tasks = ranker.tasks
        self.path = path  # the checkpoint directory it was loaded from
        self.calibration = calibration  # applied by default; fitted by `rankers calibrate`
        # of the training data (features.dataset.fingerprint): rows to score must carry the same
        self.fingerprint = fingerprint

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Loads schema.json, config.json and the weights of `path` (and nothing else)."""
        ckpt = CheckpointDir(path)
        ckpt.check()
        schema = Schema.load(ckpt.path)
        settings = ckpt.settings()  # config.json, read strictly
        with quiet_torchrec():
            ranker = build_ranker(schema, settings.ranker, device=torch.device("cpu"))
            ckpt.load_weights(ranker, no_dist=True)
        fingerprint = (ckpt.marker() or {}).get("data_fingerprint")
        return cls(ranker, schema, settings.prior, ckpt.path, Calibration.load(ckpt.path), fingerprint)

    def _batches(self, rows: Rows, batch_size: int, labels: bool) -> Iterable[Batch]:
        if isinstance(rows, Batch):
            return [rows]
        if isinstance(rows, pa.Table):  # read from a converted split, it keeps the files' fingerprint
            theirs = (rows.schema.metadata or {}).get(FINGERPRINT_KEY)
            self.check_fingerprint(
                None if theirs is None else theirs.decode(),
                "the pyarrow Table (a table read from a converted split keeps its files' fingerprint; "
                "one built otherwise states its ids are the training data's by carrying that fingerprint "
                f"in its schema metadata, key {FINGERPRINT_KEY.decode()!r})",
            )
            return table_batches(rows, self.schema, batch_size, labels=labels)
        if isinstance(rows, (str, Path)):
            self._check_features(Path(rows))
            return ParquetBatches(rows, batch_size, labels=labels, schema=self.schema)
        raise TypeError(
            f"rows of type {type(rows).__name__}: expected a parquet path, a pyarrow Table or a Batch"
        )

    def check_fingerprint(self, theirs: str | None, where: str) -> None:
        """Rows mapped with other vocabularies would score silently wrong: their fingerprint (of
        the dataset they were converted into) must be the training data's."""
        if self.fingerprint is None or theirs == self.fingerprint:
            return
        if theirs is None:
            raise ValueError(
                f"{where}: carries no dataset fingerprint, so its ids cannot be checked against the "
                f"checkpoint's training data (fingerprint {self.fingerprint}); convert the rows with "
                "`rankers convert ... --vocabulary-from` the training dataset"
            )
        raise ValueError(
            f"{where}: dataset fingerprint {theirs}, but {self.path} was trained on data with fingerprint "
            f"{self.fingerprint}: its ids come from other vocabularies (convert the rows with "
            "--vocabulary-from the training dataset)"
        )

    def _check_features(self, path: Path) -> None:
        """Data converted with other vocabularies would score silently wrong: every file's
        fingerprint must be the training data's (`check_fingerprint`), and the data's own
        schema.json (if it has one) must describe the checkpoint's features."""
        for f in parquet_files(path):
            self.check_fingerprint(file_fingerprint(f), str(f))
        try:
            theirs = find_schema(path)
        except ValueError:
            return  # no schema beside the data: its columns are checked against ours when read
        if theirs.without_labels() != self.schema.without_labels():
            raise ValueError(
                f"{path}: its schema.json describes other features than the checkpoint's "
                "(convert new rows with --vocabulary-from the training dataset)"
            )

    @property
    def calibrated(self) -> bool:
        """Whether probabilities are calibrated by default (the checkpoint holds a calibration)."""
        return self.calibration is not None

    def _calibrate(self, probs: dict[str, np.ndarray], raw: bool) -> dict[str, np.ndarray]:
        if raw or self.calibration is None:
            return probs
        return self.calibration.transform(probs)

    def predict_proba(self, rows: Rows, batch_size: int = 65_536, raw: bool = False) -> dict[str, np.ndarray]:
        """Probability per task for every row, in row order (calibrated where the checkpoint holds a
        calibration, unless `raw`). Label columns are not needed.

        A hand-built `Batch` is checked as the reader checks parquet (ids within their tables,
        finite dense values), and a non-finite output (a checkpoint with NaN weights) raises; both
        as a ValueError naming the feature or the task (see `rankers.evaluation.predict`)."""
        probs, _, _ = predict(self.ranker, self._batches(rows, batch_size, labels=False))
        probs = {t: probs.get(t, np.zeros(0, dtype=np.float32)) for t in self.tasks}
        return self._calibrate(probs, raw)

    def evaluate(self, rows: Rows, batch_size: int = 65_536, raw: bool = False) -> dict[str, dict[str, Any]]:
        """AUC, LogLoss and the prior's LogLoss per task on labeled rows (of calibrated probabilities
        where the checkpoint holds a calibration, unless `raw`), and gAUC when the schema names a
        user column."""
        probs, labels, groups = self.predict_labeled(rows, batch_size, raw)
        return task_metrics(probs, labels, self.prior, groups)

    def predict_labeled(
        self, rows: Rows, batch_size: int = 65_536, raw: bool = False
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
        """Probabilities (calibrated unless `raw`, as `predict_proba`) and labels per task of labeled
        rows, and their user ids (or None)."""
        probs, labels, groups = predict(self.ranker, self._batches(rows, batch_size, labels=True))
        if not labels:
            raise ValueError(f"{_describe(rows)}: no labeled rows")
        return self._calibrate(probs, raw), labels, groups

    def iter_proba(
        self, rows: Rows, batch_size: int = 65_536, raw: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Like `predict_proba`, one dict per batch, for inputs larger than memory. Checked as
        `predict_proba` is; a non-finite output's row is its index in that batch's dict."""
        for batch in self._batches(rows, batch_size, labels=False):
            probs, _, _ = predict(self.ranker, [batch])  # validates the batch and the outputs
            yield self._calibrate(probs, raw)


def _describe(rows: Rows) -> str:
    return str(rows) if isinstance(rows, (str, Path)) else type(rows).__name__
