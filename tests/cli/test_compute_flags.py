"""`--threads` and `--batch-size` on the commands that score rows (evaluate, calibrate, bid), and
`rankers evaluate` reporting calibrated and raw metrics of a calibrated checkpoint."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
