"""The converter runner: one run turns a dataset family's rows into a dataset directory (layout
in `features.dataset`).

`convert` owns what every converter does alike: it refuses an output that exists (unless
`overwrite`) or lies in an input, and locks it, before any work (`features.outputs.StagedOutput`);
it times the run; it makes the passes over the rows with their progress bars (rows, rate, ETA):
pass 1 counts the values of the train rows into vocabularies (`features.vocabulary`), pass 2 maps
every block of rows and writes each row to its split; it writes the splits, `schema.json`,
`vocabulary.parquet` and `dataset.json` atomically (`features.dataset.DatasetWriter`).

A dataset family supplies only what differs, as a `Plan` (`features.datasets.*`): how to read its
rows as blocks with the split of each row, which values to count, its schema, how to map a block.
Generated rows (`features.datasets.teacher`) skip pass 1: their ids are final.
Splits are assigned here too (`SplitAssigner`): the same for both passes, whatever the block sizes.
Every `convert_*` function returns its `out` and raises ValueError for bad input, naming the file,
the line, the column and the value.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from features.dataset import DatasetWriter
from features.delimited import CsvFile
from features.outputs import StagedOutput
from features.schema import Schema
from features.vocabulary import VOCAB_FILE, ValueCounter, Vocabulary, vocabulary_table

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_CHUNK = 1 << 16  # rows per random split draw; fixed, so a split does not depend on batch sizes


@dataclass
class Block:
    """One block of rows and the split of each: 0 train, 1 valid, 2 test (an index in the
    dataset's splits), -1 excluded from every split."""

    batch: pa.RecordBatch | pa.Table
    split: np.ndarray
    file: CsvFile | None = None  # where the rows come from, for error messages
    first: int = 0  # the index of the block's first data row in `file`
    rows: int | None = None  # input rows the block stands for (progress); None: its rows
    source: Any = None  # what else the dataset's `map` needs for these rows


@dataclass
class Plan:
    """What a dataset family supplies to `convert` once it has inspected its inputs."""

    rows: int  # input rows: the progress bars' totals and rows_per_s
    blocks: Callable[[int], Iterator[Block]]  # pass 1 or 2 -> every block in input order
    schema: Callable[[Vocabulary], Schema]
    # a block's rows: column -> the schema's values, or a table written as it is (with more columns)
    map: Callable[[Block, Vocabulary], dict[str, Any] | pa.Table]
    inputs: Any  # dataset.json's `inputs`; None: generated rows, no `inputs` key
    count: Callable[[Block], dict[str, pa.Array]] | None = None  # pass 1: column -> values to count
    counted: dict[str, pa.DataType] | None = None  # the counted columns' types; None: the first block's
    min_count: int = 1  # values counted fewer times share the rare id 1
    min_counts: dict[str, int] | None = None  # per counted column, where they differ
    vocabulary: Vocabulary | None = None  # given or built already (no pass 1); None without `count`: none
    # the settings that made the ids (fingerprint), besides the vocabulary if any; read after `schema`
    identity: dict[str, Any] | None = None
    first_id: int = 2  # the id of each vocabulary's first value
    splits: tuple[str, ...] = SPLITS
    head: dict[str, Any] = field(default_factory=dict)  # dataset.json keys before `config`
    info: Callable[[], dict[str, Any]] = dict  # dataset.json keys after `inputs`, once pass 2 is done
    files: Callable[[], dict[str, pa.Table]] = dict  # more parquet files beside the data
    rate: bool = True  # record rows_per_s
    counted_rows: int | None = None  # rows pass 1 reads, when not all (progress)
    summary: Callable[[], str] | None = None  # the log line's account of the input; None: "N rows"


def convert(
    name: str,
    converter: str,
    config: Any,
    out: str | Path,
    plan: Callable[[ExitStack], Plan],
    inputs: Iterable[str | Path | None],
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Runs a conversion (see the module doc) and returns `out`.

    Args:
        name: the dataset family, for progress bars and log lines.
        converter: dataset.json's `converter`: the converter's name as datasets have always recorded
            it (`features.criteo.convert_criteo`, from before `features/datasets/`), so a dataset
            converted now is identical to one converted then.
        config: the converter's config dataclass, recorded in dataset.json.
        out: the dataset directory to create (atomically; nothing is left there on failure).
        plan: inspects the inputs (once `out` is locked) and returns the dataset's `Plan`; it may
            enter contexts (a scratch directory) that last until the dataset is written.
        inputs: every path the conversion reads; `out` must be apart from each.
        overwrite: replace an existing `out` once the new dataset is complete.
        progress: show tqdm bars with rows, rate and ETA.

    Raises:
        ValueError: for bad input, naming the file, the line, the column and the value.
    """
    began = time.perf_counter()
    with StagedOutput(out, "dataset", overwrite, inputs=inputs) as output, ExitStack() as stack:
        p = plan(stack)
        vocab = p.vocabulary if p.vocabulary is not None or p.count is None else _count(name, p, progress)
        ids = None if vocab is None else vocabulary_table(vocab, p.first_id)
        schema = p.schema(vocab or {})
        identity = p.identity if ids is None else ids if not p.identity else (ids, p.identity)
        with DatasetWriter(output, schema, splits=p.splits, identity=identity) as writer:
            arrow = writer.schema.arrow_schema()
            one_pass = p.count is None and p.vocabulary is None  # no ids to look up: one bar, the name
            for block in bar(name if one_pass else f"{name} 2/2 write", p.rows, progress, p.blocks(2)):
                cols = p.map(block, vocab or {})
                table = cols if isinstance(cols, pa.Table) else _table(cols, arrow)
                write_rows(writer, table, block.split)
            seconds = time.perf_counter() - began
            info = {"converter": converter, **p.head, "config": asdict(config)}
            info |= {} if p.inputs is None else {"inputs": p.inputs}
            info |= p.info() | {"seconds": round(seconds, 3)}
            if p.rate:
                info["rows_per_s"] = round(p.rows / seconds)
            files = ({} if ids is None else {VOCAB_FILE: ids}) | p.files()
            path = writer.commit(info, files=files)
        what = p.summary() if p.summary else f"{p.rows} rows"
        layout = f" ({p.head['layout']})" if "layout" in p.head else ""
        rate = p.rows / seconds
        splits = ", ".join(f"{split} {rows:,}" for split, rows in writer.rows.items())
        logger.info(
            "%s%s: %s -> %s (%s) in %.1f s (%.0f rows/s)",
            name,
            layout,
            what,
            path,
            splits,
            seconds,
            rate,
        )
        return path


def _table(cols: dict[str, Any], arrow: pa.Schema) -> pa.Table:
    """The schema's columns of `cols` as a table of `arrow`."""
    return pa.Table.from_arrays([cols[c] for c in arrow.names], schema=arrow)


def _count(name: str, p: Plan, progress: bool) -> Vocabulary:
    """Pass 1: the vocabulary of every counted column over the values `p.count` gives."""
    assert p.count is not None
    counter = None if p.counted is None else ValueCounter(p.counted)
    for block in bar(f"{name} 1/2 vocabulary", p.counted_rows or p.rows, progress, p.blocks(1)):
        values = p.count(block)
        counter = counter or ValueCounter({c: v.type for c, v in values.items()})
        for c, v in values.items():
            counter.add(c, v)
    if counter is None:
        first = p.inputs[0] if isinstance(p.inputs, list) and p.inputs else p.inputs
        raise ValueError(f"{first}: no data rows")
    least = p.min_counts or {}
    return {c: counter.vocabulary(c, least.get(c, p.min_count)) for c in counter.types}


def bar(desc: str, total: int, progress: bool, blocks: Iterable[Block]) -> Iterator[Block]:
    """`blocks`, advancing a tqdm bar (rows, rate, ETA) by each block's rows."""
    with tqdm(total=total, unit="rows", unit_scale=True, desc=desc, disable=not progress) as b:
        for block in blocks:
            yield block
            b.update(block.batch.num_rows if block.rows is None else block.rows)


def write_rows(writer: DatasetWriter, table: pa.Table, split: np.ndarray) -> None:
    """Writes each row of `table` to its split (an index in `writer.rows`; -1: none)."""
    for s, name in enumerate(writer.rows):
        rows = np.flatnonzero(split == s)
        writer.write(name, table if len(rows) == table.num_rows else table.take(rows))


def check_integers(config: Any, lows: dict[str, int]) -> None:
    """ValueError unless each field of `config` named in `lows` is an integer >= its low."""
    for name, low in lows.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} {value!r}: expected an integer >= {low}")


def check_numbers(config: Any, intervals: dict[str, str]) -> None:
    """ValueError unless each field of `config` named in `intervals` is a number in its interval,
    written "[0, 1)", "(0, inf)" and so on (NaN is in none)."""
    for name, interval in intervals.items():
        value, (lo, hi) = getattr(config, name), (float(x) for x in interval[1:-1].split(","))
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and (lo <= value if interval[0] == "[" else lo < value)
        if not (ok and (value <= hi if interval[-1] == "]" else value < hi)):
            raise ValueError(f"{name} {value!r}: expected a number in {interval}")


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """(train, valid, test) fractions as floats; ValueError unless 3 finite values >= 0 summing to 1."""
    fractions = tuple(float(f) for f in split)
    if (
        len(fractions) != 3
        or not all(math.isfinite(f) and f >= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(f"split {split!r}: expected 3 fractions >= 0 (train, valid, test) summing to 1")
    return fractions  # type: ignore[return-value]


class SplitAssigner:
    """The split of each row in input order (0 train, 1 valid, 2 test), exactly `counts` rows each.

    "random": each chunk of `_SPLIT_CHUNK` rows draws its split counts from the multivariate
    hypergeometric of the rows left, then shuffles them: a uniformly random assignment overall that
    holds one chunk in memory and does not depend on batch sizes. "order": train rows come first.
    """

    def __init__(self, counts: tuple[int, int, int], by: str, seed: int) -> None:
        self.left = np.array(counts, dtype=np.int64)
        self.by = by
        self.rng = np.random.default_rng(seed)
        self.buf = np.empty(0, dtype=np.int8)

    @staticmethod
    def counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
        """Rows per split of `n` rows, rounded so that they sum to `n`."""
        train = int(n * fractions[0] + 0.5)
        train_valid = min(n, int(n * (fractions[0] + fractions[1]) + 0.5))
        return train, train_valid - train, n - train_valid

    def take(self, k: int) -> np.ndarray:
        """The splits (int8) of the next `k` rows."""
        while len(self.buf) < k:
            m = min(_SPLIT_CHUNK, int(self.left.sum()))
            assert m > 0, "more rows than counted"
            if self.by == "random":
                draw = self.rng.multivariate_hypergeometric(self.left, m)
            else:
                draw = np.diff(np.minimum(np.concatenate(([0], np.cumsum(self.left))), m))
            self.left -= draw
            chunk = np.repeat(np.arange(3, dtype=np.int8), draw)
            if self.by == "random":
                self.rng.shuffle(chunk)
            self.buf = np.concatenate((self.buf, chunk))
        out, self.buf = self.buf[:k], self.buf[k:]
        return out
