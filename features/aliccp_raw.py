"""The raw Ali-CCP release -> a parquet dataset (the layouts and labels in `features.aliccp`).

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
- Fields: the 23 of `features.aliccp.FIELDS`; an entry of another field raises. Fields of
  `multi_fields` become multi-value features (`CategoricalFeature(multi=True)`, a list<int64> of
  every entry's id, the skeleton's entries first, then the common ones, in file order; an empty list
  when the row has none), mean-pooled by the embedding tables. Other fields hold one id (0 when the
  row has no entry); several entries of such a field raise (add it to `multi_fields`).
- Values (after "\\x03", the weights of multi-value entries) are not used: a field's ids are
  embedded and mean-pooled unweighted.
- Ids per field as `features.criteo`: 0 = missing, 1 = rare or unseen (fewer than `min_count`
  times in the train split), 2.. = the vocabulary by descending train count, ties by id. A common
  row's entries count once per train row that joins it. `vocabulary.parquet` is saved beside.
- Splits: the train skeleton gives train and a seeded `valid_fraction` (exact count) valid; the
  test skeleton, when the directory holds one, gives test.
- Group: `user`, the raw feature id of field 101 (int64, no feature), so test users unseen in train
  stay distinct for gAUC; a row without exactly one entry of field 101 raises.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from features._csv import (
    MISSING,
    CsvFile,
    Layout,
    bad_row,
    count_rows,
    iter_files,
    line_of_row,
    lookup_ids,
    require,
    sniff,
    vocabulary_table,
)
from features.aliccp import FIELDS, USER, AliCCPConfig
from features.aliexpress import FUNNEL, SPLITS, funnel_labels, split_rows, write_splits
from features.dataset import DatasetWriter
from features.outputs import StagedOutput
from features.schema import CategoricalFeature, Schema

logger = logging.getLogger(__name__)

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


def convert_raw(
    directory: Path, output: StagedOutput, config: AliCCPConfig, progress: bool, began: float
) -> Path:
    """`features.aliccp.convert_aliccp` for the raw layout (see the module doc)."""
    files = _files(directory)
    skeleton = {s: _layout(p, SKELETON) for s, (p, _) in files.items()}
    common = _load_common(files["train"][1], config.block_bytes, progress)
    vocab = _vocabulary(skeleton["train"], common, config, progress)
    multi = set(config.multi_fields)
    schema = Schema(
        categorical=tuple(CategoricalFeature(n, 2 + len(vocab[n][0]), multi=n in multi) for n in FIELDS),
        labels=FUNNEL,
        group=GROUP,
    )
    vocabulary = vocabulary_table(vocab)
    with DatasetWriter(output, schema, splits=SPLITS, identity=vocabulary) as writer:
        for s in files:
            if s == "test":
                common = _load_common(files["test"][1], config.block_bytes, progress)
            _write(writer, skeleton[s], s, common, vocab, config, progress)
        seconds, total = time.perf_counter() - began, sum(layout[2] for layout in skeleton.values())
        info = {
            "converter": "features.aliccp.convert_aliccp",
            "layout": "raw",
            "config": asdict(config),
            "inputs": {s: [str(p) for p in paths] for s, paths in files.items()},
            "seconds": round(seconds, 3),
            "rows_per_s": round(total / seconds),
        }
        written = writer.commit(info, files={"vocabulary.parquet": vocabulary})
    logger.info("aliccp (raw): %d rows -> %s %s in %.1f s", total, written, writer.rows, seconds)
    return written


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
    text = pc.fill_null(b["feature_list"], "")
    parts = pc.split_pattern(text, "\x01")
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    entries = pc.list_flatten(parts).filter(pa.array(np.repeat(~empty, lengths)))
    lengths = np.where(empty, 0, lengths).astype(np.int64)
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
    f, rows = layout[0], layout[2]
    md5s, parsed = [], []
    bar = tqdm(total=rows, unit="rows", unit_scale=True, desc=f"aliccp {path.name}", disable=not progress)
    with bar:
        for f, first, b in iter_files([layout], {c: _TYPES[c] for c in COMMON}, _EXPECT, block_bytes):
            parsed.append(_parse(b, f, first))
            md5s.append(b["md5"])
            bar.update(b.num_rows)
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
    if idx.null_count:
        i = int(np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[0])
        raise bad_row(f, first, i, "md5", b["md5"][i].as_py(), f"a md5 of {common.path}")
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


def _vocabulary(
    skeleton: Layout, common: _Common, config: AliCCPConfig, progress: bool
) -> dict[str, tuple[pa.Array, pa.Array]]:
    """Pass 1: field -> (train ids by count, their counts); common entries weighted by their uses."""
    tables, uses = [], np.zeros(len(common.md5), dtype=np.int64)
    bar = tqdm(
        total=skeleton[2], unit="rows", unit_scale=True, desc="aliccp 1/2 vocabulary", disable=not progress
    )
    with bar:
        for f, first, b, split in _split_rows(skeleton, None, config):
            train = split == 0
            own, rows = _parse(b, f, first), _common_rows(b, f, first, common)
            keep = np.repeat(train, np.diff(own.offsets))
            ones = np.ones(int(keep.sum()), dtype=np.int64)
            tables.append(pa.table({"field": own.field[keep], "value": own.feature[keep], "count": ones}))
            uses += np.bincount(rows[train], minlength=len(uses))
            bar.update(b.num_rows)
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


def _write(
    writer: DatasetWriter,
    skeleton: Layout,
    split_name: str,
    common: _Common,
    vocab: dict[str, tuple[pa.Array, pa.Array]],
    config: AliCCPConfig,
    progress: bool,
) -> None:
    """Pass 2: joins, maps and writes the rows of one skeleton file."""
    arrow = writer.schema.arrow_schema()
    multi = set(config.multi_fields)
    bar = tqdm(
        total=skeleton[2], unit="rows", unit_scale=True, desc=f"aliccp 2/2 {split_name}", disable=not progress
    )
    with bar:
        for f, first, b, split in _split_rows(skeleton, None if split_name == "train" else 2, config):
            cols: dict[str, pa.Array | np.ndarray] = {}
            cols["click"], cols["conversion"] = funnel_labels(b, f, first, "click", "conversion")
            row, feature, bounds = _join(b, f, first, common)
            for k, name in enumerate(FIELDS):
                r, raw = row[bounds[k] : bounds[k + 1]], feature[bounds[k] : bounds[k + 1]]
                ids = lookup_ids(pa.array(raw, pa.int64()), vocab[name][0], MISSING)
                per_row = np.bincount(r, minlength=b.num_rows)
                if name in multi:
                    offsets = pa.array(np.r_[0, np.cumsum(per_row)].astype(np.int32))
                    cols[name] = pa.ListArray.from_arrays(offsets, pa.array(ids, pa.int64()))
                    continue
                _check_single(name, per_row, f, first)
                cols[name] = np.full(b.num_rows, MISSING, dtype=np.int64)
                cols[name][r] = ids
                if name == USER:
                    cols[GROUP] = np.empty(b.num_rows, dtype=np.int64)
                    cols[GROUP][r] = raw
            table = pa.Table.from_arrays([cols[c] for c in arrow.names], schema=arrow)
            write_splits(writer, table, split)
            bar.update(b.num_rows)


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


def _split_rows(
    skeleton: Layout, split: int | None, config: AliCCPConfig
) -> Iterator[tuple[CsvFile, int, pa.RecordBatch, np.ndarray]]:
    return split_rows(
        [(skeleton, split)], _TYPES, _EXPECT, config.valid_fraction, config.seed, config.block_bytes
    )
