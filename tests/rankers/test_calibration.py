"""Calibration (isotonic, Platt), its sigma, ECE, and calibrated bid values from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rankers.bidding.calibration import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    fit_task,
    logit,
)
from rankers.bidding.values import bid_values, values_from_probs
from rankers.cli import main
from rankers.predictor import Predictor


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True rates (logit-normal around 5%), 0/1 outcomes, and an overconfident model's scores."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-3.0, 1.0, n)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < p).astype(np.float64)
    score = 1 / (1 + np.exp(-(1.8 * z + 1.5)))  # too spread and too high
    return p, y, score


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_lowers_the_ece_of_a_miscalibrated_model_on_new_rows(method: str) -> None:
    _, y_fit, s_fit = _miscalibrated(50_000, 0)
    _, y, s = _miscalibrated(50_000, 1)
    cal = fit_task(s_fit, y_fit, method)
    before, after = expected_calibration_error(s, y), expected_calibration_error(cal.transform(s), y)
    assert before > 0.02 and after < before / 5, (before, after)  # base rate about 6%


def test_sigma_covers_held_out_bin_rates_about_68_percent_and_grows_where_data_is_scarce() -> None:
    """Bins of the calibrated value on new rows: the observed rate of a bin lies within one combined
    sigma (the fit's sigma and the new bin's own binomial error) of its mean value about 68% of
    the time. And the tail bins, fitted on few rows, carry a larger sigma than a middle bin at
    the same value would."""
    _, y_fit, s_fit = _miscalibrated(20_000, 2)
    cal = fit_task(s_fit, y_fit, "isotonic", bins=20)
    inside, total = 0, 0
    for seed in range(3, 13):
        _, y, s = _miscalibrated(20_000, seed)
        v = cal.transform(s)
        sigma = cal.sigma(v)
        order = np.argsort(v, kind="stable")
        for part in np.array_split(order, 40):
            vb, yb = v[part].mean(), y[part].mean()
            combined = np.sqrt(np.mean(sigma[part]) ** 2 + vb * (1 - vb) / len(part))
            inside += abs(yb - vb) <= combined
            total += 1
    assert 0.55 <= inside / total <= 0.82, inside / total
    counts = np.asarray(cal.counts)
    n = counts[np.searchsorted(cal.edges, logit(np.array(0.05)))]
    smoothed = (0.05 * n + 1) / (n + 2)
    assert cal.sigma(np.full(1, 0.05))[0] == pytest.approx(np.sqrt(smoothed * (1 - smoothed) / n))
    assert counts[-1] < counts.max() / 5  # the top bin holds few rows ...
    top = cal.sigma(np.array([0.9]))[0] / np.sqrt(0.9 * 0.1)
    assert top > 2 / np.sqrt(n)  # ... so a value there is less certain than the same value mid-range


def test_conversion_values_multiply_ctr_and_cvr_with_the_delta_method_sigma() -> None:
    probs = {"ctr": np.array([0.1, 0.2]), "cvr": np.array([0.5, 0.25])}
    sigmas = {"ctr": np.array([0.01, 0.02]), "cvr": np.array([0.1, 0.05])}
    v = values_from_probs(probs, sigmas, "conversion")
    assert v.value.tolist() == pytest.approx([0.05, 0.05])
    assert v.sigma.tolist() == pytest.approx(
        [np.hypot(0.5 * 0.01, 0.1 * 0.1), np.hypot(0.25 * 0.02, 0.2 * 0.05)]
    )
    assert (
        values_from_probs({**probs, "ctcvr": np.array([0.04, 0.06])}, {**sigmas, "ctcvr": np.zeros(2)}).value[
            1
        ]
        == 0.06
    )
    with pytest.raises(
        ValueError, match=r"goal 'conversion' needs ctcvr, or ctr and cvr tasks; the predictor has \['ctr'\]"
    ):
        values_from_probs({"ctr": probs["ctr"]}, sigmas, "conversion")


@pytest.mark.shared_data
def test_calibrate_a_criteo_checkpoint_lowers_test_ece_and_gives_bid_values(
    criteo_8k_2k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ck"
    flags = ["--epochs", "3", "--batch-size", "256", "--embedding-lr", "0.02", "--no-progress"]
    assert main(["train", "--data", str(criteo_8k_2k), "--out", str(ckpt), *flags]) == 0
    with pytest.raises(ValueError, match="no calibration in the checkpoint"):
        bid_values(Predictor.load(ckpt), criteo_8k_2k / "test", goal="click")
    assert main(["calibrate", "--checkpoint", str(ckpt)]) == 0
    assert "| task | rows | ECE raw | ECE calibrated |" in capsys.readouterr().out
    predictor = Predictor.load(ckpt)
    assert isinstance(predictor.calibration, Calibration)
    saved = json.loads((ckpt / "calibration.json").read_text())
    assert saved["ctr"]["method"] == "isotonic"
    probs, labels, _ = predictor.predict_labeled(criteo_8k_2k / "test", raw=True)
    calibrated, _, _ = predictor.predict_labeled(criteo_8k_2k / "test")
    assert calibrated["ctr"] == pytest.approx(predictor.calibration.transform(probs)["ctr"])
    raw = expected_calibration_error(probs["ctr"], labels["ctr"])
    cal = expected_calibration_error(predictor.calibration.transform(probs)["ctr"], labels["ctr"])
    assert cal < raw, (raw, cal)
    values = bid_values(predictor, criteo_8k_2k / "test", goal="click", value_per_conversion=2.0)
    assert len(values) == len(labels["ctr"]) and (values.sigma > 0).all()
    assert values.value == pytest.approx(2 * predictor.calibration.transform(probs)["ctr"])
    with pytest.raises(ValueError, match=r"needs ctcvr, or ctr and cvr tasks; the predictor has \['ctr'\]"):
        bid_values(predictor, criteo_8k_2k / "test")
    assert fit_calibration(probs, labels).tasks.keys() == {"ctr"}


@pytest.mark.shared_data
def test_bid_cli_on_ipinyou_and_on_a_calibrated_predictor(
    synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rankers bid` prints the outcome table: iPinYou logs with a target CPA (AuctionNet score),
    and a synthetic test split scored by a calibrated checkpoint under the log-normal market."""
    from tests.conftest import shared_file

    campaigns = shared_file("ipinyou/campaigns/2997.validation.txt").parent
    args = ["bid", "--data", str(campaigns), "--campaign", "2997", "--agent", "paced,cpa", "--cpa", "20000"]
    assert main([*args, "--cap", "300", "--value", "50000"]) == 0
    out = capsys.readouterr().out
    assert "| data | budget | agent | conversions | expected | of_optimum |" in out
    assert "| budget_used | roi | score |" in out
    assert "| 2997 | 7,877 | paced |" in out and "| 2997 | 7,877 | hindsight optimum |" in out
    assert main(["bid", "--data", str(campaigns), "--campaign", "2997", "--agent", "cpa"]) == 2
    assert "agent 'cpa' needs a target CPA (--cpa)" in capsys.readouterr().err

    ckpt = tmp_path / "ck"
    flags = ["--epochs", "1", "--batch-size", "512", "--no-progress"]
    assert main(["train", "--data", str(synthetic_small), "--out", str(ckpt), *flags]) == 0
    bid = [
        "bid",
        "--data",
        str(synthetic_small / "test"),
        "--predictor",
        str(ckpt),
        "--episode-length",
        "200",
    ]
    assert main(bid) == 2
    assert "no calibration (run `rankers calibrate --checkpoint DIR` first)" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(bid) == 0
    out = capsys.readouterr().out
    for agent in ("constant", "linear", "paced", "hindsight optimum"):
        assert f"| {agent} |" in out and "| test | " in out
    assert main([*bid[:-1], "1500"]) == 2  # 2,000 test rows: one episode of 1,500
    assert "1 episode(s); the agents are tuned on the first half of two or more" in capsys.readouterr().err


def test_the_reliability_plot_is_written_as_png(tmp_path: Path) -> None:
    from rankers.bidding.calibration import plot_reliability, reliability

    pytest.importorskip("matplotlib", reason="plots are the optional `plots` extra")
    _, y, s = _miscalibrated(5000, 4)
    cal = fit_task(s, y).transform(s)
    task = {"ece_raw": 0.03, "ece_calibrated": 0.004}
    task |= {"reliability_raw": reliability(s, y), "reliability_calibrated": reliability(cal, y)}
    path = plot_reliability({"tasks": {"ctr": task}}, tmp_path / "r.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
