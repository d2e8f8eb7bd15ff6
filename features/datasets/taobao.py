"""Alimama display-ad data (Taobao) -> a parquet dataset.

Layouts (`TaobaoAdConfig.layout`, "auto" detects them from the inputs):
- "raw": the four public tables (a directory holding them, or their four paths): `raw_sample.csv`
  (impressions), `ad_feature.csv`, `user_profile.csv`, `behavior_log.csv`. Each impression gets its
  ad and user profile fields and the user's behaviours at a strictly earlier second (the most
  recent `max_len`, oldest first) as hist_cate_id, hist_brand, hist_btag. behavior_log (700M rows)
  and raw_sample are hash-partitioned by user into `buckets` parquet files in a temporary directory
  beside `out`, then joined bucket by bucket (see `features.datasets.taobao_raw`). Rows are written bucket
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

Ids per table of the train split's vocabulary (`features.vocabulary`; the target column and its
sequences counted together, every history element once per row); missing (id 0) are empty fields,
users without profile and ads without features (both counted in dataset.json).

Split: "time" (raw, joined): days in Beijing time; `train_dates` and `test_dates` (BARS
TaobaoAd_x1: train 2017-05-06..12, test 2017-05-13), rows on other days excluded and counted;
`valid_fraction` of the train days' rows (seeded, uniform) form valid. "random" (every layout; the
only one for dmr, which has no time): seeded fractions `split` with exact counts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.convert import Block, Plan, SplitAssigner, check_integers, check_numbers, check_split, convert
from features.datasets.taobao_csv import CATEGORICAL, GROUP, LABEL, PROFILE, Source, csv_source
from features.datasets.taobao_raw import raw_source, raw_tables
from features.datasets.timeline import check_days
from features.delimited import sniff
from features.outputs import paths_of
from features.schema import CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from features.vocabulary import MISSING, Vocabulary, lookup_ids

__all__ = ["PROFILE", "TaobaoAdConfig", "convert_taobao_ad", "detect_layout"]


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
        check_integers(self, {"max_len": 1, "min_count": 1, "buckets": 1, "block_bytes": 4096})
        if self.split_by not in ("time", "random"):
            raise ValueError(f"split_by {self.split_by!r}: expected 'time' or 'random'")
        for name in ("train_dates", "test_dates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        train, test = check_days("train_dates", self.train_dates), check_days("test_dates", self.test_dates)
        if train[1] >= test[0] and test[1] >= train[0]:
            raise ValueError(f"train_dates {self.train_dates} and test_dates {self.test_dates} overlap")
        check_numbers(self, {"valid_fraction": "[0, 1)"})
        object.__setattr__(self, "split", check_split(self.split))


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
        out, overwrite, progress: as in `features.convert.convert`.
        config: layout, history length, vocabulary and split options.
    """
    final = Path(os.path.abspath(out))

    def plan(stack: ExitStack) -> Plan:
        layout, paths = detect_layout(inputs, config.layout)
        if layout == "dmr" and config.split_by == "time":
            raise ValueError(f"{paths[0]}: the dmr layout has no times; expected split_by 'random'")
        if layout != "raw":
            return _plan(csv_source(layout, paths, config.block_bytes), config)
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f".{final.name}.buckets-", dir=final.parent)
        )
        return _plan(raw_source(paths, Path(tmp), config, progress), config)

    converter = "features.taobao.convert_taobao_ad"
    return convert("taobao-ad", converter, config, out, plan, paths_of(inputs), overwrite, progress)


def _plan(source: Source, config: TaobaoAdConfig) -> Plan:
    """A source's rows as blocks split by day or at random, counted per table and mapped to ids."""
    tables: dict[str, list[str]] = {c: [c] for c in CATEGORICAL}  # table -> the columns of its values
    for s, t in source.sequences.items():
        tables.setdefault(t, []).append(s)
    excluded = 0

    def blocks(_: int) -> Iterator[Block]:
        splitter = _Splitter(config, source.rows)
        for batch in source.batches():
            yield Block(batch, splitter.take(batch))

    def count(block: Block) -> dict[str, pa.Array]:
        train = pa.array(block.split == 0)
        values = {t: [_flat(block.batch[c].filter(train)) for c in cols] for t, cols in tables.items()}
        return {t: pa.concat_arrays(v) for t, v in values.items()}

    def map_(block: Block, vocab: Vocabulary) -> dict[str, Any]:
        nonlocal excluded
        excluded += int((block.split < 0).sum())
        return _map(block.batch, vocab, source)

    return Plan(
        rows=source.rows,
        blocks=blocks,
        schema=lambda vocab: _schema(source, {t: len(v) for t, (v, _) in vocab.items()}, config.max_len),
        map=map_,
        inputs=source.inputs,
        count=count,
        min_count=config.min_count,
        head={"layout": source.layout},
        info=lambda: {
            "input_rows": source.rows,
            "excluded_outside_dates": excluded,
            **source.info,
            "timezone": "UTC+8 (Beijing)",
        },
        rate=False,
        summary=lambda: f"{source.rows} rows, {excluded} excluded",
    )


def detect_layout(inputs: str | Path | Sequence[str | Path], layout: str = "auto") -> tuple[str, list[Path]]:
    """(layout, paths): raw for a directory or four files named like the raw tables, else the
    layout of line 1 of the files (a click_sequence header column: joined; 267 fields: dmr)."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs: expected at least one file or directory, got none")
    if (len(paths) == 1 and paths[0].is_dir()) or layout == "raw":
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
        self.train, self.test = (
            check_days("train_dates", config.train_dates),
            check_days("test_dates", config.test_dates),
        )

    def take(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.by == "random":
            return self.assign.take(batch.num_rows)
        day = batch["day"].to_numpy()
        split = np.full(len(day), -1, dtype=np.int8)
        train = (day >= self.train[0]) & (day <= self.train[1])
        split[train] = np.where(self.rng.random(len(day))[train] < self.valid, 1, 0)
        split[(day >= self.test[0]) & (day <= self.test[1])] = 2
        return split


def _flat(column: pa.Array) -> pa.Array:
    return pc.list_flatten(column) if pa.types.is_list(column.type) else column


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


def _map(batch: pa.RecordBatch, vocab: Vocabulary, source: Source) -> dict[str, Any]:
    """Pass 2: a block's values mapped to ids, its price, label and group."""
    cols: dict[str, Any] = {c: lookup_ids(batch[c], vocab[c][0], MISSING) for c in CATEGORICAL}
    for s, t in source.sequences.items():
        lists = batch[s]
        offsets = lists.offsets.to_numpy()
        ids = lookup_ids(pc.list_flatten(lists), vocab[t][0], MISSING)
        cols[s] = pa.ListArray.from_arrays(pa.array(offsets - offsets[0]), pa.array(ids))
    price = batch["price"].to_numpy(zero_copy_only=False)
    cols["price"] = (np.log1p(price) if source.log_price else price).astype(np.float32)
    cols[LABEL] = batch[LABEL]
    cols[GROUP] = batch["userid"]  # raw: users unseen in train stay distinct for gAUC
    return cols
