"""A table spec: the role of each column of a user's table, for `rankers convert table`.

Written as TOML (`load_spec`); `examples/*/spec.toml` are specs of the shipped samples. Every key::

    keys = ["search_id"]       # pass-through columns: written beside the features and predictions
    group = "user_id"          # per-user AUC (gAUC): a categorical column, or any column (hashed)
    time = "ts"                # for split.by = "time": numbers (unix seconds) or ISO 8601 date-times

    [input]
    format = "auto"            # auto (parquet by its magic bytes, else text), csv, parquet
    delimiter = "auto"         # auto (tab if line 1 holds one, else comma) or one character
    header = true              # line 1 names the columns; false: `names` does
    names = []                 # column names in file order, with header = false

    [split]
    by = "random"              # random (seeded, exact counts), order (first rows train), time
    fractions = [0.8, 0.1, 0.1]
    seed = 0
    cutoffs = []               # by time: [valid from, test from] (unix seconds for date-times); []: fractions

    [[label]]                  # one per task; 0/1 values
    column = "click"
    task = "ctr"               # with cvr: a conversion implies a click (checked per row)

    [[dense]]                  # float features; empty fields become `fill` after the transform
    columns = ["price"]
    transform = "log1p"        # none, log1p (sign(x) log(1 + |x|)), standardise, bucketize

    [[categorical]]            # one value per row; `column` for one, `columns` for several
    columns = ["user_id", "item_id"]
    min_count = 1              # rarer train values share the rare id 1; or:
    hash_buckets = 0           # > 0: hashed into that many buckets (`features.hashing`), no vocabulary

    [[multi]]                  # several values per row, mean-pooled: `delimiter` text or a list column
    [[sequence]]               # a behaviour history, oldest first: delimiter, max_len, table

Ids: 0 is missing, 1 rare or unseen (vocabularies), values from 2 (`features.vocabulary`). `table`
(categorical, multi, sequence) names a categorical column whose table, vocabulary or hash, the column
shares: a history of items shares the `item_id` table, and its values count in that vocabulary.
A dense column with `transform = "bucketize"` becomes a categorical feature: id 2 + the bucket
(`boundaries`, or `buckets` train quantiles). Fitted values (standardise's `mean` and `std`,
quantile boundaries) may be given; dataset.json's `spec` holds them all (a checkpoint keeps it as
`spec.json`).
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from features.strict import build, check_keys, check_value

SPEC_FILE = "spec.json"  # in a checkpoint trained on a dataset converted by spec
ROLES = ("label", "dense", "categorical", "multi", "sequence")
TRANSFORMS = ("none", "log1p", "standardise", "bucketize")
SPLIT_BY = ("random", "order", "time")
FORMATS = ("auto", "csv", "parquet")
_NAME = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True)
class InputSpec:
    """How the input files are read."""

    format: str = "auto"
    delimiter: str = "auto"
    header: bool = True
    names: tuple[str, ...] = ()
    block_bytes: int = 8 << 20  # text bytes parsed per block
    block_rows: int = 1 << 18  # rows mapped per block (parquet batches; joined text blocks)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: expected one of {list(FORMATS)}")
        if self.delimiter != "auto" and len(self.delimiter) != 1:
            raise ValueError(f"delimiter {self.delimiter!r}: expected 'auto' or one character")
        if self.header == bool(self.names):
            what = "header = true with names" if self.header else "header = false without names"
            raise ValueError(f"{what}: names are for files without a header line (give one or the other)")
        if self.block_bytes < 4096 or self.block_rows < 1:
            raise ValueError(f"block_bytes {self.block_bytes} >= 4096 and block_rows {self.block_rows} >= 1")


@dataclass(frozen=True)
class SplitSpec:
    """How rows are split into train, valid and test."""

    by: str = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    cutoffs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        from features.convert import check_split

        if self.by not in SPLIT_BY:
            raise ValueError(f"by {self.by!r}: expected one of {list(SPLIT_BY)}")
        object.__setattr__(self, "fractions", check_split(self.fractions))
        if self.cutoffs and (
            self.by != "time" or len(self.cutoffs) != 2 or self.cutoffs[0] > self.cutoffs[1]
        ):
            raise ValueError(
                f"cutoffs {list(self.cutoffs)}: expected [valid from, test from] with by = 'time'"
            )


@dataclass(frozen=True)
class ColumnSpec:
    """One column's role and settings (an entry of `[[label]]`, `[[dense]]`, ...; `columns` there
    gives several columns the same settings)."""

    role: str
    column: str
    task: str = ""  # label
    transform: str = "none"  # dense
    fill: float = 0.0  # dense: the value of an empty field, after the transform
    boundaries: tuple[float, ...] = ()  # bucketize: bucket k holds boundaries[k-1] <= x < boundaries[k]
    buckets: int = 0  # bucketize: that many buckets by train quantiles (boundaries fitted)
    mean: float | None = None  # standardise: fitted on the train rows unless given
    std: float | None = None
    min_count: int = 1  # categorical, multi, sequence with their own table
    hash_buckets: int = 0
    table: str = ""  # the categorical column whose table this one shares
    delimiter: str = ""  # multi, sequence: between values in a text field; "": a list column
    max_len: int = 0  # sequence: most recent values kept (required); multi: 0 keeps all

    def __post_init__(self) -> None:
        r, where = self.role, f"column {self.column}"
        if r not in ROLES:
            raise ValueError(f"role {r!r}: expected one of {list(ROLES)}")
        if not self.column or not set(self.column) <= _NAME:
            raise ValueError(f"{where}: column name {self.column!r}: expected letters, digits and '_' only")
        given = {f.name for f in fields(self) if getattr(self, f.name) != f.default} - {"role", "column"}
        allowed = {
            "label": {"task"},
            "dense": {"transform", "fill", "boundaries", "buckets", "mean", "std"},
            "categorical": {"min_count", "hash_buckets", "table"},
            "multi": {"min_count", "hash_buckets", "table", "delimiter", "max_len"},
            "sequence": {"min_count", "hash_buckets", "table", "delimiter", "max_len"},
        }[r]
        if given - allowed:
            raise ValueError(f"{where}: {sorted(given - allowed)[0]} is not a setting of a {r} column")
        if r == "label" and (not self.task or not set(self.task) <= _NAME):
            raise ValueError(f"{where}: task {self.task!r}: expected a name such as 'ctr' or 'cvr'")
        if r == "dense":
            self._check_dense(where)
        if self.min_count < 1 or self.hash_buckets < 0 or self.max_len < 0:
            raise ValueError(f"{where}: min_count >= 1, hash_buckets >= 0 and max_len >= 0 expected")
        if self.hash_buckets and self.min_count != 1:
            raise ValueError(f"{where}: min_count and hash_buckets: a hashed column has no vocabulary")
        if self.table and (self.hash_buckets or self.min_count != 1):
            raise ValueError(f"{where}: table {self.table!r}: a shared table's settings are its owner's")
        if r == "sequence" and self.max_len < 1:
            raise ValueError(f"{where}: max_len: expected the number of most recent values kept, >= 1")
        if len(self.delimiter) > 1:
            raise ValueError(f"{where}: delimiter {self.delimiter!r}: expected one character or '' (a list)")

    def _check_dense(self, where: str) -> None:
        t = self.transform
        if t not in TRANSFORMS:
            raise ValueError(f"{where}: transform {t!r}: expected one of {list(TRANSFORMS)}")
        b = self.boundaries
        if t == "bucketize" and bool(b) == bool(self.buckets):
            raise ValueError(f"{where}: bucketize: expected boundaries or buckets (quantiles), one of them")
        if t != "bucketize" and (b or self.buckets):
            raise ValueError(f"{where}: boundaries and buckets are for transform = 'bucketize'")
        if b and not (all(math.isfinite(x) for x in b) and all(x < y for x, y in itertools.pairwise(b))):
            raise ValueError(f"{where}: boundaries {list(b)}: expected finite numbers, increasing")
        if self.buckets == 1 or self.buckets < 0:
            raise ValueError(f"{where}: buckets {self.buckets}: expected 2 or more")
        if (self.mean is not None or self.std is not None) and t != "standardise":
            raise ValueError(f"{where}: mean and std are for transform = 'standardise'")
        if (self.mean is None) != (self.std is None) or (self.std is not None and not self.std > 0):
            raise ValueError(f"{where}: mean and std: expected both, std > 0")
        if not math.isfinite(self.fill):
            raise ValueError(f"{where}: fill {self.fill}: expected a finite number")

    @property
    def owner(self) -> str:
        """The table's name: the column's own, or the column whose table it shares."""
        return self.table or self.column

    @property
    def needs_fit(self) -> bool:
        """Whether the train rows must be seen to map this column (stats, quantiles)."""
        return (self.transform == "standardise" and self.mean is None) or (
            self.transform == "bucketize" and not self.boundaries
        )


@dataclass(frozen=True)
class TableSpec:
    """Every column's role (in order: labels, dense, categorical, multi, sequence), the input and
    the split. Checked as a whole on construction: ValueError naming the column."""

    columns: tuple[ColumnSpec, ...]
    keys: tuple[str, ...] = ()
    group: str = ""
    time: str = ""
    input: InputSpec = field(default_factory=InputSpec)
    split: SplitSpec = field(default_factory=SplitSpec)

    def __post_init__(self) -> None:
        _check_table(self)

    def role(self, role: str) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role == role)

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role != "label")

    @property
    def ids(self) -> tuple[ColumnSpec, ...]:
        """Columns that become ids: categorical, bucketized dense, multi, sequence."""
        return tuple(c for c in self.features if c.role != "dense" or c.transform == "bucketize")

    def owners(self) -> dict[str, ColumnSpec]:
        """Table name -> the column that owns it (its settings: vocabulary or hash)."""
        return {c.column: c for c in self.ids if not c.table}

    def read_columns(self) -> tuple[str, ...]:
        """Every column the spec reads from the input, in spec order."""
        extra = (*self.keys, self.group, self.time)
        names = [c.column for c in self.columns] + [n for n in extra if n]
        return tuple(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        """The spec as `load_spec` reads it: one entry per column, every setting given."""
        out: dict[str, Any] = {"keys": list(self.keys), "group": self.group, "time": self.time}
        out["input"], out["split"] = asdict(self.input), asdict(self.split)
        for c in self.columns:
            d = {k: v for k, v in asdict(c).items() if k != "role" and (v is not None)}
            out.setdefault(c.role, []).append(d)
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def _check_table(s: TableSpec) -> None:
    """Cross-column checks: one role per column, tasks distinct, shared tables owned."""
    roles: dict[str, str] = {}
    for c in s.columns:
        if c.column in roles:
            raise ValueError(f"column {c.column}: both {roles[c.column]} and {c.role}; expected one role")
        roles[c.column] = c.role
    for k in s.keys:
        if k in roles:
            raise ValueError(
                f"keys: {k!r} is also a {roles[k]} column; a key is passed through, never a feature"
            )
    if s.time and s.time in roles:
        raise ValueError(f"time: {s.time!r} is also a {roles[s.time]} column; expected a column of its own")
    if s.group and s.group in s.keys and s.group not in roles:
        raise ValueError(
            f"group: {s.group!r} is also a key; a group that is no feature is written as its int64 hash "
            "under its own name, so it cannot be passed through too (make it a categorical column, or "
            "keep one of the two)"
        )
    if s.group and roles.get(s.group, "categorical") != "categorical":
        raise ValueError(
            f"group: {s.group!r} is a {roles[s.group]} column; expected a categorical or no feature"
        )
    tasks = [c.task for c in s.role("label")]
    for t in tasks:
        if tasks.count(t) > 1:
            names = [c.column for c in s.role("label") if c.task == t]
            raise ValueError(f"labels {names}: both train task {t!r}; expected one label per task")
    if "cvr" in tasks and "ctr" not in tasks:
        raise ValueError(
            "label of task 'cvr' without one of task 'ctr': a conversion is counted after a click"
        )
    if not s.features:
        raise ValueError("no feature columns: expected [[dense]], [[categorical]], [[multi]] or [[sequence]]")
    single = {c.column for c in s.role("categorical") if not c.table}
    for c in s.ids:
        if c.table and c.table not in single:
            raise ValueError(
                f"[[{c.role}]] {c.column}: table {c.table!r} is no categorical column of this spec with a "
                f"table of its own; expected one of {sorted(single)}"
            )
    multi = {c.owner for c in s.role("multi")}
    both = sorted(multi & {c.owner for c in s.role("sequence")})
    if both:
        raise ValueError(f"table {both[0]!r}: shared by a multi-value and a sequence column; expected either")
    if s.split.by == "time" and not s.time:
        raise ValueError("split.by = 'time' needs `time`, the column of each row's time")


def spec_from_dict(d: object, where: str) -> TableSpec:
    """The spec in a parsed TOML or JSON object (the module doc's layout), checked strictly."""
    top = check_keys(d, where, optional=("keys", "group", "time", "input", "split", *ROLES))
    entries: list[ColumnSpec] = []
    for role in ROLES:
        for i, entry in enumerate(check_value(top.get(role, []), list[dict[str, Any]], f"{where} {role}")):
            at = f"{where} [[{role}]] #{i + 1}"
            names = _entry_columns(entry, at)
            settings = {k: v for k, v in entry.items() if k not in ("column", "columns")}
            for name in names:
                entries.append(build(ColumnSpec, {"role": role, "column": name, **settings}, at))
    try:
        return TableSpec(
            columns=tuple(entries),
            keys=check_value(top.get("keys", []), tuple[str, ...], f"{where} keys"),
            group=check_value(top.get("group", ""), str, f"{where} group"),
            time=check_value(top.get("time", ""), str, f"{where} time"),
            input=build(InputSpec, top.get("input", {}), f"{where} [input]"),
            split=build(SplitSpec, top.get("split", {}), f"{where} [split]"),
        )
    except ValueError as e:
        raise ValueError(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None


def _entry_columns(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    one, many = entry.get("column"), entry.get("columns")
    if (one is None) == (many is None):
        raise ValueError(f'{where}: expected `column = "name"` or `columns = [...]`, one of them')
    if one is not None:
        return (check_value(one, str, f"{where} column"),)
    names = check_value(many, tuple[str, ...], f"{where} columns")
    if not names:
        raise ValueError(f"{where} columns: empty; expected at least one column")
    return names


def load_spec(path: str | Path) -> TableSpec:
    """The spec in a TOML file (or the JSON `TableSpec.save` wrote); ValueError naming the file,
    the entry and the key for anything unknown, mistyped or inconsistent."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the spec ({e})") from None
    try:
        parsed = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({e})") from None
    return spec_from_dict(parsed, str(path))


def fitted(spec: TableSpec, values: dict[str, dict[str, Any]]) -> TableSpec:
    """`spec` with fitted settings (column -> {"mean": .., "std": ..} or {"boundaries": (...)}); a
    column bucketized by quantiles then holds its boundaries instead of its number of buckets."""

    def fit(c: ColumnSpec) -> ColumnSpec:
        if c.column not in values:
            return c
        settings: dict[str, Any] = dict(values[c.column])
        if "boundaries" in settings:
            settings["buckets"] = 0
        return replace(c, **settings)

    return replace(spec, columns=tuple(fit(c) for c in spec.columns))


def describe_spec(spec: TableSpec) -> str:
    """Columns per role in a few words, for dataset.json's `layout` and the log line."""
    counts = [f"{len(spec.role(r))} {r}" for r in ROLES if spec.role(r)]
    return ", ".join(counts + ([f"{len(spec.keys)} keys"] if spec.keys else [])) + " (spec)"
