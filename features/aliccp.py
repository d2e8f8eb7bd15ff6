"""Ali-CCP (Alibaba Click and Conversion Prediction; Ma et al., "Entire Space Multi-Task Model",
SIGIR 2018) -> a parquet dataset with the click -> conversion funnel.

Layouts (`AliCCPConfig.layout`; "auto": a directory is raw, a file encoded):
- "encoded": the label-encoded CSV of the public samples (torch-rechub's `ali_ccp_*.csv`): a
  header with `click`, `purchase`, id columns named by their field (`101`, `121`, ..., `301`,
  `109_14`, ..., one integer id each) and float columns `D<field>` (the weights of the
  multi-value fields, collapsed to one id by that encoding). The train file gives the train split
  and, without a `valid` file, a seeded `valid_fraction` of its rows the valid split; `valid` and
  `test` files give theirs. Every file must hold the train file's columns.
  Ids are kept as given (the encoding already numbers each field's values 0..N-1 over the whole
  release, so the files share them): num_embeddings = the largest id over all the given files + 1;
  an empty or negative id raises. Keeping them keeps users distinct in the test split, which a
  train vocabulary would merge into one unseen id. `D*` columns are dense float32 as given.
- "raw": the Tianchi release (a directory with `sample_skeleton_train.csv`,
  `common_features_train.csv` and optionally `sample_skeleton_test.csv`,
  `common_features_test.csv`); see `features.aliccp_raw`.

Labels: `click` (task ctr) and `conversion` (task cvr; the encoded layout's `purchase`); a
conversion without a click raises naming the file and the line. No ctcvr column is written: the
ESMM model computes ctcvr = ctr * cvr itself. Group: the user id field `101` (a feature) in the
encoded layout, so gAUC is per user; `user` (the raw id of field 101, not a feature) in the raw one.

Example::

    convert_aliccp("train.csv", "build/aliccp", valid="val.csv", test="test.csv")
    convert_aliccp("ali_ccp_raw/", "build/aliccp_raw", AliCCPConfig(min_count=10))
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from features._csv import bad_row, input_files, require, sniff
from features.aliexpress import (
    FUNNEL,
    SPLITS,
    Part,
    check_config,
    dense_values,
    funnel_labels,
    funnel_layout,
    split_rows,
    write_splits,
)
from features.dataset import DatasetWriter
from features.outputs import StagedOutput
from features.schema import CategoricalFeature, DenseFeature, Schema

logger = logging.getLogger(__name__)

USER = "101"  # the user id field
FIELDS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129",  # user profile
    "109_14", "110_14", "127_14", "150_14",  # user histories: categories, shops, brands, intents
    "205", "206", "207", "210", "216",  # ad: item, category, shop, intent, brand
    "508", "509", "702", "853",  # user x ad crosses
    "301",  # position
)  # fmt: skip
MULTI = ("109_14", "110_14", "127_14", "150_14", "210", "508", "509", "702", "853")
_ID = re.compile(r"^\d+(_\d+)?$")
_DENSE = re.compile(r"^D\d+(_\d+)?$")


@dataclass(frozen=True)
class AliCCPConfig:
    """How Ali-CCP rows become features; every field has a CLI flag of the same name."""

    layout: str = "auto"  # "encoded", "raw", or "auto": a directory is raw, a file encoded
    valid_fraction: float = 0.1  # without a valid file: seeded fraction of the train rows -> valid
    seed: int = 0  # seeds the valid draw
    min_count: int = 1  # raw: values seen fewer times in the train split share the rare id 1
    multi_fields: tuple[str, ...] = MULTI  # raw: fields written as lists of ids (list<int64>)
    block_bytes: int = 8 << 20  # bytes parsed per block

    def __post_init__(self) -> None:
        if self.layout not in ("auto", "encoded", "raw"):
            raise ValueError(f"layout {self.layout!r}: expected 'auto', 'encoded' or 'raw'")
        check_config(self.min_count, self.valid_fraction, self.seed, self.block_bytes)
        unknown = [f for f in self.multi_fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"multi_fields {unknown}: not Ali-CCP fields; expected some of {FIELDS}")
        object.__setattr__(self, "multi_fields", tuple(self.multi_fields))


def convert_aliccp(
    inputs: str | Path,
    out: str | Path,
    config: AliCCPConfig = AliCCPConfig(),
    overwrite: bool = False,
    progress: bool = True,
    valid: str | Path | None = None,
    test: str | Path | None = None,
) -> Path:
    """Converts Ali-CCP data (either layout of the module doc) into a dataset directory.

    Args:
        inputs: encoded: the train file; raw: the directory holding the release's files.
        out: the dataset directory to create (atomically; nothing is left there on failure).
        config: layout, valid fraction, seed and (raw) vocabulary options.
        overwrite: replace an existing `out` once the new dataset is complete.
        progress: show tqdm bars with rows, rate and ETA.
        valid: encoded: the file of the valid split (else `valid_fraction` of the train rows).
        test: encoded: the file of the test split (else the test split is empty).

    Returns:
        `out`.

    Raises:
        ValueError: for bad input, naming the file, the line, the column and the value.
    """
    began, out, path = time.perf_counter(), Path(out), Path(inputs)
    with StagedOutput(out, "dataset", overwrite, inputs=[path, valid, test]) as output:
        layout = config.layout if config.layout != "auto" else "raw" if path.is_dir() else "encoded"
        if layout == "raw":
            if valid is not None or test is not None:
                raise ValueError(
                    f"{path}: valid/test files are for the encoded layout; the raw one reads "
                    "sample_skeleton_test.csv and common_features_test.csv from the directory"
                )
            from features.aliccp_raw import convert_raw

            return convert_raw(path, output, config, progress, began)
        [train_path] = input_files(path)
        f = sniff(train_path)
        columns = _columns(train_path, f.header)
        parts: list[Part] = [(funnel_layout(train_path, columns, _LAYOUT), None if valid is None else 0)]
        for p, s in ((valid, 1), (test, 2)):
            if p is not None:
                parts.append((funnel_layout(input_files(p)[0], columns, _LAYOUT), s))
        ids = tuple(c for c in columns if _ID.match(c))
        dense = tuple(c for c in columns if _DENSE.match(c))
        sizes = _max_ids(parts, ids, config, progress)
        schema = Schema(
            dense=tuple(DenseFeature(c) for c in dense),
            categorical=tuple(CategoricalFeature(c, sizes[c] + 1) for c in ids),
            labels=FUNNEL,
            group=USER,
        )
        with DatasetWriter(output, schema, splits=SPLITS) as writer:
            _write(writer, parts, ids, dense, config, progress)
            seconds, total = time.perf_counter() - began, sum(rows for (_, _, rows), _ in parts)
            info = {
                "converter": "features.aliccp.convert_aliccp",
                "layout": "encoded",
                "config": asdict(config),
                "inputs": {
                    s: str(f.path) for ((f, _, _), _), s in zip(parts, _given(valid, test), strict=True)
                },
                "seconds": round(seconds, 3),
                "rows_per_s": round(total / seconds),
            }
            written = writer.commit(info)
        logger.info("aliccp (encoded): %d rows -> %s %s in %.1f s", total, written, writer.rows, seconds)
        return written


_LAYOUT = "the Ali-CCP label-encoded layout"


def _given(valid: str | Path | None, test: str | Path | None) -> list[str]:
    return ["train", *(s for s, p in (("valid", valid), ("test", test)) if p is not None)]


def _columns(path: Path, header: tuple[str, ...] | None) -> tuple[str, ...]:
    """The columns of the train file: click, purchase, ids and D* weights; ValueError otherwise."""
    names = header or ()
    wrong = [c for c in names if c not in ("click", "purchase") and not _ID.match(c) and not _DENSE.match(c)]
    if header is None or wrong or "click" not in names or "purchase" not in names or USER not in names:
        what = "no header" if header is None else f"unknown columns {wrong}" if wrong else "a column missing"
        raise ValueError(
            f"{path}: line 1 (header): {what}; expected click, purchase, {USER} (the user id), other "
            "field ids (e.g. 121, 109_14) and D<field> weights"
        )
    return header


def _types(ids: Sequence[str], dense: Sequence[str]) -> dict[str, pa.DataType]:
    types = {"click": pa.int64(), "purchase": pa.int64()} | dict.fromkeys(ids, pa.int64())
    return types | dict.fromkeys(dense, pa.float64())


def _expect(ids: Sequence[str], dense: Sequence[str]) -> dict[str, str]:
    expect = {"click": "0 or 1", "purchase": "0 or 1"} | dict.fromkeys(ids, "an integer id >= 0")
    return expect | dict.fromkeys(dense, "a number")


def _max_ids(parts: list[Part], ids: tuple[str, ...], config: AliCCPConfig, progress: bool) -> dict[str, int]:
    """Pass 1: the largest id of each id column over every file, checking each id is >= 0."""
    largest = dict.fromkeys(ids, 0)
    total = sum(rows for (_, _, rows), _ in parts)
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc="aliccp 1/2 ids", disable=not progress)
    with bar:
        for f, first, b, _ in split_rows(
            parts, _types(ids, ()), _expect(ids, ()), config.valid_fraction, config.seed, config.block_bytes
        ):
            require(b, ids, f, first)
            for c in ids:
                x = b[c].to_numpy()
                if (x < 0).any():
                    i = int(np.flatnonzero(x < 0)[0])
                    raise bad_row(f, first, i, c, int(x[i]), "an integer id >= 0")
                largest[c] = max(largest[c], int(x.max()))
            bar.update(b.num_rows)
    return largest


def _write(
    writer: DatasetWriter,
    parts: list[Part],
    ids: tuple[str, ...],
    dense: tuple[str, ...],
    config: AliCCPConfig,
    progress: bool,
) -> None:
    """Pass 2: writes each row to its split."""
    arrow = writer.schema.arrow_schema()
    total = sum(rows for (_, _, rows), _ in parts)
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc="aliccp 2/2 write", disable=not progress)
    with bar:
        for f, first, b, split in split_rows(
            parts,
            _types(ids, dense),
            _expect(ids, dense),
            config.valid_fraction,
            config.seed,
            config.block_bytes,
        ):
            cols: dict[str, pa.Array | np.ndarray] = {c: b[c] for c in ids}
            cols |= dense_values(b, dense, f, first)
            cols["click"], cols["conversion"] = funnel_labels(b, f, first, "click", "purchase")
            table = pa.Table.from_arrays([cols[n] for n in arrow.names], schema=arrow)
            write_splits(writer, table, split)
            bar.update(b.num_rows)
