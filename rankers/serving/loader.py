"""`load(FILE).score(rows)`: an exported artifact (`rankers export`) in a bidding process.

Example:
    >>> model = load("mlp.int8.pt", max_batch=4096)
    >>> model.score(batch)                        # {"ctr": array of shape (B,)}, calibrated
    >>> model.score({"dense": d, "values": v, "lengths": l})   # the artifact's own inputs

`rows` are a `features.batch.Batch` (from `ParquetBatches` or built by hand), or the artifact's
inputs as arrays (`rankers.serving.artifact`'s layout), or, for a model trained on data converted
by spec, raw rows (a file, a pyarrow Table or a pandas DataFrame) mapped by the spec and the
vocabularies the artifact carries. `score` holds no state between calls: threads may call it at once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.batch import Batch
from rankers.calibration import Calibration

EXTRA = (
    "rankers/export.json",
    "rankers/schema.json",
    "rankers/spec.json",
    "rankers/vocabulary.parquet",
    "rankers/calibration.json",
)


class ServedModel:
    """A loaded artifact: `score(rows)` -> probability per task, in batches of at most `max_batch`.

    Args:
        module: the TorchScript module.
        info: the artifact's `rankers/export.json`.
        max_batch: rows per call of the module, >= 1.
        raw: maps raw rows (`features.rawinput.RawInput`), or None.
        calibration: the checkpoint's calibration the artifact applies, or None.
        path: the artifact file.
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        info: dict[str, Any],
        max_batch: int,
        raw: Any = None,
        calibration: Calibration | None = None,
        path: Path | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch {max_batch!r}: expected an integer >= 1")
        self.module = module.eval()
        self.info = info
        self.tasks: tuple[str, ...] = tuple(info["tasks"])
        self.max_batch = max_batch
        self.raw = raw
        self.calibration = calibration  # the one the artifact applies (its sigma gives bid values' sigma)
        self.path = path

    def score(self, rows: Any) -> dict[str, np.ndarray]:
        """Probabilities (float32) per task for every row, in row order (module doc for `rows`)."""
        parts = [self._run(*inputs) for inputs in self._inputs(rows)]
        if not parts:
            return {t: np.zeros(0, dtype=np.float32) for t in self.tasks}
        out = np.concatenate(parts)
        return {t: out[:, k] for k, t in enumerate(self.tasks)}

    def _run(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        try:
            with torch.inference_mode():
                return self.module(dense, values, lengths).numpy()
        except torch.jit.Error as e:  # the artifact's input check: its message, not the trace
            raise ValueError(
                str(e).strip().splitlines()[-1].removeprefix("builtins.RuntimeError: ")
            ) from None

    def _inputs(self, rows: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if isinstance(rows, Batch):
            yield from self._split(rows.dense, rows.sparse.values(), rows.sparse.lengths())
        elif isinstance(rows, Mapping):
            dense = torch.as_tensor(np.asarray(rows["dense"], dtype=np.float32))
            values = torch.as_tensor(np.asarray(rows["values"], dtype=np.int64))
            yield from self._split(
                dense, values, torch.as_tensor(np.asarray(rows["lengths"], dtype=np.int32))
            )
        elif self.raw is not None:
            from features.reader import table_batches

            schema = self.raw.mapper.schema.without_labels()
            for features, _ in self.raw.tables(_from_pandas(rows), labels=False):
                for batch in table_batches(features, schema, self.max_batch, labels=False):
                    yield batch.dense, batch.sparse.values(), batch.sparse.lengths()
        else:
            raise TypeError(
                f"rows of type {type(rows).__name__}: expected a Batch or a mapping of dense, values and "
                "lengths (raw rows need a model trained on data converted by spec)"
            )

    def _split(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The inputs in row ranges of at most `max_batch` (KJT layout: feature-major lengths)."""
        b, n = dense.shape[0], len(self.info["sparse"])
        if b <= self.max_batch or lengths.numel() != n * b:
            yield dense, values, lengths.int()  # the artifact checks and names a bad layout
            return
        per_row = lengths.view(n, b).long()
        starts = torch.cat([torch.zeros(n, 1, dtype=torch.long), per_row.cumsum(1)], dim=1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), per_row.sum(1).cumsum(0)[:-1]])
        for lo in range(0, b, self.max_batch):
            hi = min(b, lo + self.max_batch)
            chunks = [values[offsets[f] + starts[f, lo] : offsets[f] + starts[f, hi]] for f in range(n)]
            yield dense[lo:hi], torch.cat(chunks), per_row[:, lo:hi].reshape(-1).int()


def _from_pandas(rows: Any) -> Any:
    if type(rows).__module__.startswith("pandas") and type(rows).__name__ == "DataFrame":
        import pyarrow as pa

        return pa.Table.from_pandas(rows, preserve_index=False)
    return rows


def load(path: str | Path, max_batch: int = 65_536) -> ServedModel:
    """The artifact at `path` (written by `rankers export`), ready to `score`."""
    import fbgemm_gpu  # noqa: F401  (registers the table kernels the artifact calls)

    files = dict.fromkeys(EXTRA, "")
    try:
        module = torch.jit.load(str(path), _extra_files=files)
    except (RuntimeError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not an artifact written by `rankers export` ({e})") from None
    if not files["rankers/export.json"]:
        raise ValueError(
            f"{path}: no rankers/export.json inside; expected an artifact written by `rankers export`"
        )
    info = json.loads(_bytes(files["rankers/export.json"]))
    raw = None
    if files["rankers/spec.json"] and files["rankers/vocabulary.parquet"]:
        from features.rawinput import RawInput
        from features.spec import spec_from_dict

        spec = spec_from_dict(json.loads(_bytes(files["rankers/spec.json"])), f"{path} rankers/spec.json")
        raw = RawInput(spec, io.BytesIO(_bytes(files["rankers/vocabulary.parquet"])))
    calibration = None
    if files["rankers/calibration.json"]:
        text = _bytes(files["rankers/calibration.json"]).decode()
        calibration = Calibration.from_json(text, f"{path} rankers/calibration.json")
    return ServedModel(module, info, max_batch, raw, calibration, Path(path))


def _bytes(value: str | bytes) -> bytes:
    """An extra file's content (torch gives bytes)."""
    return value if isinstance(value, bytes) else value.encode()
