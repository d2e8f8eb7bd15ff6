"""examples/*/spec.toml: each parses, and converts its shipped sample (../shared/data) into the
dataset it describes: every data row in a split, the schema's columns those the spec names, the
keys written beside the features."""

from __future__ import annotations

import csv
import importlib.util
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.dataset import dataset_info
from features.datasets.table import convert_table
from features.schema import Schema
from features.spec import TableSpec, load_spec
from rankers.config import resolve
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SPLITS = ("train", "valid", "test")

# example -> the shipped sample files it converts, read in order as one sequence of rows
SAMPLES = {
    "criteo": ["criteo/train_head10k.tsv"],
    "alimama": ["taobao/alimama_joined_sample100.csv"],
    "aliccp": [f"ali_ccp/{s}_sample.csv" for s in ("train", "val", "test")],
    "aliexpress": ["aliexpress/train_1k.csv", "aliexpress/test_1k.csv"],
    "ipinyou": ["ipinyou/onehot_train.fm.txt"],
}

# example -> the backbone its train.toml trains
BACKBONES = {"criteo": "mlp", "alimama": "din", "aliccp": "esmm", "aliexpress": "esmm", "ipinyou": "mlp"}
BACKBONES["userbehavior"] = "din"

pytestmark = pytest.mark.shared_data


def _data_rows(path: Path, header: bool) -> int:
    """Rows of a text sample as the csv module counts them (a last line without a newline counts)."""
    with path.open(newline="") as fh:
        return sum(1 for _ in csv.reader(fh)) - int(header)


def _check_dataset(out: Path, spec: TableSpec, rows: int) -> dict[str, int]:
    """Asserts the converted dataset holds `rows` rows, the spec's columns in the spec's roles, and
    its keys beside the features; returns the rows per split."""
    info = dataset_info(out)
    per_split = {s: int(info["rows"][s]) for s in SPLITS}
    assert sum(per_split.values()) == rows, per_split
    schema = Schema.load(out)
    assert [d.name for d in schema.dense] == [c.column for c in spec.role("dense")]
    assert [c.name for c in schema.categorical] == [c.column for c in spec.role("categorical")]
    assert [(s.name, s.table, s.max_len) for s in schema.sequences] == [
        (c.column, c.owner, c.max_len) for c in spec.role("sequence")
    ]
    assert [(lab.name, lab.task) for lab in schema.labels] == [(c.column, c.task) for c in spec.role("label")]
    assert schema.group == spec.group
    for split in SPLITS:
        names = pq.read_schema(next((out / split).glob("*.parquet"))).names
        assert names == [n for n, _ in schema.columns()] + list(spec.keys), (split, names)
    return per_split


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_example_spec_converts_its_sample(name: str, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / name / "spec.toml")
    files = [shared_file(f) for f in SAMPLES[name]]
    out = convert_table(files, spec, tmp_path / name, progress=False)
    rows = [_data_rows(f, spec.input.header) for f in files]
    per_split = _check_dataset(out, spec, sum(rows))
    if name in ("aliccp", "aliexpress"):  # split by order: the last file is the test split
        assert per_split["test"] == rows[-1]
        assert per_split["train"] + per_split["valid"] == sum(rows[:-1])
    if name == "aliexpress":  # search_id passed through as read, row for row
        test = pq.read_table(out / "test", columns=["search_id"])["search_id"].to_pylist()
        with files[1].open(newline="") as fh:
            assert test == [r["search_id"] for r in csv.DictReader(fh)]


def test_every_example_has_a_spec_and_a_training_config() -> None:
    """Each spec passes the spec's checks; each train.toml's tables are valid configs."""
    examples = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert examples == sorted([*SAMPLES, "userbehavior"])
    for name in examples:
        load_spec(EXAMPLES / name / "spec.toml")
        toml = tomllib.loads((EXAMPLES / name / "train.toml").read_text())
        assert set(toml) == {"train", "ranker", "backbone"}, name
        ranker = dict(toml["ranker"])
        ranker_config, train_config = resolve(
            ranker.pop("backbone"), ranker | {"backbone_config": toml["backbone"]}, toml["train"]
        )
        assert ranker_config.backbone == BACKBONES[name]
        assert train_config.batch_size <= 1024, name  # sized for the shipped samples


def test_alimama_history_shares_the_adgroup_table() -> None:
    spec = load_spec(EXAMPLES / "alimama" / "spec.toml")
    (history,) = spec.role("sequence")
    assert (history.column, history.delimiter, history.owner) == ("click_sequence", "^", "adgroup_id")


def test_userbehavior_din_layout(tmp_path: Path) -> None:
    """din_layout.py writes the DIN layout from the head of the UserBehavior sample, and the
    example's spec converts it: one positive per behaviour after a user's first, one negative each."""
    head = tmp_path / "head.csv"
    with shared_file("taobao/UserBehavior_head_650users.csv").open() as fh:
        lines = [next(fh) for _ in range(3000)]
    head.write_text("".join(lines))
    users = len({line.split(",")[0] for line in lines})
    spec_path = EXAMPLES / "userbehavior" / "din_layout.py"
    module_spec = importlib.util.spec_from_file_location("din_layout", spec_path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    module.main(str(head), str(tmp_path / "ub.parquet"))
    table = pq.read_table(tmp_path / "ub.parquet")
    assert table.column_names == ["label", "user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id"]
    for name in ("hist_item_id", "hist_cate_id"):
        assert table.schema.field(name).type.equals(pa.list_(pa.int64())), name
    labels = table["label"].to_pylist()
    assert labels.count(1) == labels.count(0) == 3000 - users
    spec = load_spec(EXAMPLES / "userbehavior" / "spec.toml")
    out = convert_table(tmp_path / "ub.parquet", spec, tmp_path / "data", progress=False)
    _check_dataset(out, spec, table.num_rows)
