"""Alimama display-ad data (Taobao) -> a parquet dataset; helpers shared with `features.userbehavior`.

Layouts (`TaobaoAdConfig.layout`, "auto" detects them from the inputs):
- "raw": the four public tables (a directory holding them, or their four paths): `raw_sample.csv`
  (impressions), `ad_feature.csv`, `user_profile.csv`, `behavior_log.csv`. Each impression gets its
  ad and user profile fields and the user's behaviours at a strictly earlier second (the most
  recent `max_len`, oldest first) as hist_cate_id, hist_brand, hist_btag. behavior_log (700M rows)
  and raw_sample are hash-partitioned by user into `buckets` parquet files in a temporary directory
  beside `out`, then joined bucket by bucket (see `features.taobao_raw`). Rows are written bucket
  by bucket, in file order within a bucket. "NULL" or empty fields are missing.
- "joined": one CSV with header clk, time_stamp, userid, adgroup_id, pid, cate_id, campaign_id,
  customer, brand, price, the eight profile fields and click_sequence (`^`-separated adgroup ids,
  assumed oldest first like the raw histories; empty = no history) -> hist_adgroup_id.
  time_stamp (`YYYY-MM-DD HH:MM:SS`) is taken as Beijing time.
- "dmr": the DMR paper's fixed-history CSV (267 columns, header optional): cont_btag, his_cate,
  his_brand, mask, match_mask x 50, then uid, the profile fields, mid, cate_id, campaign_id,
  customer, brand, price, pid, target. Histories are left-padded: every mask is 0 or 1, zeros
  (padding, whose btag/cate/brand are 0) come before ones, and the real positions in column order
  (assumed oldest first) become hist_btag, hist_cate_id, hist_brand. match_mask is derivable and
  ignored; uid, mid and target become userid, adgroup_id and click. The values are ids as given
  (the DMR preprocessing wrote 0 for some missing fields; they stay the value 0, nothing guessed).

Features: categorical userid, the eight profile fields, adgroup_id, pid, cate_id, campaign_id,
customer, brand; dense price (log1p for raw and joined; as given, already scaled, for dmr); label
click (task ctr); group `user`, the raw user id (so users unseen in train, who share userid's
unseen id, stay distinct users for gAUC). Sequences share the table of their target field (hist_cate_id with
cate_id, hist_brand with brand, hist_adgroup_id with adgroup_id); hist_btag has its own table.

Ids per table, as in `features.criteo`: 0 = missing (an empty field, a user without profile, an ad
without features: both counted in dataset.json), 1 = rare or unseen (fewer than `min_count` times
in the train split), 2.. = the vocabulary by descending train count (the target column and its
sequences counted together, every history element once per row). `vocabulary.parquet` holds it
(its `feature` column names the table).

Split: "time" (raw, joined): days in Beijing time; `train_dates` and `test_dates` (BARS
TaobaoAd_x1: train 2017-05-06..12, test 2017-05-13), rows on other days excluded and counted;
`valid_fraction` of the train days' rows (seeded, uniform) form valid. "random" (every layout; the
only one for dmr, which has no time): seeded fractions `split` with exact counts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from features._csv import (
    MISSING,
    SplitAssigner,
    ValueCounter,
    check_split,
    lookup_ids,
    sniff,
    vocabulary_table,
)
from features.dataset import DatasetWriter
from features.outputs import StagedOutput
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
BEIJING = 8 * 3600  # seconds east of UTC: Taobao's days are calendar days in Beijing
_DAY = 86_400
_EPOCH = dt.date(1970, 1, 1)
PROFILE = (
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
)
AD = ("adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand")
CATEGORICAL = ("userid", *PROFILE, *AD)
GROUP = "user"  # the raw user id (int64, no feature): gAUC groups by it
LABEL = "click"
BEHAVIOR_SEQUENCES = {"hist_cate_id": "cate_id", "hist_brand": "brand", "hist_btag": "btag"}
JOINED = ("clk", "time_stamp", "userid", *AD[:1], "pid", *AD[2:], "price", *PROFILE, "click_sequence")
STEPS = 50  # history positions of the dmr layout
DMR_GROUPS = ("cont_btag", "his_cate", "his_brand", "mask", "match_mask")
DMR_TAIL = ("uid", *PROFILE, "mid", "cate_id", "campaign_id", "customer", "brand", "price", "pid", "target")
VOCAB_FILE = "vocabulary.parquet"


def beijing_day(t: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of unix seconds `t`, counted in Beijing time (UTC+8)."""
    return (t + BEIJING) // _DAY


def check_date(name: str, text: str) -> int:
    """Days since 1970-01-01 of an ISO date `YYYY-MM-DD`; ValueError naming `name` otherwise."""
    try:
        return (dt.date.fromisoformat(text) - _EPOCH).days
    except (TypeError, ValueError):
        raise ValueError(f"{name} {text!r}: expected a date YYYY-MM-DD") from None


def day_text(day: int) -> str:
    """`YYYY-MM-DD` of a day number from `beijing_day`."""
    return str(_EPOCH + dt.timedelta(days=int(day)))


def history_lists(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pa.ListArray:
    """A `list<int64>` row per range: `values[lo[r]:hi[r]]`, built without a Python loop."""
    lengths = hi - lo
    offsets = np.r_[0, np.cumsum(lengths)]
    if offsets[-1] >= 2**31:
        raise ValueError(
            f"{offsets[-1]} history ids in one block; expected fewer than 2^31 (lower block_bytes)"
        )
    positions = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values[positions], pa.int64())
    )


@dataclass(frozen=True)
class TaobaoAdConfig:
    """How Alimama rows become features; every field has a CLI flag of the same name."""

    layout: str = "auto"  # "raw", "joined", "dmr", or "auto": detected from the inputs
    max_len: int = 50  # most recent behaviours kept per history
    min_count: int = 1  # values seen fewer times in the train split share the rare id 1
    split_by: str = "time"  # "time": train_dates / test_dates; "random": the `split` fractions
    train_dates: tuple[str, ...] = ("2017-05-06", "2017-05-12")  # first and last train day (Beijing)
    test_dates: tuple[str, ...] = ("2017-05-13", "2017-05-13")  # first and last test day (Beijing)
    valid_fraction: float = 0.1  # split_by "time": seeded fraction of the train days' rows -> valid
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # split_by "random": train/valid/test fractions
    seed: int = 0  # seeds the random split and the valid draw
    buckets: int = 64  # raw: user hash partitions (each joined in memory: behaviours / buckets rows)
    block_bytes: int = 8 << 20  # bytes parsed per block

    def __post_init__(self) -> None:
        if self.layout not in ("auto", "raw", "joined", "dmr"):
            raise ValueError(f"layout {self.layout!r}: expected 'auto', 'raw', 'joined' or 'dmr'")
        for name, low in (("max_len", 1), ("min_count", 1), ("buckets", 1), ("block_bytes", 4096)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} {value!r}: expected an integer >= {low}")
        if self.split_by not in ("time", "random"):
            raise ValueError(f"split_by {self.split_by!r}: expected 'time' or 'random'")
        days = []
        for name in ("train_dates", "test_dates"):
            dates = tuple(getattr(self, name))
            if len(dates) != 2:
                raise ValueError(f"{name} {dates!r}: expected two dates (first, last day)")
            days.append([check_date(name, d) for d in dates])
            if days[-1][0] > days[-1][1]:
                raise ValueError(f"{name} {dates!r}: expected the first day <= the last day")
            object.__setattr__(self, name, dates)
        if days[0][1] >= days[1][0] and days[1][1] >= days[0][0]:
            raise ValueError(f"train_dates {self.train_dates} and test_dates {self.test_dates} overlap")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction {self.valid_fraction!r}: expected a number in [0, 1)")
        object.__setattr__(self, "split", check_split(self.split))


@dataclass
class Source:
    """A layout's rows as record batches of raw values with the standard columns: CATEGORICAL,
    price (float64), the sequences (lists), click (int8) and, where the layout has times, day
    (`beijing_day`). `batches` may be called once per pass."""

    layout: str
    inputs: list[str]
    rows: int
    sequences: dict[str, str]  # sequence column -> its table
    batches: Callable[[], Iterator[pa.RecordBatch]]
    log_price: bool
    info: dict[str, Any] = field(default_factory=dict)  # counts reported in dataset.json


def convert_taobao_ad(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: TaobaoAdConfig = TaobaoAdConfig(),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Converts Alimama display-ad data (any layout of the module doc) into a dataset directory.

    Args:
        inputs: raw: a directory holding the four tables, or their four paths; joined or dmr: one
            file or several of the same layout, read in order.
        out: the dataset directory to create (atomically; nothing is left there on failure).
        config: layout, history length, vocabulary and split options.
        overwrite: replace an existing `out` once the new dataset is complete.
        progress: show tqdm bars with rows, rate and ETA.

    Returns:
        `out`.

    Raises:
        ValueError: for bad input, naming the file, the line, the column and the value.
    """
    began, out = time.perf_counter(), Path(out)
    with StagedOutput(out, "dataset", overwrite, inputs=inputs) as output:
        layout, paths = detect_layout(inputs, config.layout)
        if layout == "dmr" and config.split_by == "time":
            raise ValueError(f"{paths[0]}: the dmr layout has no times; expected split_by 'random'")
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = (
            tempfile.TemporaryDirectory(prefix=f".{out.name}.buckets-", dir=out.parent)
            if layout == "raw"
            else contextlib.nullcontext("")
        )
        with scratch as tmp:
            if layout == "raw":
                from features.taobao_raw import raw_source

                source = raw_source(paths, Path(tmp), config, progress)
            else:
                from features.taobao_csv import csv_source

                source = csv_source(layout, paths, config)
            vocab = _vocabulary(source, config, progress)
            schema = _schema(source, {t: len(v) for t, (v, _) in vocab.items()}, config.max_len)
            vocabulary = vocabulary_table(vocab)
            with DatasetWriter(output, schema, identity=vocabulary) as writer:
                excluded = _write(writer, source, vocab, config, progress)
                seconds = time.perf_counter() - began
                info = {
                    "converter": "features.taobao.convert_taobao_ad",
                    "layout": layout,
                    "config": asdict(config),
                    "inputs": source.inputs,
                    "input_rows": source.rows,
                    "excluded_outside_dates": excluded,
                    **source.info,
                    "timezone": "UTC+8 (Beijing)",
                    "seconds": round(seconds, 3),
                }
                path = writer.commit(info, files={VOCAB_FILE: vocabulary})
        logger.info(
            "taobao-ad (%s): %d rows, %d excluded -> %s in %.1f s",
            layout,
            source.rows,
            excluded,
            path,
            seconds,
        )
        return path


def detect_layout(inputs: str | Path | Sequence[str | Path], layout: str = "auto") -> tuple[str, list[Path]]:
    """(layout, paths): raw for a directory or four files named like the raw tables, else the
    layout of line 1 of the files (a click_sequence header column: joined; 267 fields: dmr)."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs: expected at least one file or directory, got none")
    if (len(paths) == 1 and paths[0].is_dir()) or layout == "raw":
        from features.taobao_raw import raw_tables

        return _agree("raw", layout, paths[0]), raw_tables(paths)
    found = None
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        f = sniff(path)
        kind = (
            "joined" if f.header and "click_sequence" in f.header else "dmr" if f.num_fields == 267 else None
        )
        if kind is None:
            raise ValueError(
                f"{path}: line 1: {f.num_fields} fields; expected the joined layout (a header with "
                f"click_sequence), the dmr layout (267 fields) or a directory with the raw tables"
            )
        if found not in (None, kind):
            raise ValueError(
                f"{path}: {kind} layout, but {paths[0]} has the {found} layout; expected one layout"
            )
        found = kind
    assert found is not None
    return _agree(found, layout, paths[0]), paths


def _agree(found: str, wanted: str, path: Path) -> str:
    if wanted not in ("auto", found):
        raise ValueError(f"{path}: the {found} layout, but config layout is {wanted!r}")
    return found


class _Splitter:
    """The split of each row in input order (0 train, 1 valid, 2 test, -1 excluded); the same for
    both passes, since it consumes its generator in row order."""

    def __init__(self, config: TaobaoAdConfig, rows: int) -> None:
        self.by, self.valid = config.split_by, config.valid_fraction
        self.assign = SplitAssigner(SplitAssigner.counts(rows, config.split), "random", config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.train = [check_date("train_dates", d) for d in config.train_dates]
        self.test = [check_date("test_dates", d) for d in config.test_dates]

    def take(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.by == "random":
            return self.assign.take(batch.num_rows)
        day = batch["day"].to_numpy()
        split = np.full(len(day), -1, dtype=np.int8)
        train = (day >= self.train[0]) & (day <= self.train[1])
        split[train] = np.where(self.rng.random(len(day))[train] < self.valid, 1, 0)
        split[(day >= self.test[0]) & (day <= self.test[1])] = 2
        return split


def _tables(source: Source) -> dict[str, list[str]]:
    """Table -> the columns whose values it holds (the target column first, then sequences)."""
    tables: dict[str, list[str]] = {c: [c] for c in CATEGORICAL}
    for s, t in source.sequences.items():
        tables.setdefault(t, []).append(s)
    return tables


def _flat(column: pa.Array) -> pa.Array:
    return pc.list_flatten(column) if pa.types.is_list(column.type) else column


def _vocabulary(
    source: Source, config: TaobaoAdConfig, progress: bool
) -> dict[str, tuple[pa.Array, pa.Array]]:
    """Pass 1: table -> (values by id from 2 on, train counts) over the train rows."""
    tables, counter, splitter = _tables(source), None, _Splitter(config, source.rows)
    bar = tqdm(total=source.rows, unit="rows", unit_scale=True, desc="taobao-ad 1/2", disable=not progress)
    with bar:
        for batch in source.batches():
            if counter is None:
                counter = ValueCounter({t: _flat(batch[cols[0]]).type for t, cols in tables.items()})
            train = pa.array(splitter.take(batch) == 0)
            for t, cols in tables.items():
                for c in cols:
                    counter.add(t, _flat(batch[c].filter(train)))
            bar.update(batch.num_rows)
    if counter is None:
        raise ValueError(f"{source.inputs[0]}: no data rows")
    return {t: counter.vocabulary(t, config.min_count) for t in tables}


def _schema(source: Source, sizes: dict[str, int], max_len: int) -> Schema:
    return Schema(
        dense=(DenseFeature("price"),),
        categorical=tuple(CategoricalFeature(c, 2 + sizes[c]) for c in CATEGORICAL),
        sequences=tuple(
            SequenceFeature(s, 2 + sizes[t], max_len, table=t) for s, t in source.sequences.items()
        ),
        labels=(Label(LABEL, task="ctr"),),
        group=GROUP,
    )


def _write(
    writer: DatasetWriter,
    source: Source,
    vocab: dict[str, tuple[pa.Array, pa.Array]],
    config: TaobaoAdConfig,
    progress: bool,
) -> int:
    """Pass 2: maps values to ids and writes each row to its split; returns the rows excluded."""
    arrow, splitter, excluded = writer.schema.arrow_schema(), _Splitter(config, source.rows), 0
    bar = tqdm(total=source.rows, unit="rows", unit_scale=True, desc="taobao-ad 2/2", disable=not progress)
    with bar:
        for batch in source.batches():
            cols: dict[str, pa.Array | np.ndarray] = {
                c: lookup_ids(batch[c], vocab[c][0], MISSING) for c in CATEGORICAL
            }
            for s, t in source.sequences.items():
                lists = batch[s]
                offsets = lists.offsets.to_numpy()
                ids = lookup_ids(pc.list_flatten(lists), vocab[t][0], MISSING)
                cols[s] = pa.ListArray.from_arrays(pa.array(offsets - offsets[0]), pa.array(ids))
            price = batch["price"].to_numpy(zero_copy_only=False)
            cols["price"] = (np.log1p(price) if source.log_price else price).astype(np.float32)
            cols[LABEL] = batch[LABEL]
            cols[GROUP] = batch["userid"]  # raw: users unseen in train stay distinct for gAUC
            table = pa.Table.from_arrays([cols[n] for n in arrow.names], schema=arrow)
            split = splitter.take(batch)
            excluded += int((split < 0).sum())
            for i, name in enumerate(SPLITS):
                writer.write(name, table.filter(pa.array(split == i)))
            bar.update(batch.num_rows)
    return excluded
