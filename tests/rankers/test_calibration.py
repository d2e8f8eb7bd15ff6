"""Calibration (isotonic, Platt), its sigma, ECE, and calibrated bid values from a checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rankers.bidding.calibration import (
    Calibration,
    HeldOut,
    calibrate,
    fit_calibration,
    fit_task,
    held_out,
    logit,
)
from rankers.bidding.reliability import expected_calibration_error, report_markdown
from rankers.bidding.values import bid_values, values_from_probs
from rankers.cli import main
from rankers.predictor import Predictor
from tests.conftest import shared_file


def _task_rows(report: str) -> dict[str, dict[str, str]]:
    """The cells of a calibration report's first table, by task and column."""
    lines = report[report.index("| task |") :].split("\n\n")[0].splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    return {r["task"]: r for r in rows}


def _figures(cell: str) -> tuple[float, float]:
    raw, calibrated = cell.split(" -> ")
    return float(raw), float(calibrated)


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


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_map_never_reverses_the_ranking_of_scores_ranked_against_the_labels(method: str) -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.05, 0.95, 4000)
    labels = (rng.random(4000) < 1 - scores).astype(np.int8)  # higher score, fewer positives
    calibrated = fit_task(scores, labels, method).transform(np.sort(scores))
    assert np.all(np.diff(calibrated) >= 0)  # monotone: at best flat, never decreasing
    if method == "platt":  # flat at the base rate
        np.testing.assert_allclose(calibrated, labels.mean(), rtol=1e-6)


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


def test_values_never_reach_0_or_1_where_plain_isotonic_steps_are_0_and_1(tmp_path: Path) -> None:
    """A step holding n rows and k positives is smoothed to (k + 2r) / (n + 2), r the base rate; Platt
    is clipped to the bounds of a step holding every row."""
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(5)
    p = rng.random(1000)
    y = np.where(p < 0.3, 0.0, np.where(p > 0.9, 1.0, (rng.random(1000) < 0.3).astype(np.float64)))
    plain = IsotonicRegression(out_of_bounds="clip").fit(p, y).predict(p)
    assert plain.min() == 0 and plain.max() == 1  # what the map used to save
    r = y.mean()
    cal = fit_task(p, y)
    v = cal.transform(np.concatenate([p, [0.0, 1.0]]))
    assert 0 < cal.low <= v.min() and v.max() <= cal.high < 1
    assert cal.low == pytest.approx(2 * r / 1002) and cal.high == pytest.approx(1 - 2 * (1 - r) / 1002)
    n0, n1 = (plain == 0).sum(), (plain == 1).sum()
    assert cal.transform(np.array([0.0, 1.0])) == pytest.approx([2 * r / (n0 + 2), (n1 + 2 * r) / (n1 + 2)])
    separable = (p > 0.5).astype(np.float64)  # a steep logistic, whose ends underflow to 0 and 1
    platt, r = fit_task(p, separable, "platt"), separable.mean()
    assert platt.transform(np.array([0.0, 1.0])).tolist() == [platt.low, platt.high]
    assert [platt.low, platt.high] == pytest.approx([2 * r / 1002, 1 - 2 * (1 - r) / 1002])
    Calibration({"ctr": cal}).save(tmp_path)
    loaded = Calibration.load(tmp_path)
    assert loaded is not None and loaded.tasks["ctr"] == cal


def test_the_check_needs_the_minimum_positives_and_negatives_and_no_worse_held_out_ece() -> None:
    assert HeldOut("ctr", 800, 167, 5, 0.0297, 0.0211).refusal() is None
    assert HeldOut("ctr", 800, 167, 5, 0.0297, 0.0297).refusal() is None  # not worse
    assert HeldOut("ctr", 800, 167, 5, 0.0297, 0.0359).refusal() == (
        "ctr: 800 rows, 167 positives, 633 negatives, held-out ECE worse: 0.02970 raw -> 0.03590 calibrated"
    )
    assert HeldOut("cvr", 4, 1, 0).refusal() == (
        "cvr: 4 rows, 1 positives, 3 negatives, below the minimum of 50 positives and 50 negatives"
    )
    assert HeldOut("ctr", 800, 780, 5, 0.03, 0.02).refusal(10, 30) == (
        "ctr: 800 rows, 780 positives, 20 negatives, below the minimum of 10 positives and 30 negatives"
    )
    assert HeldOut("ctr", 800, 40, 5, 0.03, 0.02).refusal(10, 30) is None
    assert HeldOut("ctr", 3, 1, 0).problems(1, 1) == [
        "held-out ECE not measured (two folds need 2 rows of each class)"
    ]


class _Scored:
    """A stand-in Predictor: the same raw probabilities and labels for any rows."""

    def __init__(self, probs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        self.probs, self.labels = probs, labels

    def predict_labeled(
        self, rows: str | Path, batch_size: int = 65_536, raw: bool = False
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], None]:
        assert raw, "calibration is fitted on the model's own probabilities"
        return self.probs, self.labels, None


def _calibrated_levels(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3,000 rows at ten scores k/20, each level's rows converting at exactly its score."""
    p = np.repeat(np.arange(1, 11) / 20, 300)
    y = np.concatenate([np.arange(300) < 15 * k for k in range(1, 11)]).astype(np.float64)
    order = rng.permutation(3000)
    return p[order], y[order]


def test_a_map_that_worsens_held_out_ece_of_an_already_calibrated_score_is_refused() -> None:
    """Scores already exactly calibrated (raw ECE 0): a map fitted on 4/5 of the rows can only add
    error on the fifth, so held-out ECE gets worse and calibrate refuses; a miscalibrated score passes."""
    p, y = _calibrated_levels(np.random.default_rng(0))
    check, values = held_out("ctr", p, y)
    assert check.ece_raw == pytest.approx(0, abs=1e-12) and check.ece_calibrated > 1e-3
    assert values is not None and values.shape == p.shape and check.folds == 5
    refusal = (
        "ctr: 3,000 rows".replace(",", "")
        + ", 825 positives, 2175 negatives, held-out ECE worse: 0.00000 raw"
    )
    with pytest.raises(ValueError, match=re.escape(f"calibration refused, nothing saved: {refusal}")):
        calibrate(_Scored({"ctr": p}, {"ctr": y}), "valid", method="isotonic")
    with pytest.raises(ValueError, match="held-out ECE worse"):
        calibrate(_Scored({"ctr": p}, {"ctr": y}), "valid", method="platt")
    # auto keeps the model's own probabilities where no map lowers the held-out ECE
    kept, report = calibrate(_Scored({"ctr": p}, {"ctr": y}), "valid")
    assert report["status"] == "saved" and report["tasks"]["ctr"]["method"] == "identity"
    assert set(report["tasks"]["ctr"]["candidates"]) == {"isotonic", "platt", "identity"}
    assert min(report["tasks"]["ctr"]["candidates"].values()) >= report["tasks"]["ctr"]["heldout_ece_raw"]
    assert (
        kept.tasks["ctr"].transform(p) == pytest.approx(p)
        and "map" in _task_rows(report_markdown(report))["ctr"]
    )
    _, y_fit, s_fit = _miscalibrated(20_000, 6)
    calibration, report = calibrate(_Scored({"ctr": s_fit}, {"ctr": y_fit}), "valid", "test")
    task = report["tasks"]["ctr"]
    assert report["status"] == "saved" and task["check"] == "passed"
    assert task["heldout_ece_calibrated"] < task["heldout_ece_raw"] / 5 and task["folds"] == 5
    assert task["test_ece_raw"] == pytest.approx(task["heldout_ece_raw"])  # the stand-in scores the same rows
    assert task["test_ece_calibrated"] < task["heldout_ece_calibrated"]  # in-sample there
    assert set(calibration.tasks) == {"ctr"}


def test_one_task_failing_the_check_refuses_the_whole_save_unless_forced() -> None:
    """cvr is fitted on the clicked rows only: 30 conversions among them is below the minimum. The
    error names cvr and its counts, not ctr; forced, both are fitted and the report says so."""
    _, click, s = _miscalibrated(20_000, 7)
    clicked = np.flatnonzero(click)
    conversion = np.zeros_like(click)
    conversion[clicked[:30]] = 1
    probs = {"ctr": s, "cvr": np.random.default_rng(8).uniform(0.01, 0.2, len(s))}
    scored = _Scored(probs, {"ctr": click, "cvr": conversion})
    counts = f"cvr: {len(clicked)} rows, 30 positives, {len(clicked) - 30} negatives"
    with pytest.raises(ValueError, match=re.escape(counts)) as refused:
        calibrate(scored, "valid")
    message = str(refused.value)
    assert "ctr:" not in message and "\n" not in message and message.endswith("(--force saves it anyway)")
    assert "below the minimum of 50 positives and 50 negatives" in message
    calibrate(scored, "valid", min_positives=30)  # the minimum is settable
    calibration, report = calibrate(scored, "valid", force=True)
    assert set(calibration.tasks) == {"ctr", "cvr"} and report["status"] == "forced"
    assert report["tasks"]["ctr"]["check"] == "passed"
    assert report["tasks"]["cvr"]["check"].startswith("forced: below the minimum of 50 positives")
    assert report["tasks"]["cvr"]["rows"] == len(clicked) and report["tasks"]["cvr"]["positives"] == 30
    text = report_markdown(report)
    assert "saved with --force although tasks failed the check" in text and "5-fold" in text
    assert _task_rows(text)["cvr"]["rows"] == f"{len(clicked):,}"
    none = _Scored(probs, {"ctr": click, "cvr": np.zeros_like(click)})
    with pytest.raises(ValueError, match=rf"cannot calibrate cvr: {len(clicked)} rows, 0 positives"):
        calibrate(none, "valid", force=True)  # nothing to fit a map on, even forced


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"folds": 1}, "folds=1: expected 2 or more"),
        ({"method": "beta"}, "calibration method 'beta': expected one of"),
        ({"min_positives": -1}, "minimums -1 positives, 50 negatives: expected >= 0"),
    ],
)
def test_calibrate_names_a_bad_option(options: dict[str, object], message: str) -> None:
    p, y = _calibrated_levels(np.random.default_rng(1))
    with pytest.raises(ValueError, match=re.escape(message)):
        calibrate(_Scored({"ctr": p}, {"ctr": y}), "valid", **options)  # type: ignore[arg-type]


def test_every_calibrate_flag_says_what_it_does_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text[text.index("options:") :]
    for flag, default in [
        ("--method {auto,isotonic,platt,identity}", "auto"),
        ("--bins N", "20"),
        ("--folds K", "5"),
        ("--min-positives N", "50"),
        ("--min-negatives N", "50"),
        ("--force", "refuse"),
    ]:
        assert re.search(rf"{re.escape(flag)} (?:(?! --).)+ \(default: {default}\)", options), flag


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
def test_criteo_calibration_never_worsens_held_out_ece_and_a_worse_map_is_refused_unless_forced(
    criteo_8k_2k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model is about as calibrated as its 800 valid rows can show (held-out ECE near what label
    noise alone gives). The default (auto) saves the map with the lowest held-out ECE, never above
    the raw one; asked for isotonic, whose map worsens it there, calibrate refuses and leaves the
    saved calibration as it was; --force saves it, says so, and its values stay inside (0, 1)."""
    ckpt = tmp_path / "ck"
    flags = ["--epochs", "3", "--batch-size", "256", "--embedding-lr", "0.02", "--no-progress"]
    assert main(["train", "--data", str(criteo_8k_2k), "--out", str(ckpt), *flags]) == 0
    with pytest.raises(ValueError, match="no calibration in the checkpoint"):
        bid_values(Predictor.load(ckpt), criteo_8k_2k / "test", goal="click")
    capsys.readouterr()
    assert main(["calibrate", "--checkpoint", str(ckpt)]) == 0
    report = (ckpt / "calibration.md").read_text()
    assert capsys.readouterr().out.startswith(report) and ": saved." in report
    row = _task_rows(report)["ctr"]
    assert (row["rows"], row["folds"], row["test rows"], row["check"]) == ("800", "5", "2,000", "passed")
    held_raw, held_cal = _figures(row["held-out ECE raw -> calibrated"])
    assert held_cal <= held_raw, row
    saved = {p.name: p.read_bytes() for p in ckpt.glob("calibration*")}

    assert main(["calibrate", "--checkpoint", str(ckpt), "--method", "isotonic"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"rankers: error: calibration refused, nothing saved: ctr: 800 rows, (\d+) positives, (\d+) "
        r"negatives, held-out ECE worse: ([.\d]+) raw -> ([.\d]+) calibrated \(--force saves it anyway\)",
        error,
    )
    assert match, error
    assert int(match[1]) + int(match[2]) == 800 and float(match[4]) > float(match[3])
    assert float(match[3]) == pytest.approx(held_raw, abs=1e-4)
    assert {p.name: p.read_bytes() for p in ckpt.glob("calibration*")} == saved  # left as it was

    assert main(["calibrate", "--checkpoint", str(ckpt), "--method", "isotonic", "--force"]) == 0
    report = (ckpt / "calibration.md").read_text()
    assert ": saved with --force although tasks failed the check." in report
    row = _task_rows(report)["ctr"]
    assert row["check"].startswith("forced: held-out ECE worse")
    predictor = Predictor.load(ckpt)
    assert isinstance(predictor.calibration, Calibration)
    assert json.loads((ckpt / "calibration.json").read_text())["ctr"]["method"] == "isotonic"
    probs, labels, _ = predictor.predict_labeled(criteo_8k_2k / "test", raw=True)
    calibrated, _, _ = predictor.predict_labeled(criteo_8k_2k / "test")
    assert calibrated["ctr"] == pytest.approx(predictor.calibration.transform(probs)["ctr"])
    assert calibrated["ctr"].min() > 0 and calibrated["ctr"].max() < 1
    test_raw, test_cal = _figures(row["test ECE raw -> calibrated"])
    assert test_raw == pytest.approx(expected_calibration_error(probs["ctr"], labels["ctr"]), abs=1e-4)
    assert test_cal == pytest.approx(expected_calibration_error(calibrated["ctr"], labels["ctr"]), abs=1e-4)
    values = bid_values(predictor, criteo_8k_2k / "test", goal="click", value_per_conversion=2.0)
    assert len(values) == len(labels["ctr"]) and (values.sigma > 0).all()
    assert values.value == pytest.approx(2 * calibrated["ctr"])
    with pytest.raises(ValueError, match=r"needs ctcvr, or ctr and cvr tasks; the predictor has \['ctr'\]"):
        bid_values(predictor, criteo_8k_2k / "test")
    assert fit_calibration(probs, labels).tasks.keys() == {"ctr"}


@pytest.mark.shared_data
def test_aliccp_cvr_on_three_clicked_rows_is_refused_by_name_and_forced_values_are_never_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Ali-CCP sample's valid split: 50 rows, 3 clicks, 1 conversion. Every task is below the
    minimums (each named); lowered minimums pass ctr, whose held-out ECE improves; forced, no value
    is 0 (plain isotonic sent most to 0, and every bid with them)."""
    raw = [str(shared_file(f"ali_ccp/{s}_sample.csv")) for s in ("train", "val", "test")]
    data, ckpt = tmp_path / "data", tmp_path / "ck"
    assert main(["convert", "aliccp", raw[0], "--valid", raw[1], "--test", raw[2], "--out", str(data)]) == 0
    flags = ["--backbone", "esmm", "--epochs", "1", "--batch-size", "64", "--no-progress"]
    assert main(["train", "--data", str(data), "--out", str(ckpt), *flags]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in ckpt.iterdir())
    assert main(["calibrate", "--checkpoint", str(ckpt)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("rankers: error: calibration refused, nothing saved: ")
    assert (
        "cvr: 3 rows, 1 positives, 2 negatives, below the minimum of 50 positives and 50 negatives" in error
    )
    assert "; ctr: 50 rows, 3 positives" in error or ": ctr: 50 rows, 3 positives" in error
    assert "ctcvr: 50 rows, 1 positives, 49 negatives" in error and error.endswith(
        "(--force saves it anyway)"
    )
    assert sorted(p.name for p in ckpt.iterdir()) == before

    assert main(["calibrate", "--checkpoint", str(ckpt), "--min-positives", "2", "--min-negatives", "2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cvr: 3 rows, 1 positives, 2 negatives, below the minimum of 2 positives and 2 negatives" in error
    assert "ctr:" not in error and "ctcvr: 50 rows, 1 positives" in error
    assert sorted(p.name for p in ckpt.iterdir()) == before

    assert main(["calibrate", "--checkpoint", str(ckpt), "--force", "--folds", "2"]) == 0
    report = _task_rows((ckpt / "calibration.md").read_text())
    assert {t: (r["rows"], r["positives"]) for t, r in report.items()} == {
        "ctr": ("50", "3"),
        "cvr": ("3", "1"),
        "ctcvr": ("50", "1"),
    }
    assert all(r["check"].startswith("forced: below the minimum of 50") for r in report.values())
    assert report["cvr"]["held-out ECE raw -> calibrated"] == "-" and report["ctr"]["folds"] == "2"
    predictor = Predictor.load(ckpt)
    for split in ("valid", "test"):
        for task, v in predictor.predict_proba(data / split).items():
            assert v.min() > 0 and v.max() < 1, (split, task, v.min(), v.max())
    assert (bid_values(predictor, data / "test").value > 0).all()


@pytest.mark.shared_data
def test_a_calibration_that_lowers_held_out_ece_is_saved_without_force_and_bids(
    synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The synthetic teacher data's MLP is overconfident: its map passes the check on 2,000 valid
    rows (held-out ECE falls), is saved without --force, and `rankers bid --predictor` bids with it
    (the bid table itself: tests/rankers/test_bid_cli.py)."""
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
    capsys.readouterr()
    assert main(bid) == 2
    assert "no calibration" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    report = (ckpt / "calibration.md").read_text()
    assert out.startswith(report) and "calibration.json" in out
    assert ": saved.\n" in report and "Reliability of ctr on test rows, calibrated:" in report
    row = _task_rows(report)["ctr"]
    assert row["check"] == "passed" and (row["rows"], row["folds"], row["test rows"]) == (
        "2,000",
        "5",
        "2,000",
    )
    held_raw, held_cal = _figures(row["held-out ECE raw -> calibrated"])
    assert held_cal < held_raw / 2, (held_raw, held_cal)
    test_raw, test_cal = _figures(row["test ECE raw -> calibrated"])
    assert test_cal < test_raw / 2, (test_raw, test_cal)
    assert main(bid) == 0
    assert "hindsight optimum" in capsys.readouterr().out


def test_the_reliability_plot_is_written_as_png(tmp_path: Path) -> None:
    from rankers.bidding.reliability import plot_reliability, reliability

    pytest.importorskip("matplotlib", reason="plots are the optional `plots` extra")
    _, y, s = _miscalibrated(5000, 4)
    cal = fit_task(s, y).transform(s)
    task = {"ece_raw": 0.03, "ece_calibrated": 0.004}
    task |= {"reliability_raw": reliability(s, y), "reliability_calibrated": reliability(cal, y)}
    path = plot_reliability({"tasks": {"ctr": task}}, tmp_path / "r.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
