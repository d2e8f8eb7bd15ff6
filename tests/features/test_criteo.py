"""Tests of the Criteo converter against independent counts made here with the stdlib csv module."""

from __future__ import annotations

import bz2
import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import features.delimited
from features.dataset import dataset_info
from features.datasets.criteo import CATS, INTS, CriteoConfig, convert_criteo
from features.delimited import CsvFile, count_rows, line_of_row
from features.schema import Schema
from features.vocabulary import lookup_ids

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ORDER_80_20 = CriteoConfig(split=(0.8, 0.0, 0.2), split_by="order")


def _sample(name: str) -> Path:
    path = DATA / "criteo" / name
    if not path.is_file():
        pytest.fail(f"real Criteo sample missing: {path} (expected the shared data beside the repo)")
    return path


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh, delimiter="\t"))


def _split(out: Path, split: str) -> pa.Table:
    return pq.read_table(out / split)


def _vocab(out: Path) -> dict[tuple[str, str], int]:
    table = pq.read_table(out / "vocabulary.parquet").to_pydict()
    return {(f, v): i for f, v, i in zip(table["feature"], table["value"], table["id"], strict=True)}


def _convert(src: Path | list[Path], out: Path, config: CriteoConfig = ORDER_80_20, **kw: object) -> Path:
    return convert_criteo(src, out, config, progress=False, **kw)


@pytest.fixture(scope="module")
def train() -> list[list[str]]:
    return _rows(_sample("train_head10k.tsv"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The train sample split 8000/0/2000 in order, with min_count 1 and 10."""
    base = tmp_path_factory.mktemp("criteo")
    src = _sample("train_head10k.tsv")
    return {
        m: _convert(src, base / f"min{m}", CriteoConfig(**{**vars(ORDER_80_20), "min_count": m}))
        for m in (1, 10)
    }


@pytest.mark.shared_data
def test_order_split_counts_and_types(converted: dict[int, Path]) -> None:
    out = converted[1]
    assert dataset_info(out)["rows"] == {"train": 8000, "valid": 0, "test": 2000}
    sizes = {s: _split(out, s).num_rows for s in ("train", "valid", "test")}
    assert sizes == {"train": 8000, "valid": 0, "test": 2000}
    table = _split(out, "train")
    assert table.schema.field("label").type == pa.int8()
    assert all(table.schema.field(c).type == pa.float32() for c in INTS)
    assert all(table.schema.field(c).type == pa.int64() for c in CATS)
    assert all(table[c].null_count == 0 for c in table.column_names)
    schema = Schema.load(out)
    assert [f.name for f in schema.dense] == list(INTS) and schema.tasks == ("ctr",)
    for f in schema.categorical:
        assert pa.compute.max(table[f.name]).as_py() < f.num_embeddings


@pytest.mark.shared_data
@pytest.mark.parametrize("min_count", [1, 10])
def test_vocabulary_matches_independent_count(
    converted: dict[int, Path], train: list[list[str]], min_count: int
) -> None:
    out = converted[min_count]
    schema = {f.name: f.num_embeddings for f in Schema.load(out).categorical}
    vocab = pq.read_table(out / "vocabulary.parquet").to_pydict()
    for j, c in enumerate(CATS):
        counts = Counter(r[14 + j] for r in train[:8000] if r[14 + j])
        kept = sorted(((-n, v) for v, n in counts.items() if n >= min_count))
        assert schema[c] == 2 + len(kept), c
        ours = [(-n, v, i) for f, v, i, n in zip(*vocab.values(), strict=True) if f == c]
        assert ours == [(n, v, 2 + k) for k, (n, v) in enumerate(kept)], c


@pytest.mark.shared_data
def test_missing_rare_and_unseen_ids(converted: dict[int, Path], train: list[list[str]]) -> None:
    splits = {m: (_split(converted[m], "train"), _split(converted[m], "test")) for m in (1, 10)}
    for j, c in enumerate(CATS):
        counts = Counter(r[14 + j] for r in train[:8000] if r[14 + j])
        for rows, table in zip((train[:8000], train[8000:]), splits[10], strict=True):
            ids = table[c].to_pylist()
            assert ids.count(0) == sum(not r[14 + j] for r in rows), c
            assert ids.count(1) == sum(
                0 < counts[r[14 + j]] < 10 or r[14 + j] not in counts for r in rows if r[14 + j]
            )
        unseen = sum(r[14 + j] not in counts for r in train[8000:] if r[14 + j])
        assert splits[1][1][c].to_pylist().count(1) == unseen, c
        assert 1 not in splits[1][0][c].to_pylist(), c  # every train value is in a min_count 1 vocabulary


@pytest.mark.shared_data
@pytest.mark.parametrize("k", [0, 4, 1234, 7999, 8000, 9999])
def test_rows_mapped_by_hand(converted: dict[int, Path], train: list[list[str]], k: int) -> None:
    out = converted[10]
    vocab = _vocab(out)
    got = _split(out, "train" if k < 8000 else "test").slice(k % 8000, 1).to_pylist()[0]
    fields = train[k]
    assert got["label"] == int(fields[0])
    for j, c in enumerate(INTS):
        x = int(fields[1 + j]) if fields[1 + j] else 0
        assert got[c] == pytest.approx(math.copysign(math.log1p(abs(x)), x), rel=1e-6), (k, c)
    for j, c in enumerate(CATS):
        value = fields[14 + j]
        assert got[c] == (vocab.get((c, value), 1) if value else 0), (k, c)
    if k == 4:
        assert int(fields[2]) < 0 and got["I2"] < 0  # I2 holds negative counts: sign * log1p(|x|)


def _token(raw: str) -> str:
    return str(math.floor(math.log(int(raw)) ** 2)) if int(raw) > 2 else raw


@pytest.mark.shared_data
def test_bucketize_tokens(tmp_path: Path, train: list[list[str]]) -> None:
    config = CriteoConfig(int_mode="bucketize", split=(1.0, 0.0, 0.0), split_by="order")
    out = _convert(_sample("train_head10k.tsv"), tmp_path / "b", config)
    schema = Schema.load(out)
    assert schema.dense == () and [f.name for f in schema.categorical] == [*INTS, *CATS]
    # floor(ln(x)^2) for x > 2, else x, worked by hand: ln 7 = 1.9459, ln 8 = 2.0794, ln 1382 = 7.2313
    by_hand = {"-1": "-1", "0": "0", "1": "1", "2": "2", "3": "1", "7": "3", "8": "4", "10": "5", "20": "8"}
    by_hand |= {"100": "21", "1382": "52"}
    assert all(_token(raw) == token for raw, token in by_hand.items())
    vocab = _vocab(out)
    table = _split(out, "train")
    checked = Counter()
    for k in range(300):
        for j, c in enumerate(INTS):
            raw = train[k][1 + j]
            if raw in by_hand:
                assert table[c][k].as_py() == vocab[(c, by_hand[raw])], (k, c, raw)
                checked[raw] += 1
            elif not raw:
                assert table[c][k].as_py() == 0
    assert {"-1", "0", "1", "3", "7", "8"} <= checked.keys()
    counts = pq.read_table(out / "vocabulary.parquet").to_pydict()
    for j, c in enumerate(INTS):
        ours = {
            v: n
            for f, v, n in zip(counts["feature"], counts["value"], counts["count"], strict=True)
            if f == c
        }
        assert ours == Counter(_token(r[1 + j]) for r in train if r[1 + j]), c


@pytest.mark.shared_data
def test_random_split_is_seeded_and_exact(tmp_path: Path, train: list[list[str]]) -> None:
    src = _sample("train_head10k.tsv")
    outs = {
        name: _convert(src, tmp_path / name, CriteoConfig(seed=seed, block_bytes=block))
        for name, seed, block in [("a", 0, 8 << 20), ("b", 0, 1 << 16), ("c", 1, 8 << 20)]
    }
    for out in outs.values():
        assert dataset_info(out)["rows"] == {"train": 8000, "valid": 1000, "test": 1000}
        labels = sum(pa.compute.sum(_split(out, s)["label"]).as_py() for s in ("train", "valid", "test"))
        assert labels == sum(int(r[0]) for r in train)
        t = _split(out, "train")
        seen = pq.read_table(out / "vocabulary.parquet").to_pydict()
        c1_count = sum(n for f, n in zip(seen["feature"], seen["count"], strict=True) if f == "C1")
        assert c1_count == pa.compute.sum(pa.compute.not_equal(t["C1"], 0)).as_py()  # train rows only
    a, b, c = (_split(outs[n], "train") for n in "abc")
    assert a.equals(b)  # the same seed gives the same rows, whatever the block size
    assert not a.equals(c)
    first = _convert(src, tmp_path / "order", CriteoConfig(split_by="order"))
    assert not a.equals(_split(first, "train"))


@pytest.mark.shared_data
def test_vocabulary_from_maps_unlabeled_rows(converted: dict[int, Path], tmp_path: Path) -> None:
    src = _sample("test_unlabeled_head10k.tsv")
    with pytest.raises(ValueError, match=r"head10k\.tsv: no label column .* --vocabulary-from"):
        _convert(src, tmp_path / "alone")
    assert not (tmp_path / "alone").exists()
    out = _convert(src, tmp_path / "u", vocabulary_from=converted[10])
    schema = Schema.load(out)
    assert schema.labels == () and schema.categorical == Schema.load(converted[10]).categorical
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["unlabeled"]  # never train/valid/test
    assert dataset_info(out)["rows"] == {"unlabeled": 10_000}
    # the same vocabularies, the same fingerprint (which a checkpoint checks); others differ
    fingerprints = {m: dataset_info(converted[m])["fingerprint"] for m in converted}
    assert dataset_info(out)["fingerprint"] == fingerprints[10] and len(set(fingerprints.values())) == len(
        converted
    )
    table = _split(out, "unlabeled")
    assert table.num_rows == 10_000 and "label" not in table.column_names
    vocab = _vocab(converted[10])
    rows = _rows(src)
    for k in (0, 5000, 9999):
        got = table.slice(k, 1).to_pylist()[0]
        assert got["I1"] == pytest.approx(math.log1p(int(rows[k][0])) if rows[k][0] else 0.0)
        for j, c in enumerate(CATS):
            assert got[c] == (vocab.get((c, rows[k][13 + j]), 1) if rows[k][13 + j] else 0), (k, c)
    few = tmp_path / "few.tsv"  # fewer rows than vocabulary entries: ids found the other way round
    few.write_text("".join("\t".join(r) + "\n" for r in rows[:40]))
    small = _convert(few, tmp_path / "f", vocabulary_from=converted[10])
    assert _split(small, "unlabeled").equals(table.slice(0, 40))
    with pytest.raises(ValueError, match="int_mode"):
        _convert(src, tmp_path / "x", CriteoConfig(int_mode="bucketize"), vocabulary_from=converted[10])
    assert not (tmp_path / "x").exists()


@pytest.mark.shared_data
def test_header_csv_and_several_files_match_the_tsv(tmp_path: Path, train: list[list[str]]) -> None:
    rows = train[:60]
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows))
    with (tmp_path / "rows.csv").open("w", newline="") as fh:  # Kaggle's csv: an Id column, "Label"
        w = csv.writer(fh)
        w.writerow(["Id", "Label", *INTS, *(c.lower() for c in CATS)])
        w.writerows([str(10_000_000 + k), *r] for k, r in enumerate(rows))
    (tmp_path / "a.tsv").write_text("".join("\t".join(r) + "\n" for r in rows[:25]))
    (tmp_path / "b.tsv").write_text("".join("\t".join(r) + "\r\n" for r in rows[25:]) + "\n")
    config = CriteoConfig(split=(1.0, 0.0, 0.0), split_by="order")
    want = _split(_convert(tsv, tmp_path / "t", config), "train")
    assert want.num_rows == 60
    assert _split(_convert(tmp_path / "rows.csv", tmp_path / "c", config), "train").equals(want)
    both = _convert([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "ab", config)
    assert _split(both, "train").equals(want)


# Bad input, on small synthetic files: each error names the file, the line and the column.


def _good_rows(n: int) -> list[str]:
    return [
        f"{k % 2}\t"
        + "\t".join(str(k + i) for i in range(13))
        + "\t"
        + "\t".join(f"{k % 7:08x}" for _ in CATS)
        for k in range(n)
    ]


def _file(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _field(line: str, i: int, value: str) -> str:
    fields = line.split("\t")
    fields[i] = value
    return "\t".join(fields)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[Path], tuple[str, ...]]]:
    rows = _good_rows(20)
    extra = [*rows[:6], rows[6] + "\tx", *rows[7:]]
    abc = [*rows[:4], _field(rows[4], 3, "abc"), *rows[5:]]
    two = [*rows[:8], _field(rows[8], 0, "2"), *rows[9:]]
    blank = [*rows[:2], "", *rows[3:5], _field(rows[5], 0, ""), *rows[6:]]  # a blank line 3, bad line 6
    unlabeled = [r.split("\t", 1)[1] for r in rows]
    header = ["label,I1," + ",".join(INTS[1:] + CATS)] + [r.replace("\t", ",") for r in rows]
    header[3] = _field(rows[2], 13, "1.5").replace("\t", ",")
    (tmp_path / "empty.tsv").write_bytes(b"")
    (tmp_path / "day_0.bz2").write_bytes(bz2.compress("\n".join(rows).encode()))
    return {
        "fields": ([_file(tmp_path, "extra.tsv", extra)], ("extra.tsv", "line 7", "41")),
        "int": ([_file(tmp_path, "abc.tsv", abc)], ("abc.tsv", "line 5", "column I3", "abc")),
        "label": ([_file(tmp_path, "two.tsv", two)], ("two.tsv", "line 9", "column label", "0 or 1")),
        "empty label": (
            [_file(tmp_path, "blank.tsv", blank)],
            ("blank.tsv", "line 6", "column label", "empty"),
        ),
        "header": ([_file(tmp_path, "h.csv", header)], ("h.csv", "line 4", "column I13", "1.5")),
        "empty": ([tmp_path / "empty.tsv"], ("empty.tsv", "line 1", "empty")),
        "bz2": ([tmp_path / "day_0.bz2"], ("day_0.bz2", "line 1", "compressed")),
        "header only": ([_file(tmp_path, "ho.csv", header[:1])], ("ho.csv", "no data rows")),
        "mixed": (
            [_file(tmp_path, "l.tsv", rows), _file(tmp_path, "u.tsv", unlabeled)],
            ("u.tsv", "l.tsv", "39", "40", "line 1"),
        ),
    }


@pytest.mark.parametrize(
    "case", ["fields", "int", "label", "empty label", "header", "empty", "bz2", "header only", "mixed"]
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, case: str) -> None:
    inputs, words = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        _convert(inputs, out)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", ["fields", "label"])  # failing in pass 1 and in pass 2
def test_failed_overwrite_keeps_the_existing_dataset(tmp_path: Path, case: str) -> None:
    out = _convert(_file(tmp_path, "good.tsv", _good_rows(50)), tmp_path / "out")
    before = _files(out)
    inputs, _ = _bad_inputs(tmp_path)[case]
    with pytest.raises(ValueError):
        _convert(inputs, out, overwrite=True)
    assert _files(out) == before
    with pytest.raises(ValueError, match="already exists"):
        _convert(tmp_path / "good.tsv", out)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_count", 0),
        ("int_mode", "log"),
        ("split", (0.5, 0.5, 0.5)),
        ("split", (1.2, -0.2, 0.0)),
        ("split_by", "time"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CriteoConfig(**{field: value})


def test_line_numbers_count_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_bytes(b"h\r\na\r\n\r\nb\n\n\nc\rd")
    f = CsvFile(path, "\t", ("h",), 1)
    assert count_rows(f) == 4
    assert [line_of_row(f, r) for r in range(4)] == [2, 4, 7, 8]


@pytest.mark.parametrize("vocabulary", [["b", "a"], ["b", "a", "c", "d", "e", "f", "g", "h"]])
def test_lookup_ids_both_ways(vocabulary: list[str]) -> None:
    col = pa.array([b"a", None, b"z", b"b", b"a"], pa.binary())  # 5 rows: shorter and longer vocabularies
    ids = lookup_ids(col, pa.array([v.encode() for v in vocabulary], pa.binary()), missing=0)
    assert ids.tolist() == [3, 0, 1, 2, 3]
    assert lookup_ids(col, pa.array(vocabulary, pa.binary()), missing=1).tolist() == [3, 1, 1, 2, 3]


@pytest.mark.parametrize("scan_bytes", [1, 2, 3, 5, 8, 1 << 20])
def test_line_scan_agrees_with_splitlines(
    tmp_path: Path, scan_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(features.delimited, "_SCAN_BYTES", scan_bytes)  # blank lines across chunk ends
    rng = np.random.default_rng(scan_bytes)
    for trial in range(20):
        data = b"h\n" + b"".join(rng.choice([b"ab", b"c", b"\n", b"\n", b"\r\n", b"\r"], size=30))
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(data)
        f = CsvFile(path, "\t", ("h",), 1)
        want = [i + 1 for i, line in enumerate(data.splitlines()) if line][1:]  # after the header
        assert count_rows(f) == len(want), data
        assert [line_of_row(f, r) for r in range(len(want))] == want, data
