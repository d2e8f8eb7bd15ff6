"""`rankers export`: the artifact scores as the Predictor does, in a process that cannot import this
library; int8 tables keep the AUC; bad input is named; the loader batches and is thread-safe."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from features.datasets.table import convert_table
from features.reader import ParquetBatches
from features.spec import spec_from_dict
from rankers.cli import main
from rankers.cli.export import QUANTIZE
from rankers.config import RankerConfig, TrainConfig
from rankers.predictor import Predictor
from rankers.serving import export as export_module
from rankers.serving.export import export
from rankers.serving.loader import load
from rankers.train import train
from tests.features._table_rows import make_rows, write_csv

QUICK = TrainConfig(epochs=2, batch_size=256, progress=False)
# A table of every role a model reads: two labels (ESMM), dense, vocabulary and hashed categoricals,
# a multi-value field, two histories sharing their targets' tables, a key.
SPEC = {
    "keys": ["request_id"],
    "label": [{"column": "click", "task": "ctr"}, {"column": "buy", "task": "cvr"}],
    "dense": [{"column": "age", "transform": "standardise"}, {"column": "price", "transform": "log1p"}],
    "categorical": [{"columns": ["user", "item_id", "cate_id"]}, {"column": "city", "hash_buckets": 16}],
    "multi": [{"column": "tags", "delimiter": "|"}],
    "sequence": [
        {"column": "hist_item_id", "delimiter": "^", "max_len": 5, "table": "item_id"},
        {"column": "hist_cate_id", "delimiter": "^", "max_len": 5, "table": "cate_id"},
    ],
}
# Runs an artifact with torch and fbgemm only: rankers, features and torchrec cannot be imported.
ISOLATED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("rankers", "features", "torchrec", "tests"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
import torch, fbgemm_gpu
inputs = torch.load(sys.argv[2], weights_only=True)
model = torch.jit.load(sys.argv[1])
torch.save(model(inputs["dense"], inputs["values"], inputs["lengths"]), sys.argv[3])
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    rows = write_csv(tmp / "rows.csv", make_rows(2000))
    return rows, convert_table(rows, spec_from_dict(SPEC, "SPEC"), tmp / "data", progress=False)


BACKBONES = ["mlp", "finalmlp", "autoint", "autoint_plus", "din", "dien", "esmm", "esmm_din_dien"]
CALIBRATED = ["mlp", "din", "esmm"]  # trained, then calibrated: their artifacts carry the map
_RUNS: dict[str, Path] = {}  # one training per backbone for the whole module


def _run(name: str, table: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of backbone `name` trained on `table` (calibrated if in CALIBRATED)."""
    if name in _RUNS:
        return _RUNS[name]
    out = tmp_path_factory.mktemp(name) / "run"
    if name.startswith("esmm"):  # ctr, cvr and ctcvr; towers MLP, or DIN and DIEN
        towers = {"ctr_tower": "din", "cvr_tower": "dien"} if name != "esmm" else {}
        config = RankerConfig(backbone="esmm", backbone_config=towers)
    else:
        config = RankerConfig(backbone=name, tasks=("ctr",))
    train(table[1], out, config, QUICK)
    if name in CALIBRATED:
        flags = ["--method", "platt", "--min-positives", "5", "--min-negatives", "5", "--force"]
        assert main(["calibrate", "--checkpoint", str(out), *flags]) in (0, None)
    _RUNS[name] = out
    return out


@pytest.fixture(scope="module", params=BACKBONES)
def run(
    request: pytest.FixtureRequest, table: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _run(request.param, table, tmp_path_factory)


@pytest.fixture(scope="module", params=CALIBRATED)
def calibrated(
    request: pytest.FixtureRequest, table: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _run(request.param, table, tmp_path_factory)


@pytest.fixture(scope="module")
def calibrated_mlp(table: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("mlp", table, tmp_path_factory)


def test_the_fp32_artifact_scores_as_the_predictor_without_rankers(
    run: Path, table: tuple[Path, Path], tmp_path: Path
) -> None:
    artifact = export(run, tmp_path / "model.pt", quantize="none")
    predictor = Predictor.load(run)
    batch = next(
        iter(ParquetBatches(table[1] / "test", batch_size=10_000, labels=False, schema=predictor.schema))
    )
    inputs = {"dense": batch.dense, "values": batch.sparse.values(), "lengths": batch.sparse.lengths().int()}
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            ISOLATED,
            str(artifact),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "out.pt"),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    got = torch.load(tmp_path / "out.pt", weights_only=True).numpy()
    expected = predictor.predict_proba(batch)
    assert got.shape == (len(batch), len(predictor.tasks))
    for k, task in enumerate(predictor.tasks):
        np.testing.assert_allclose(got[:, k], expected[task], atol=1e-5, rtol=0)
    files = {"rankers/export.json": "", "rankers/schema.json": ""}
    torch.jit.load(str(artifact), _extra_files=files)
    meta = json.loads(files["rankers/export.json"])
    assert meta["tasks"] == list(predictor.tasks) and meta["quantize"] == "none"
    assert meta["calibrated"] == (
        {t: c.method for t, c in predictor.calibration.tasks.items()} if predictor.calibration else {}
    )
    assert json.loads(files["rankers/schema.json"]) == json.loads((run / "schema.json").read_text())


def test_the_loader_scores_raw_rows_in_batches_and_from_threads(
    run: Path, table: tuple[Path, Path], tmp_path: Path
) -> None:
    model = load(export(run, tmp_path / "model.pt", quantize="none"), max_batch=97)
    predictor = Predictor.load(run)
    whole = model.score(table[0])  # the raw CSV, mapped by the spec inside the artifact
    expected = predictor.predict_proba(table[0])
    for task in predictor.tasks:
        np.testing.assert_allclose(whole[task], expected[task], atol=1e-5)
    batch = next(
        iter(ParquetBatches(table[1] / "test", batch_size=10_000, labels=False, schema=predictor.schema))
    )
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(model.score, [batch] * 8))
    for r in results:
        for task in predictor.tasks:
            np.testing.assert_array_equal(r[task], results[0][task])


def test_bad_input_is_named_not_a_kernel_crash(table: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(
        table[1],
        out,
        RankerConfig(backbone="mlp", tasks=("ctr",)),
        TrainConfig(epochs=1, batch_size=512, progress=False),
    )
    model = load(export(out, tmp_path / "m.pt"))
    n = len(model.info["sparse"])
    good = {"dense": np.zeros((2, 2)), "values": np.full(2 * n, 2), "lengths": np.ones(2 * n)}
    assert model.score(good)["ctr"].shape == (2,)
    with pytest.raises(ValueError, match=r"dense: shape \[2, 3\], expected \(B, 2\) for \[age, price\]"):
        model.score({**good, "dense": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="dense feature price: a NaN or infinite value"):
        model.score({**good, "dense": np.array([[0.0, 0.0], [0.0, np.nan]])})
    with pytest.raises(
        ValueError, match=r"lengths: 5 entries, expected 14 \(one per row of each of the 7 sparse features"
    ):
        model.score({**good, "lengths": np.ones(5)})
    too_big = good["values"].copy()
    too_big[2 * 3] = 10**6  # the first row of feature 3 (city: 16 buckets + 2)
    long = {**good, "lengths": np.r_[np.ones(2 * (n - 2)), 6, 1, 1, 1], "values": np.full(2 * n + 5, 2)}
    with pytest.raises(ValueError, match=r"feature city: id 1000000 outside its table of 18 rows"):
        model.score({**good, "values": too_big})
    with pytest.raises(ValueError, match=r"feature hist_item_id: a row of 6 ids, more than its max_len 5"):
        model.score(long)


def test_int8_tables_keep_the_auc_and_shrink(
    calibrated_mlp: Path, table: tuple[Path, Path], tmp_path: Path
) -> None:
    run = calibrated_mlp
    predictor = Predictor.load(run)
    probs, labels, _ = predictor.predict_labeled(table[1] / "test")
    batch = next(
        iter(ParquetBatches(table[1] / "test", batch_size=10_000, labels=False, schema=predictor.schema))
    )
    int8 = load(export(run, tmp_path / "int8.pt", quantize="int8")).score(batch)["ctr"]
    fp32 = roc_auc_score(labels["ctr"], probs["ctr"])
    assert abs(roc_auc_score(labels["ctr"], int8) - fp32) < 0.002


def test_a_model_without_dense_features_exports(tmp_path: Path) -> None:
    from tests.features._table_rows import convert_din_layout

    raw, data = convert_din_layout(tmp_path, 600)
    train(
        data,
        tmp_path / "din",
        RankerConfig(backbone="din"),
        TrainConfig(epochs=1, batch_size=256, progress=False),
    )
    got = load(export(tmp_path / "din", tmp_path / "din.pt")).score(raw)["ctr"]  # raw parquet rows
    np.testing.assert_allclose(got, Predictor.load(tmp_path / "din").predict_proba(raw)["ctr"], atol=2e-3)


def test_cli_quantize_choices_are_the_exporters() -> None:
    assert tuple(export_module.QUANTIZE) == QUANTIZE


def test_a_replay_scored_live_by_the_artifact_bids_as_the_precomputed_one(
    calibrated: Path, table: tuple[Path, Path], tmp_path: Path
) -> None:
    run = calibrated
    from rankers.bidding.run import BidConfig, bid_report

    predictor = Predictor.load(run)
    artifact = export(run, tmp_path / "model.pt", quantize="none")
    goal = "conversion" if "cvr" in predictor.tasks else "click"
    config = BidConfig(data=table[1] / "test", predictor=run, goal=goal, episode_length=20)
    precomputed = bid_report(config)
    live = bid_report(BidConfig(**{**config.__dict__, "model": artifact}))
    timing = [line for line in live.splitlines() if line.startswith("Values scored live")]
    assert len(timing) == 1 and "ms per tick" in timing[0]
    assert [line for line in live.splitlines() if line not in timing] == precomputed.splitlines()
    with pytest.raises(ValueError, match=r"--model .*: applies with --predictor"):
        bid_report(BidConfig(data=table[1] / "test", model=artifact))


def test_the_auctionnet_simulation_scored_live_bids_as_with_precomputed_values(
    calibrated: Path, table: tuple[Path, Path], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    run = calibrated
    from rankers.bidding.auctionnet import AuctionNetStrategy, Market, simulate
    from rankers.bidding.live import Requests
    from rankers.bidding.values import values_from_probs
    from rankers.funnel import goal_tasks

    predictor = Predictor.load(run)
    goal = "conversion" if "cvr" in predictor.tasks else "click"
    probs = predictor.predict_proba(table[1] / "test")
    tasks = [t for t in goal_tasks(list(probs), goal) if t in probs]
    values = values_from_probs(probs, predictor.calibration.sigma({t: probs[t] for t in tasks}), goal)
    features = [n for n, _ in predictor.schema.without_labels().columns()]
    rows = pq.read_table(table[1] / "test", columns=features)
    market = Market(advertisers=5, opportunities=20, ticks=10)

    def seats() -> list[AuctionNetStrategy]:
        return [
            AuctionNetStrategy(market.budgets[i], f"a{i}", market.cpas[i]) for i in range(market.advertisers)
        ]

    truth = values.value  # the rows convert as the model says (the simulation needs some truth)
    precomputed = simulate(seats(), market, Requests(truth, values=values, goal=goal))
    model = load(export(run, tmp_path / "model.pt", quantize="none"))
    requests = Requests(truth, rows, predictor.schema, model, goal=goal)
    live = simulate(seats(), market, requests)
    assert len(requests.timings) == market.ticks and live[0]["spend"] > 0  # it bid, and won
    for a, b in zip(live, precomputed, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6), k
