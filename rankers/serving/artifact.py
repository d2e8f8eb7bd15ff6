"""The modules inside an exported artifact (`rankers export`): TorchScript, so the artifact runs with
torch and fbgemm alone (`torch.jit.load`), without this library.

The artifact's `forward(dense, values, lengths) -> probabilities`:
- `dense`: float32 (B, n_dense), the dense features in the schema's order, transformed as the
  training data was (`features` in the artifact's `rankers/export.json`).
- `values`, `lengths`: the ids of the sparse features in KeyedJaggedTensor layout: `lengths` int32
  (n_sparse * B,), feature-major (feature 0's B lengths, then feature 1's, ...; one per row for a
  single-id feature, any number for a multi-value one), `values` int64 (sum(lengths),), the ids in
  the same order. Ids are the training data's (vocabulary or hash ids, 0 missing, 1 rare).
- returns float32 (B, K): a probability per task (`tasks`), calibrated where the checkpoint held a
  calibration (`calibrated` names the method per task).

Bad input raises before any kernel runs (`InputCheck`): a wrong dense width, a non-finite dense
value, lengths or values that do not add up, an id outside its feature's table (naming it).
"""

# No `from __future__ import annotations`: TorchScript and fx read these annotations as types.
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from rankers.backbones.base import Embedded, Sequence

EPS = 1e-6  # as rankers.calibration: probabilities clipped to [EPS, 1 - EPS] before a logit


class InputCheck(nn.Module):
    """Checks an artifact's inputs against the schema; RuntimeError naming what is wrong."""

    rows: torch.Tensor  # each sparse feature's table rows
    dense_names: list[str]  # annotated: an empty list's type cannot be inferred (no dense features)
    sparse_names: list[str]
    max_lens: list[int]

    def __init__(
        self, dense_names: list[str], sparse_names: list[str], rows: list[int], max_lens: list[int]
    ) -> None:
        super().__init__()
        self.dense_names = dense_names
        self.sparse_names = sparse_names
        self.max_lens = max_lens  # per sparse feature: most ids a row (0: any number)
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.int64), persistent=False)

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> int:
        """The batch size B, once the inputs are checked."""
        if dense.dim() != 2 or dense.size(1) != len(self.dense_names):
            raise RuntimeError(
                "dense: shape "
                + str(list(dense.shape))
                + ", expected (B, "
                + str(len(self.dense_names))
                + ") for "
                + str(self.dense_names)
            )
        b = dense.size(0)
        n = len(self.sparse_names)
        if lengths.dim() != 1 or lengths.numel() != n * b:
            raise RuntimeError(
                "lengths: "
                + str(lengths.numel())
                + " entries, expected "
                + str(n * b)
                + " (one per row of each of the "
                + str(n)
                + " sparse features, feature-major)"
            )
        if not bool(torch.isfinite(dense).all()):
            column = int(torch.nonzero(~torch.isfinite(dense))[0, 1])
            raise RuntimeError("dense feature " + self.dense_names[column] + ": a NaN or infinite value")
        if bool((lengths < 0).any()) or int(lengths.sum()) != values.numel():
            raise RuntimeError(
                "values: "
                + str(values.numel())
                + " ids, but lengths add up to "
                + str(int(lengths.sum()))
                + " (and must be >= 0)"
            )
        per_row = lengths.view(n, b)
        for f in range(n):
            if self.max_lens[f] > 0 and bool((per_row[f] > self.max_lens[f]).any()):
                raise RuntimeError(
                    "feature "
                    + self.sparse_names[f]
                    + ": a row of "
                    + str(int(per_row[f].max()))
                    + " ids, more than its max_len "
                    + str(self.max_lens[f])
                    + " (keep the most recent)"
                )
        per_feature = per_row.sum(1)
        feature = torch.repeat_interleave(torch.arange(n), per_feature)
        bad = (values < 0) | (values >= self.rows[feature])
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            f = int(feature[i])
            raise RuntimeError(
                "feature "
                + self.sparse_names[f]
                + ": id "
                + str(int(values[i]))
                + " outside its table of "
                + str(int(self.rows[f]))
                + " rows (map raw values with the training spec's vocabulary or hash)"
            )
        return b


class Calibrate(nn.Module):
    """Per task, the checkpoint's calibration map (`rankers.calibration.TaskCalibration`) in torch:
    0 none, 1 identity, 2 platt, 3 isotonic; then the map's bounds."""

    def __init__(
        self, methods: list[int], xs: list[torch.Tensor], ys: list[torch.Tensor], bounds: list[list[float]]
    ) -> None:
        super().__init__()
        self.methods = methods
        self.xs = xs
        self.ys = ys
        self.bounds = bounds

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for k in range(len(self.methods)):
            v = p[:, k]
            method = self.methods[k]
            if method == 2:
                a, b = self.xs[k][0], self.xs[k][1]
                q = v.clamp(1e-6, 1 - 1e-6)  # EPS, as rankers.calibration
                v = torch.sigmoid(a * (torch.log(q) - torch.log1p(-q)) + b)
            elif method == 3:
                v = _interp(v, self.xs[k], self.ys[k])
            if method != 0:
                v = v.clamp(self.bounds[k][0], self.bounds[k][1])
            out.append(v)
        return torch.stack(out, dim=1)


def _interp(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """numpy.interp(p, x, y) (flat outside the knots) in torch."""
    if x.numel() == 1:
        return torch.full_like(p, float(y[0]))
    idx = torch.searchsorted(x, p).clamp(1, x.numel() - 1)
    x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
    t = ((p - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


class Served(nn.Module):
    """The artifact: inputs checked, the traced model's logits, sigmoid, calibration."""

    def __init__(
        self, check: InputCheck, model: torch.jit.ScriptModule, calibrate: Calibrate, tasks: list[str]
    ) -> None:
        super().__init__()
        self.check = check
        self.model = model
        self.calibrate = calibrate
        self.tasks = tasks

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.check(dense, values, lengths)
        return self.calibrate(torch.sigmoid(self.model(dense, values, lengths).float()))


class Model(nn.Module):
    """Quantized tables and the backbone: (dense, values, lengths) -> logits (B, K). The pooled
    tables take their features of the KJT; each table a sequence reads (shared with its target
    field) is looked up one id per bag, its sequences padded to their max_len (the mask marks the
    real ids). Without sequences, `sequence_tables` is empty."""

    def __init__(
        self,
        pooled: nn.Module | None,
        pooled_keys: list[str],
        sequence_tables: nn.ModuleDict,
        table_features: dict[str, list[str]],
        max_lens: dict[str, int],
        backbone: nn.Module,
        keys: list[str],
        fields: list[str],
        tasks: list[str],
    ) -> None:
        super().__init__()
        self.pooled = pooled
        self.pooled_keys = pooled_keys
        self.pooled_index = [keys.index(k) for k in pooled_keys]  # the pooled tables' features
        self.select = self.pooled_index != list(range(len(keys)))  # else the KJT is theirs as it is
        self.sequence_tables = sequence_tables
        self.table_features = table_features
        self.max_lens = max_lens
        self.backbone = backbone
        self.keys = keys
        self.fields = fields
        self.tasks = tasks

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths)
        per_key = kjt.to_dict()
        rows: dict[str, torch.Tensor] = {}
        if self.pooled is not None:
            pooled = self.pooled(kjt.permute(self.pooled_index) if self.select else kjt).to_dict()
            rows = {f: pooled[f] for f in self.pooled_keys}  # a dict here, not a traced one
        sequences: dict[str, Sequence] = {}
        for table, features in self.table_features.items():
            ids = torch.cat([per_key[f].values() for f in features])
            ones = torch.ones_like(ids, dtype=torch.int32)
            looked_up = self.sequence_tables[table](KeyedJaggedTensor(keys=[table], values=ids, lengths=ones))
            parts = torch.split(looked_up.values(), [per_key[f].values().numel() for f in features])
            for i, f in enumerate(features):  # indexed: `parts` is a Proxy while fx traces
                part = parts[i]
                if f in self.max_lens:
                    sequences[f] = _padded(part, per_key[f].lengths(), self.max_lens[f])
                else:
                    rows[f] = part
        fields = torch.stack([rows[f] for f in self.fields], dim=1)  # (B, F, D)
        x = Embedded(dense=dense, fields=fields, field_names=tuple(self.fields), sequences=sequences)
        out = self.backbone(x)
        return torch.stack([out.logits[t] for t in self.tasks], dim=1)


def _padded(values: torch.Tensor, lengths: torch.Tensor, max_len: int) -> Sequence:
    """Jagged rows (sum(lengths), D) -> Sequence((B, max_len, D), (B, max_len))."""
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    padded = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [max_len], 0.0)
    mask = torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    return Sequence(padded, mask)
