"""ESMM: pCTCVR = pCTR * pCVR, entire-space losses, funnel checks, per-task metrics, any tower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.nn import functional as F

from features.reader import table_batches
from features.schema import CategoricalFeature, DenseFeature, Label, Schema
from rankers.backbones import BACKBONES, ESMM, ESMMConfig, MLPConfig, build_backbone
from rankers.backbones.esmm import ctcvr_logit
from rankers.config import RankerConfig
from rankers.evaluation import task_metrics
from rankers.metrics import binary_metrics
from rankers.ranker import build_ranker
from tests.rankers._inputs import embedded
from tests.rankers.test_backbones import SPEC

FUNNEL = Schema(
    dense=(DenseFeature("d"),),
    categorical=(CategoricalFeature("a", 20), CategoricalFeature("b", 7)),
    labels=(Label("click", "ctr"), Label("conversion", "cvr")),
)


def _funnel_table(click: list[int], conversion: list[int]) -> pa.Table:
    n = len(click)
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "d": pa.array(rng.random(n), pa.float32()),
            "a": pa.array(rng.integers(0, 20, n), pa.int64()),
            "b": pa.array(rng.integers(0, 7, n), pa.int64()),
            "click": pa.array(click, pa.int8()),
            "conversion": pa.array(conversion, pa.int8()),
        }
    )


def test_ctcvr_is_the_product_of_ctr_and_cvr_even_for_extreme_logits() -> None:
    a = torch.tensor([-40.0, -12.0, -3.0, 0.0, 2.5, 15.0, 40.0, 40.0], dtype=torch.float64)
    b = torch.tensor([-40.0, 3.0, -25.0, 0.0, 1.0, -4.0, 40.0, -40.0], dtype=torch.float64)
    logit = ctcvr_logit(a.float(), b.float()).double()
    torch.testing.assert_close(torch.sigmoid(logit), torch.sigmoid(a) * torch.sigmoid(b), rtol=1e-5, atol=0)
    # tiny probabilities stay exact in log space, where sigmoid(a) * sigmoid(b) underflows in float32
    torch.testing.assert_close(F.logsigmoid(logit), F.logsigmoid(a) + F.logsigmoid(b), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logit).all()


def test_outputs_and_entire_space_losses() -> None:
    torch.manual_seed(0)
    ranker = build_ranker(FUNNEL, RankerConfig(backbone="esmm"))
    assert ranker.tasks == ("ctr", "cvr", "ctcvr")
    batch = next(table_batches(_funnel_table([1, 1, 0, 0, 1], [1, 0, 0, 0, 0]), FUNNEL, batch_size=8))
    out = ranker.eval()(batch)
    p = {t: torch.sigmoid(v) for t, v in out.logits.items()}
    torch.testing.assert_close(p["ctcvr"], p["ctr"] * p["cvr"])
    total, per_task = ranker.loss(out, batch.labels)
    assert set(per_task) == {"ctr", "ctcvr"}  # no loss on cvr itself
    y_click, y_conv = batch.labels["ctr"], batch.labels["cvr"]
    torch.testing.assert_close(
        per_task["ctr"], F.binary_cross_entropy_with_logits(out.logits["ctr"], y_click)
    )
    torch.testing.assert_close(
        per_task["ctcvr"], F.binary_cross_entropy_with_logits(out.logits["ctcvr"], y_conv)
    )
    torch.testing.assert_close(total, per_task["ctr"] + per_task["ctcvr"])


def test_a_batch_without_clicks_trains_without_nan() -> None:
    torch.manual_seed(0)
    ranker = build_ranker(FUNNEL, RankerConfig(backbone="esmm")).train()
    opt = torch.optim.Adam(ranker.parameters(), lr=1e-2)
    batch = next(table_batches(_funnel_table([0] * 16, [0] * 16), FUNNEL, batch_size=16))
    for _ in range(5):
        opt.zero_grad()
        loss, _ = ranker.loss(ranker(batch), batch.labels)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in ranker.parameters())


def test_a_conversion_without_a_click_is_refused_naming_the_row() -> None:
    with pytest.raises(ValueError, match=r"table, row 2: 'conversion' is 1 but 'click' is 0"):
        next(table_batches(_funnel_table([1, 1, 0], [1, 0, 1]), FUNNEL, batch_size=8))


@pytest.mark.parametrize("tower", [n for n in BACKBONES if n != "esmm"])
def test_any_single_task_backbone_is_a_tower(tower: str) -> None:
    torch.manual_seed(0)
    config = ESMMConfig(ctr_tower=tower, cvr_tower=tower)
    model = build_backbone("esmm", SPEC, config, ("ctr", "cvr")).train()
    out = model(embedded(SPEC, 6))
    assert set(out.logits) == {"ctr", "cvr", "ctcvr"}
    assert all(v.shape == (6,) and torch.isfinite(v).all() for v in out.logits.values())
    if tower == "dien":  # both towers' auxiliary losses reach the total
        assert out.aux_loss is not None and torch.isfinite(out.aux_loss)


def test_tower_configs_and_labels_are_checked() -> None:
    with pytest.raises(ValueError, match="hidden_units"):
        ESMMConfig(cvr_config={"hidden_units": ()})
    with pytest.raises(ValueError, match="unknown backbone 'gbdt'"):
        ESMMConfig(ctr_tower="gbdt")
    with pytest.raises(ValueError, match="not ESMM or a preset"):
        ESMMConfig(ctr_tower="esmm")
    with pytest.raises(ValueError, match=r"lack \['cvr'\]"):
        build_backbone("esmm", SPEC, ESMMConfig(), ("ctr",))
    config = RankerConfig(backbone="esmm", backbone_config={"cvr_config": {"hidden_units": [32]}})
    assert dict(config.backbone_config.cvr_config) == {"hidden_units": (32,)}


def test_esmm_is_handed_the_towers_its_config_names() -> None:
    ctr, cvr = (BACKBONES["mlp"](SPEC, MLPConfig(), (t,)) for t in ("ctr", "cvr"))
    model = ESMM(SPEC, ESMMConfig(), ("ctr", "cvr"), ctr, cvr)
    assert model.ctr_tower is ctr and model.cvr_tower is cvr
    with pytest.raises(TypeError, match="towers built"):
        ESMM(SPEC, ESMMConfig(), ("ctr", "cvr"))
    with pytest.raises(ValueError, match="cvr_tower: expected a 'mlp' backbone"):
        ESMM(SPEC, ESMMConfig(), ("ctr", "cvr"), ctr, ctr)  # the ctr tower's task
    wide = BACKBONES["mlp"](SPEC, MLPConfig(hidden_units=(8,)), ("cvr",))
    with pytest.raises(ValueError, match="cvr_tower: expected a 'mlp' backbone"):
        ESMM(SPEC, ESMMConfig(), ("ctr", "cvr"), ctr, wide)  # not the config's tower


def test_metrics_measure_cvr_on_clicks_and_ctcvr_on_every_impression() -> None:
    rng = np.random.default_rng(0)
    click = rng.integers(0, 2, 200).astype(np.float32)
    conversion = click * rng.integers(0, 2, 200)
    probs = {t: rng.random(200) for t in ("ctr", "cvr", "ctcvr")}
    labels = {"ctr": click, "cvr": conversion}
    got = task_metrics(probs, labels, {})
    clicked = click == 1
    assert got["cvr"] == binary_metrics(conversion[clicked], probs["cvr"][clicked])
    assert got["ctcvr"] == binary_metrics(conversion, probs["ctcvr"])
    assert got["ctr"] == binary_metrics(click, probs["ctr"])
    assert got["cvr"]["rows"] == int(clicked.sum()) < 200
    no_clicks = task_metrics(probs, {"ctr": np.zeros(200), "cvr": np.zeros(200)}, {})
    assert no_clicks["cvr"] == {"auc": None, "logloss": None, "rows": 0, "positive_rate": None}


def test_trains_end_to_end_with_funnel_priors_and_a_chosen_monitor(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from features.dataset import DatasetWriter
    from rankers.config import TrainConfig
    from rankers.evaluation import label_prior
    from rankers.train import train

    out = Path(str(tmp_path)) / "funnel"
    rng = np.random.default_rng(1)
    click = rng.integers(0, 2, 600)
    conversion = click * (rng.random(600) < 0.3)
    table = _funnel_table(click.tolist(), conversion.astype(int).tolist())
    with DatasetWriter(out, FUNNEL) as w:
        w.write("train", table.slice(0, 400))
        w.write("valid", table.slice(400, 100))
        w.write("test", table.slice(500))
        w.commit({})
    prior = label_prior(out / "train", FUNNEL)
    c, v = click[:400], conversion[:400]
    assert prior["ctr"] == pytest.approx(c.mean())
    assert prior["cvr"] == pytest.approx(v.sum() / c.sum())  # among clicks
    assert prior["ctcvr"] == pytest.approx(v.mean())  # over every impression
    config = TrainConfig(epochs=2, batch_size=64, progress=False, monitor="ctcvr")
    result = train(out, Path(str(tmp_path)) / "ck", RankerConfig(backbone="esmm"), config)
    assert result["monitor"] == "ctcvr"
    assert set(result["test"]) == {"ctr", "cvr", "ctcvr"}
    assert result["test"]["cvr"]["rows"] == int(click[500:].sum())
    with pytest.raises(ValueError, match="monitor task 'cvr2'"):
        train(out, Path(str(tmp_path)) / "ck2", RankerConfig(backbone="esmm"), TrainConfig(monitor="cvr2"))
    assert not (Path(str(tmp_path)) / "ck2").exists()  # refused before anything was written


def test_a_cvr_head_trained_directly_learns_on_clicked_rows_only() -> None:
    """Not ESMM: an MLP with ctr and cvr heads on funnel data takes its cvr loss over the clicked
    rows, where conversion rate is defined (and measured)."""
    torch.manual_seed(0)
    ranker = build_ranker(FUNNEL, RankerConfig(backbone="mlp"))
    batch = next(table_batches(_funnel_table([1, 0, 1, 0], [1, 0, 0, 0]), FUNNEL, batch_size=8))
    out = ranker(batch)
    _, per_task = ranker.loss(out, batch.labels)
    clicked = batch.labels["ctr"] == 1
    want = F.binary_cross_entropy_with_logits(out.logits["cvr"][clicked], batch.labels["cvr"][clicked])
    torch.testing.assert_close(per_task["cvr"], want)
    no_clicks = next(table_batches(_funnel_table([0, 0], [0, 0]), FUNNEL, batch_size=8))
    _, per_task = ranker.loss(ranker(no_clicks), no_clicks.labels)
    assert float(per_task["cvr"].detach()) == 0.0


def test_config_mistakes_are_value_errors_naming_the_tower() -> None:
    with pytest.raises(ValueError, match=r"cvr_tower 'mlp' has no config fields \['hiden_units'\]"):
        ESMMConfig(cvr_config={"hiden_units": (8,)})
    with pytest.raises(ValueError, match="not ESMM or a preset"):
        ESMMConfig(ctr_tower="finalmlp_criteo_x1")
    with pytest.raises(ValueError, match=r"\['cvr'\] that take no loss"):
        build_ranker(FUNNEL, RankerConfig(backbone="esmm", task_weights=(("cvr", 2.0),)))
    ranker = build_ranker(FUNNEL, RankerConfig(backbone="esmm", task_weights=(("ctcvr", 2.0),)))
    batch = next(table_batches(_funnel_table([1, 0, 1], [1, 0, 0]), FUNNEL, batch_size=8))
    total, per_task = ranker.loss(ranker(batch), batch.labels)
    torch.testing.assert_close(total, per_task["ctr"] + 2.0 * per_task["ctcvr"])


def test_cvr_learns_only_through_ctcvr() -> None:
    """The cvr tower's gradient comes from the ctcvr loss alone: zero with ctcvr's weight at 0."""
    torch.manual_seed(0)
    batch = next(table_batches(_funnel_table([1, 0, 1, 1], [1, 0, 0, 1]), FUNNEL, batch_size=8))
    for weight, reaches in ((1.0, True), (0.0, False)):
        ranker = build_ranker(FUNNEL, RankerConfig(backbone="esmm", task_weights=(("ctcvr", weight),)))
        total, _ = ranker.loss(ranker(batch), batch.labels)
        total.backward()
        grads = [p.grad for p in ranker.backbone.cvr_tower.parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads) == reaches  # type: ignore[union-attr]


def test_the_reader_names_the_row_group_and_row_of_a_conversion_without_click(tmp_path: Path) -> None:
    from features.dataset import DatasetWriter
    from features.reader import ParquetBatches

    rows = 300
    click = [1] * rows
    conversion = [0] * rows
    click[250] = 0
    conversion[250] = 1
    out = tmp_path / "bad"
    import features.dataset

    features.dataset.ROW_GROUP_ROWS, saved = 128, features.dataset.ROW_GROUP_ROWS
    try:
        with DatasetWriter(out, FUNNEL, splits=("train",)) as w:
            w.write("train", _funnel_table(click, conversion))
            w.commit({})
    finally:
        features.dataset.ROW_GROUP_ROWS = saved
    with pytest.raises(ValueError, match=r"row group 1, row 122: 'conversion' is 1 but 'click' is 0"):
        list(ParquetBatches(out / "train", 64))
