"""`EmbeddingArch`: the TorchRec embedding tables, the only TorchRec part of a model.

Built from the schema, on any device including `meta`, so `DistributedModelParallel` can
materialise and shard it with fused kernels (see rankers.distributed). It is called on the batch's
KeyedJaggedTensor directly.

Tables come in two groups:
- pooled tables (`ebc`): categorical features whose table no sequence uses; one id per bag.
- sequence tables (`sequence_tables`): a table a sequence looks up, together with the categorical
  features sharing it (`hist_item_id` and its target `item_id`), so a sequence and its target are
  always one table, also when sharded. Two interchangeable lookups, equal in values and gradients:
  - "bag": an `EmbeddingBagCollection` over a KeyedJaggedTensor of one id per bag (its own KJT, since
    all keys of a KJT share one batch stride). On CPU its backward was measured 9-50x faster than
    the unpooled collection's (../shared/TORCHREC_CPU.md).
  - "collection": TorchRec's unpooled `EmbeddingCollection`, the usual choice on GPU.
  `default_sequence_lookup(device)` picks "collection" for a CUDA device, "bag" for anything else
  (the run's device decides, never whether this host has a GPU).
  The jagged sequence is padded with fbgemm's `jagged_to_padded_dense`, real ids first, the mask
  marking them: to the longest sequence of the batch (at most the feature's `max_len`), or under
  `static_shapes()` (compile, export, `fixed_shapes` on GPUs) to the feature's `max_len`, so no
  length is read back to the host. The backbones mask the padding, so both give the same values.

Host syncs: nothing here reads a device tensor back to the host when the batch's KJT carries its
`length_per_key` and `offset_per_key` (the reader's do, and `Batch.to` keeps them), except the
eager path's `int(lengths.max())` per sequence (CPU only; see `pad_sequence`).

Notation: B batch, F categorical fields, D embedding dim, L padded length.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from features.batch import BatchCheck
from features.schema import Schema
from rankers.backbones.base import Embedded, Sequence
from rankers.backbones.shapes import static_shapes

SEQUENCE_LOOKUPS = ("bag", "collection")


def default_sequence_lookup(device: torch.device | str | None = None) -> str:
    """ "collection" for a CUDA `device`, else "bag" (the faster one on CPU; also for `meta` and
    None). Never asks whether this host has a GPU: a CPU run on a CUDA host takes the bag path."""
    return "collection" if device is not None and torch.device(device).type == "cuda" else "bag"


@functools.lru_cache(maxsize=64)
def _order(indices: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """`indices` as an int32 tensor on `device`, made once: a tensor made from a list on a GPU is a
    blocking copy from the host (KeyedJaggedTensor.permute makes one per call without it)."""
    return torch.tensor(indices, dtype=torch.int, device=device)


def _select(kjt: KeyedJaggedTensor, keys: list[str]) -> KeyedJaggedTensor:
    """`kjt` restricted to `keys`, in that order."""
    if kjt.keys() == keys:
        return kjt
    index = {k: i for i, k in enumerate(kjt.keys())}
    indices = [index[k] for k in keys]
    return kjt.permute(indices, _order(tuple(indices), kjt.device()))


def table_bytes(schema: Schema, embedding_dim: int, optimizer_state: bool = True) -> dict[str, int]:
    """Bytes of each of `schema`'s tables: rows x D float32 weights, plus the fused rowwise Adagrad
    state (one float32 per row) with `optimizer_state`."""
    per_row = 4 * embedding_dim + (4 if optimizer_state else 0)
    return {table: n * per_row for table, (n, _) in schema.tables().items()}


def pad_sequence(values: torch.Tensor, lengths: torch.Tensor, max_len: int | None = None) -> Sequence:
    """Jagged rows (sum(lengths), D) -> Sequence((B, L, D), (B, L)): L = max(1, longest row), read
    back from `lengths` (a host sync); under `static_shapes()` L = `max_len` when given (rows longer
    than it are cut to their first `max_len` ids; the reader never makes one)."""
    if max_len is not None and static_shapes():
        longest = max_len
    else:
        longest = max(1, int(lengths.max())) if lengths.numel() else 1
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    padded = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [longest], 0.0)  # (B, L, D)
    mask = torch.arange(longest, device=lengths.device) < lengths.unsqueeze(1)  # (B, L)
    return Sequence(padded, mask)


class EmbeddingArch(nn.Module):
    """One vector per categorical feature, and a padded sequence of vectors per sequence feature.

    Example:
        >>> arch = EmbeddingArch(schema, embedding_dim=16, device=torch.device("meta"))

    Args:
        schema: the dataset's schema; one table per distinct `table` name.
        embedding_dim: D.
        device: where the tables are allocated (`meta` for sharding later).
        sequence_lookup: "bag" or "collection" (see the module docstring); unused without sequences.
    """

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int,
        device: torch.device | None = None,
        sequence_lookup: str = "bag",
    ) -> None:
        super().__init__()
        if not schema.categorical:
            raise ValueError("schema has no categorical features to embed")
        if sequence_lookup not in SEQUENCE_LOOKUPS:
            raise ValueError(f"sequence_lookup {sequence_lookup!r}: expected one of {SEQUENCE_LOOKUPS}")
        self.field_names = tuple(f.name for f in schema.categorical)
        # Validates a batch's ids against these tables before any kernel sees them (train, predict).
        self.check = BatchCheck(schema)
        self.embedding_dim = embedding_dim
        self.sequence_lookup = sequence_lookup
        seq_tables = {s.table for s in schema.sequences}
        configs = schema.table_configs(embedding_dim)
        pooled = [c for c in configs if c.name not in seq_tables]
        self.pooled_keys = [f for c in pooled for f in c.feature_names]
        self.ebc = EmbeddingBagCollection(pooled, device=device) if pooled else None
        # table -> its features, categorical (one id per row) first, then sequences
        self.sequence_features = {c.name: list(c.feature_names) for c in configs if c.name in seq_tables}
        self.sequence_names = tuple(s.name for s in schema.sequences)
        self.max_lens = {s.name: s.max_len for s in schema.sequences}
        # table -> (rows, dim), kept here because sharding replaces the TorchRec modules
        self.table_shapes = {c.name: (c.num_embeddings, c.embedding_dim) for c in configs}
        self.unpooled: tuple[str, ...] = ()
        self.inputs_from_batch = False  # take each table module's KJT from `Batch.tables`
        self.sequence_tables: EmbeddingBagCollection | EmbeddingCollection | None = None
        sequenced = [c for c in configs if c.name in seq_tables]
        if sequenced and sequence_lookup == "bag":
            # One feature per table (named after it): every id of the table's features is one bag.
            for c in sequenced:
                c.feature_names = [c.name]
            self.sequence_tables = EmbeddingBagCollection(sequenced, device=device)
        elif sequenced:
            unpooled = [
                EmbeddingConfig(
                    name=c.name,
                    num_embeddings=c.num_embeddings,
                    embedding_dim=embedding_dim,
                    feature_names=c.feature_names,
                )
                for c in sequenced
            ]
            self.sequence_tables = EmbeddingCollection(unpooled, device=device)
            self.unpooled = tuple(c.name for c in sequenced)

    def table_modules(self) -> list[EmbeddingBagCollection | EmbeddingCollection]:
        """The TorchRec modules holding tables (what the sharder shards)."""
        return [m for m in (self.ebc, self.sequence_tables) if m is not None]

    def table_names(self) -> list[str]:
        return list(self.table_shapes)

    def unpooled_table_names(self) -> list[str]:
        """Tables of the unpooled EmbeddingCollection (the "collection" sequence lookup)."""
        return list(self.unpooled)

    def table_inputs(self, sparse: KeyedJaggedTensor) -> dict[str, KeyedJaggedTensor]:
        """The KJT each table module takes, from the batch's: "pooled" (the pooled tables' keys;
        the batch's own KJT when it holds nothing else) and "sequence" (the sequence tables' keys,
        or their ids one per bag for the bag lookup). Built on the host before a batch reaches
        TorchRec's train pipeline (`Batch.tables`), they let it copy and distribute every table's
        input ahead of the forward (`inputs_from_batch`)."""
        out = {}
        if self.ebc is not None:
            out["pooled"] = _select(sparse, self.pooled_keys) if self.sequence_names else sparse
        if self.sequence_tables is not None and self.sequence_lookup == "bag":
            out["sequence"] = _per_id_bags(sparse, self.sequence_features)
        elif self.sequence_tables is not None:
            keys = [f for features in self.sequence_features.values() for f in features]
            out["sequence"] = _select(sparse, keys)
        return out

    def forward(
        self,
        dense: torch.Tensor,
        sparse: KeyedJaggedTensor,
        tables: dict[str, KeyedJaggedTensor] | None = None,
    ) -> Embedded:
        """dense (B, n_dense) and the batch's KJT -> Embedded with fields (B, F, D) and sequences.

        The table modules are called here and everything else happens in fx-wrapped functions, so
        TorchRec's train pipeline can trace this to find each table module's input. With
        `inputs_from_batch` set (by `rankers.pipeline.SparseDistPipeline`), every table module
        takes its KJT from `tables` (the batch's `Batch.tables`), so all of them are pipelined;
        otherwise the KJTs are built here (`table_inputs`), and only a model without sequences,
        whose pooled tables take the batch's KJT itself, has them pipelined.
        """
        inputs = tables if self.inputs_from_batch and tables is not None else self.table_inputs(sparse)
        kt = self.ebc(inputs["pooled"]) if self.ebc is not None else None
        looked_up = None
        if self.sequence_tables is not None and self.sequence_lookup == "bag":
            by_table = self.sequence_tables(inputs["sequence"])
            looked_up = _split_per_id(by_table, sparse, self.sequence_features)
        elif self.sequence_tables is not None:
            keys = [f for features in self.sequence_features.values() for f in features]
            looked_up = _jagged_rows(self.sequence_tables(inputs["sequence"]), keys)
        return _assemble(dense, kt, looked_up, self.field_names, self.max_lens, self.embedding_dim)


def _assemble(
    dense: torch.Tensor,
    kt: KeyedTensor | None,
    looked_up: dict[str, tuple[torch.Tensor, torch.Tensor]] | None,
    field_names: tuple[str, ...],
    max_lens: dict[str, int],
    dim: int,
) -> Embedded:
    """The pooled tables' KeyedTensor and the sequence tables' jagged rows -> Embedded; `max_lens`
    maps each sequence, in order, to its max_len."""
    sequence_names = tuple(max_lens)
    if kt is not None and not sequence_names and kt.keys() == list(field_names):
        fields = kt.values().view(-1, len(field_names), dim)  # (B, F, D)
        return Embedded(dense=dense, fields=fields, field_names=field_names)
    rows: dict[str, torch.Tensor] = kt.to_dict() if kt is not None else {}  # sharding may reorder keys
    sequences: dict[str, Sequence] = {}
    for name, (values, lengths) in (looked_up or {}).items():
        if name in sequence_names:
            sequences[name] = pad_sequence(values, lengths, max_lens[name])
        else:
            rows[name] = values
    return Embedded(
        dense=dense,
        fields=torch.stack([rows[k] for k in field_names], dim=1),  # (B, F, D)
        field_names=field_names,
        sequences={k: sequences[k] for k in sequence_names},
    )


def _per_id_bags(sparse: KeyedJaggedTensor, sequence_features: dict[str, list[str]]) -> KeyedJaggedTensor:
    """Bag path: each table's ids (its features' ids concatenated) as one bag each, in one KJT
    whose keys are the tables; shorter keys are filled up with empty bags to a common stride."""
    index = {k: i for i, k in enumerate(sparse.keys())}
    offsets, values = sparse.offset_per_key(), sparse.values()
    ids = [
        torch.cat([values[offsets[index[f]] : offsets[index[f] + 1]] for f in features])
        for features in sequence_features.values()
    ]
    counts = [t.numel() for t in ids]  # known on the host: the slices' sizes
    stride = max(1, *counts)
    bags = torch.ones(len(counts), stride, dtype=torch.int32, device=values.device)
    for t, n in enumerate(counts):
        bags[t, n:] = 0
    return KeyedJaggedTensor(
        keys=list(sequence_features),
        values=torch.cat(ids),
        lengths=bags.view(-1),
        stride=stride,
        length_per_key=counts,  # so TorchRec never sums the lengths on the device
        offset_per_key=[sum(counts[:i]) for i in range(len(counts) + 1)],
    )


def _split_per_id(
    by_table: KeyedTensor, sparse: KeyedJaggedTensor, sequence_features: dict[str, list[str]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The bag path's (stride, D) rows per table -> feature -> (its ids' rows, its lengths)."""
    tables = by_table.to_dict()
    index = {k: i for i, k in enumerate(sparse.keys())}
    offsets = sparse.offset_per_key()
    lengths = sparse.lengths().view(len(index), -1)  # (keys, B)
    out = {}
    for table, features in sequence_features.items():
        start = 0
        for f in features:
            n = offsets[index[f] + 1] - offsets[index[f]]
            out[f] = (tables[table][start : start + n], lengths[index[f]])
            start += n
    return out


def _jagged_rows(
    jts: dict[str, JaggedTensor], keys: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Collection path: feature -> (its ids' rows, its lengths)."""
    return {k: (jts[k].values(), jts[k].lengths()) for k in keys}


# Traced as calls, not into (TorchRec's pipeline traces the model to find the tables' inputs).
for _f in ("_select", "_assemble", "_per_id_bags", "_split_per_id", "_jagged_rows"):
    torch.fx.wrap(_f)
