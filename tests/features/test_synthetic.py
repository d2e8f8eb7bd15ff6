"""Tests of the synthetic teacher data: seeding, calibration, missing rates, rare ids, the TSV form,
and the funnel (impressions -> clicks -> conversions).

Datasets have 20,000 rows (16,000 train, 2,000 valid, 2,000 test); the funnel's rates are checked on
200,000 rows drawn from the teacher without writing them. Tolerances are 5 standard errors of the
statistic at that size, so a correct generator fails them with probability < 1e-6.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

import features.datasets.synthetic
from features.dataset import dataset_info
from features.datasets.criteo import CriteoConfig, convert_criteo
from features.datasets.synthetic import (
    CAT_MISSING,
    DENSE_MISSING,
    N_CAT,
    N_CLICKBAIT,
    N_DENSE,
    SyntheticConfig,
    Teacher,
    synthetic_schema,
    write_synthetic,
    write_synthetic_tsv,
)
from features.schema import Label, Schema

ROWS = 20_000
SPLITS = ("train", "valid", "test")


def _write(out: Path, **kw: object) -> Path:
    return write_synthetic(out, SyntheticConfig(rows=ROWS, **kw), progress=False)


def _all(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(out / s) for s in SPLITS])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("syn") / "seed0")


def test_same_seed_same_rows_other_seed_other_rows(data: Path, tmp_path: Path) -> None:
    again = _write(tmp_path / "again")
    for s in SPLITS:
        assert pq.read_table(again / s).equals(pq.read_table(data / s)), s
    other = _write(tmp_path / "other", seed=1)
    a, b = pq.read_table(data / "train"), pq.read_table(other / "train")
    assert a.num_rows == b.num_rows == 16_000
    assert not a.equals(b)
    assert not np.array_equal(a["teacher_p"].to_numpy(), b["teacher_p"].to_numpy())
    assert not np.array_equal(a["C1"].to_numpy(), b["C1"].to_numpy())


def test_layout_schema_and_split_sizes(data: Path) -> None:
    config = SyntheticConfig(rows=ROWS)
    assert Schema.load(data) == synthetic_schema(config)
    info = dataset_info(data)
    assert info["rows"] == {"train": 16_000, "valid": 2_000, "test": 2_000}
    assert info["converter"] == "synthetic" and info["config"]["rows"] == ROWS
    table = _all(data)
    assert table.num_rows == ROWS
    schema = synthetic_schema(config)
    schema.check_arrow(table.schema, where="synthetic")
    for f in schema.categorical:
        ids = table[f.name].to_numpy()
        assert ids.min() >= 0 and ids.max() < f.num_embeddings, f.name
        train_ids = pq.read_table(data / "train", columns=[f.name])[f.name].to_numpy()
        assert 1 not in train_ids, f.name  # min_count 1: every train value has its own id


def test_teacher_p_is_calibrated_and_explains_the_labels(data: Path) -> None:
    table = _all(data)
    p = table["teacher_p"].to_numpy()
    y = table["label"].to_numpy()
    assert table.schema.field("teacher_p").type == pa.float64()
    assert ((p > 0) & (p < 1)).all()
    # The bias is fit on a 100,000-row probe; the mean here has standard error std(p)/sqrt(n) plus
    # the probe's std(p)/sqrt(1e5).
    se = p.std() * math.sqrt(1 / ROWS + 1 / 100_000)
    assert abs(p.mean() - 0.22) < 5 * se + 1e-3, (p.mean(), se)
    # Given p, the number of positives has variance sum p(1 - p).
    assert abs(y.sum() - p.sum()) < 5 * math.sqrt((p * (1 - p)).sum()), (y.mean(), p.mean())
    assert p.std() > 0.05  # the teacher separates rows; a constant p would make this test vacuous


def test_target_ctr_moves_the_mean() -> None:
    config = SyntheticConfig(rows=ROWS, target_ctr=0.05)
    p = np.concatenate([c[3] for c in Teacher(config).chunks()])
    se = p.std() * math.sqrt(1 / ROWS + 1 / 100_000)
    assert abs(p.mean() - 0.05) < 5 * se + 1e-3, (p.mean(), se)


def test_recorded_teacher_metrics_match_the_stored_columns(data: Path) -> None:
    teacher = dataset_info(data)["teacher"]
    for s in SPLITS:
        t = pq.read_table(data / s)
        y, p = t["label"].to_numpy(), t["teacher_p"].to_numpy()
        assert teacher[s]["rows"] == t.num_rows
        # The recorded metrics are computed from p kept as float32 (5 bytes a row): 1e-6 apart.
        assert teacher[s]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert teacher[s]["logloss"] == pytest.approx(log_loss(y, p), abs=1e-6)
        assert teacher[s]["ctr"] == pytest.approx(y.mean(), abs=1e-12)
    assert 0.6 < teacher["test"]["auc"] < 0.95


def test_missing_rates(data: Path) -> None:
    table = _all(data)
    n = table.num_rows
    for f in (2, 5, 18, 21, 0):  # C3 0.03, C6 0.12, C19 0.44, C22 0.76, C1 never
        rate = (table[f"C{f + 1}"].to_numpy() == 0).mean()
        want = CAT_MISSING[f]
        assert abs(rate - want) <= 5 * math.sqrt(want * (1 - want) / n), (f, rate, want)
    x = np.concatenate([c[1] for c in Teacher(SyntheticConfig(rows=ROWS)).chunks()])
    assert x.shape == (ROWS, N_DENSE)
    for j in (0, 1, 11):  # I1 0.45, I2 never, I12 0.77
        rate = np.isnan(x[:, j]).mean()
        want = DENSE_MISSING[j]
        assert abs(rate - want) <= 5 * math.sqrt(want * (1 - want) / ROWS), (j, rate, want)
    # Missing counts are stored as 0.0, so the share of zeros is at least the missing rate.
    assert (table["I12"].to_numpy() == 0).mean() >= np.isnan(x[:, 11]).mean()


def test_min_count_maps_rare_train_values_to_id_1(tmp_path: Path) -> None:
    out = _write(tmp_path / "mc", min_count=10)
    train = pq.read_table(out / "train")
    plain = pq.read_table(_write(tmp_path / "mc1") / "train")
    for f in range(N_CAT):
        ids = train[f"C{f + 1}"].to_numpy()
        counts = np.bincount(ids)
        assert not ((counts[2:] > 0) & (counts[2:] < 10)).any(), f
        before = plain[f"C{f + 1}"].to_numpy()
        kept = (ids == before) | (ids == 1)
        assert kept.all(), f  # ids are only ever replaced by the rare id
        assert (ids == 0).sum() == (before == 0).sum(), f
    rare = sum(int((train[f"C{f + 1}"].to_numpy() == 1).sum()) for f in range(N_CAT))
    assert rare > 0
    assert (train["C3"].to_numpy() == 1).any()  # a 10,131-value field has a long tail
    for s in ("valid", "test"):  # values unseen in train are rare there too
        table = pq.read_table(out / s)
        train_ids = set(train["C3"].to_numpy().tolist())
        assert set(table["C3"].to_numpy().tolist()) <= train_ids | {0, 1}


def test_tsv_converts_with_the_criteo_converter(tmp_path: Path) -> None:
    rows = 5_000
    config = SyntheticConfig(rows=rows, seed=7)
    tsv = write_synthetic_tsv(tmp_path / "syn.tsv", config, progress=False)
    lines = tsv.read_text().splitlines()
    assert len(lines) == rows
    assert all(line.count("\t") == 39 for line in lines)
    p = np.load(str(tsv) + ".teacher_p.npy")
    assert p.shape == (rows,) and ((p > 0) & (p < 1)).all()
    chunks = list(Teacher(config).chunks())
    np.testing.assert_array_equal(p, np.concatenate([c[3] for c in chunks]))
    y = np.concatenate([c[4] for c in chunks])
    assert [int(line.split("\t", 1)[0]) for line in lines] == y.tolist()
    x = np.concatenate([c[1] for c in chunks])
    blank = np.array([[f == "" for f in line.split("\t")[1:14]] for line in lines])
    np.testing.assert_array_equal(blank, np.isnan(x))
    out = convert_criteo(
        tsv, tmp_path / "conv", CriteoConfig(split=(0.8, 0.0, 0.2), split_by="order"), progress=False
    )
    assert dataset_info(out)["rows"] == {"train": 4_000, "valid": 0, "test": 1_000}
    parquet = write_synthetic(tmp_path / "pq", config, progress=False)
    converted = pq.read_table(out / "train")
    direct = pq.read_table(parquet / "train")
    assert converted["label"].equals(direct["label"])
    for j in range(1, N_DENSE + 1):  # the same sign(x) log1p(|x|) transform, 0 when missing
        np.testing.assert_allclose(converted[f"I{j}"].to_numpy(), direct[f"I{j}"].to_numpy(), rtol=1e-6)
    for f in range(1, N_CAT + 1):  # same missing rows; ids renumbered by train count, same partition
        a, b = converted[f"C{f}"].to_numpy(), direct[f"C{f}"].to_numpy()
        np.testing.assert_array_equal(a == 0, b == 0)
        pairs = len(set(zip(a.tolist(), b.tolist(), strict=True)))
        assert pairs == len(set(a.tolist())) == len(set(b.tolist())), f


@pytest.mark.parametrize("chunk_rows", [1_000, 4_096])
def test_rows_of_n_are_a_prefix_of_rows_of_2n(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(features.datasets.synthetic, "CHUNK_ROWS", chunk_rows)
    n = 3 * chunk_rows
    short = list(Teacher(SyntheticConfig(rows=n)).chunks())
    long = list(Teacher(SyntheticConfig(rows=2 * n)).chunks())
    assert [c[0] for c in short] == [0, chunk_rows, 2 * chunk_rows]
    assert len(long) == 6
    for a, b in zip(short, long, strict=False):
        for u, v in zip(a[1:], b[1:], strict=True):
            np.testing.assert_array_equal(u, v)
    small = _all(write_synthetic(tmp_path / "n", SyntheticConfig(rows=n), progress=False))
    big = _all(write_synthetic(tmp_path / "2n", SyntheticConfig(rows=2 * n), progress=False))
    # Ids of values unseen in a split's train rows depend on the train rows, so compare the rest.
    raw = ["label", "teacher_p", *(f"I{j}" for j in range(1, 14))]
    assert small.select(raw).equals(big.slice(0, n).select(raw))


# The funnel=False output of SyntheticConfig(rows=3000, seed=5, max_vocab=1000, min_count=2) and the
# TSV of SyntheticConfig(rows=500, seed=5), as the generator made them before the funnel was added:
# adding it must not change them. Integer columns are pinned exactly (a row- and column-weighted
# sum per split), float columns to a tolerance: their last bits differ between CPUs (numpy's exp
# and log take other SIMD paths with and without AVX-512). A numpy release that changed the
# Generator streams would change them too.
PRE_FUNNEL_INTS = {"train": 41_360_178_179, "valid": 380_419_140, "test": 378_579_883}
PRE_FUNNEL_FLOAT_SUMS = {  # I1..I13 (log1p of the counts), then teacher_p
    "train": (
        3619.9826,
        7020.656,
        2945.8101,
        2484.2443,
        4160.9423,
        4054.8082,
        3381.5748,
        6712.4591,
        138.3603,
        1184.1144,
        5471.6527,
        610.6603,
        3804.33,
        532.8962,
    ),
    "valid": (
        477.6527,
        890.7098,
        330.0137,
        354.3163,
        497.3398,
        524.623,
        402.384,
        856.5714,
        13.1394,
        143.8397,
        708.7277,
        81.1279,
        457.6442,
        67.1388,
    ),
    "test": (
        453.8704,
        890.9178,
        388.3168,
        266.6766,
        506.1477,
        507.6165,
        435.7888,
        812.4439,
        32.4573,
        140.6875,
        699.925,
        69.093,
        508.9474,
        64.833,
    ),
}
PRE_FUNNEL_TSV_INTS = 173_207_925_539_357_746
FUNNEL_ROWS = 200_000


def _summary(table: pa.Table) -> tuple[int, list[float]]:
    """A row- and column-weighted sum of every integer column (missing values as -1), and the sum of
    every float column."""
    ints, floats = 0, []
    for k, name in enumerate(table.column_names):
        x = table[name].to_numpy(zero_copy_only=False)
        if np.issubdtype(x.dtype, np.integer) or table[name].null_count:
            x = table[name].fill_null(-1).to_numpy() if table[name].null_count else x
            ints += int((x.astype(np.int64) * np.arange(1, len(x) + 1, dtype=np.int64) * (k + 1)).sum())
        else:
            floats.append(float(x.astype(np.float64).sum()))
    return ints, floats


def test_without_funnel_the_output_is_unchanged(tmp_path: Path) -> None:
    config = SyntheticConfig(rows=3000, seed=5, max_vocab=1000, min_count=2)
    out = write_synthetic(tmp_path / "a", config, progress=False)
    for s in SPLITS:
        ints, floats = _summary(pq.read_table(out / s))
        assert ints == PRE_FUNNEL_INTS[s], s
        assert floats == pytest.approx(PRE_FUNNEL_FLOAT_SUMS[s], rel=1e-6, abs=1e-3), s
    assert "tasks" not in dataset_info(out)["teacher"]["test"]
    tsv = write_synthetic_tsv(tmp_path / "a.tsv", SyntheticConfig(rows=500, seed=5), progress=False)
    names = ["label", *(f"I{j}" for j in range(1, 14)), *(f"C{j}" for j in range(1, 27))]
    table = pacsv.read_csv(
        tsv,
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names[:14], pa.int64())),
    )
    hexes = {c: pa.array([int(v, 16) if v else -1 for v in table[c].to_pylist()]) for c in names[14:]}
    as_ints = pa.table({**{c: table[c] for c in names[:14]}, **hexes})
    assert _summary(as_ints) == (PRE_FUNNEL_TSV_INTS, [])


@pytest.fixture(scope="module")
def funnel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("funnel") / "seed0", funnel=True)


@pytest.fixture(scope="module")
def drawn() -> tuple[Teacher, tuple[np.ndarray, ...]]:
    """FUNNEL_ROWS impressions straight from the teacher: (teacher, (ranks, pCTR, clicks, pCVR,
    conversions))."""
    teacher = Teacher(SyntheticConfig(rows=FUNNEL_ROWS, funnel=True))
    chunks = list(teacher.funnel_chunks())
    c = np.concatenate([ch[2] for ch in chunks], axis=1)
    return teacher, (c, *(np.concatenate([ch[k] for ch in chunks]) for k in range(3, 7)))


def test_funnel_columns_schema_and_clicks(funnel: Path, data: Path) -> None:
    config = SyntheticConfig(rows=ROWS, funnel=True)
    schema = synthetic_schema(config)
    assert schema.labels == (Label("click", task="ctr"), Label("conversion", task="cvr"))
    assert Schema.load(funnel) == schema
    assert synthetic_schema(SyntheticConfig(rows=ROWS)).labels == (Label("label", task="ctr"),)
    for s in SPLITS:
        t = pq.read_table(funnel / s)
        schema.check_arrow(t.schema, where="synthetic funnel")
        assert "label" not in t.column_names
        assert t.schema.field("teacher_p").type == t.schema.field("teacher_p_cvr").type == pa.float64()
        q = t["teacher_p_cvr"].to_numpy()
        assert ((q > 0) & (q < 1)).all()
        # The funnel's impressions and clicks are the rows and labels of funnel=False.
        plain = pq.read_table(data / s)
        assert t["click"].equals(plain["label"])
        assert t.drop_columns(["click", "conversion", "teacher_p_cvr"]).equals(plain.drop_columns(["label"]))


def test_conversion_implies_click(funnel: Path) -> None:
    t = _all(funnel)
    y, v = t["click"].to_numpy(), t["conversion"].to_numpy()
    assert set(np.unique(v).tolist()) == {0, 1}
    assert not ((v == 1) & (y == 0)).any()


def test_funnel_rates_match_the_teacher(drawn: tuple[Teacher, tuple[np.ndarray, ...]]) -> None:
    _, (_, p, y, q, v) = drawn
    clicked = y == 1
    assert not (v[~clicked]).any()
    # Given the probabilities, counts are Poisson-binomial: variance sum p(1 - p).
    assert abs(y.sum() - p.sum()) < 5 * math.sqrt((p * (1 - p)).sum()), (y.mean(), p.mean())
    qc = q[clicked]
    assert abs(v.sum() - qc.sum()) < 5 * math.sqrt((qc * (1 - qc)).sum()), (v[clicked].mean(), qc.mean())
    # The CVR bias is fit on the 100,000-row probe so that the pCTR-weighted mean pCVR (the mean
    # among clicks) is target_cvr; the probe's effective size is n (mean p)^2 / mean(p^2).
    probe_n = 100_000 * p.mean() ** 2 / (p**2).mean()
    se = qc.std() * math.sqrt(1 / clicked.sum() + 1 / probe_n)
    assert abs(qc.mean() - 0.08) < 5 * se, (qc.mean(), se)


def test_cvr_depends_on_the_features_otherwise_than_ctr(
    drawn: tuple[Teacher, tuple[np.ndarray, ...]],
) -> None:
    teacher, (c, p, y, q, _) = drawn
    assert abs(np.corrcoef(p, q)[0, 1]) < 0.5
    assert q.std() > 0.03  # pCVR varies: a near-constant one would make the checks here vacuous
    # Selection bias: were the clicked rows a random sample, their mean pCVR would differ from all
    # rows' by sampling noise alone, of variance var(q) (1 / n_clicked - 1 / n).
    clicked = y == 1
    gap = q[clicked].mean() - q.mean()
    assert abs(gap) > 5 * math.sqrt(q.var() * (1 / clicked.sum() - 1 / len(q))), gap
    # On the clickbait fields the values that raise pCTR lower pCVR: rows in the top quarter of
    # those fields' CTR effects have a higher mean pCTR and a lower mean pCVR than the bottom quarter.
    assert len(teacher.clickbait) == N_CLICKBAIT
    bait = sum(teacher.w[f][c[f]] for f in teacher.clickbait)
    lo, hi = bait <= np.quantile(bait, 0.25), bait >= np.quantile(bait, 0.75)
    for r, sign in ((p, 1), (q, -1)):
        diff = r[hi].mean() - r[lo].mean()
        se = math.sqrt(r[hi].var() / hi.sum() + r[lo].var() / lo.sum())
        assert sign * diff > 5 * se, (sign, diff, se)


def test_funnel_same_seed_same_rows_other_seed_other_rows(funnel: Path, tmp_path: Path) -> None:
    again = _write(tmp_path / "again", funnel=True)
    for s in SPLITS:  # the same machine: the same bits
        assert pq.read_table(again / s).equals(pq.read_table(funnel / s)), s
    other = _write(tmp_path / "other", funnel=True, seed=1)
    a, b = pq.read_table(funnel / "train"), pq.read_table(other / "train")
    for col in ("teacher_p_cvr", "conversion", "C1"):
        assert not np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col


def test_funnel_rows_of_n_are_a_prefix_of_rows_of_2n(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features.datasets.synthetic, "CHUNK_ROWS", 1_000)
    short = list(Teacher(SyntheticConfig(rows=3_000, funnel=True)).funnel_chunks())
    long = list(Teacher(SyntheticConfig(rows=6_000, funnel=True)).funnel_chunks())
    assert len(short) == 3 and len(long) == 6
    for a, b in zip(short, long, strict=False):
        for u, v in zip(a[1:], b[1:], strict=True):
            np.testing.assert_array_equal(u, v)


def test_recorded_funnel_metrics_match_the_stored_columns(funnel: Path) -> None:
    teacher = dataset_info(funnel)["teacher"]
    for s in SPLITS:
        t = pq.read_table(funnel / s)
        p, y = t["teacher_p"].to_numpy(), t["click"].to_numpy()
        q, v = t["teacher_p_cvr"].to_numpy(), t["conversion"].to_numpy()
        k = y == 1
        assert teacher[s]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)  # ctr, as without funnel
        want = {"ctr": (p, y), "cvr": (q[k], v[k]), "ctcvr": (p * q, v)}
        for task, (pt, yt) in want.items():
            got = teacher[s]["tasks"][task]
            assert got["rows"] == len(yt), (s, task)
            assert got["auc"] == pytest.approx(roc_auc_score(yt, pt), abs=1e-6), (s, task)
            assert got["logloss"] == pytest.approx(log_loss(yt, pt), abs=1e-6), (s, task)
        rates = teacher[s]["rates"]
        assert rates["click"] == pytest.approx(y.mean(), abs=1e-12)
        assert rates["conversion_per_click"] == pytest.approx(v[k].mean(), abs=1e-12)
        assert rates["conversion"] == pytest.approx(v.mean(), abs=1e-12)
        assert rates["mean_pcvr_clicked"] == pytest.approx(q[k].mean(), abs=1e-6)
        assert rates["mean_pcvr_all"] == pytest.approx(q.mean(), abs=1e-6)


@pytest.mark.parametrize(
    "kw", [{"target_cvr": 0.0}, {"target_cvr": 1.0}, {"cvr_shared": 1.5}, {"cvr_shared": -0.1},
           {"cvr_clickbait": -1.0}, {"cvr_clickbait": math.inf}, {"cvr_clickbait": math.nan}],
)  # fmt: skip
def test_funnel_config_is_checked(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        SyntheticConfig(funnel=True, **kw)


def test_funnel_has_no_tsv_form(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="funnel"):
        write_synthetic_tsv(tmp_path / "f.tsv", SyntheticConfig(rows=100, funnel=True), progress=False)
    with pytest.raises(ValueError, match="funnel"):
        Teacher(SyntheticConfig(rows=100)).cvr_logit(
            np.zeros((1, N_DENSE)), np.zeros((N_CAT, 1), dtype=np.int64)
        )
