"""Tests of the dataset schema: JSON round trip, table configs and the checks it makes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from features.schema import SCHEMA_FILE, CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature


def _schema() -> Schema:
    """Two dense, three categorical (item_id and ad_item share a table), a sequence sharing
    item_id's table, two tasks."""
    return Schema(
        dense=(DenseFeature("price"), DenseFeature("I1")),
        categorical=(
            CategoricalFeature("user_id", num_embeddings=50),
            CategoricalFeature("item_id", num_embeddings=1000),
            CategoricalFeature("ad_item", num_embeddings=1000, table="item_id"),
        ),
        sequences=(SequenceFeature("hist_item_id", num_embeddings=1000, max_len=20, table="item_id"),),
        labels=(Label("click", task="ctr"), Label("buy", task="ctcvr")),
    )


def test_json_round_trip_keeps_every_field() -> None:
    schema = _schema()
    back = Schema.from_json(schema.to_json())
    assert back == schema
    assert back.sequences[0].max_len == 20 and back.sequences[0].table == "item_id"
    assert back.categorical[2].table == "item_id" and back.categorical[0].table == "user_id"
    assert back.tasks == ("ctr", "ctcvr")
    assert back.sparse_keys == ("user_id", "item_id", "ad_item", "hist_item_id")
    assert Schema.from_json(Schema().to_json()) == Schema()


def test_save_and_load_from_a_directory(tmp_path: Path) -> None:
    schema = _schema()
    path = schema.save(tmp_path)
    assert path == tmp_path / SCHEMA_FILE and path.is_file()
    assert Schema.load(tmp_path) == schema
    assert Schema.load(str(tmp_path)) == schema


def test_columns_and_arrow_schema() -> None:
    schema = _schema()
    assert schema.columns() == [
        ("price", pa.float32()),
        ("I1", pa.float32()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("ad_item", pa.int64()),
        ("hist_item_id", pa.list_(pa.int64())),
        ("click", pa.int8()),
        ("buy", pa.int8()),
    ]
    arrow = schema.arrow_schema()
    assert arrow.names == [n for n, _ in schema.columns()]
    assert not any(f.nullable for f in arrow)
    assert schema.without_labels().columns() == schema.columns()[:-2]


def test_table_configs_one_per_distinct_table() -> None:
    configs = _schema().table_configs(16)
    assert [c.name for c in configs] == ["user_id", "item_id"]
    by_name = {c.name: c for c in configs}
    assert by_name["user_id"].num_embeddings == 50
    assert by_name["user_id"].feature_names == ["user_id"]
    assert by_name["item_id"].num_embeddings == 1000
    assert by_name["item_id"].feature_names == ["item_id", "ad_item", "hist_item_id"]
    assert all(c.embedding_dim == 16 for c in configs)
    with pytest.raises(ValueError, match="embedding_dim 0"):
        _schema().table_configs(0)


def test_table_configs_two_features_sharing_a_table() -> None:
    schema = Schema(
        categorical=(
            CategoricalFeature("a", num_embeddings=7, table="shared"),
            CategoricalFeature("b", num_embeddings=7, table="shared"),
            CategoricalFeature("c", num_embeddings=3),
        )
    )
    configs = schema.table_configs(4)
    assert [(c.name, c.num_embeddings, c.feature_names) for c in configs] == [
        ("shared", 7, ["a", "b"]),
        ("c", 3, ["c"]),
    ]


def test_duplicate_column_names() -> None:
    with pytest.raises(ValueError, match=r"\['x'\]"):
        Schema(dense=(DenseFeature("x"),), categorical=(CategoricalFeature("x", num_embeddings=3),))
    with pytest.raises(ValueError, match=r"\['click'\]"):
        Schema(dense=(DenseFeature("click"),), labels=(Label("click", task="ctr"),))
    with pytest.raises(ValueError, match="tasks"):
        Schema(labels=(Label("a", task="ctr"), Label("b", task="ctr")))


def test_shared_table_must_agree_on_num_embeddings() -> None:
    with pytest.raises(ValueError) as err:
        Schema(
            categorical=(CategoricalFeature("item_id", num_embeddings=100),),
            sequences=(SequenceFeature("hist", num_embeddings=99, max_len=5, table="item_id"),),
        )
    for word in ("item_id", "100", "99", "hist"):
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize("name", ["", "a-b", "a b", "é", "x.y"])
def test_bad_names(name: str) -> None:
    for make in (
        lambda: DenseFeature(name),
        lambda: CategoricalFeature(name, num_embeddings=3),
        lambda: CategoricalFeature("ok", num_embeddings=3, table=name or "-"),
        lambda: SequenceFeature(name, num_embeddings=3, max_len=2),
        lambda: Label(name, task="ctr"),
        lambda: Label("ok", task=name or "-"),
    ):
        with pytest.raises(ValueError, match="expected letters, digits and '_' only"):
            make()


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_embeddings 0"):
        CategoricalFeature("c", num_embeddings=0)
    with pytest.raises(ValueError, match="num_embeddings -3"):
        SequenceFeature("s", num_embeddings=-3, max_len=2)
    with pytest.raises(ValueError, match="max_len 0"):
        SequenceFeature("s", num_embeddings=3, max_len=0)
    assert CategoricalFeature("c", num_embeddings=1).num_embeddings == 1


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"dense": [{"nom": "x"}], "categorical": [], "sequences": [], "labels": []}',
        '{"dense": [], "categorical": [{"name": "c"}], "sequences": [], "labels": []}',
        '"schema"',
    ],
)
def test_invalid_json(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match=r"^schema\b"):
        Schema.from_json(text)
    (tmp_path / SCHEMA_FILE).write_text(text)
    with pytest.raises(ValueError) as err:
        Schema.load(tmp_path)
    assert str(tmp_path / SCHEMA_FILE) in str(err.value)


@pytest.mark.parametrize(
    ("key", "entries", "words"),
    [
        ("categorical", [{"name": "c", "num_embeddings": 0}], ("num_embeddings 0",)),
        ("dense", [{"name": "a-b"}], ("'a-b'",)),
        ("dense", [{"name": "x"}, {"name": "x"}], ("['x']",)),
    ],
)
def test_bad_values_in_a_schema_file_name_the_file(
    tmp_path: Path, key: str, entries: list[dict], words: tuple[str, ...]
) -> None:
    lists: dict[str, list[dict]] = {"dense": [], "categorical": [], "sequences": [], "labels": []}
    (tmp_path / SCHEMA_FILE).write_text(json.dumps(lists | {key: entries}))
    with pytest.raises(ValueError) as err:
        Schema.load(tmp_path)
    for word in (str(tmp_path / SCHEMA_FILE), *words):
        assert word in str(err.value), (word, str(err.value))


def test_missing_schema_file_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        Schema.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and SCHEMA_FILE in str(err.value)


def test_check_arrow_accepts_matching_columns_and_extras() -> None:
    schema = _schema()
    good = pa.schema([*schema.columns(), ("extra", pa.string())])
    schema.check_arrow(good, where="f.parquet")
    no_labels = pa.schema(schema.without_labels().columns())
    schema.check_arrow(no_labels, where="f.parquet", labels=False)
    with pytest.raises(ValueError, match="missing column 'click'"):
        schema.check_arrow(no_labels, where="f.parquet")


@pytest.mark.parametrize(
    ("column", "typ"),
    [
        ("price", pa.float64()),
        ("user_id", pa.int32()),
        ("item_id", pa.float32()),
        ("hist_item_id", pa.list_(pa.int32())),
        ("hist_item_id", pa.int64()),
        ("click", pa.int64()),
    ],
)
def test_check_arrow_names_a_column_of_the_wrong_type(column: str, typ: pa.DataType) -> None:
    schema = _schema()
    fields = [(n, typ if n == column else t) for n, t in schema.columns()]
    with pytest.raises(ValueError) as err:
        schema.check_arrow(pa.schema(fields), where="data/part-3.parquet")
    msg = str(err.value)
    assert "data/part-3.parquet" in msg and repr(column) in msg and str(typ) in msg, msg


@pytest.mark.parametrize("column", ["price", "ad_item", "hist_item_id", "buy"])
def test_check_arrow_names_a_missing_column(column: str) -> None:
    schema = _schema()
    fields = [(n, t) for n, t in schema.columns() if n != column]
    with pytest.raises(ValueError) as err:
        schema.check_arrow(pa.schema(fields), where="data/part-3.parquet")
    msg = str(err.value)
    assert "data/part-3.parquet" in msg and f"missing column {column!r}" in msg, msg


@pytest.mark.parametrize("n", [2.5, "7", True])
def test_num_embeddings_must_be_an_integer(n: object) -> None:
    with pytest.raises(ValueError, match="num_embeddings"):
        CategoricalFeature("a", n)  # type: ignore[arg-type]
