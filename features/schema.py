"""The schema of a parquet dataset: which columns are features, of what kind, and which are labels.

A dataset directory holds its `schema.json`, so the data describes itself. The TorchRec table configs
are derived from the schema: one table per categorical feature unless several features name the same
`table` (a behaviour sequence shares its table with its target field).

Example:
    >>> schema = Schema(
    ...     dense=(DenseFeature("I1"),),
    ...     categorical=(CategoricalFeature("C1", num_embeddings=100),),
    ...     labels=(Label("label", task="ctr"),),
    ... )
    >>> Schema.from_json(schema.to_json()) == schema
    True
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from features.strict import build, check_keys

if TYPE_CHECKING:
    from torchrec import EmbeddingBagConfig

SCHEMA_FILE = "schema.json"
FEATURES_KEY = b"rankers.features"  # parquet schema metadata: the features a file was written with
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _check_name(kind: str, name: str) -> None:
    if not name or not set(name) <= _NAME_CHARS:
        raise ValueError(f"{kind} name {name!r}: expected letters, digits and '_' only")


@dataclass(frozen=True)
class DenseFeature:
    """A float32 column, already transformed (e.g. log1p of a count)."""

    name: str

    def __post_init__(self) -> None:
        _check_name("dense feature", self.name)


@dataclass(frozen=True)
class CategoricalFeature:
    """An int64 column of ids in [0, num_embeddings); one id per row. With `multi`, a `list<int64>`
    column of any number of ids per row (a multi-value field such as Ali-CCP's 109_14), embedded as
    the mean of its ids' vectors (zero for an empty list): still one field vector per row.

    Args:
        name: the parquet column and the KeyedJaggedTensor key.
        num_embeddings: rows of the table (ids must be below it).
        table: the embedding table's name; features naming the same table share it. Defaults to
            the feature name.
        multi: a list of ids per row, mean-pooled.
    """

    name: str
    num_embeddings: int
    table: str = ""
    multi: bool = False

    def __post_init__(self) -> None:
        _check_name("categorical feature", self.name)
        if type(self.num_embeddings) is not int or self.num_embeddings < 1:
            raise ValueError(
                f"feature {self.name}: num_embeddings {self.num_embeddings!r} must be an integer >= 1"
            )
        if not self.table:
            object.__setattr__(self, "table", self.name)
        _check_name("table", self.table)


@dataclass(frozen=True)
class SequenceFeature:
    """A `list<int64>` column of ids (a behaviour history, most recent last), at most `max_len` used.

    Args:
        name: the parquet column and the KeyedJaggedTensor key.
        num_embeddings: rows of the table.
        max_len: the reader keeps the most recent `max_len` ids of longer lists.
        table: the table shared with the target field (e.g. `item_id` for `hist_item_id`).
    """

    name: str
    num_embeddings: int
    max_len: int
    table: str = ""

    def __post_init__(self) -> None:
        _check_name("sequence feature", self.name)
        ints = type(self.num_embeddings) is int and type(self.max_len) is int
        if not ints or self.num_embeddings < 1 or self.max_len < 1:
            raise ValueError(
                f"sequence {self.name}: num_embeddings {self.num_embeddings} and max_len "
                f"{self.max_len} must be >= 1"
            )
        if not self.table:
            object.__setattr__(self, "table", self.name)
        _check_name("table", self.table)


@dataclass(frozen=True)
class Label:
    """A 0/1 label column and the task it trains (`ctr`, `cvr`, ...)."""

    name: str
    task: str

    def __post_init__(self) -> None:
        _check_name("label", self.name)
        _check_name("task", self.task)


_ARROW_TYPES = {
    "dense": pa.float32(),
    "categorical": pa.int64(),
    "sequence": pa.list_(pa.int64()),
    "label": pa.int8(),
}


@dataclass(frozen=True)
class Schema:
    """Features and labels of a dataset, in column order.

    Args:
        dense: float32 features, in the order of the dense tensor's columns.
        categorical: single-id features, in the order of the embedded fields.
        sequences: list-of-id features.
        labels: one per task.
        group: the column of user ids for per-user AUC (gAUC): a categorical feature, or an int64
            column of raw ids that is no feature (unseen users then stay distinct); "" for none.
    """

    dense: tuple[DenseFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    labels: tuple[Label, ...] = field(default=())
    group: str = ""

    def __post_init__(self) -> None:
        names = [c for c, _ in self.columns()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"schema: column names {dupes} appear more than once")
        if self.group:
            _check_name("group", self.group)
            if self.group in {f.name for f in self.categorical if f.multi}:
                raise ValueError(
                    f"schema: group {self.group!r} is a multi-value feature; expected one id per row"
                )
        shared = sorted({f.table for f in self.categorical if f.multi} & {f.table for f in self.sequences})
        if shared:
            raise ValueError(f"tables {shared}: a multi-value feature cannot share its table with a sequence")
        tasks = [lab.task for lab in self.labels]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"schema: tasks {tasks} must be distinct")
        sizes: dict[str, int] = {}
        for f in self._sparse():
            if sizes.setdefault(f.table, f.num_embeddings) != f.num_embeddings:
                raise ValueError(
                    f"table {f.table}: features sharing it disagree on num_embeddings "
                    f"({sizes[f.table]} and {f.num_embeddings} for {f.name})"
                )

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(lab.task for lab in self.labels)

    def _sparse(self) -> tuple[CategoricalFeature | SequenceFeature, ...]:
        return (*self.single, *self.multi, *self.sequences)

    @property
    def single(self) -> tuple[CategoricalFeature, ...]:
        return tuple(f for f in self.categorical if not f.multi)

    @property
    def multi(self) -> tuple[CategoricalFeature, ...]:
        return tuple(f for f in self.categorical if f.multi)

    @property
    def sparse_keys(self) -> tuple[str, ...]:
        """Keys of the batch's KeyedJaggedTensor: single-id categorical features, multi-value ones,
        then sequences."""
        return tuple(f.name for f in self._sparse())

    def columns(self) -> list[tuple[str, pa.DataType]]:
        """(name, arrow type) of every column the schema describes."""
        return (
            [(f.name, _ARROW_TYPES["dense"]) for f in self.dense]
            + [(f.name, _ARROW_TYPES["sequence" if f.multi else "categorical"]) for f in self.categorical]
            + [(f.name, _ARROW_TYPES["sequence"]) for f in self.sequences]
            + [(lab.name, _ARROW_TYPES["label"]) for lab in self.labels]
            + ([(self.group, pa.int64())] if self.group and not self.group_is_feature else [])
        )

    @property
    def group_is_feature(self) -> bool:
        return self.group in {f.name for f in self.categorical}

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, t, nullable=False) for n, t in self.columns()])

    def without_labels(self) -> Schema:
        return Schema(self.dense, self.categorical, self.sequences, (), self.group)

    def tables(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Table name -> (num_embeddings, names of the features looked up in it), in schema order."""
        out: dict[str, tuple[int, tuple[str, ...]]] = {}
        for f in self._sparse():
            n, names = out.get(f.table, (f.num_embeddings, ()))
            out[f.table] = (n, (*names, f.name))
        return out

    def table_configs(self, embedding_dim: int) -> list[EmbeddingBagConfig]:
        """TorchRec configs of the tables, one per distinct `table`: mean-pooled where a multi-value
        feature uses it, else sum-pooled (the same for one id per bag).

        A sequence feature's table is listed with the sequence among its features; the embedding
        arch decides how sequence ids are looked up (pooled per id, see `rankers.embedding`).
        """
        from torchrec import EmbeddingBagConfig, PoolingType

        if embedding_dim < 1:
            raise ValueError(f"embedding_dim {embedding_dim} must be >= 1")
        mean_tables = {f.table for f in self.multi}
        return [
            EmbeddingBagConfig(
                name=name,
                num_embeddings=n,
                embedding_dim=embedding_dim,
                feature_names=list(names),
                pooling=PoolingType.MEAN if name in mean_tables else PoolingType.SUM,
            )
            for name, (n, names) in self.tables().items()
        ]

    def features_json(self) -> str:
        """The features (labels aside) as written in every parquet file of a dataset
        (`FEATURES_KEY`): a schema.json edited after conversion no longer matches them."""
        return self.without_labels().to_json()

    def check_arrow(self, arrow_schema: pa.Schema, where: str, labels: bool = True) -> None:
        """Raises ValueError naming `where` and the column if `arrow_schema` lacks a column or
        holds it with another type, or if it was written for other features than these (a file
        written by `DatasetWriter` carries them), naming what differs."""
        wanted = self.columns() if labels else self.without_labels().columns()
        for name, typ in wanted:
            idx = arrow_schema.get_field_index(name)
            if idx < 0:
                raise ValueError(f"{where}: missing column {name!r} (expected {typ} from schema.json)")
            got = arrow_schema.field(idx).type
            if got != typ and not (pa.types.is_list(got) and pa.types.is_list(typ)):
                raise ValueError(f"{where}: column {name!r} has type {got}, expected {typ}")
            if pa.types.is_list(typ) and got.value_type != typ.value_type:
                raise ValueError(f"{where}: column {name!r} has type {got}, expected {typ}")
        written = (arrow_schema.metadata or {}).get(FEATURES_KEY)
        if written is not None and written.decode() != self.features_json():
            differences = _differences(Schema.from_json(written.decode(), where), self)
            raise ValueError(
                f"{where}: schema.json does not describe the features this file was written with "
                f"({differences}); was schema.json edited after conversion? Convert the data again"
            )

    def to_json(self) -> str:
        return json.dumps(
            {
                "dense": [asdict(f) for f in self.dense],
                "categorical": [asdict(f) for f in self.categorical],
                "sequences": [asdict(f) for f in self.sequences],
                "labels": [asdict(lab) for lab in self.labels],
                "group": self.group,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, where: str = "schema") -> Schema:
        """The schema `to_json` wrote. Strict: the four feature lists are required (`group` is not:
        files written before it existed lack it), unknown keys are refused at every level, and every
        entry is type-checked; ValueError naming `where`, the entry, the key and the value."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{where}: not a valid schema (not JSON: {e})") from None
        check_keys(d, where, required=("dense", "categorical", "sequences", "labels"), optional=("group",))
        return typing.cast(Schema, build(cls, d, where))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SCHEMA_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Schema:
        """Loads `schema.json` from `directory` (a dataset, a split of one, or a checkpoint)."""
        path = Path(directory) / SCHEMA_FILE
        if not path.is_file():
            raise ValueError(f"{directory}: no {SCHEMA_FILE} found (expected a dataset directory)")
        try:
            text = path.read_text()
        except (OSError, ValueError) as e:  # ValueError: not UTF-8
            raise ValueError(f"{path}: cannot read it ({e})") from None
        return cls.from_json(text, where=str(path))


def _differences(written: Schema, declared: Schema) -> str:
    """What differs between the features a file was written with and those declared, in words."""

    def by_name(s: Schema) -> dict[str, Any]:
        features: tuple[DenseFeature | CategoricalFeature | SequenceFeature, ...] = (
            *s.dense,
            *s.categorical,
            *s.sequences,
        )
        return {f.name: f for f in features}

    old, new = by_name(written), by_name(declared)
    out = [f"{n!r} is in the file but not in schema.json" for n in old if n not in new]
    out += [f"{n!r} is in schema.json but was not written" for n in new if n not in old]
    for name in (n for n in new if n in old and new[n] != old[n]):
        a, b = asdict(new[name]), asdict(old[name])
        changed = [k for k in a if a[k] != b.get(k)]
        out += [f"{name!r} {k} {_shown(a[k])} in schema.json, {_shown(b.get(k))} written" for k in changed]
    if written.group != declared.group:
        out.append(f"group {declared.group!r} in schema.json, {written.group!r} written")
    return "; ".join(out) or "their order differs"


def _shown(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else repr(v)
