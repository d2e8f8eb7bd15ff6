"""The raw Ali-CCP release -> a parquet dataset (the layouts and labels in `features.datasets.aliccp`).

Files, comma-separated without header: `sample_skeleton_{train,test}.csv`, a line per impression
`sample_id, click, conversion, md5, feature_num, feature_list`, and `common_features_{train,test}.csv`,
a line per user context `md5, feature_num, feature_list`. A feature_list joins `feature_num`
entries with "\\x01", each entry `field "\\x02" feature_id "\\x03" value`.

Choices:
- Join: a skeleton row gets the entries of the common row of its md5 in the same split's common
  file (a md5 absent there raises naming the line; a md5 twice in a common file raises). Each
  split's common file is held in memory while its skeleton is streamed: about 10 bytes per entry
  (a field code, an int64 feature id, an offset) plus the md5s, so the full release's train common
  file (730k user contexts) takes a few GB; the skeleton rows are never all held.
- Fields: the 23 of `FIELDS`; an entry of another field raises. Fields of
  `multi_fields` become multi-value features (`CategoricalFeature(multi=True)`, a list<int64> of
  every entry's id, the skeleton's entries first, then the common ones, in file order; an empty list
  when the row has none), mean-pooled by the embedding tables. Other fields hold one id (0 when the
  row has no entry); several entries of such a field raise (add it to `multi_fields`).
- Values (after "\\x03", the weights of multi-value entries) are not used: a field's ids are
  embedded and mean-pooled unweighted.
- Ids per field of the train split's vocabulary (`features.vocabulary`), ties by id; a common row's
  entries count once per train row that joins it.
- Splits: the train skeleton gives train and a seeded `valid_fraction` (exact count) valid; the
  test skeleton, when the directory holds one, gives test.
- Group: `user`, the raw feature id of field 101 (int64, no feature), so test users unseen in train
  stay distinct for gAUC; a row without exactly one entry of field 101 raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.convert import Block, Plan, bar
from features.datasets.funnel import FUNNEL, funnel_labels, split_rows
from features.delimited import (
    CsvFile,
    Layout,
    bad_row,
    check_rows,
    count_rows,
    iter_files,
    line_of_row,
    require,
    sniff,
    split_lists,
)
from features.schema import CategoricalFeature, Schema
from features.vocabulary import MISSING, Vocabulary, lookup_ids

USER = "101"  # the user id field
FIELDS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129",  # user profile
    "109_14", "110_14", "127_14", "150_14",  # user histories: categories, shops, brands, intents
    "205", "206", "207", "210", "216",  # ad: item, category, shop, intent, brand
    "508", "509", "702", "853",  # user x ad crosses
    "301",  # position
)  # fmt: skip
MULTI = ("109_14", "110_14", "127_14", "150_14", "210", "508", "509", "702", "853")
SKELETON = ("sample_id", "click", "conversion", "md5", "feature_num", "feature_list")
COMMON = ("md5", "feature_num", "feature_list")
GROUP = "user"
_FIELDS = pa.array(FIELDS)
_ENTRY = r"^(?P<field>[^\x02\x03]*)\x02(?P<feature>[^\x02\x03]*)\x03[^\x02\x03]*$"
_TYPES = {"sample_id": pa.string(), "click": pa.int64(), "conversion": pa.int64(), "md5": pa.string()}
_TYPES |= {"feature_num": pa.int64(), "feature_list": pa.string()}
_EXPECT = {"click": "0 or 1", "conversion": "0 or 1", "feature_num": "an integer count"}


@dataclass
class _Entries:
    """Parsed feature lists: row r's entries are [offsets[r], offsets[r + 1])."""

    offsets: np.ndarray  # (rows + 1,) int64
    field: np.ndarray  # (entries,) int8: the index in FIELDS
    feature: np.ndarray  # (entries,) int64 feature ids


@dataclass
class _Common:
    path: Path
    md5: pa.Array
    entries: _Entries


def raw_plan(directory: Path, config: Any, progress: bool) -> Plan:
    """The raw layout's skeleton rows joined with their common features as blocks, with pass 1 (the
    vocabularies) made here; `config` is an `AliCCPConfig`."""
    files = _files(directory)
    skeleton = {s: _layout(p, SKELETON) for s, (p, _) in files.items()}
    common = {"train": _load_common(files["train"][1], config.block_bytes, progress)}
    vocab = _vocabulary(skeleton["train"], common["train"], config, progress)
    multi = set(config.multi_fields)
    schema = Schema(
        categorical=tuple(CategoricalFeature(n, 2 + len(vocab[n][0]), multi=n in multi) for n in FIELDS),
        labels=FUNNEL,
        group=GROUP,
    )

    def blocks(_: int) -> Iterator[Block]:
        for s in files:
            if s == "test":
                common["test"] = _load_common(files["test"][1], config.block_bytes, progress)
            for block in split_rows([(skeleton[s], None if s == "train" else 2)], _TYPES, _EXPECT, config):
                yield dataclasses.replace(block, source=common[s])

    return Plan(
        rows=sum(layout[2] for layout in skeleton.values()),
        blocks=blocks,
        schema=lambda _: schema,
        map=lambda block, vocab: _map(block, vocab, multi),
        inputs={s: [str(p) for p in paths] for s, paths in files.items()},
        vocabulary=vocab,
        head={"layout": "raw"},
    )


def _files(directory: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (skeleton, common features) of the release in `directory`; test is optional."""
    found = {}
    for split in ("train", "test"):
        pair = (directory / f"sample_skeleton_{split}.csv", directory / f"common_features_{split}.csv")
        there = [p.is_file() for p in pair]
        if all(there):
            found[split] = pair
        elif any(there) or split == "train":
            missing = [p.name for p, ok in zip(pair, there, strict=True) if not ok]
            raise ValueError(
                f"{directory}: no {' or '.join(missing)}; expected {pair[0].name} with {pair[1].name}"
            )
    return found


def _layout(path: Path, names: tuple[str, ...]) -> Layout:
    """The release's files have no header; line 1 is data (a md5 or sample id), never sniffed as one."""
    f = dataclasses.replace(sniff(path), header=None)
    if f.num_fields != len(names) or f.delimiter != ",":
        raise ValueError(
            f"{path}: line 1: {f.num_fields} {'tab' if f.delimiter != ',' else 'comma'}-separated fields; "
            f"expected {len(names)} comma-separated without header: {', '.join(names)}"
        )
    return f, names, count_rows(f)


def _parse(b: pa.RecordBatch, f: CsvFile, first: int) -> _Entries:
    """The entries of the batch's feature_list column, checked against feature_num."""
    require(b, ("md5", "feature_num"), f, first)
    entries, lengths = split_lists(b["feature_list"], "\x01")
    count = b["feature_num"].to_numpy()
    if (lengths != count).any():
        i = int(np.flatnonzero(lengths != count)[0])
        raise bad_row(f, first, i, "feature_num", int(count[i]), f"{lengths[i]}, the entries of feature_list")
    row = np.repeat(np.arange(len(lengths)), lengths)
    m = pc.extract_regex(entries, _ENTRY)
    code = pc.index_in(m.field("field"), value_set=_FIELDS)
    ok = pc.match_substring_regex(m.field("feature"), r"^\d{1,18}$")
    for bad, expected in (
        (m.is_valid(), "entries field\\x02feature_id\\x03value joined by \\x01"),
        (code.is_valid(), f"fields among {', '.join(FIELDS)}"),
        (pc.fill_null(ok, False), "integer feature ids"),
    ):
        if not pc.all(bad).as_py():
            j = int(np.flatnonzero(~bad.to_numpy(zero_copy_only=False))[0])
            raise bad_row(f, first, int(row[j]), "feature_list", entries[j].as_py(), expected)
    feature = m.field("feature").cast(pa.int64()).to_numpy()
    return _Entries(np.r_[0, np.cumsum(lengths)], code.to_numpy().astype(np.int8), feature)


def _load_common(path: Path, block_bytes: int, progress: bool) -> _Common:
    """A split's common features, all in memory; ValueError naming a repeated md5's line."""
    layout = _layout(path, COMMON)
    f, rows, types = layout[0], layout[2], {c: _TYPES[c] for c in COMMON}
    md5s, parsed = [], []
    batches = (
        Block(b, np.empty(0), f, first) for f, first, b in iter_files([layout], types, _EXPECT, block_bytes)
    )
    for block in bar(f"aliccp {path.name}", rows, progress, batches):
        parsed.append(_parse(block.batch, f, block.first))
        md5s.append(block.batch["md5"])
    md5 = pa.concat_arrays(md5s)
    _, where = np.unique(pc.dictionary_encode(md5).indices.to_numpy(), return_index=True)
    if len(where) < len(md5):
        row = int(np.setdiff1d(np.arange(len(md5)), where)[0])
        raise ValueError(
            f"{path}: line {line_of_row(f, row)}, column md5: {md5[row].as_py()!r} appears again; "
            "expected each md5 once"
        )
    lengths = np.concatenate([np.diff(p.offsets) for p in parsed])
    field, feature = (np.concatenate([getattr(p, a) for p in parsed]) for a in ("field", "feature"))
    return _Common(path, md5, _Entries(np.r_[0, np.cumsum(lengths)], field, feature))


def _common_rows(b: pa.RecordBatch, f: CsvFile, first: int, common: _Common) -> np.ndarray:
    """The common row of each skeleton row, by md5; ValueError naming a row whose md5 is absent."""
    idx = pc.index_in(b["md5"], value_set=common.md5)
    check_rows(f, first, idx.is_valid(), "md5", b["md5"], f"a md5 of {common.path}")
    return idx.to_numpy().astype(np.int64)


def _join(
    b: pa.RecordBatch, f: CsvFile, first: int, common: _Common
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's entries with its common ones, sorted by field, then row (skeleton entries first):
    (row of each entry, feature id of each entry, bounds: field k's entries are [bounds[k],
    bounds[k + 1]))."""
    own, rows = _parse(b, f, first), _common_rows(b, f, first, common)
    lo, hi = common.entries.offsets[rows], common.entries.offsets[rows + 1]
    offsets = np.r_[0, np.cumsum(hi - lo)]
    at = np.repeat(lo - offsets[:-1], hi - lo) + np.arange(offsets[-1])  # the rows' common entries
    n = np.arange(b.num_rows)
    row = np.concatenate([np.repeat(n, np.diff(own.offsets)), np.repeat(n, hi - lo)])
    field = np.concatenate([own.field, common.entries.field[at]])
    feature = np.concatenate([own.feature, common.entries.feature[at]])
    order = np.lexsort((row, field))  # stable, so skeleton entries stay first within a row
    bounds = np.searchsorted(field[order], np.arange(len(FIELDS) + 1))
    return row[order], feature[order], bounds


def _vocabulary(skeleton: Layout, common: _Common, config: Any, progress: bool) -> Vocabulary:
    """Pass 1: field -> (train ids by count, their counts); common entries weighted by their uses."""
    tables, uses = [], np.zeros(len(common.md5), dtype=np.int64)
    blocks = split_rows([(skeleton, None)], _TYPES, _EXPECT, config)
    for block in bar("aliccp 1/2 vocabulary", skeleton[2], progress, blocks):
        b, f, first, train = block.batch, block.file, block.first, block.split == 0
        assert f is not None
        own, rows = _parse(b, f, first), _common_rows(b, f, first, common)
        keep = np.repeat(train, np.diff(own.offsets))
        ones = np.ones(int(keep.sum()), dtype=np.int64)
        tables.append(pa.table({"field": own.field[keep], "value": own.feature[keep], "count": ones}))
        uses += np.bincount(rows[train], minlength=len(uses))
    weight = np.repeat(uses, np.diff(common.entries.offsets))
    tables.append(pa.table({"field": common.entries.field, "value": common.entries.feature, "count": weight}))
    counts = pa.concat_tables(tables).group_by(["field", "value"]).aggregate([("count", "sum")])
    counts = counts.filter(pc.greater_equal(counts["count_sum"], config.min_count))
    counts = counts.sort_by([("field", "ascending"), ("count_sum", "descending"), ("value", "ascending")])
    field = counts["field"].to_numpy()
    vocab = {}
    for k, name in enumerate(FIELDS):
        lo, hi = np.searchsorted(field, k), np.searchsorted(field, k, side="right")
        part = counts.slice(lo, hi - lo)
        vocab[name] = (part["value"].combine_chunks(), part["count_sum"].combine_chunks())
    return vocab


def _map(block: Block, vocab: Vocabulary, multi: set[str]) -> dict[str, Any]:
    """Pass 2: joins a block of skeleton rows with its split's common features and maps them."""
    b, f, first, n = block.batch, block.file, block.first, block.batch.num_rows
    assert f is not None
    cols: dict[str, Any] = {}
    cols["click"], cols["conversion"] = funnel_labels(b, f, first, "click", "conversion")
    row, feature, bounds = _join(b, f, first, block.source)
    for k, name in enumerate(FIELDS):
        r, raw = row[bounds[k] : bounds[k + 1]], feature[bounds[k] : bounds[k + 1]]
        ids = lookup_ids(pa.array(raw, pa.int64()), vocab[name][0], MISSING)
        per_row = np.bincount(r, minlength=n)
        if name in multi:
            offsets = pa.array(np.r_[0, np.cumsum(per_row)].astype(np.int32))
            cols[name] = pa.ListArray.from_arrays(offsets, pa.array(ids, pa.int64()))
            continue
        _check_single(name, per_row, f, first)
        cols[name] = np.full(n, MISSING, dtype=np.int64)
        cols[name][r] = ids
        if name == USER:
            cols[GROUP] = np.empty(n, dtype=np.int64)
            cols[GROUP][r] = raw
    return cols


def _check_single(name: str, per_row: np.ndarray, f: CsvFile, first: int) -> None:
    """At most one entry of a single-value field per row; exactly one of the user id field."""
    bad = np.flatnonzero(per_row != 1 if name == USER else per_row > 1)
    if len(bad):
        expected = (
            "exactly one entry (the user id)" if name == USER else
            "at most one entry (or add the field to multi_fields)"
        )  # fmt: skip
        value = f"{per_row[bad[0]]} entries of field {name}"
        raise bad_row(f, first, int(bad[0]), "feature_list", value, expected)
