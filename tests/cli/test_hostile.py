"""Hostile inputs to the `rankers` command line: every fault is refused with exit 2 and one line
`rankers: error: ...` that names the path, key, field or value at fault, and no run hurts an input.

Six groups, each a parametrized battery:

1. outputs that cannot hurt inputs (an output that is, contains or lies inside an input is refused
   before any work; `--overwrite` replaces only what rankers wrote);
2. one writer per output, and a failed run leaves nothing at --out;
3. one line for every fault (read-only or full disk, bad sizes, bad values, missing or foreign files);
4. strict files (schema.json, dataset.json, a checkpoint's config.json, TOML configs, fingerprints);
5. the API checks rows as the CLI does (ids beyond their table, non-finite dense values);
6. no NaN or diverged result passed off as good (a diverging run, NaN model output, bid flags).

Every case reads every input file's bytes before the run and compares them after, and checks that
nothing new appeared at --out or beside it (no `.NAME.partial`, no `.NAME.lock`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.outputs import OutputLock
from rankers.cli import main
from rankers.predictor import Predictor
from tests.conftest import shared_file

REPO = Path(__file__).resolve().parents[2]
PART = "part-00000.parquet"
TRAIN = ("--epochs", "1", "--batch-size", "512", "--hidden-units", "16", "--no-progress")
SHARED = pytest.mark.shared_data
# The error line says which input the output collides with: the word, or the input's flag.
INPUT = r"\binputs?\b|--data\b|--checkpoint\b|--vocabulary-from\b|--valid\b|--test\b"
MEMORY = r"\d[\d.,]*\s*(?:[KMGTPE]i?B|bytes)\b"  # a memory figure such as "1.7 TB" or "64 TiB"


def named(path: Path | str) -> str:
    return re.escape(str(path))


def number(n: int) -> str:
    """`n` as a regex, with or without thousands separators."""
    return f"(?:{n}|{n:,})"


# --- what a run may and may not change ------------------------------------------------------------


def snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file's bytes (and every directory's presence) under `paths`."""
    out: dict[str, bytes] = {}
    for p in paths:
        if p.is_dir():
            out[str(p)] = b"<dir>"
            for f in sorted(p.rglob("*")):
                out[str(f)] = f.read_bytes() if f.is_file() else b"<dir>"
        elif p.is_file():
            out[str(p)] = p.read_bytes()
        else:
            out[str(p)] = b"<absent>"
    return out


def beside(out: Path) -> dict[str, bytes]:
    """The names in --out's directory, and the bytes at --out if something is there."""
    names = sorted(os.listdir(out.parent)) if out.parent.is_dir() else []
    return {"<names>": "\n".join(names).encode(), **snapshot(out)}


@dataclass(frozen=True)
class Case:
    """One hostile run of `rankers ARGV`."""

    argv: tuple[str, ...]
    must: tuple[str, ...]  # regexes the error line must each match: what is at fault
    inputs: tuple[Path, ...]  # bytes that must not change
    out: Path | None = None  # nothing new may appear there or beside it
    worked: bool = False  # the run may log (epoch summaries) before its error line
    code: int = 2
    within: float | None = None  # seconds the refusal may take
    memory_guard: bool = False  # an address-space limit, so a missing check cannot exhaust memory


@contextlib.contextmanager
def address_space_limit(extra: int = 8 << 30) -> Iterator[None]:
    """Caps this process's address space at its current size plus `extra` bytes, for one call."""
    status = Path("/proc/self/status").read_text().splitlines()
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted(k for k in {*before, *after} if before.get(k) != after.get(k))


def refused(case: Case, capsys: pytest.CaptureFixture[str]) -> str:
    """Runs `case` and checks the refusal (every problem reported together); returns the error line."""
    capsys.readouterr()
    inputs = snapshot(*case.inputs)
    at_out = beside(case.out) if case.out else {}
    start = time.monotonic()
    with address_space_limit() if case.memory_guard else contextlib.nullcontext():
        code = main(list(case.argv))
    took = time.monotonic() - start
    err = capsys.readouterr().err
    lines = err.rstrip("\n").split("\n") if err else []
    line = lines[-1] if lines else ""
    problems = []
    if "Traceback" in err:
        problems.append("a traceback")
    if case.worked:  # epoch summaries and progress may come first; one error line, the last
        if [x for x in lines if x.startswith("rankers:")] != lines[-1:]:
            problems.append("not exactly one error line, last")
    elif len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    if not line.startswith("rankers: error: "):
        problems.append("no 'rankers: error: ' line")
    problems += [f"the line does not name /{p}/" for p in case.must if not re.search(p, line)]
    if changed(inputs, snapshot(*case.inputs)):
        problems.append(f"inputs changed: {changed(inputs, snapshot(*case.inputs))[:5]}")
    if case.out and beside(case.out) != at_out:
        after = beside(case.out)
        names = after["<names>"].decode().split("\n")
        problems.append(f"--out or beside it changed: {changed(at_out, after)[:5]}; now there: {names}")
    if case.within is not None and took > case.within:
        problems.append(f"took {took:.1f} s (expected under {case.within} s)")
    assert not problems, f"{'; '.join(problems)}\n  exit {code}, last stderr line: {line!r}"
    return line


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")  # progress bars would be stderr lines
    monkeypatch.delenv("RANKERS_DEBUG", raising=False)


@pytest.fixture(scope="module")
def trained(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small checkpoint for the module (read only: cases that may write copy it)."""
    out = tmp_path_factory.mktemp("hostile") / "ckpt"
    assert main(["train", "--data", str(synthetic_small), "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test split converted with other vocabularies (another min_count) than `synthetic_small`."""
    from features.datasets.synthetic import SyntheticConfig, write_synthetic

    out = tmp_path_factory.mktemp("foreign") / "data"
    return write_synthetic(out, SyntheticConfig(rows=4000, max_vocab=1000, min_count=20), progress=False)


@dataclass(frozen=True)
class Env:
    tmp: Path
    data: Path  # synthetic_small: read only
    ckpt: Path  # trained on it: read only
    foreign: Path

    def copy(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst

    def out(self, name: str = "out") -> Path:
        return self.tmp / name


@pytest.fixture
def env(synthetic_small: Path, trained: Path, foreign: Path, tmp_path: Path) -> Env:
    return Env(tmp_path, synthetic_small, trained, foreign)


@functools.cache
def criteo_lines() -> list[bytes]:
    return shared_file("criteo/train_head10k.tsv").read_bytes().splitlines(keepends=True)


def criteo_tsv(path: Path, rows: int = 2000, tail: bytes = b"") -> Path:
    """The first `rows` lines of the Criteo sample (read in place), then `tail`, at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(criteo_lines()[:rows]) + tail)
    return path


def criteo_dataset(out: Path) -> Path:
    from features.datasets.criteo import CriteoConfig, convert_criteo

    src = criteo_tsv(out.parent / f"{out.name}.tsv")
    return convert_criteo(src, out, CriteoConfig(min_count=2), progress=False)


def edit_json(path: Path, edit: Callable[[dict], object]) -> Path:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=1))
    return path


def feature(schema: dict, name: str) -> dict:
    return next(f for f in schema["categorical"] if f["name"] == name)


def edit_parquet(path: Path, column: str, row: int, value: float) -> Path:
    """Sets one value of `column`, keeping the file's schema and its metadata (the fingerprint)."""
    table = pq.read_table(path)
    meta = pq.read_schema(path).metadata
    i = table.schema.get_field_index(column)
    values = table.column(column).to_numpy().copy()
    values[row] = value
    field = table.schema.field(i)
    table = table.set_column(i, field, pa.array(values, type=field.type)).replace_schema_metadata(meta)
    pq.write_table(table, path)
    return path


def num_embeddings(directory: Path, name: str) -> int:
    return int(feature(json.loads((directory / "schema.json").read_text()), name)["num_embeddings"])


def train_argv(data: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("train", "--data", str(data), "--out", str(out), *TRAIN, *extra)


def flagged(build: Callable[..., Case], *flags: str) -> Callable[[Env], Case]:
    """`build(env, *flags)`: a case builder with extra flags."""
    return lambda env: build(env, *flags)


def predict_argv(ckpt: Path, data: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("predict", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), *extra)


# --- 1. outputs that cannot hurt inputs -----------------------------------------------------------


def predict_out_is_data(env: Env, *extra: str) -> Case:
    x = env.copy(env.data / "test" / PART, "X.parquet")
    return Case(predict_argv(env.ckpt, x, x, *extra), (named(x), INPUT), (x, env.ckpt), x)


def predict_out_is_data_spelt_otherwise(env: Env) -> Case:
    x = env.copy(env.data / "test" / PART, "X.parquet")
    (env.tmp / "sub").mkdir()
    out = env.tmp / "sub" / ".." / "X.parquet"
    argv = predict_argv(env.ckpt, x, out, "--overwrite")
    return Case(argv, (r"X\.parquet", INPUT), (x, env.ckpt), x)


def predict_out_is_a_link_to_data(env: Env) -> Case:
    x = env.copy(env.data / "test" / PART, "X.parquet")
    link = env.tmp / "link.parquet"
    link.symlink_to(x)
    return Case(predict_argv(env.ckpt, x, link, "--overwrite"), (named(link), INPUT), (x, env.ckpt), link)


def predict_out_inside_data(env: Env) -> Case:
    split = env.copy(env.data / "test", "rows")
    out = split / "p.parquet"
    return Case(predict_argv(env.ckpt, split, out), (named(out), INPUT), (split, env.ckpt), out)


def predict_out_contains_data(env: Env) -> Case:
    folder = env.tmp / "folder"
    x = env.copy(env.data / "test" / PART, "folder/rows.parquet")
    argv = predict_argv(env.ckpt, x, folder, "--overwrite")
    return Case(argv, (named(folder), INPUT), (folder, env.ckpt), folder)


def predict_out_inside_checkpoint(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    out = ckpt / "p.parquet"
    argv = predict_argv(ckpt, env.data / "test", out)
    return Case(argv, (named(out), INPUT), (ckpt, env.data), out)


def predict_out_is_checkpoint(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    argv = predict_argv(ckpt, env.data / "test", ckpt, "--overwrite")
    return Case(argv, (named(ckpt), INPUT), (ckpt, env.data), ckpt)


def predict_out_user_parquet(env: Env) -> Case:
    mine = env.tmp / "mine.parquet"
    pq.write_table(pa.table({"revenue": [1.0, 2.0]}), mine)
    argv = predict_argv(env.ckpt, env.data / "test", mine, "--overwrite")
    return Case(argv, (named(mine), "predictions"), (mine, env.ckpt, env.data), mine)


def predict_out_user_text(env: Env) -> Case:
    notes = env.tmp / "notes.txt"
    notes.write_text("my notes\n")
    argv = predict_argv(env.ckpt, env.data / "test", notes, "--overwrite")
    return Case(argv, (named(notes), "predictions"), (notes, env.ckpt, env.data), notes)


def predict_out_existing_predictions(env: Env) -> Case:
    preds = env.tmp / "p.parquet"
    table = pa.table({"p_ctr": np.full(3, 0.5, dtype=np.float32)})
    pq.write_table(table.replace_schema_metadata({b"rankers.kind": b"predictions"}), preds)
    argv = predict_argv(env.ckpt, env.data / "test", preds)
    return Case(argv, (named(preds), "--overwrite"), (preds, env.ckpt, env.data), preds)


def train_out_is_data(env: Env) -> Case:
    data = env.copy(env.data, "D")
    return Case(train_argv(data, data, "--overwrite"), (named(data), INPUT), (data,), data)


def train_out_inside_data(env: Env) -> Case:
    data = env.copy(env.data, "D")
    out = data / "sub"
    return Case(train_argv(data, out), (named(out), INPUT), (data,), out)


def train_out_contains_data(env: Env) -> Case:
    folder = env.tmp / "P"
    data = env.copy(env.data, "P/D")
    return Case(train_argv(data, folder, "--overwrite"), (named(folder), INPUT), (folder,), folder)


def train_out_user_file(env: Env) -> Case:
    notes = env.tmp / "notes.txt"
    notes.write_text("my notes\n")
    argv = train_argv(env.data, notes, "--overwrite")
    return Case(argv, (named(notes), "checkpoint"), (notes, env.data), notes)


def train_out_user_directory(env: Env) -> Case:
    mine = env.tmp / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\documentclass{article}\n")
    argv = train_argv(env.data, mine, "--overwrite")
    return Case(argv, (named(mine), "checkpoint"), (mine, env.data), mine)


def train_out_a_dataset(env: Env) -> Case:
    other = env.copy(env.foreign, "other")
    argv = train_argv(env.data, other, "--overwrite")
    return Case(argv, (named(other), "checkpoint"), (other, env.data), other)


def convert_criteo_out_contains_input(env: Env) -> Case:
    data = env.copy(env.data, "D")  # a dataset rankers wrote: --overwrite alone would replace it
    raw = criteo_tsv(data / "train.tsv")
    argv = ("convert", "criteo", str(raw), "--out", str(data), "--overwrite")
    return Case(argv, (named(data), INPUT), (data,), data)


def convert_criteo_out_is_input(env: Env) -> Case:
    raw = criteo_tsv(env.tmp / "train.tsv")
    argv = ("convert", "criteo", str(raw), "--out", str(raw), "--overwrite")
    return Case(argv, (named(raw), INPUT), (raw,), raw)


def convert_criteo_out_is_vocabulary(env: Env) -> Case:
    vocab = criteo_dataset(env.tmp / "V")
    raw = criteo_tsv(env.tmp / "new.tsv", rows=300)
    argv = ("convert", "criteo", str(raw), "--vocabulary-from", str(vocab), "--out", str(vocab))
    return Case((*argv, "--overwrite"), (named(vocab), INPUT), (vocab, raw), vocab)


def convert_table_out_is_the_spec(env: Env) -> Case:
    raw = criteo_tsv(env.tmp / "train.tsv")
    spec = env.copy(Path(__file__).resolve().parents[2] / "examples/criteo/spec.toml", "spec.toml")
    argv = ("convert", "table", str(raw), "--spec", str(spec), "--out", str(spec), "--overwrite")
    return Case(argv, (named(spec), INPUT), (spec, raw), spec)


def convert_aliexpress_out_contains_input(env: Env) -> Case:
    folder = env.tmp / "ae"
    train = env.copy(shared_file("aliexpress/train_1k.csv"), "ae/train.csv")
    argv = ("convert", "aliexpress", str(train), "--out", str(folder), "--overwrite")
    return Case(argv, (named(folder), INPUT), (folder,), folder)


def convert_synthetic_out_user_directory(env: Env) -> Case:
    mine = env.tmp / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    argv = ("convert", "synthetic", "--rows", "1000", "--out", str(mine), "--overwrite")
    return Case(argv, (named(mine), "dataset"), (mine,), mine)


def convert_synthetic_out_user_file(env: Env) -> Case:
    notes = env.tmp / "notes.txt"
    notes.write_text("my notes\n")
    argv = ("convert", "synthetic", "--rows", "1000", "--out", str(notes), "--overwrite")
    return Case(argv, (named(notes), "dataset"), (notes,), notes)


def convert_synthetic_out_a_checkpoint(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    argv = ("convert", "synthetic", "--rows", "1000", "--out", str(ckpt), "--overwrite")
    return Case(argv, (named(ckpt), "dataset"), (ckpt,), ckpt)


def calibrate_checkpoint_contains_valid(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    valid = env.copy(env.data / "valid", "ckpt/valid")
    argv = ("calibrate", "--checkpoint", str(ckpt), "--valid", str(valid), "--force")
    return Case(argv, (named(ckpt), INPUT), (ckpt, env.data), ckpt)


def calibrate_checkpoint_contains_test(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    test = env.copy(env.data / "test", "ckpt/test")
    argv = ("calibrate", "--checkpoint", str(ckpt), "--test", str(test), "--force")
    return Case(argv, (named(ckpt), INPUT), (ckpt, env.data), ckpt)


GROUP_1 = [
    pytest.param(predict_out_is_data, id="predict --out X.parquet = --data X.parquet"),
    pytest.param(
        flagged(predict_out_is_data, "--overwrite"),
        id="predict --out X.parquet = --data X.parquet --overwrite",
    ),
    pytest.param(predict_out_is_data_spelt_otherwise, id="predict --out sub/../X.parquet = --data"),
    pytest.param(predict_out_is_a_link_to_data, id="predict --out a symlink to --data --overwrite"),
    pytest.param(predict_out_inside_data, id="predict --out inside the --data directory"),
    pytest.param(predict_out_contains_data, id="predict --out a folder holding --data --overwrite"),
    pytest.param(predict_out_inside_checkpoint, id="predict --out inside the checkpoint"),
    pytest.param(predict_out_is_checkpoint, id="predict --out the checkpoint --overwrite"),
    pytest.param(predict_out_user_parquet, id="predict --out a user parquet --overwrite"),
    pytest.param(predict_out_user_text, id="predict --out a user text file --overwrite"),
    pytest.param(predict_out_existing_predictions, id="predict --out existing predictions, no --overwrite"),
    pytest.param(train_out_is_data, id="train --out D = --data D --overwrite"),
    pytest.param(train_out_inside_data, id="train --out D/sub"),
    pytest.param(train_out_contains_data, id="train --out a folder holding --data --overwrite"),
    pytest.param(train_out_user_file, id="train --out notes.txt --overwrite"),
    pytest.param(train_out_user_directory, id="train --out a user directory --overwrite"),
    pytest.param(train_out_a_dataset, id="train --out a dataset --overwrite"),
    pytest.param(
        convert_criteo_out_contains_input, id="convert criteo D/train.tsv --out D --overwrite", marks=SHARED
    ),
    pytest.param(
        convert_criteo_out_is_input, id="convert criteo X.tsv --out X.tsv --overwrite", marks=SHARED
    ),
    pytest.param(
        convert_criteo_out_is_vocabulary, id="convert criteo --vocabulary-from V --out V", marks=SHARED
    ),
    pytest.param(
        convert_aliexpress_out_contains_input, id="convert aliexpress U/train.csv --out U", marks=SHARED
    ),
    pytest.param(convert_table_out_is_the_spec, id="convert table X.tsv --spec S --out S --overwrite"),
    pytest.param(convert_synthetic_out_user_directory, id="convert synthetic --out a user directory"),
    pytest.param(convert_synthetic_out_user_file, id="convert synthetic --out notes.txt --overwrite"),
    pytest.param(convert_synthetic_out_a_checkpoint, id="convert synthetic --out a checkpoint --overwrite"),
    pytest.param(calibrate_checkpoint_contains_valid, id="calibrate --checkpoint C --valid C/valid"),
    pytest.param(calibrate_checkpoint_contains_test, id="calibrate --checkpoint C --test C/test"),
]


@pytest.mark.parametrize("build", GROUP_1)
def test_1_outputs_cannot_hurt_inputs(
    build: Callable[[Env], Case], env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(replace(build(env), within=30), capsys)


# --- 2. one writer per output; a failed run leaves nothing ----------------------------------------


def locked_train(env: Env) -> Case:
    out = env.out("ckpt")
    return Case(train_argv(env.data, out), (named(out),), (env.data,), out)


def locked_predict(env: Env) -> Case:
    out = env.out("p.parquet")
    return Case(predict_argv(env.ckpt, env.data / "test", out), (named(out),), (env.ckpt, env.data), out)


def locked_convert(env: Env) -> Case:
    out = env.out("synth")
    return Case(("convert", "synthetic", "--rows", "1000", "--out", str(out)), (named(out),), (), out)


def locked_calibrate(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    argv = ("calibrate", "--checkpoint", str(ckpt), "--force")
    return Case(argv, (named(ckpt),), (ckpt, env.data), ckpt)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(locked_train, id="train"),
        pytest.param(locked_predict, id="predict"),
        pytest.param(locked_convert, id="convert synthetic"),
        pytest.param(locked_calibrate, id="calibrate"),
    ],
)
def test_2_a_second_writer_fails_at_once_naming_the_path_and_holder(
    build: Callable[[Env], Case], env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    case = build(env)
    assert case.out is not None
    lock = OutputLock(case.out)
    try:
        holder = rf"\b{os.getpid()}\b"
        refused(replace(case, must=(*case.must, holder), within=15), capsys)
    finally:
        lock.release()


def test_2_a_second_train_beside_a_running_one_names_its_pid(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two concurrent trains into one --out: the second is refused at once naming the first, and
    the first ends with one complete checkpoint."""
    out = env.out("ckpt")
    command = [sys.executable, "-m", "rankers", "train", "--data", str(env.data), "--out", str(out)]
    command += [
        "--epochs",
        "3",
        "--patience",
        "0",
        "--batch-size",
        "512",
        "--hidden-units",
        "16",
        "--no-progress",
    ]
    log = env.tmp / "first.stderr"
    with open(log, "wb") as stderr:
        first = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    lock = out.with_name(f".{out.name}.lock")
    try:
        deadline = time.monotonic() + 90
        while not (lock.is_file() and b"pid" in lock.read_bytes()):
            assert first.poll() is None, f"the first train ended: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the first train took no lock within 90 s"
            time.sleep(0.1)
        second = Case(train_argv(env.data, out), (named(out), rf"\b{first.pid}\b"), (env.data,), within=15)
        refused(second, capsys)
        assert first.wait(timeout=300) == 0, log.read_text()[-2000:]
        assert (out / "checkpoint.json").is_file() and main(["evaluate", "--checkpoint", str(out)]) == 0
        assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")) == []
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def failed_train_ids_beyond_table(env: Env) -> Case:
    data = env.copy(env.data, "D")
    n = num_embeddings(data, "C5")
    edit_parquet(data / "train" / PART, "C5", 100, n)
    out = env.out("ckpt")
    return Case(train_argv(data, out), (r"\bC5\b",), (data,), out, worked=True)


def failed_train_overwrite_keeps_the_old_checkpoint(env: Env) -> Case:
    data = env.copy(env.data, "D")
    edit_parquet(data / "train" / PART, "C5", 100, num_embeddings(data, "C5"))
    old = env.copy(env.ckpt, "ckpt")
    return Case(train_argv(data, old, "--overwrite"), (r"\bC5\b",), (data, old), old, worked=True)


def failed_convert_bad_last_row(env: Env) -> Case:
    raw = criteo_tsv(env.tmp / "raw.tsv", tail=b"1\tnot\ta\tcriteo\trow\n")
    out = env.out("criteo")
    argv = ("convert", "criteo", str(raw), "--out", str(out), "--min-count", "2")
    return Case(argv, (named(raw), r"(?:line|row)\D{0,3}200[01]\b"), (raw,), out, worked=True)


def failed_convert_overwrite_keeps_the_old_dataset(env: Env) -> Case:
    old = criteo_dataset(env.tmp / "old")
    raw = criteo_tsv(env.tmp / "raw.tsv", tail=b"1\tnot\ta\tcriteo\trow\n")
    argv = ("convert", "criteo", str(raw), "--out", str(old), "--min-count", "2", "--overwrite")
    return Case(argv, (named(raw), r"(?:line|row)\D{0,3}200[01]\b"), (raw, old), old, worked=True)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(failed_train_ids_beyond_table, id="train on ids beyond their table"),
        pytest.param(failed_train_overwrite_keeps_the_old_checkpoint, id="same, --overwrite a checkpoint"),
        pytest.param(failed_convert_bad_last_row, id="convert criteo, a bad last row", marks=SHARED),
        pytest.param(
            failed_convert_overwrite_keeps_the_old_dataset,
            id="same, --overwrite a dataset",
            marks=SHARED,
        ),
    ],
)
def test_2_a_failed_run_leaves_nothing_at_out(
    build: Callable[[Env], Case], env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(build(env), capsys)


# --- 3. one line for every fault ------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `directory` for the test (root only), unmounted after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    directory.mkdir()
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if run.returncode:
        pytest.skip(f"mount -t tmpfs failed: {run.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path, leave: int) -> None:
    """Fills the file system of `directory` until about `leave` bytes are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def disk_case(env: Env, command: str, out: Path) -> Case:
    if command == "convert":
        return Case(("convert", "synthetic", "--rows", "20000", "--out", str(out)), (named(out),), (), out)
    if command == "train":
        return Case(train_argv(env.data, out), (named(out),), (env.data,), out, worked=True)
    argv = predict_argv(env.ckpt, env.data / "train", out)  # 16,000 rows: more than the space left
    return Case(argv, (named(out),), (env.ckpt, env.data), out)


@pytest.mark.parametrize("command", ["convert", "train", "predict"])
@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_3_a_read_only_or_full_disk_is_one_line_naming_out(
    command: str, fault: str, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(env.tmp / "mnt") as mnt:
        out = mnt / ("p.parquet" if command == "predict" else "out")
        if fault == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            cause = r"read-only"
        else:
            fill(mnt, leave=16 << 10)
            cause = r"no space|disk is full"
        case = disk_case(env, command, out)
        worked = case.worked or fault == "full"  # a full disk is found when writing, after the work
        refused(replace(case, must=(*case.must, cause), worked=worked), capsys)


def predict_out_a_directory(env: Env, *extra: str) -> Case:
    folder = env.out("preds")
    folder.mkdir()
    argv = predict_argv(env.ckpt, env.data / "test", folder, *extra)
    return Case(argv, (named(folder), "directory"), (env.ckpt, env.data), folder)


def schema_sizes_differ(env: Env, command: str) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    n = num_embeddings(ckpt, "C3")
    edit_json(ckpt / "schema.json", lambda s: feature(s, "C3").update(num_embeddings=n + 7))
    must = (r"\bC3\b", number(n), number(n + 7))
    if command == "predict":
        out = env.out("p.parquet")
        return Case(predict_argv(ckpt, env.data / "test", out), must, (ckpt, env.data), out)
    return Case((command, "--checkpoint", str(ckpt)), must, (ckpt, env.data))


def toml_epochs_three(env: Env) -> Case:
    toml = env.tmp / "cfg.toml"
    toml.write_text('[train]\nepochs = "three"\n')
    out = env.out("ckpt")
    argv = ("train", "--data", str(env.data), "--out", str(out), "--config", str(toml))
    return Case(argv, (named(toml), r"\bepochs\b", r"three", r"integer"), (toml, env.data), out)


def bid_episode_length_0(env: Env) -> Case:
    argv = ("bid", "--data", str(env.data / "test"), "--predictor", str(env.ckpt), "--episode-length", "0")
    return Case(argv, (r"--episode-length 0\b",), (env.data, env.ckpt))


def table_of_10_12(env: Env) -> Case:
    data = env.copy(env.data, "D")
    edit_json(data / "schema.json", lambda s: feature(s, "C1").update(num_embeddings=10**12))
    out = env.out("ckpt")
    figure = rf"{number(10**12)}|10\^12|1e\+?12|10\*\*12|{MEMORY}"
    return Case(train_argv(data, out), (r"\bC1\b", figure), (data,), out, within=60, memory_guard=True)


def hidden_units_1e9(env: Env) -> Case:
    out = env.out("ckpt")
    argv = (*train_argv(env.data, out), "--hidden-units", "1000000000")
    must = (rf"hidden[_ -]units|{number(10**9)}", MEMORY)
    return Case(argv, must, (env.data,), out, within=30, memory_guard=True)


def missing_data(env: Env, command: str) -> Case:
    nope = env.tmp / "no-such-data"
    out = env.out("p.parquet" if command == "predict" else "ckpt")
    argv = train_argv(nope, out) if command == "train" else predict_argv(env.ckpt, nope, out)
    return Case(argv, (named(nope),), (env.ckpt,), out)


def missing_checkpoint(env: Env) -> Case:
    nope = env.tmp / "no-such-checkpoint"
    return Case(("evaluate", "--checkpoint", str(nope)), (named(nope),), (env.data,))


def missing_config(env: Env) -> Case:
    nope = env.tmp / "no-such.toml"
    out = env.out("ckpt")
    argv = ("train", "--data", str(env.data), "--out", str(out), "--config", str(nope))
    return Case(argv, (named(nope),), (env.data,), out)


def data_not_parquet(env: Env, command: str) -> Case:
    text = env.tmp / "rows.parquet"
    text.write_text("label,C1\n1,2\n")
    if command == "predict":
        out = env.out("p.parquet")
        return Case(predict_argv(env.ckpt, text, out), (named(text), "parquet"), (text, env.ckpt), out)
    return Case(
        ("evaluate", "--checkpoint", str(env.ckpt), "--data", str(text)),
        (named(text), "parquet"),
        (text, env.ckpt),
    )


def train_split_not_parquet(env: Env) -> Case:
    data = env.copy(env.data, "D")
    bad = data / "train" / PART
    bad.write_text("these are not parquet bytes\n")
    out = env.out("ckpt")
    return Case(train_argv(data, out), (named(bad), "parquet"), (data,), out)


GROUP_3 = [
    pytest.param(predict_out_a_directory, id="predict --out a directory"),
    pytest.param(flagged(predict_out_a_directory, "--overwrite"), id="same, --overwrite"),
    pytest.param(functools.partial(schema_sizes_differ, command="predict"), id="schema vs weights: predict"),
    pytest.param(toml_epochs_three, id='TOML epochs = "three"'),
    pytest.param(bid_episode_length_0, id="bid --predictor --episode-length 0"),
    pytest.param(table_of_10_12, id="a table of 10^12 rows"),
    pytest.param(hidden_units_1e9, id="--hidden-units 1000000000"),
    pytest.param(functools.partial(missing_data, command="train"), id="train --data missing"),
    pytest.param(functools.partial(missing_data, command="predict"), id="predict --data missing"),
    pytest.param(missing_checkpoint, id="evaluate --checkpoint missing"),
    pytest.param(missing_config, id="train --config missing"),
    pytest.param(functools.partial(data_not_parquet, command="predict"), id="predict --data not parquet"),
    pytest.param(functools.partial(data_not_parquet, command="evaluate"), id="evaluate --data not parquet"),
    pytest.param(train_split_not_parquet, id="train on a split file that is not parquet"),
]


@pytest.mark.parametrize("build", GROUP_3)
def test_3_one_line_for_every_fault(
    build: Callable[[Env], Case], env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(build(env), capsys)


# --- 4. strict files ------------------------------------------------------------------------------


def dataset_schema_edited(env: Env, edit: Callable[[dict], object], key: str) -> Case:
    data = env.copy(env.data, "D")
    edit_json(data / "schema.json", edit)
    out = env.out("ckpt")
    return Case(train_argv(data, out), (named(data), r"schema\.json", key), (data,), out)


def schema_dense_misspelt(env: Env) -> Case:
    return dataset_schema_edited(env, lambda s: s.update(dnese=s.pop("dense")), r"\bdnese\b")


def schema_feature_unknown_key(env: Env) -> Case:
    return dataset_schema_edited(env, lambda s: feature(s, "C2").update(vocab_size=5), r"\bvocab_size\b")


def checkpoint_schema_unknown_key(env: Env) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    edit_json(ckpt / "schema.json", lambda s: feature(s, "C2").update(vocab_size=5))
    out = env.out("p.parquet")
    must = (named(ckpt), r"schema\.json", r"\bvocab_size\b")
    return Case(predict_argv(ckpt, env.data / "test", out), must, (ckpt, env.data), out)


def checkpoint_config_edited(env: Env, edit: Callable[[dict], object], must: str, command: str) -> Case:
    ckpt = env.copy(env.ckpt, "ckpt")
    edit_json(ckpt / "config.json", edit)
    found = (named(ckpt / "config.json"), must)
    if command == "predict":
        out = env.out("p.parquet")
        return Case(predict_argv(ckpt, env.data / "test", out), found, (ckpt, env.data), out)
    return Case((command, "--checkpoint", str(ckpt)), found, (ckpt, env.data))


def config_unknown_key(env: Env) -> Case:
    return checkpoint_config_edited(env, lambda c: c.update(colour="red"), r"\bcolour\b", "predict")


def config_string_prior(env: Env) -> Case:
    prior = r"\bprior\b.*0\.22|0\.22.*\bprior\b"
    return checkpoint_config_edited(env, lambda c: c.update(prior={"ctr": "0.22"}), prior, "evaluate")


def config_unknown_train_key(env: Env) -> Case:
    return checkpoint_config_edited(env, lambda c: c["train"].update(epochz=3), r"\bepochz\b", "evaluate")


def config_unknown_ranker_key(env: Env) -> Case:
    typo = r"\bembedding_dimm\b"
    return checkpoint_config_edited(env, lambda c: c["ranker"].update(embedding_dimm=16), typo, "predict")


def dataset_json_unknown_key(env: Env) -> Case:
    data = env.copy(env.data, "D")
    edit_json(data / "dataset.json", lambda d: d.update(colour="red"))
    out = env.out("ckpt")
    return Case(train_argv(data, out), (named(data / "dataset.json"), r"\bcolour\b"), (data,), out)


def toml_file(env: Env, text: str, must: str) -> Case:
    toml = env.tmp / "cfg.toml"
    toml.write_text(text)
    out = env.out("ckpt")
    argv = ("train", "--data", str(env.data), "--out", str(out), "--config", str(toml))
    return Case(argv, (named(toml), must), (toml, env.data), out)


def toml_unknown_key(env: Env) -> Case:
    return toml_file(env, "[train]\nepoch = 1\n", r"\bepoch\b")


def toml_unknown_table(env: Env) -> Case:
    return toml_file(env, "[trian]\nepochs = 1\n", r"\btrian\b")


def toml_unknown_backbone_key(env: Env) -> Case:
    return toml_file(env, "[backbone]\nhidden = [8]\n", r"\bhidden\b")


def foreign_rows(env: Env, command: str) -> Case:
    rows = env.copy(env.foreign / "test" / PART, "copied/rows.parquet")  # no schema.json beside it
    theirs = pq.read_schema(rows).metadata[b"rankers.fingerprint"].decode()
    ours = json.loads((env.ckpt / "checkpoint.json").read_text())["data_fingerprint"]
    assert theirs != ours
    must = (re.escape(theirs), re.escape(ours))
    if command == "predict":
        out = env.out("p.parquet")
        return Case(predict_argv(env.ckpt, rows, out), must, (rows, env.ckpt), out)
    return Case((command, "--checkpoint", str(env.ckpt), "--data", str(rows)), must, (rows, env.ckpt))


GROUP_4 = [
    pytest.param(schema_dense_misspelt, id="dataset schema.json: dense misspelt"),
    pytest.param(schema_feature_unknown_key, id="dataset schema.json: unknown key in a feature"),
    pytest.param(checkpoint_schema_unknown_key, id="checkpoint schema.json: unknown key in a feature"),
    pytest.param(config_unknown_key, id="config.json: unknown key"),
    pytest.param(config_string_prior, id="config.json: a string prior"),
    pytest.param(config_unknown_train_key, id="config.json: unknown key in train"),
    pytest.param(config_unknown_ranker_key, id="config.json: unknown key in ranker"),
    pytest.param(dataset_json_unknown_key, id="dataset.json: unknown key"),
    pytest.param(toml_unknown_key, id="TOML: unknown key in [train]"),
    pytest.param(toml_unknown_table, id="TOML: unknown table"),
    pytest.param(toml_unknown_backbone_key, id="TOML: unknown key in [backbone]"),
    pytest.param(functools.partial(foreign_rows, command="predict"), id="foreign parquet: predict"),
    pytest.param(functools.partial(foreign_rows, command="evaluate"), id="foreign parquet: evaluate"),
    pytest.param(
        functools.partial(schema_sizes_differ, command="evaluate"), id="schema vs weights: evaluate"
    ),
    pytest.param(
        functools.partial(schema_sizes_differ, command="calibrate"), id="schema vs weights: calibrate"
    ),
]


@pytest.mark.parametrize("build", GROUP_4)
def test_4_strict_files(build: Callable[[Env], Case], env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    refused(build(env), capsys)


# --- 5. the API checks what the CLI checks --------------------------------------------------------

BAD_ROWS = {  # name -> (column, value, what the message must name)
    "id = num_embeddings": ("C5", None, r"\bC5\b"),
    "id -1": ("C5", -1, r"\bC5\b"),
    "dense NaN": ("I3", float("nan"), r"\bI3\b"),
    "dense inf": ("I3", float("inf"), r"\bI3\b"),
}


def bad_rows(env: Env, name: str) -> Path:
    column, value, _ = BAD_ROWS[name]
    rows = env.copy(env.data / "test" / PART, f"rows/{PART}")
    return edit_parquet(rows, column, 7, num_embeddings(env.data, column) if value is None else value)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_5_the_cli_refuses_bad_rows_naming_the_column(
    name: str, command: str, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = bad_rows(env, name).parent
    must = (BAD_ROWS[name][2],)
    if command == "predict":
        out = env.out("p.parquet")
        refused(Case(predict_argv(env.ckpt, rows, out), must, (rows, env.ckpt), out), capsys)
    else:
        argv = ("evaluate", "--checkpoint", str(env.ckpt), "--data", str(rows))
        refused(Case(argv, must, (rows, env.ckpt)), capsys)


@pytest.fixture(scope="module")
def predictor(trained: Path) -> Predictor:
    return Predictor.load(trained)


@pytest.mark.parametrize("given", ["path", "table", "iter_proba"])
@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_5_the_predictor_refuses_bad_rows_naming_the_column(
    name: str, given: str, env: Env, predictor: Predictor
) -> None:
    path = bad_rows(env, name)
    before = snapshot(path)
    with pytest.raises(ValueError) as caught:
        if given == "path":
            predictor.predict_proba(path)
        elif given == "table":
            predictor.predict_proba(pq.read_table(path))
        else:
            list(predictor.iter_proba(path.parent))
    assert re.search(BAD_ROWS[name][2], str(caught.value)), str(caught.value)
    assert snapshot(path) == before


# --- 6. no NaN or diverged result passed off as good ----------------------------------------------


LOSS = r"\bloss\b.*(?:non-?finite|\bnan\b|\binf)"  # the loss named, and that it is not finite


def diverging(env: Env, *rates: str, must: str = LOSS) -> Case:
    out = env.out("ckpt")
    return Case(train_argv(env.data, out, *rates), (must,), (env.data,), out, worked=True)


def bid(env: Env, *flags: str) -> Case:
    missing = ("--data", str(env.tmp / "no-data"), "--predictor", str(env.tmp / "no-checkpoint"))
    return Case(("bid", *missing, *flags), (re.escape(" ".join(flags)) + r"(?![\w.])",), ())


def bid_predictor(env: Env, *flags: str) -> Case:
    argv = ("bid", "--data", str(env.data / "test"), "--predictor", str(env.ckpt), *flags)
    return Case(argv, (re.escape(" ".join(flags)) + r"(?![\w.])",), (env.data, env.ckpt))


GROUP_6 = [
    pytest.param(
        flagged(diverging, "--lr", "1e30", "--embedding-lr", "1e30"),
        id="train --lr 1e30 --embedding-lr 1e30",
    ),
    pytest.param(  # refused as a rate, or stopped by the loss check
        lambda env: diverging(env, "--lr", "inf", must=rf"\blr\b.*\binf\b|{LOSS}"), id="train --lr inf"
    ),
    pytest.param(
        lambda env: diverging(env, "--embedding-lr", "nan", must=r"embedding[-_]lr\b.*\bnan\b"),
        id="train --embedding-lr nan",
    ),
    pytest.param(flagged(bid, "--value", "nan"), id="bid --value nan"),
    pytest.param(flagged(bid, "--value", "inf"), id="bid --value inf"),
    pytest.param(flagged(bid, "--cap", "-5"), id="bid --cap -5"),
    pytest.param(flagged(bid, "--cap", "nan"), id="bid --cap nan"),
    pytest.param(flagged(bid, "--budget", "-1"), id="bid --budget -1"),
    pytest.param(flagged(bid, "--budget", "inf"), id="bid --budget inf"),
    pytest.param(flagged(bid, "--episode-length", "0"), id="bid --episode-length 0"),
    pytest.param(flagged(bid_predictor, "--value", "nan"), id="bid --predictor --value nan"),
    pytest.param(flagged(bid_predictor, "--cap", "-5"), id="bid --predictor --cap -5"),
]


@pytest.mark.parametrize("build", GROUP_6)
def test_6_no_nan_passed_off(
    build: Callable[[Env], Case], env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(build(env), capsys)


@pytest.mark.parametrize("command", ["predict", "evaluate", "calibrate"])
def test_6_nan_model_output_is_refused_naming_the_task(
    command: str, env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose weights load as NaN (every parameter set to NaN after loading)."""
    import torch

    from rankers.checkpoint import CheckpointDir

    real = CheckpointDir.load_weights

    def nan_weights(self: CheckpointDir, model: torch.nn.Module, no_dist: bool = False) -> None:
        real(self, model, no_dist)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))

    monkeypatch.setattr(CheckpointDir, "load_weights", nan_weights)
    ckpt = env.copy(env.ckpt, "ckpt")
    must = (r"\bctr\b",)
    if command == "predict":
        out = env.out("p.parquet")
        case = Case(predict_argv(ckpt, env.data / "test", out), must, (ckpt, env.data), out)
    elif command == "evaluate":
        case = Case(("evaluate", "--checkpoint", str(ckpt)), must, (ckpt, env.data))
    else:
        case = Case(("calibrate", "--checkpoint", str(ckpt), "--force"), must, (ckpt, env.data))
    refused(case, capsys)
