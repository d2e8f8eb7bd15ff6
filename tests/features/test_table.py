"""`rankers convert table`: a spec converts any table; Criteo by spec equals the Criteo converter; bad
specs are refused before any row is read; bad values are named."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.datasets import table as table_module
from features.datasets.criteo import convert_criteo
from features.datasets.table import convert_table
from features.hashing import bucket_ids, stable_hash
from features.schema import Schema
from features.spec import load_spec
from tests.conftest import one_line_error, shared_file
from tests.features._table_rows import SPEC, convert_din_layout, make_rows, write_csv

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, text: str = SPEC, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def every_role(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("table")
    csv_path = write_csv(tmp / "rows.csv", make_rows(1200))
    out = convert_table(csv_path, load_spec(_spec(tmp)), tmp / "data", progress=False)
    return csv_path, out


def test_criteo_spec_writes_the_criteo_converters_dataset(tmp_path: Path) -> None:
    sample = shared_file("criteo/train_head10k.tsv")
    spec = load_spec(ROOT / "examples/criteo/spec.toml")
    by_spec = convert_table(sample, spec, tmp_path / "spec", progress=False)
    dedicated = convert_criteo(sample, tmp_path / "criteo", progress=False)
    assert Schema.load(by_spec) == Schema.load(dedicated)
    for split in ("train", "valid", "test"):
        a, b = pq.read_table(by_spec / split), pq.read_table(dedicated / split)
        assert a.num_rows == b.num_rows > 0
        for c in b.column_names:
            if c.startswith("I"):
                np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=0, atol=1e-6)
            else:
                assert a[c].equals(b[c]), (split, c)
    assert pq.read_table(by_spec / "vocabulary.parquet").equals(
        pq.read_table(dedicated / "vocabulary.parquet")
    )


def test_every_role_converts_by_spec(every_role: tuple[Path, Path]) -> None:
    _, out = every_role
    schema = Schema.load(out)
    assert [f.name for f in schema.dense] == ["age", "price"]
    assert [f.name for f in schema.single] == ["user", "item_id", "cate_id", "city", "score"]
    assert [f.name for f in schema.multi] == ["tags"]
    assert [(s.name, s.table, s.max_len) for s in schema.sequences] == [
        ("hist_item_id", "item_id", 5),
        ("hist_cate_id", "cate_id", 5),
    ]
    assert schema.tasks == ("ctr", "cvr") and schema.group == "user"
    info = json.loads((out / "dataset.json").read_text())
    assert sum(info["rows"].values()) == 1200
    # by time: every train row is earlier than every valid row, and those than every test row
    ts = {s: pq.read_table(out / s, columns=["request_id"])["request_id"].to_pylist() for s in info["rows"]}
    index = {f"r0-{i:05d}": i for i in range(1200)}
    order = [[index[r] for r in ts[s]] for s in ("train", "valid", "test")]
    assert max(order[0]) < min(order[1]) and max(order[1]) < min(order[2])
    train = pq.read_table(out / "train")
    lengths = [len(h) for h in train["hist_item_id"].to_pylist()]
    assert max(lengths) == 5  # the raw histories hold up to 7: the 5 most recent kept
    assert info["hashing"]["city"]["buckets"] == 16
    assert info["hashing"]["city"]["distinct_values"] == 30  # city0..city29 all appear
    assert 0 < info["hashing"]["city"]["values_in_shared_buckets"] <= 30  # 30 values, 16 buckets
    table = pq.read_table(out / "vocabulary.parquet").to_pylist()
    vocab = {(v["feature"], v["value"]): v["id"] for v in table}
    raw = {r["request_id"]: r for r in make_rows(1200)}
    for key, tags in zip(train["request_id"].to_pylist(), train["tags"].to_pylist(), strict=True):
        text = str(raw[key]["tags"])
        assert tags == [vocab["tags", t] for t in text.split("|")] if text else tags == []
    age = train["age"].to_numpy()
    assert abs(age.mean()) < 1e-4 and abs(age.std() - 1) < 1e-3  # standardised by the train rows
    assert set(train["score"].to_pylist()) == {2, 3, 4, 5}  # 4 quantile buckets


def test_sequence_truncation_keeps_the_most_recent_values(tmp_path: Path) -> None:
    text = 'keys = ["k"]\n[[label]]\ncolumn = "y"\ntask = "ctr"\n[[categorical]]\ncolumn = "item"\n'
    text += '[[sequence]]\ncolumn = "hist"\ndelimiter = "^"\nmax_len = 2\ntable = "item"\n'
    text += '[split]\nby = "order"\nfractions = [1.0, 0.0, 0.0]\n'
    rows = "k,y,item,hist\na,1,x,x^y^z\nb,0,y,\nc,1,z,z\n"
    (tmp_path / "t.csv").write_text(rows)
    out = convert_table(tmp_path / "t.csv", load_spec(_spec(tmp_path, text)), tmp_path / "d", progress=False)
    train = pq.read_table(out / "train")
    vocab = pq.read_table(out / "vocabulary.parquet").to_pylist()
    ids = {v["value"]: v["id"] for v in vocab}
    assert ids["z"] == 2  # counted 3 times (item, then twice in histories): the first id
    assert train["hist"].to_pylist() == [[ids["y"], ids["z"]], [], [ids["z"]]]
    assert train["k"].to_pylist() == ["a", "b", "c"]


def test_parquet_with_list_histories_converts(tmp_path: Path) -> None:
    n = 300
    _, out = convert_din_layout(tmp_path, n)
    schema = Schema.load(out)
    assert [s.table for s in schema.sequences] == ["item_id", "cate_id"]
    assert sum(json.loads((out / "dataset.json").read_text())["rows"].values()) == n


def test_gzip_reads_as_plain_text(tmp_path: Path, every_role: tuple[Path, Path]) -> None:
    csv_path, out = every_role
    gz = tmp_path / "rows.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    again = convert_table(gz, load_spec(_spec(tmp_path)), tmp_path / "gz", progress=False)
    for split in ("train", "valid", "test"):
        assert pq.read_table(again / split).equals(pq.read_table(out / split))


def test_stable_hash_is_the_documented_one_in_every_process() -> None:
    assert int(stable_hash(pa.array([b"abc"], pa.binary()))[0]) == 0x5EB5F99608383FF1
    values = [b"u1", b"", b"a longer value with spaces, commas and \xc3\xa9", b"123"]
    ids, _ = bucket_ids(pa.array(values, pa.binary()), 1000)
    code = (
        "import pyarrow as pa; from features.hashing import bucket_ids; "
        f"print([int(i) for i in bucket_ids(pa.array({values!r}, pa.binary()), 1000)[0]])"
    )
    for seed in ("1", "2"):
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        got = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        assert got.stdout.strip() == str([int(i) for i in ids])
    # integers hash as their decimal text, as a CSV field holds them
    assert bucket_ids(pa.array([123]), 1000)[0][0] == bucket_ids(pa.array(["123"]), 1000)[0][0] == ids[3]


BAD_SPECS = {
    "unknown column": (
        '[[label]]\ncolumn = "click"\ntask = "ctr"\n[[categorical]]\ncolumn = "nope"\n',
        "nope",
    ),
    "table of no field": (
        '[[label]]\ncolumn = "click"\ntask = "ctr"\n[[categorical]]\ncolumn = "user"\n'
        '[[sequence]]\ncolumn = "hist_item_id"\ndelimiter = "^"\nmax_len = 5\ntable = "item_id"\n',
        "table 'item_id'",
    ),
    "two labels, one task": (
        '[[label]]\ncolumns = ["click", "buy"]\ntask = "ctr"\n[[categorical]]\ncolumn = "user"\n',
        "both train task 'ctr'",
    ),
    "key is a feature": (
        'keys = ["user"]\n[[label]]\ncolumn = "click"\ntask = "ctr"\n[[categorical]]\ncolumn = "user"\n',
        "'user' is also a categorical column",
    ),
    "group that is a key": (
        'keys = ["city"]\ngroup = "city"\n[[label]]\ncolumn = "click"\ntask = "ctr"\n'
        '[[categorical]]\ncolumn = "user"\n',
        "'city' is also a key",
    ),
    "misspelt setting": (
        '[[label]]\ncolumn = "click"\ntask = "ctr"\n[[dense]]\ncolumn = "age"\ntransfrom = "log1p"\n',
        "transfrom",
    ),
    "list column in text": (
        '[[label]]\ncolumn = "click"\ntask = "ctr"\n[[sequence]]\ncolumn = "hist_item_id"\nmax_len = 5\n',
        "no delimiter",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_are_refused_before_any_row_is_read(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, expected = BAD_SPECS[case]
    csv_path = write_csv(tmp_path / "rows.csv", make_rows(20))

    def no_rows(*args: object, **kwargs: object) -> None:
        raise AssertionError("a row was read")

    monkeypatch.setattr(table_module, "read_blocks", no_rows)
    spec_path = _spec(tmp_path, text)
    message = one_line_error(
        lambda: convert_table(csv_path, load_spec(spec_path), tmp_path / "out", progress=False)
    )
    assert expected in message
    assert not (tmp_path / "out").exists()


def test_bad_values_are_named_with_file_line_and_column(tmp_path: Path) -> None:
    rows = make_rows(30)
    rows[6]["age"] = "old"
    path = write_csv(tmp_path / "rows.csv", rows)
    message = one_line_error(
        lambda: convert_table(path, load_spec(_spec(tmp_path)), tmp_path / "o", progress=False)
    )
    assert "rows.csv: line 8, column age" in message and "old" in message
    rows = make_rows(30)
    rows[3].update(click=0, buy=1)
    path = write_csv(tmp_path / "funnel.csv", rows)
    message = one_line_error(
        lambda: convert_table(path, load_spec(_spec(tmp_path)), tmp_path / "o", progress=False)
    )
    assert "funnel.csv: line 5, column buy" in message and "a conversion implies a click" in message
    table = pa.table({"click": [0, 1, 2], "user": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "t.parquet")
    spec = _spec(
        tmp_path,
        '[input]\nformat = "parquet"\n[[label]]\ncolumn = "click"\ntask = "ctr"\n'
        '[[categorical]]\ncolumn = "user"\n',
        "p.toml",
    )
    message = one_line_error(
        lambda: convert_table(tmp_path / "t.parquet", load_spec(spec), tmp_path / "o", progress=False)
    )
    assert "t.parquet: row 3, column click: 2; expected 0 or 1" in message


def test_time_split_reads_date_times(tmp_path: Path) -> None:
    days = [f"2017-05-{d:02d} 10:00:00" for d in range(1, 11)]
    rows = "when,y,item\n" + "".join(f"{t},{i % 2},i{i}\n" for i, t in enumerate(reversed(days)))
    (tmp_path / "t.csv").write_text(rows)
    text = 'time = "when"\nkeys = ["when"]\n[split]\nby = "time"\nfractions = [0.6, 0.2, 0.2]\n'
    text += '[[label]]\ncolumn = "y"\ntask = "ctr"\n[[categorical]]\ncolumn = "item"\n'
    out = convert_table(tmp_path / "t.csv", load_spec(_spec(tmp_path, text)), tmp_path / "d", progress=False)
    when = {s: sorted(pq.read_table(out / s)["when"].to_pylist()) for s in ("train", "valid", "test")}
    assert when == {"train": days[:6], "valid": days[6:8], "test": days[8:]}
    bad = tmp_path / "bad.csv"
    bad.write_text(rows.replace(days[3], "yesterday"))
    message = one_line_error(
        lambda: convert_table(bad, load_spec(_spec(tmp_path, text)), tmp_path / "e", progress=False)
    )
    assert "bad.csv: line 8, column when: 'yesterday'; expected a number or an ISO 8601 date-time" in message


def test_a_parquet_file_given_as_text_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"label": [0, 1]}), tmp_path / "x.tsv")
    spec = load_spec(ROOT / "examples/criteo/spec.toml")
    message = one_line_error(lambda: convert_table(tmp_path / "x.tsv", spec, tmp_path / "o", progress=False))
    assert "x.tsv: a parquet file, but the spec's input format is 'csv'" in message
