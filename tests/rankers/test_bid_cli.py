"""`rankers bid` through `main`: the header names each source's price units and the market model's
settings, columns are named by the goal, every agent is reachable, and bad flags exit 2 naming the
flag before any work is done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankers.cli import main
from tests.conftest import SHARED_DATA, shared_file

CAMPAIGNS = SHARED_DATA / "ipinyou" / "campaigns"
BASE = ["data", "budget per episode", "test episodes", "agent"]
CLICKS = ["clicks", "expected clicks", "of optimum", "spend (total)", "cost per click", "win rate"]
CONVERSIONS = ["conversions", "expected conversions", "of optimum", "spend (total)", "cost per conversion"]


def _bid(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """Runs `rankers bid ARGS` (exit 0): its header, the table's columns, and its rows by agent."""
    assert main(["bid", *args]) == 0, capsys.readouterr().err
    header, table = capsys.readouterr().out.split("\n\n", 1)
    lines = table.strip().splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return header, columns, {r[columns.index("agent")]: r for r in rows}


def _trained(data: Path, ckpt: Path, *train: str) -> Path:
    """A checkpoint trained one epoch on `data` and calibrated (forced past calibrate's guard
    rails where they refuse this small sample)."""
    train = ("--data", str(data), "--out", str(ckpt), "--epochs", "1", "--batch-size", "256", *train)
    assert main(["train", *train, "--no-progress"]) == 0
    if main(["calibrate", "--checkpoint", str(ckpt)]) != 0:
        assert main(["calibrate", "--checkpoint", str(ckpt), "--force"]) == 0
    return ckpt


@pytest.fixture(scope="module")
def criteo(criteo_8k_2k: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The Criteo sample's test split (2,000 rows) and a calibrated MLP."""
    return criteo_8k_2k / "test", _trained(criteo_8k_2k, tmp_path_factory.mktemp("bid") / "mlp")


@pytest.fixture(scope="module")
def funnel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic click -> conversion funnel's test split (2,000 rows) and a calibrated MLP."""
    from features.datasets.synthetic import SyntheticConfig, write_synthetic

    out = tmp_path_factory.mktemp("funnel")
    config = SyntheticConfig(rows=20_000, max_vocab=1000, min_count=5, funnel=True)
    data = write_synthetic(out / "data", config, progress=False)
    return data / "test", _trained(data, out / "mlp")


@pytest.mark.shared_data
@pytest.mark.slow
def test_ipinyou_header_names_cpm_units_and_the_roas_agent_runs(capsys: pytest.CaptureFixture[str]) -> None:
    shared_file("ipinyou/campaigns/2997.validation.txt")
    args = ["--campaign", "2997", "--agent", "paced,roas", "--roas", "6", "--value", "20000", "--cap", "300"]
    header, columns, rows = _bid(capsys, "--data", str(CAMPAIGNS), *args)
    assert "iPinYou campaign 2997" in header
    assert "the log's CPM price units (the price per 1000 impressions, as logged)" in header
    assert "market model" not in header and "per impression" not in header.replace("1000 impressions", "")
    assert "Second-price auction" in header and "replayed on the other 50 episodes of 1,000 rows" in header
    assert columns == [*BASE, *CLICKS, "budget used", "ROI", "ROAS"]
    assert set(rows) == {"paced", "roas", "hindsight optimum"}
    assert rows["roas"][columns.index("test episodes")] == "50"
    assert float(rows["roas"][columns.index("ROAS")]) > 0


@pytest.mark.shared_data
@pytest.mark.slow
def test_ipinyou_shading_runs_under_first_price(capsys: pytest.CaptureFixture[str]) -> None:
    shared_file("ipinyou/campaigns/2997.validation.txt")
    args = ["--campaign", "2997", "--agent", "shading", "--auction", "first_price", "--cap", "300"]
    header, columns, rows = _bid(capsys, "--data", str(CAMPAIGNS), *args)
    assert "First-price auction" in header
    assert set(rows) == {"shading", "hindsight optimum"}
    assert 0 < float(rows["shading"][columns.index("of optimum")]) <= 1


@pytest.mark.shared_data
def test_market_model_header_shows_its_settings_and_all_reaches_every_agent(
    criteo: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    split, ckpt = criteo
    market = [
        "--market-median",
        "0.05",
        "--market-sigma",
        "0.3",
        "--market-corr",
        "0.8",
        "--market-seed",
        "3",
    ]
    targets = ["--cpa", "0.5", "--roas", "2", "--value", "1"]
    args = ["--data", str(split), "--predictor", str(ckpt), "--episode-length", "100", *market, *targets]
    header, columns, rows = _bid(capsys, *args)
    assert f"Rows of {split} scored by {ckpt}" in header and "the split's ctr labels" in header
    assert "the model's price units per impression" in header and "CPM" not in header
    for setting in ("median 0.05 per impression", "sigma 0.3", "corr 0.8", "seed 3"):
        assert setting in header
    assert "replayed on the other 10 episodes of 100 rows" in header
    assert columns == [*BASE, *CLICKS, "budget used", "ROI", "ROAS", "score (AuctionNet)"]
    assert list(rows) == ["constant", "linear", "paced", "cpa", "roas", "hindsight optimum"]

    _, _, rows = _bid(capsys, *args, "--auction", "first_price")
    assert list(rows) == ["constant", "linear", "paced", "cpa", "roas", "shading", "hindsight optimum"]

    header, _, _ = _bid(capsys, "--data", str(split), "--predictor", str(ckpt), "--episode-length", "100")
    assert "median 50 per impression" in header and "sigma 0.6" in header and "corr 0.6" in header


def test_conversion_goal_names_its_columns(
    funnel: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    split, ckpt = funnel
    args = ["--data", str(split), "--predictor", str(ckpt), "--episode-length", "100", "--agent", "paced"]
    header, columns, rows = _bid(capsys, *args, "--goal", "conversion")
    assert "calibrated P(conversion)" in header and "the split's cvr labels" in header
    assert columns == [*BASE, *CONVERSIONS, "win rate", "budget used"]
    assert set(rows) == {"paced", "hindsight optimum"}
    assert "clicks" not in " ".join(columns)
    _, columns, _ = _bid(capsys, *args, "--goal", "click")
    assert columns == [*BASE, *CLICKS, "budget used"]


@pytest.mark.shared_data
def test_a_non_finite_value_reaching_the_bids_is_refused_naming_the_task(
    criteo: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rankers.predictor import Predictor

    real = Predictor.predict_labeled

    def nan_at_3(self: Predictor, rows: Path, batch_size: int = 65_536, raw: bool = False):  # type: ignore[no-untyped-def]
        probs, labels, groups = real(self, rows, batch_size, raw)
        probs["ctr"][3] = np.nan
        return probs, labels, groups

    monkeypatch.setattr(Predictor, "predict_labeled", nan_at_3)
    split, ckpt = criteo
    assert main(["bid", "--data", str(split), "--predictor", str(ckpt), "--episode-length", "100"]) == 2
    err = capsys.readouterr().err
    # (the model's own non-finite output is refused earlier, by rankers.evaluation.predict: test_hostile)
    assert f"{ckpt} on {split}: task 'ctr': calibrated probability[3] = nan" in err, err


BAD = [
    (["--value", "nan"], "--value nan: expected a finite value > 0"),
    (["--value", "inf"], "--value inf: expected a finite value > 0"),
    (["--value", "1e999"], "--value 1e999: expected a finite value > 0"),
    (["--value", "0"], "--value 0: expected a finite value > 0"),
    (["--value", "-2.50"], "--value -2.50: expected a finite value > 0"),
    (["--cap", "-5"], "--cap -5: expected a highest bid > 0"),
    (["--cap", "0"], "--cap 0: expected a highest bid > 0"),
    (["--cap", "nan"], "--cap nan: expected a highest bid > 0"),
    (["--episode-length", "0"], "--episode-length 0: expected an integer >= 1"),
    (["--episode-length", "-100"], "--episode-length -100: expected an integer >= 1"),
    (["--budget", "-0.125"], "--budget -0.125: expected a finite share > 0"),
    (["--budget", "0"], "--budget 0: expected a finite share > 0"),
    (["--budget=nan"], "--budget nan: expected a finite share > 0"),
    (["--cpa", "0"], "--cpa 0: expected a finite target cost"),
    (["--cpa", "-50"], "--cpa -50: expected a finite target cost"),
    (["--roas", "nan", "--value", "1"], "--roas nan: expected a finite target"),
    (["--roas", "-1", "--value", "1"], "--roas -1: expected a finite target"),
    (["--market-median", "0"], "--market-median 0: expected a finite price per impression > 0"),
    (["--market-median", "inf"], "--market-median inf: expected a finite price per impression > 0"),
    (["--market-sigma", "-0.1"], "--market-sigma -0.1: expected a finite spread of the log price >= 0"),
    (["--market-sigma", "nan"], "--market-sigma nan: expected a finite spread"),
    (["--market-corr", "1.5"], "--market-corr 1.5: expected a correlation in [-1, 1]"),
    (["--market-corr", "nan"], "--market-corr nan: expected a correlation in [-1, 1]"),
    (["--market-seed", "-1"], "--market-seed -1: expected an integer >= 0"),
    (["--agent", "roas", "--value", "5"], "agent 'roas' needs a target ROAS (--roas)"),
    (["--agent", "roas", "--roas", "2"], "--roas 2 needs --value"),
    (["--agent", "cpa"], "agent 'cpa' needs a target CPA (--cpa)"),
    (["--agent", "shading"], "agent 'shading' needs --auction first_price"),
    (
        ["--agent", "paced,bogus"],
        "agent 'bogus': expected some of constant, linear, paced, cpa, roas, shading",
    ),
]


@pytest.mark.parametrize(("flags", "message"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_flags_exit_2_naming_the_flag_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    """Neither --data nor --predictor exists: the flag is refused before either is read."""
    missing = ["--data", str(tmp_path / "no-data"), "--predictor", str(tmp_path / "no-checkpoint")]
    assert main(["bid", *missing, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rankers: error: {message}"), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    "flags",
    [
        ["--market-median", "10"],
        ["--market-corr", "0.2"],
        ["--episode-length", "100"],
        ["--goal", "conversion"],
    ],
)
def test_predictor_flags_without_a_predictor_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["bid", "--data", str(tmp_path / "campaigns"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rankers: error: {flags[0]} {flags[1]}: applies with --predictor"), err
    assert err.count("\n") == 1, err
