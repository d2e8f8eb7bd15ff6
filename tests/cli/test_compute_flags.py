"""`--threads`, `--batch-size` and `--device` on the commands that score rows (evaluate, predict,
calibrate, bid), and `rankers evaluate` reporting calibrated and raw metrics of a calibrated
checkpoint."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rankers.cli import build_parser, main
from rankers.cli._compute import BATCH_SIZE

COMMANDS = ("evaluate", "calibrate", "bid")


def _helps(command: str) -> dict[str, str]:
    """The help of each flag of `rankers COMMAND`, by flag."""
    action = next(a for a in build_parser([command])._actions if isinstance(a, argparse._SubParsersAction))
    sub = action.choices[command]
    return {flag: str(a.help) for a in sub._actions for flag in a.option_strings}


@pytest.mark.parametrize("command", COMMANDS)
def test_scoring_commands_take_threads_and_batch_size_with_help(command: str) -> None:
    helps = _helps(command)
    assert helps["--threads"].startswith("torch intra-op threads used to score rows, >= 0 (0: keep")
    assert helps["--threads"].endswith("(default: %(default)s)")
    assert helps["--batch-size"].startswith("rows scored per forward pass")
    assert ">= 1" in helps["--batch-size"] and helps["--batch-size"].endswith("(default: %(default)s)")
    required = ["--data", "d"] if command == "bid" else ["--checkpoint", "c"]
    args = build_parser([command]).parse_args([command, *required])
    assert (args.threads, args.batch_size) == (0, BATCH_SIZE)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "-1", "--threads -1: expected an integer >= 0"),
        ("--batch-size", "0", "--batch-size 0: expected an integer >= 1"),
        ("--batch-size", "-5", "--batch-size -5: expected an integer >= 1"),
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_value_is_refused_naming_the_flag_before_anything_is_read(
    command: str, flag: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = "--data" if command == "bid" else "--checkpoint"
    assert main([command, where, str(tmp_path / "none"), flag, value]) == 2  # no such directory either
    err = capsys.readouterr().err
    assert err.startswith(f"rankers: error: {message}"), err


def test_the_batch_size_default_is_the_predictors() -> None:
    from rankers.bidding.calibration import calibrate
    from rankers.bidding.evaluate import split_episodes
    from rankers.bidding.fit import CalibrateOptions
    from rankers.bidding.run import BidConfig
    from rankers.evaluation import calibrated_and_raw
    from rankers.predictor import Predictor

    for method in (
        Predictor.predict_proba,
        Predictor.evaluate,
        Predictor.predict_labeled,
        Predictor.iter_proba,
    ):
        assert inspect.signature(method).parameters["batch_size"].default == BATCH_SIZE, method
    for function in (calibrate, split_episodes, calibrated_and_raw):
        assert inspect.signature(function).parameters["batch_size"].default == BATCH_SIZE, function
    assert CalibrateOptions().batch_size == BidConfig(data="").batch_size == BATCH_SIZE


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small synthetic dataset (teacher figures included) and an MLP trained on it one epoch,
    with a Platt calibration (forced where the check refuses it on these few rows)."""
    from features.datasets.synthetic import SyntheticConfig, write_synthetic

    out = tmp_path_factory.mktemp("compute")
    data = write_synthetic(
        out / "data", SyntheticConfig(rows=6000, max_vocab=200, min_count=5), progress=False
    )
    ckpt = out / "mlp"
    train = ["--data", str(data), "--out", str(ckpt), "--epochs", "1", "--batch-size", "512"]
    assert main(["train", *train, "--hidden-units", "16", "--no-progress"]) == 0
    assert (ckpt / "checkpoint.json").is_file()
    return data, ckpt


@pytest.fixture
def threads_kept() -> Iterator[int]:
    """torch's intra-op threads, set back after the test."""
    import torch

    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every `Predictor.predict_labeled` call made during the test."""
    from rankers.predictor import Predictor

    real, seen = Predictor.predict_labeled, []

    def recorded(self: Predictor, rows: Any, batch_size: int = BATCH_SIZE, raw: bool = False) -> Any:
        seen.append(batch_size)
        return real(self, rows, batch_size, raw)

    monkeypatch.setattr(Predictor, "predict_labeled", recorded)
    return seen


def _rows(out: str) -> dict[str, list[str]]:
    """The results table's rows by model name (the rest of each row's cells)."""
    lines = [line for line in out.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {c[0]: c[1:] for c in cells}


def test_evaluate_and_calibrate_score_with_the_threads_and_batch_size_given(
    calibrated: tuple[Path, Path],
    threads_kept: int,
    batch_sizes: list[int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    _, ckpt = calibrated
    wanted = 3 if threads_kept != 3 else 2
    assert main(["evaluate", "--checkpoint", str(ckpt), "--threads", str(wanted), "--batch-size", "7"]) == 0
    assert torch.get_num_threads() == wanted and batch_sizes == [7]
    small = _rows(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0  # --threads 0 keeps the setting
    assert torch.get_num_threads() == wanted and batch_sizes == [7, BATCH_SIZE]
    assert _rows(capsys.readouterr().out) == small  # 4 decimals: the same figures from batches of 7
    calibrate = ["calibrate", "--checkpoint", str(ckpt), "--method", "platt", "--threads", "1"]
    assert main([*calibrate, "--batch-size", "300", "--force"]) == 0
    assert torch.get_num_threads() == 1 and batch_sizes[2:] == [300, 300]  # valid, then test


def test_bid_scores_with_the_batch_size_given(
    calibrated: tuple[Path, Path], batch_sizes: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    data, ckpt = calibrated
    if not (ckpt / "calibration.json").is_file():
        assert main(["calibrate", "--checkpoint", str(ckpt), "--method", "platt", "--force"]) == 0
    batch_sizes.clear()
    argv = ["bid", "--data", str(data / "test"), "--predictor", str(ckpt), "--episode-length", "50"]
    assert main([*argv, "--batch-size", "33"]) == 0, capsys.readouterr().err
    assert batch_sizes == [33] and "hindsight optimum" in capsys.readouterr().out


def test_evaluate_reports_calibrated_and_raw_rows_from_one_pass(
    calibrated: tuple[Path, Path], batch_sizes: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    from rankers.evaluation import calibrated_and_raw
    from rankers.predictor import Predictor

    data, ckpt = calibrated
    (ckpt / "calibration.json").unlink(missing_ok=True)
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "the checkpoint holds no calibration" in out  # as before: one row of the model's own
    assert list(_rows(out)) == ["checkpoint", "constant prior", "teacher (best achievable)"]

    assert main(["calibrate", "--checkpoint", str(ckpt), "--method", "platt", "--force"]) == 0
    capsys.readouterr()
    batch_sizes.clear()
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert batch_sizes == [BATCH_SIZE]  # the model scores the rows once for both rows
    assert f"probabilities calibrated by {ckpt / 'calibration.json'} (ctr platt), and the model's own" in out
    rows = _rows(out)
    names = ["checkpoint, calibrated", "checkpoint, raw", "constant prior", "teacher (best achievable)"]
    assert list(rows) == names
    predictor = Predictor.load(ckpt)
    for name, raw in (("checkpoint, calibrated", False), ("checkpoint, raw", True)):
        m = predictor.evaluate(data / "test", raw=raw)["ctr"]
        assert rows[name][:4] == ["test", "ctr", f"{m['auc']:.4f}", f"{m['logloss']:.4f}"], name
        assert rows[name][4] != "-"  # lift vs teacher, on each model row
    assert rows["checkpoint, calibrated"][3] != rows["checkpoint, raw"][3]  # Platt moved the LogLoss

    assert main(["evaluate", "--checkpoint", str(ckpt), "--raw"]) == 0
    out = capsys.readouterr().out
    assert "the model's own probabilities (--raw" in out
    assert _rows(out)["checkpoint"] == rows["checkpoint, raw"] and "checkpoint, calibrated" not in out

    both = calibrated_and_raw(predictor, data / "test", batch_size=5)
    assert list(both) == ["calibrated", "raw"]
    for kind, raw in (("calibrated", False), ("raw", True)):
        expected = predictor.evaluate(data / "test", raw=raw)["ctr"]
        assert both[kind]["ctr"]["auc"] == pytest.approx(expected["auc"], abs=1e-6)
        assert both[kind]["ctr"]["logloss"] == pytest.approx(expected["logloss"], abs=1e-6)
    assert list(calibrated_and_raw(predictor, data / "test", raw=True)) == ["raw"]


def test_results_table_puts_other_models_after_the_model_each_with_its_lift() -> None:
    from rankers.results import results_table

    def m(auc: float, logloss: float) -> dict[str, Any]:
        return {"auc": auc, "logloss": logloss, "prior_logloss": 0.5}

    result = {"test": {"ctr": m(0.7, 0.4)}, "teacher": {"test": {"auc": 0.9, "logloss": 0.3}}}
    table = results_table(result, "a", ("test",), others={"b": {"test": {"ctr": m(0.6, 0.45)}}})
    lines = table.splitlines()
    assert lines[2] == "| a | test | ctr | 0.7000 | 0.4000 | 0.5000 |"
    assert lines[3] == "| b | test | ctr | 0.6000 | 0.4500 | 0.2500 |"
    assert lines[4] == "| constant prior | test | ctr | 0.5000 | 0.5000 | - |"
    assert lines[5] == "| teacher (best achievable) | test | ctr | 0.9000 | 0.3000 | - |"
    assert results_table(result, "a", ("test",)) == "\n".join(lines[:3] + lines[4:])


SCORING = (*COMMANDS, "predict")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


def _required(command: str, tmp_path: Path) -> list[str]:
    """The required flags of `rankers COMMAND`, naming paths that do not exist."""
    if command == "bid":
        return ["--data", str(tmp_path / "none")]
    more = (
        ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "p.parquet")] if command == "predict" else []
    )
    return ["--checkpoint", str(tmp_path / "none"), *more]


@pytest.mark.parametrize("command", SCORING)
def test_scoring_commands_take_a_device_auto_by_default_with_help(command: str, tmp_path: Path) -> None:
    help_ = _helps(command)["--device"]
    assert help_.startswith("where the model scores rows: auto (cuda where torch sees a GPU, else cpu), cpu")
    assert "cuda:N" in help_ and help_.endswith("(default: %(default)s)")
    args = build_parser([command]).parse_args([command, *_required(command, tmp_path)])
    assert args.device == "auto"


@NO_GPU
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cuda", "device 'cuda': torch "),
        ("cuda:1", "device 'cuda:1': torch "),
        ("tpu", "device 'tpu': expected one of ('auto', 'cpu', 'cuda') or cuda:N"),
    ],
)
@pytest.mark.parametrize("command", SCORING)
def test_a_device_this_machine_lacks_is_refused_in_one_line_before_anything_is_read(
    command: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *_required(command, tmp_path), "--device", value]) == 2  # no such paths either
    err = capsys.readouterr().err
    assert err.startswith(f"rankers: error: {message}"), err
    assert err.count("\n") == 1
    if value.startswith("cuda"):
        assert "sees no GPU on this machine; expected --device cpu or auto" in err


@pytest.fixture
def devices(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The device of every `Predictor.load` made during the test."""
    from rankers.predictor import Predictor

    real, seen = Predictor.load.__func__, []  # type: ignore[attr-defined]

    def recorded(cls: type[Predictor], path: Any, device: Any = "cpu") -> Predictor:
        seen.append(device)
        return real(cls, path, device)

    monkeypatch.setattr(Predictor, "load", classmethod(recorded))
    return seen


def test_predict_on_cpu_given_explicitly_writes_what_the_default_writes(
    calibrated: tuple[Path, Path], devices: list[object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    data, ckpt = calibrated
    predict = ["predict", "--checkpoint", str(ckpt), "--data", str(data / "test")]
    assert main([*predict, "--out", str(tmp_path / "cpu.parquet"), "--device", "cpu"]) == 0
    assert main([*predict, "--out", str(tmp_path / "auto.parquet")]) == 0  # --device auto
    capsys.readouterr()
    auto = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert devices == [torch.device("cpu"), auto]
    if not torch.cuda.is_available():  # the same device: the same probabilities, bit for bit
        assert pq.read_table(tmp_path / "cpu.parquet").equals(pq.read_table(tmp_path / "auto.parquet"))


def test_evaluate_calibrate_and_bid_load_the_predictor_on_the_device_given(
    calibrated: tuple[Path, Path], devices: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    data, ckpt = calibrated
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    calibrate = ["calibrate", "--checkpoint", str(ckpt), "--method", "platt", "--force"]
    assert main([*calibrate, "--device", "cpu"]) == 0
    bid = ["bid", "--data", str(data / "test"), "--predictor", str(ckpt), "--episode-length", "50"]
    assert main([*bid, "--device", "cpu"]) == 0, capsys.readouterr().err
    assert devices == [torch.device("cpu"), torch.device("cpu"), "cpu"]  # bid: BidConfig.device as given
