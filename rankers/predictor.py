"""`Predictor`: a trained ranker loaded from its checkpoint directory alone, for new rows.

Example:
    >>> predictor = Predictor.load("runs/mlp")           # on CPU (device="auto": a GPU if any)
    >>> predictor.predict_proba("data/criteo/test")      # {"ctr": array of shape (N,)}
    >>> predictor.predict_proba("new_rows.csv")          # raw rows, if trained on `convert table` data
    >>> predictor.predict_table("new_rows.csv", keep=["request_id"])   # keys and p_<task> columns

Rows to score are a converted split (a directory or one of its parquet files, a pyarrow Table read
from one), a `Batch`, or, for a checkpoint trained on a dataset converted by spec, raw rows: a raw
file in the spec's format (CSV/TSV, gzip, parquet), a pyarrow Table or a pandas DataFrame of raw
columns, mapped exactly as the training rows were (`features.rawinput`; unseen values get the rare
id 1, or their hash bucket).

Probabilities are calibrated where the checkpoint holds a calibration (`rankers calibrate`), and
`calibrated` says whether it does; `raw=True` gives the model's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from features.batch import Batch
from features.dataset import FINGERPRINT_KEY, file_fingerprint
from features.rawinput import RawInput, is_raw_file
from features.reader import ParquetBatches, find_schema, parquet_files, table_batches
from features.schema import Schema
from rankers._quiet import quiet_torchrec
from rankers.calibration import Calibration
from rankers.checkpoint import CheckpointDir
from rankers.devices import model_device, resolve_device
from rankers.evaluation import predict, task_metrics
from rankers.ranker import Ranker, build_ranker

Rows: TypeAlias = "str | Path | pa.Table | Batch | Any"  # Any: a pandas DataFrame of raw columns


class Predictor:
    """Probabilities per task from a checkpoint directory written by `rankers train`.

    The tables are plain (unsharded) EmbeddingBagCollections, on CPU unless loaded onto another
    device (`load`): inference needs no backward, so the fused kernels' advantage does not apply.
    Batches are checked on the host and scored on the model's device (`device`); probabilities
    come back as numpy arrays either way.

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
        raw_input: RawInput | None = None,
    ) -> None:
        self.ranker = ranker.eval()
        self.device = model_device(ranker)  # where batches are scored
        self.schema = schema
        self.prior = prior or {}
        self.tasks = ranker.tasks
        self.path = path  # the checkpoint directory it was loaded from
        self.calibration = calibration  # applied by default; fitted by `rankers calibrate`
        # of the training data (features.dataset.fingerprint): rows to score must carry the same
        self.fingerprint = fingerprint
        self.raw_input = raw_input  # trained on a dataset converted by spec: maps raw rows

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Loads schema.json, config.json and the weights of `path` (and nothing else), and puts
        the model on `device`: a torch.device, or a name `rankers.devices.resolve_device` takes
        ("cpu", "cuda", "cuda:N", "auto"), refused (ValueError) before anything is read where this
        machine lacks it. Weights saved on any device load on any other."""
        target = resolve_device(device) if isinstance(device, str) else device
        ckpt = CheckpointDir(path)
        ckpt.check()
        schema = Schema.load(ckpt.path)
        settings = ckpt.settings()  # config.json, read strictly
        with quiet_torchrec():
            ranker = build_ranker(schema, settings.ranker, device=torch.device("cpu"))
            ckpt.load_weights(ranker, no_dist=True)
        ranker = ranker.to(target)  # the whole model: build_ranker leaves the dense part on CPU
        fingerprint = (ckpt.marker() or {}).get("data_fingerprint")
        calibration, raw_input = Calibration.load(ckpt.path), RawInput.load(ckpt.path)
        return cls(ranker, schema, settings.prior, ckpt.path, calibration, fingerprint, raw_input)

    def _batches(self, rows: Rows, batch_size: int, labels: bool) -> Iterable[Batch]:
        if isinstance(rows, Batch):
            return [rows]
        rows = _from_pandas(rows)
        if self._is_raw(rows):
            return self._raw_batches(rows, batch_size, labels)
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
            f"rows of type {type(rows).__name__}: expected a path, a pyarrow Table, a pandas DataFrame "
            "or a Batch"
        )

    def _is_raw(self, rows: Rows) -> bool:
        """Whether `rows` are raw rows to map with the training spec: a text file, or a parquet file
        or Table without a dataset's fingerprint, given a checkpoint trained on data converted by
        spec. Without one, a parquet file or Table is scored as converted (its fingerprint checked)."""
        if isinstance(rows, pa.Table):
            return self.raw_input is not None and FINGERPRINT_KEY not in (rows.schema.metadata or {})
        if not isinstance(rows, (str, Path)) or not is_raw_file(rows):
            return False
        if self.raw_input is None and Path(rows).suffix != ".parquet":
            raise ValueError(self._no_spec(str(rows)))
        return self.raw_input is not None

    def _no_spec(self, where: str) -> str:
        return (
            f"{where}: raw rows, but {self.path} was not trained on a dataset converted by spec "
            "(`rankers convert table`), so it holds no mapping of raw values; convert the rows with the "
            "training data's converter (--vocabulary-from) and score the converted split"
        )

    def _raw_batches(
        self,
        rows: Any,
        batch_size: int,
        labels: bool,
        keep: Sequence[str] = (),
        kept: list[pa.Table] | None = None,
    ) -> Iterator[Batch]:
        """Batches of raw rows mapped by the training spec; the `keep` columns of each block are
        appended to `kept`."""
        assert self.raw_input is not None
        schema = self.schema if labels else self.schema.without_labels()
        for features, columns in self.raw_input.tables(rows, labels=labels, keep=keep):
            if kept is not None:
                kept.append(columns)
            yield from table_batches(features, schema, batch_size, labels=labels)

    def predict_table(
        self, rows: Rows, keep: Sequence[str] = (), batch_size: int = 65_536, raw: bool = False
    ) -> pa.Table:
        """A row per input row: the pass-through keys of the training spec (if any) and the `keep`
        columns as read, then `p_<task>` per task (calibrated as `predict_proba`).

        Raw rows pass any of their columns through; a converted split, the keys its converter wrote
        beside the features (`rankers convert table` writes the spec's keys)."""
        rows = _from_pandas(rows)
        spec_keys = self.raw_input.spec.keys if self.raw_input is not None else ()
        names = list(dict.fromkeys([*spec_keys, *keep]))
        kept: list[pa.Table] = []
        if self._is_raw(rows):
            probs, _, _ = predict(
                self.ranker, self._raw_batches(rows, batch_size, False, names, kept), device=self.device
            )
            columns = (
                pa.concat_tables(kept) if kept else pa.table({n: pa.array([], pa.string()) for n in names})
            )
        else:
            probs, _, _ = predict(
                self.ranker, self._batches(rows, batch_size, labels=False), device=self.device
            )
            columns = _converted_columns(rows, names)
        probs = self._calibrate({t: probs.get(t, np.zeros(0, dtype=np.float32)) for t in self.tasks}, raw)
        out = {n: columns[n] for n in names} | {f"p_{t}": pa.array(p) for t, p in probs.items()}
        return pa.table(out)

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
        probs, _, _ = predict(self.ranker, self._batches(rows, batch_size, labels=False), device=self.device)
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
        probs, labels, groups = predict(
            self.ranker, self._batches(rows, batch_size, labels=True), device=self.device
        )
        if not labels:
            raise ValueError(f"{_describe(rows)}: no labeled rows")
        return self._calibrate(probs, raw), labels, groups

    def iter_proba(
        self, rows: Rows, batch_size: int = 65_536, raw: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Like `predict_proba`, one dict per batch, for inputs larger than memory. Checked as
        `predict_proba` is; a non-finite output's row is its index in that batch's dict."""
        for batch in self._batches(rows, batch_size, labels=False):
            # validates the batch and the outputs
            probs, _, _ = predict(self.ranker, [batch], device=self.device)
            yield self._calibrate(probs, raw)


def _converted_columns(rows: Rows, names: list[str]) -> pa.Table:
    """The columns `names` of a converted split (a directory, a parquet file, a Table) in row order."""
    if not names:
        return pa.table({})
    if isinstance(rows, pa.Table):
        table, where = rows, "the pyarrow Table"
    elif isinstance(rows, (str, Path)):
        files, where = parquet_files(rows), str(rows)
        available = set(pq.ParquetFile(files[0]).schema_arrow.names)
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(
                f"{where}: no column {missing[0]!r} to pass through; it holds {sorted(available)}"
            )
        table = pa.concat_tables(pq.read_table(f, columns=names) for f in files)
    else:
        raise ValueError(f"columns {names} cannot be passed through from a {type(rows).__name__}")
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{where}: no column {missing[0]!r} to pass through; it holds {table.column_names}")
    return table.select(names)


def _from_pandas(rows: Rows) -> Rows:
    """A pandas DataFrame as a pyarrow Table (without its index); anything else as it is."""
    if type(rows).__module__.startswith("pandas") and type(rows).__name__ == "DataFrame":
        return pa.Table.from_pandas(rows, preserve_index=False)
    return rows


def _describe(rows: Rows) -> str:
    return str(rows) if isinstance(rows, (str, Path)) else type(rows).__name__
