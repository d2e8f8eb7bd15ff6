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
  `common_features_test.csv`); see `features.datasets.aliccp_raw`.

Labels as in `features.datasets.funnel` (`conversion` is the encoded layout's `purchase`). Group:
the user id field `101` (a feature) in the encoded layout, so gAUC is per user; `user` (the raw id
of field 101, not a feature) in the raw one.

Example::

    convert_aliccp("train.csv", "build/aliccp", valid="val.csv", test="test.csv")
    convert_aliccp("ali_ccp_raw/", "build/aliccp_raw", AliCCPConfig(min_count=10))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.convert import Block, Plan, bar, convert
from features.datasets import funnel
from features.datasets.aliccp_raw import FIELDS, MULTI, USER, raw_plan
from features.delimited import check_rows, input_files, require, sniff
from features.schema import CategoricalFeature, DenseFeature, Schema
from features.vocabulary import Vocabulary

__all__ = ["FIELDS", "MULTI", "USER", "AliCCPConfig", "convert_aliccp"]
_ID = re.compile(r"^\d+(_\d+)?$")
_DENSE = re.compile(r"^D\d+(_\d+)?$")
_LAYOUT = "the Ali-CCP label-encoded layout"


@dataclass(frozen=True)
class AliCCPConfig(funnel.FunnelConfig):
    """How Ali-CCP rows become features; every field has a CLI flag of the same name."""

    layout: str = "auto"  # "encoded", "raw", or "auto": a directory is raw, a file encoded
    multi_fields: tuple[str, ...] = MULTI  # raw: fields written as lists of ids (list<int64>)

    def __post_init__(self) -> None:
        if self.layout not in ("auto", "encoded", "raw"):
            raise ValueError(f"layout {self.layout!r}: expected 'auto', 'encoded' or 'raw'")
        super().__post_init__()
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
        out, overwrite, progress: as in `features.convert.convert`.
        config: layout, valid fraction, seed and (raw) vocabulary options.
        valid: encoded: the file of the valid split (else `valid_fraction` of the train rows).
        test: encoded: the file of the test split (else the test split is empty).
    """
    path = Path(inputs)

    def plan(_: ExitStack) -> Plan:
        layout = config.layout if config.layout != "auto" else "raw" if path.is_dir() else "encoded"
        if layout == "encoded":
            return _encoded_plan(path, valid, test, config, progress)
        if valid is not None or test is not None:
            raise ValueError(
                f"{path}: valid/test files are for the encoded layout; the raw one reads "
                "sample_skeleton_test.csv and common_features_test.csv from the directory"
            )
        return raw_plan(path, config, progress)

    converter = "features.aliccp.convert_aliccp"
    return convert("aliccp", converter, config, out, plan, [path, valid, test], overwrite, progress)


def _encoded_plan(
    path: Path, valid: str | Path | None, test: str | Path | None, config: AliCCPConfig, progress: bool
) -> Plan:
    """The encoded files as blocks; pass 1 (the largest id of each column) is made here."""
    files = {
        n: input_files(p)[0] for n, p in (("train", path), ("valid", valid), ("test", test)) if p is not None
    }
    columns = _columns(files["train"], sniff(files["train"]).header)
    split = {"train": None if valid is None else 0, "valid": 1, "test": 2}
    parts: list[funnel.Part] = [
        (funnel.funnel_layout(p, columns, _LAYOUT), split[n]) for n, p in files.items()
    ]
    ids = tuple(c for c in columns if _ID.match(c))
    dense = tuple(c for c in columns if _DENSE.match(c))
    types = dict.fromkeys(("click", "purchase", *ids), pa.int64())
    expect = {"click": "0 or 1", "purchase": "0 or 1"} | dict.fromkeys(ids, "an integer id >= 0")
    expect |= dict.fromkeys(dense, "a number")
    rows = sum(n for (_, _, n), _ in parts)
    sizes = _max_ids(funnel.split_rows(parts, types, expect, config), ids, rows, progress)
    types |= dict.fromkeys(dense, pa.float64())  # pass 2 reads every column
    schema = Schema(
        dense=tuple(DenseFeature(c) for c in dense),
        categorical=tuple(CategoricalFeature(c, sizes[c] + 1) for c in ids),
        labels=funnel.FUNNEL,
        group=USER,
    )

    def map_(block: Block, _: Vocabulary) -> dict[str, Any]:
        b, f, first = block.batch, block.file, block.first
        assert f is not None
        cols: dict[str, Any] = {c: b[c] for c in ids} | funnel.dense_values(b, dense, f, first)
        cols["click"], cols["conversion"] = funnel.funnel_labels(b, f, first, "click", "purchase")
        return cols

    return Plan(
        rows=rows,
        blocks=lambda _: funnel.split_rows(parts, types, expect, config),
        schema=lambda _: schema,
        map=map_,
        inputs={n: str(p) for n, p in files.items()},
        head={"layout": "encoded"},
    )


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


def _max_ids(blocks: Iterator[Block], ids: tuple[str, ...], rows: int, progress: bool) -> dict[str, int]:
    """Pass 1: the largest id of each id column over every file, checking each id is >= 0."""
    largest = dict.fromkeys(ids, 0)
    for block in bar("aliccp 1/2 ids", rows, progress, blocks):
        b, f, first = block.batch, block.file, block.first
        assert f is not None
        require(b, ids, f, first)
        for c in ids:
            x = b[c].to_numpy()
            check_rows(f, first, x >= 0, c, x, "an integer id >= 0")
            largest[c] = max(largest[c], int(x.max()))
    return largest
