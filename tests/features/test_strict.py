"""Strict readers: `features.strict`, schema.json (`Schema.load`) and dataset.json (`dataset_info`).

Every refusal is a one-line ValueError naming the file, the key and the value as given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from features.dataset import DATASET_FILE, DatasetWriter, dataset_info
from features.schema import SCHEMA_FILE, CategoricalFeature, DenseFeature, Label, Schema, SequenceFeature
from features.strict import check_fields, check_keys, check_value
from tests.conftest import one_line_error


@dataclass(frozen=True)
class _Inner:
    name: str
    size: int = 1


@dataclass(frozen=True)
class _Config:
    epochs: int = 1
    lr: float = 0.1
    name: str = ""
    on: bool = False
    units: tuple[int, ...] = ()
    pair: tuple[str, float] = ("a", 1.0)
    dim: int | None = None
    table: dict[str, int] | None = None
    parts: tuple[_Inner, ...] = ()


def test_check_fields_converts_what_a_file_holds() -> None:
    given = {"lr": 1, "units": [4, 2], "pair": ["b", 2], "dim": None, "parts": [{"name": "x"}]}
    values = check_fields(_Config, given, "f.json")
    assert values == {"lr": 1.0, "units": (4, 2), "pair": ("b", 2.0), "dim": None, "parts": (_Inner("x"),)}
    assert type(values["lr"]) is float
    assert check_fields(_Config, {"table": {"a": 3}}, "f.json") == {"table": {"a": 3}}


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"epochs": "three"}, ('f.json [t] epochs: "three" is a string; expected an integer',)),
        ({"epochs": True}, ("f.json [t] epochs: true is a boolean; expected an integer",)),
        ({"epochs": 2.5}, ("f.json [t] epochs: 2.5 is a number; expected an integer",)),
        ({"lr": "0.1"}, ('f.json [t] lr: "0.1" is a string; expected a number',)),
        ({"on": 1}, ("f.json [t] on: 1 is an integer; expected true or false",)),
        ({"name": 3}, ("f.json [t] name: 3 is an integer; expected a string",)),
        ({"units": [4, "x"]}, ('f.json [t] units[1]: "x" is a string; expected an integer',)),
        ({"units": 4}, ("f.json [t] units: 4 is an integer; expected a list, each an integer",)),
        ({"pair": ["a"]}, ("f.json [t] pair:", "expected a list of 2")),
        ({"dim": "x"}, ('f.json [t] dim: "x" is a string; expected an integer or null',)),
        ({"table": {"a": "1"}}, ('f.json [t] table.a: "1" is a string; expected an integer',)),
        ({"parts": [{"name": "x", "sise": 2}]}, ("f.json [t] parts[0]: unknown key 'sise'", "'size'")),
        ({"parts": [{"size": 2}]}, ("f.json [t] parts[0]: missing key 'name'",)),
        ({"epoch": 3}, ("f.json [t]: unknown key 'epoch'", "'epochs'")),
    ],
)
def test_check_fields_names_where_the_key_and_the_value(values: dict, words: tuple[str, ...]) -> None:
    message = one_line_error(lambda: check_fields(_Config, values, "f.json [t]"))
    for word in words:
        assert word in message, (word, message)


def test_check_keys_and_check_value() -> None:
    assert check_keys({"a": 1}, "w", required=("a",), optional=("b",)) == {"a": 1}
    assert check_keys({"a": 1, "z": 2}, "w", required=("a",), optional=None) == {"a": 1, "z": 2}
    assert one_line_error(lambda: check_keys([1], "w")) == "w: [1] is a list; expected an object"
    assert "w: missing key 'a'" in one_line_error(lambda: check_keys({}, "w", required=("a",)))
    message = one_line_error(lambda: check_keys({"b": 1}, "w", required=("a",)))
    assert "w: unknown key 'b' (and missing ['a'])" in message, message
    assert check_value([["a", 1]], tuple[tuple[str, Any], ...] | dict[str, Any], "w") == (("a", 1),)
    assert check_value({"a": [1]}, tuple[tuple[str, Any], ...] | dict[str, Any], "w") == {"a": [1]}
    assert "w x" in one_line_error(lambda: check_value("x" * 100, int, "w x"))
    assert len(one_line_error(lambda: check_value("x" * 1000, int, "w"))) < 120


# schema.json


def _schema() -> Schema:
    return Schema(
        dense=(DenseFeature("I1"),),
        categorical=(CategoricalFeature("C1", num_embeddings=10), CategoricalFeature("C2", 5, multi=True)),
        sequences=(SequenceFeature("hist", num_embeddings=10, max_len=3, table="C1"),),
        labels=(Label("click", task="ctr"),),
        group="C1",
    )


def _schema_file(tmp_path: Path, edit: Any) -> Path:
    d = json.loads(_schema().to_json())
    edit(d)
    (tmp_path / SCHEMA_FILE).write_text(json.dumps(d))
    return tmp_path / SCHEMA_FILE


def test_a_schema_written_by_the_library_loads(tmp_path: Path) -> None:
    _schema().save(tmp_path)
    assert Schema.load(tmp_path) == _schema()
    _schema_file(tmp_path, lambda d: d.pop("group"))  # as written before `group` existed
    assert Schema.load(tmp_path) == replace(_schema(), group="")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(dnse=d.pop("dense")), ("unknown key 'dnse'", "missing ['dense']")),
        (lambda d: d.pop("categorical"), ("missing key 'categorical'",)),
        (lambda d: d.update(extra=1), ("unknown key 'extra'",)),
        (
            lambda d: d["categorical"][1].update(tabel="C1"),
            ("categorical[1]: unknown key 'tabel'", "'table'"),
        ),
        (
            lambda d: d["categorical"][0].update(num_embeddings="ten"),
            ('categorical[0] num_embeddings: "ten" is a string; expected an integer',),
        ),
        (lambda d: d["categorical"][1].update(multi=1), ("categorical[1] multi: 1 is an integer",)),
        (lambda d: d["sequences"][0].pop("max_len"), ("sequences[0]: missing key 'max_len'",)),
        (lambda d: d["labels"][0].update(task=None), ("labels[0] task: null is null; expected a string",)),
        (lambda d: d.update(dense={"name": "I1"}), ('dense: {"name": "I1"} is an object; expected a list',)),
        (lambda d: d.update(group=1), ("group: 1 is an integer; expected a string",)),
    ],
)
def test_schema_json_is_read_strictly(tmp_path: Path, edit: Any, words: tuple[str, ...]) -> None:
    path = _schema_file(tmp_path, edit)
    message = one_line_error(lambda: Schema.load(tmp_path))
    for word in (str(path), *words):
        assert word in message, (word, message)


def test_a_schema_that_is_not_json_or_not_an_object_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / SCHEMA_FILE
    for text, word in (("{oops", "not JSON"), ("[]", "[] is a list; expected an object"), (b"\xff", "read")):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        message = one_line_error(lambda: Schema.load(tmp_path))
        assert str(path) in message and word in message, message


def test_a_deleted_feature_entry_is_a_valid_smaller_schema(tmp_path: Path) -> None:
    """The reader cannot tell: what catches it is the data or the weights disagreeing with it (a
    checkpoint's weights by shape, rows to score by `Predictor`'s comparison of the two schemas)."""
    _schema_file(tmp_path, lambda d: d["categorical"].pop(1))
    assert [f.name for f in Schema.load(tmp_path).categorical] == ["C1"]


# dataset.json


def _dataset(tmp_path: Path, info: dict[str, Any]) -> Path:
    schema = Schema(dense=(DenseFeature("x"),), labels=(Label("y", task="ctr"),))
    table = pa.table({"x": pa.array([0.5, 1.5], pa.float32()), "y": pa.array([0, 1], pa.int8())})
    with DatasetWriter(tmp_path / "ds", schema, splits=("train",)) as w:
        w.write("train", table)
        return w.commit(info)


def test_a_dataset_json_written_by_the_library_loads(tmp_path: Path) -> None:
    info = {"converter": "test", "config": {"seed": 1}, "teacher": {}, "inputs": ["a.csv"], "seconds": 0.5}
    out = _dataset(tmp_path, info)
    read = dataset_info(out)
    assert read["rows"] == {"train": 2} and read["positives"] == {"train": {"y": 1}}
    assert {k: read[k] for k in info} == info
    assert dataset_info(tmp_path) == {}  # no dataset.json: nothing known


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(rowz=d["rows"]), ("unknown key 'rowz'",)),
        (lambda d: d["rows"].update(train="2"), ('rows.train: "2" is a string; expected an integer',)),
        (lambda d: d["rows"].update(train=2.0), ("rows.train: 2.0 is a number; expected an integer",)),
        (
            lambda d: d.update(positives={"train": 1}),
            ("positives.train: 1 is an integer; expected an object",),
        ),
        (lambda d: d.update(warnings="none"), ('warnings: "none" is a string; expected a list',)),
        (lambda d: d.update(converter=3), ("converter: 3 is an integer; expected a string",)),
        (lambda d: d.update(teacher=[]), ("teacher: [] is a list; expected an object",)),
    ],
)
def test_dataset_json_is_read_strictly(tmp_path: Path, edit: Any, words: tuple[str, ...]) -> None:
    out = _dataset(tmp_path, {"converter": "test"})
    path = out / DATASET_FILE
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    message = one_line_error(lambda: dataset_info(out))
    for word in (str(path), *words):
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("text", "word"), [("{rows: 1", "cannot read it as JSON"), ("[1]", "expected an object")]
)
def test_a_dataset_json_that_is_not_json_or_not_an_object_names_the_file(
    tmp_path: Path, text: str, word: str
) -> None:
    (tmp_path / DATASET_FILE).write_text(text)
    message = one_line_error(lambda: dataset_info(tmp_path))
    assert str(tmp_path / DATASET_FILE) in message and word in message, message
