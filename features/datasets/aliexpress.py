"""AliExpress search logs (impression -> click -> conversion) -> a parquet dataset.

Input: CSV files with the header `search_id, categorical_1..16, numerical_1..63, click,
conversion` (any column order; a missing, repeated or unknown column raises). The public release
comes as separate train and test files per country: the train files give the train split and a
seeded `valid_fraction` of their rows (exact count) the valid split; the `test` files give the test
split, mapped with the train vocabulary.

Choices:
- categorical_*: ids of the train split's vocabularies (`features.vocabulary`; values met only in
  valid or test rows are rare), saved as `vocabulary.parquet`.
- numerical_*: dense float32 as given (the release has them scaled already); an empty or
  non-finite value raises.
- search_id: not a feature (an id of the query, never seen again at serving time); it is written
  as the schema's `group` column (int64), so gAUC is the impression-weighted AUC within each search
  that holds a click and a non-click: how well a model ranks one result page, what search ranking
  is judged by.
- Labels: `click` and `conversion`, as in `features.datasets.funnel`.

Example::

    convert_aliexpress("NL/train.csv", "build/aliexpress_nl", test="NL/test.csv")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.convert import Block, Plan, convert
from features.datasets import funnel
from features.delimited import Inputs, input_files, require
from features.outputs import paths_of
from features.schema import CategoricalFeature, DenseFeature, Schema
from features.vocabulary import MISSING, Vocabulary, lookup_ids, reuse_vocabulary

CATS = tuple(f"categorical_{i}" for i in range(1, 17))
NUMS = tuple(f"numerical_{i}" for i in range(1, 64))
GROUP = "search_id"
COLUMNS = (GROUP, *CATS, *NUMS, "click", "conversion")
_LAYOUT = "the AliExpress layout"
_EXPECT = {GROUP: "an integer id", "click": "0 or 1", "conversion": "0 or 1"}
_EXPECT |= dict.fromkeys(CATS, "an integer id or an empty field") | dict.fromkeys(NUMS, "a number")
_IDS = dict.fromkeys(CATS, pa.int64())
_TYPES = dict.fromkeys((GROUP, "click", "conversion"), pa.int64()) | _IDS | dict.fromkeys(NUMS, pa.float64())


@dataclass(frozen=True)
class AliExpressConfig(funnel.FunnelConfig):
    """How AliExpress rows become features: vocabulary, valid fraction, seed (`funnel.FunnelConfig`)."""


def convert_aliexpress(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: AliExpressConfig = AliExpressConfig(),
    overwrite: bool = False,
    progress: bool = True,
    vocabulary_from: str | Path | None = None,
    test: str | Path | Sequence[str | Path] = (),
) -> Path:
    """Converts AliExpress train (and test) files into a dataset directory (see the module doc).

    Args:
        inputs: the train file(s), read in order: the train and valid splits; may be empty
            (`()`) with `vocabulary_from`, to map only `test` rows for scoring.
        out, overwrite, progress: as in `features.convert.convert`.
        config: vocabulary, valid fraction and seed.
        vocabulary_from: a dataset written by this function: its vocabularies and schema are
            reused instead of counting the train split.
        test: file(s) of the test split, mapped with the train vocabulary.
    """

    def plan(_: ExitStack) -> Plan:
        return _plan(inputs, test, config, vocabulary_from)

    paths = [*paths_of(inputs), *paths_of(test), vocabulary_from]
    converter = "features.aliexpress.convert_aliexpress"
    return convert("aliexpress", converter, config, out, plan, paths, overwrite, progress)


def _plan(inputs: Inputs, test: Inputs, config: AliExpressConfig, vocabulary_from: str | Path | None) -> Plan:
    """The train files (train and valid rows) and test files as blocks, and how to map them."""
    train_paths = input_files(inputs) if paths_of(inputs) or vocabulary_from is None else []
    test_paths = input_files(test) if paths_of(test) else []
    train: list[funnel.Part] = [(funnel.funnel_layout(p, COLUMNS, _LAYOUT), None) for p in train_paths]
    parts = [*train, *((funnel.funnel_layout(p, COLUMNS, _LAYOUT), 2) for p in test_paths)]
    vocab = None
    if vocabulary_from is not None:
        vocab = reuse_vocabulary(vocabulary_from, _IDS, _schema, "convert_aliexpress")

    def blocks(pass_: int) -> Iterator[Block]:
        if pass_ == 1:
            return funnel.split_rows(train, _IDS, _EXPECT, config)
        return funnel.split_rows(parts, _TYPES, _EXPECT, config)

    def count(block: Block) -> dict[str, pa.Array]:
        keep = pa.array(block.split == 0)
        return {c: block.batch[c].filter(keep) for c in CATS}

    return Plan(
        rows=sum(rows for (_, _, rows), _ in parts),
        blocks=blocks,
        schema=_schema,
        map=_map,
        inputs={"train": [str(p) for p in train_paths], "test": [str(p) for p in test_paths]},
        count=count,
        counted=_IDS,
        min_count=config.min_count,
        vocabulary=vocab,
        info=lambda: {"vocabulary_from": None if vocabulary_from is None else str(vocabulary_from)},
        counted_rows=sum(rows for (_, _, rows), _ in train),
    )


def _map(block: Block, vocab: Vocabulary) -> dict[str, Any]:
    """Pass 2: a block's ids, dense values, labels and search id."""
    b, f, first = block.batch, block.file, block.first
    assert f is not None
    require(b, (GROUP, "click", "conversion"), f, first)
    cols: dict[str, Any] = {c: lookup_ids(b[c], vocab[c][0], MISSING) for c in CATS}
    cols |= funnel.dense_values(b, NUMS, f, first)
    cols["click"], cols["conversion"] = funnel.funnel_labels(b, f, first, "click", "conversion")
    return cols | {GROUP: b[GROUP]}


def _schema(vocab: Vocabulary) -> Schema:
    return Schema(
        dense=tuple(DenseFeature(c) for c in NUMS),
        categorical=tuple(CategoricalFeature(c, 2 + len(vocab[c][0])) for c in CATS),
        labels=funnel.FUNNEL,
        group=GROUP,
    )
