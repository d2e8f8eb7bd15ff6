"""Seeded synthetic Criteo-shaped data from a known teacher, so the best achievable AUC is known.

Rows have 13 integer counts (I1..I13) and 26 categorical fields (C1..C26) with Zipf-like value
frequencies and Criteo-like missing rates. The teacher's logit is

    z = b + sum_f w_f[c_f] + sum_j a_j * t(x_j) + sum_(f,g) <u_f[c_f], u_g[c_g]> + h * t(x_1) * w'_f1[c_f1]

with per-value field effects w, a linear term in t(x) = sign(x) log1p(|x|) (0 when missing), rank-4
pairwise interactions between chosen field pairs, and one dense-by-categorical interaction. Every
value, missing included, has its own effect; effects (w and u alike) shrink along each field's long
tail, so most of the signal sits on values frequent enough to be learned. Labels are
Bernoulli(sigmoid(z)) and every row carries its true probability `teacher_p`, so the teacher's AUC
and LogLoss on any split are the best any model can reach there.

With `funnel=True` the rows are impressions of a funnel (impression -> click -> conversion): the
click is drawn as above and a conversion ~ Bernoulli(sigmoid(z_cvr)) only where the click is 1, so a
conversion implies a click. The CVR teacher's logit is its own function of the same features,

    z_cvr = b' + sum_(f not in K) [s w_f[c_f] + sqrt(1 - s^2) v_f[c_f]] - k sum_(f in K) w_f[c_f]
            + sum_j a'_j t(x_j)

with s = `cvr_shared`, independent per-value effects v drawn as w is (same per-field std and tail
shrinkage, so the mixed term keeps w's variance and s is its correlation with w), a dense weight
vector a' of its own, and no interaction terms. K are the N_CLICKBAIT fields whose effects move the
CTR logit most, entering with weight -k (k = `cvr_clickbait`): values that draw clicks there lower
the chance of a conversion. So the clicked impressions are a biased sample of all impressions (the
sample selection bias of ESMM, Ma et al. 2018): their mean pCVR differs from all impressions', and a
CVR model fit on clicked rows alone is biased on the others. Every impression carries both true
probabilities, `teacher_p` (pCTR) and `teacher_p_cvr` (pCVR); pCTR * pCVR is its pCTCVR.

Rows are generated in chunks seeded by (seed, chunk index), so the same seed gives the same rows
whatever the consumer does, and memory stays bounded but for the teacher's metrics, which keep 5
bytes a row (p as float32, the label as int8; 10 with the funnel): 10M rows need about 50 MB (100).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from features.convert import Plan, check_integers, check_numbers, check_split, convert
from features.datasets.teacher import fit_bias, row_splits, sigmoid, teacher_plan
from features.datasets.teacher import teacher_scores as teacher_scores  # public here before teacher.py
from features.schema import CategoricalFeature, DenseFeature, Label, Schema

N_DENSE, N_CAT = 13, 26
# Criteo Kaggle cardinalities of C1..C26, capped by `max_vocab`.
CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
# Approximate missing rates in the Criteo Kaggle training data.
DENSE_MISSING = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22)
CAT_MISSING = (0, 0, 0.03, 0.03, 0, 0.12, 0, 0, 0, 0, 0, 0.03, 0, 0, 0, 0.03, 0, 0, 0.44, 0.44,
               0.03, 0.76, 0, 0.03, 0.44, 0.44)  # fmt: skip
CHUNK_ROWS = 262_144
# Fields of the CVR teacher on which values that raise pCTR lower pCVR (the funnel's clickbait).
N_CLICKBAIT = 4
PROBE_ROWS = 100_000  # rows on which the teachers' biases are fit; fixed so they do not depend on `rows`


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape and teacher of the synthetic data."""

    rows: int = 200_000  # total rows over all splits
    seed: int = 0  # seeds the teacher and the rows
    max_vocab: int = 100_000  # caps each field's cardinality (Criteo's reach 10M)
    zipf: float = 1.2  # value frequency ~ 1 / rank^zipf
    field_scale: float = 0.8  # std of per-value field effects, spread over fields
    n_pairs: int = 8  # field pairs with a rank-4 interaction
    pair_scale: float = 0.2  # std of each interaction term
    tail_rank: float = 100.0  # value effects (field and interaction) shrink beyond about this rank
    min_count: int = 1  # values seen fewer times in the train split map to the shared rare id 1
    target_ctr: float = 0.22  # the bias is set so the mean probability is about this
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/valid/test by row order (rows are iid)
    funnel: bool = False  # impressions -> clicks -> conversions, labels `click` (ctr), `conversion` (cvr)
    target_cvr: float = 0.08  # funnel: the CVR bias is set so the mean pCVR among clicks is about this
    cvr_shared: float = 0.5  # funnel: correlation of the CVR field effects with the CTR ones, in [0, 1]
    cvr_clickbait: float = 1.0  # funnel: weight of -(CTR field effects) on the N_CLICKBAIT fields

    def __post_init__(self) -> None:
        check_integers(self, {"rows": 1, "max_vocab": 2, "min_count": 1})
        check_split(self.split)
        intervals = {"target_ctr": "(0, 1)", "target_cvr": "(0, 1)", "cvr_shared": "[0, 1]"}
        check_numbers(self, intervals | {"cvr_clickbait": "[0, inf)"})

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(min(c, self.max_vocab) for c in CRITEO_CARDINALITIES)


class Teacher:
    """The ground-truth model: draws rows and their true click (and, for a funnel, conversion)
    probabilities."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        card = config.cardinalities
        # Inverse-CDF tables for Zipf-like sampling of value ranks.
        self.cdfs = [np.cumsum(1.0 / np.arange(1, v + 1) ** config.zipf) for v in card]
        self.cdfs = [c / c[-1] for c in self.cdfs]
        importance = rng.uniform(0.2, 1.0, N_CAT)
        scale = config.field_scale * importance / np.sqrt(np.mean(importance**2) * N_CAT / 4)
        # Index 0 of each table is the effect of "missing"; 1..V the values by frequency rank.
        # Effects shrink along the long tail (std ~ (1 + rank / tail_rank)^-1/2): rare values sit
        # closer to the field's mean, as empirical-Bayes estimates of real rare values do. The
        # interaction vectors u shrink the same way.
        tail = [np.concatenate([[1.0], (1 + np.arange(1, v + 1) / config.tail_rank) ** -0.5]) for v in card]
        self.w = [rng.normal(0, s, v + 1) * tail[f] for f, (s, v) in enumerate(zip(scale, card, strict=True))]
        self.a = rng.normal(0, 0.15, N_DENSE)
        self.mu = rng.uniform(0.0, 3.0, N_DENSE)
        self.sigma = rng.uniform(0.5, 1.5, N_DENSE)
        self.pairs = [tuple(rng.choice(N_CAT, 2, replace=False)) for _ in range(config.n_pairs)]
        self.u = {
            f: rng.normal(0, np.sqrt(config.pair_scale / 2), (card[f] + 1, 4)) * tail[f][:, None]
            for f in sorted({f for p in self.pairs for f in p})
        }
        self.h, self.h_field = 0.3, int(rng.integers(N_CAT))
        self.wh = rng.normal(0, 1.0, card[self.h_field] + 1)
        self.bias = 0.0
        x, c, z = self.draw(PROBE_ROWS, chunk=-1)  # fixed size: the bias must not depend on `rows`
        self.bias = fit_bias(z, config.target_ctr)
        if config.funnel:
            self._init_cvr(x, c, sigmoid(z + self.bias), [scale[f] * tail[f] for f in range(N_CAT)])

    def _init_cvr(self, x: np.ndarray, c: np.ndarray, p: np.ndarray, std: list[np.ndarray]) -> None:
        """Draws the CVR teacher from its own stream, so the CTR teacher and rows stay those of
        `funnel=False`, and fits its bias on the probe rows (counts x, ranks c, pCTR p); `std` holds
        the per-value std of w, which the own effects v share."""
        config = self.config
        rng = np.random.default_rng([config.seed, 4])
        spread = [self.w[f][c[f]].var() for f in range(N_CAT)]
        self.clickbait = tuple(sorted(int(f) for f in np.argsort(spread)[-N_CLICKBAIT:]))
        own = np.sqrt(1 - config.cvr_shared**2)
        self.w_cvr = [
            -config.cvr_clickbait * self.w[f]
            if f in self.clickbait
            else config.cvr_shared * self.w[f] + own * rng.normal(0, 1, len(std[f])) * std[f]
            for f in range(N_CAT)
        ]
        self.a_cvr = rng.normal(0, 0.3, N_DENSE)
        self.bias_cvr = 0.0
        # The mean pCVR among clicks is E[pCTR pCVR] / E[pCTR]: a pCTR-weighted mean.
        self.bias_cvr = fit_bias(self.cvr_logit(x, c), config.target_cvr, weight=p)

    def draw(self, n: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n rows of chunk `chunk`: counts (n, 13) float64 with NaN for missing, categorical ranks
        (26, n) int64 with 0 for missing and 1..V for values, and the teacher's logits (n,)."""
        rng = np.random.default_rng([self.config.seed, 1, chunk + 1])
        x = np.floor(np.exp(rng.normal(self.mu, self.sigma, (n, N_DENSE)))) - 1  # counts from -1
        x[rng.random((n, N_DENSE)) < np.array(DENSE_MISSING)] = np.nan
        c = np.empty((N_CAT, n), dtype=np.int64)
        for f in range(N_CAT):
            c[f] = np.searchsorted(self.cdfs[f], rng.random(n), side="right") + 1
            c[f][rng.random(n) < CAT_MISSING[f]] = 0
        t = _transform(x)
        z = self.bias + (t - self.mu) @ self.a
        for f in range(N_CAT):
            z += self.w[f][c[f]]
        for f, g in self.pairs:
            z += np.einsum("nk,nk->n", self.u[f][c[f]], self.u[g][c[g]])
        z += self.h * (t[:, 0] - self.mu[0]) * self.wh[c[self.h_field]] / 2
        return x, c, z

    def cvr_logit(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The CVR teacher's logits (n,) of counts x (n, 13) and ranks c (26, n), as `draw` gives."""
        if not self.config.funnel:
            raise ValueError("cvr_logit: the teacher has no CVR part (config.funnel is False)")
        z = self.bias_cvr + (_transform(x) - self.mu) @ self.a_cvr
        for f in range(N_CAT):
            z += self.w_cvr[f][c[f]]
        return z

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yields (first row, counts, ranks, true probabilities, labels) chunk by chunk."""
        for i, start in enumerate(range(0, self.config.rows, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, self.config.rows - start)
            x, c, z = self.draw(n, chunk=i)
            p = sigmoid(z)
            y = (np.random.default_rng([self.config.seed, 2, i]).random(n) < p).astype(np.int8)
            yield start, x, c, p, y

    def funnel_chunks(
        self,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yields (first row, counts, ranks, pCTR, clicks, pCVR, conversions) chunk by chunk; rows,
        pCTR and clicks are those of `chunks`. Every impression draws a uniform (so the draws do not
        depend on the clicks), kept as a conversion only where it clicked."""
        for i, (start, x, c, p, y) in enumerate(self.chunks()):
            q = sigmoid(self.cvr_logit(x, c))
            u = np.random.default_rng([self.config.seed, 5, i]).random(len(y))
            v = ((u < q) & (y == 1)).astype(np.int8)
            yield start, x, c, p, y, q, v


def _transform(x: np.ndarray) -> np.ndarray:
    """Counts -> sign(x) log1p(|x|), 0 where missing."""
    return np.nan_to_num(np.sign(x) * np.log1p(np.abs(x)))


def synthetic_schema(config: SyntheticConfig) -> Schema:
    """The features and labels: `label` (ctr), or for a funnel `click` (ctr) and `conversion` (cvr);
    a model that needs ctcvr derives it from these two."""
    labels = (Label("click", task="ctr"), Label("conversion", task="cvr")) if config.funnel else None
    return Schema(
        dense=tuple(DenseFeature(f"I{j + 1}") for j in range(N_DENSE)),
        categorical=tuple(
            CategoricalFeature(f"C{f + 1}", num_embeddings=v + 2) for f, v in enumerate(config.cardinalities)
        ),
        labels=labels or (Label("label", task="ctr"),),
    )


def write_synthetic(
    out: str | Path,
    config: SyntheticConfig = SyntheticConfig(),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes a parquet dataset of `config.rows` teacher rows, split by row order.

    Ids as the Criteo converter's (`features.vocabulary`): values seen fewer than `min_count` times
    in the train split (or never) are rare; the others numbered by frequency rank. Dense columns
    hold sign(x) log1p(|x|), 0 for missing. Besides the schema's columns each row holds
    `teacher_p`, its true (click) probability, and for a funnel `teacher_p_cvr`, its true conversion
    probability given a click (float64, as the teacher computes them; they are no features).
    dataset.json records the teacher's AUC, LogLoss and click rate per split; for a funnel also,
    under `tasks`, its AUC and LogLoss for ctr (all rows), cvr (clicked rows, pCVR against
    conversion) and ctcvr (all rows, pCTR * pCVR against conversion), and under `rates` the click and
    conversion rates and the mean pCVR over clicked and over all rows (their gap is the selection bias).
    """

    def plan(_: ExitStack) -> Plan:
        teacher = Teacher(config)
        kept = _frequent_values(teacher, row_splits(config.rows, config.split)[0][2])  # unseen in train: rare
        return teacher_plan(config, synthetic_schema(config), _chunk_tables(teacher, kept))

    return convert("synthetic", "synthetic", config, out, plan, (), overwrite, progress)


def _chunk_tables(
    teacher: Teacher, kept: list[np.ndarray]
) -> Iterator[tuple[pa.Table, dict[str, np.ndarray]]]:
    """Yields (the chunk's columns: labels, features, true probabilities; what the teacher's
    figures keep of it: p and y, for a funnel q (pCVR) and v (conversions), probabilities as
    float32: 5 bytes a row, 10 for a funnel)."""
    funnel = teacher.config.funnel
    chunks = teacher.funnel_chunks() if funnel else ((*c, None, None) for c in teacher.chunks())
    for _, x, c, p, y, q, v in chunks:
        cols = {"click": pa.array(y), "conversion": pa.array(v)} if funnel else {"label": pa.array(y)}
        t = _transform(x).astype(np.float32)
        cols |= {f"I{j + 1}": pa.array(t[:, j]) for j in range(N_DENSE)}
        for f in range(N_CAT):
            # rank r -> id r + 1 (id 1 is the rare id); missing (rank 0) -> id 0
            cols[f"C{f + 1}"] = pa.array(np.where(c[f] == 0, 0, np.where(kept[f][c[f]], c[f] + 1, 1)))
        cols["teacher_p"] = pa.array(p)
        scored = {"p": p.astype(np.float32), "y": y}
        if funnel:
            assert q is not None and v is not None
            cols["teacher_p_cvr"] = pa.array(q)
            scored |= {"q": q.astype(np.float32), "v": v}
        yield pa.table(cols), scored


def _frequent_values(teacher: Teacher, n_train: int) -> list[np.ndarray]:
    """Per field, a bool per value rank (0 = missing): whether it occurs at least min_count times
    in the first n_train rows (one extra pass of the generator over the training rows)."""
    card = teacher.config.cardinalities
    counts = [np.zeros(v + 1, dtype=np.int64) for v in card]
    for start, _, c, _, _ in teacher.chunks():
        if start >= n_train:
            break
        c = c[:, : n_train - start]
        for f in range(N_CAT):
            counts[f] += np.bincount(c[f], minlength=card[f] + 1)
    return [n >= teacher.config.min_count for n in counts]


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex8(v: np.ndarray) -> pa.Array:
    """Integers < 2^32 -> 8-digit lowercase hex strings (as Criteo's hashed values), vectorised."""
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    digits = _HEX[(v.astype(np.uint32)[:, None] >> shifts) & 0xF]  # (n, 8) uint8
    return pa.array(digits.view("S8").ravel()).cast(pa.string())


def write_synthetic_tsv(
    path: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True
) -> Path:
    """Writes the same rows as Criteo Kaggle TSV (label, I1..I13, C1..C26; blank when missing),
    categorical values as 8-digit hex hashes, for converter tests and benchmarks. The true
    probabilities go to `<path>.teacher_p.npy` in row order. The Criteo format has one label, so a
    funnel config raises ValueError."""
    if config.funnel:
        raise ValueError("write_synthetic_tsv: funnel=True has two labels; the Criteo TSV format holds one")
    teacher = Teacher(config)
    path = Path(path)
    probs = np.lib.format.open_memmap(f"{path}.teacher_p.npy", "w+", np.float64, (config.rows,))
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    salt = np.random.default_rng([config.seed, 3]).integers(1, 2**31, N_CAT, dtype=np.uint64)
    with (
        pa.OSFile(str(path), "wb") as sink,
        tqdm(
            desc="synthetic tsv", total=config.rows, unit="rows", unit_scale=True, disable=not progress
        ) as b,
    ):
        for start, x, c, p, y in teacher.chunks():
            cols = {"label": pa.array(y)}
            for j in range(N_DENSE):
                cols[f"I{j + 1}"] = pa.array(x[:, j], mask=np.isnan(x[:, j])).cast(pa.int64())
            hashed = (c.astype(np.uint64) * np.uint64(2654435761) + salt[:, None]) & np.uint64(0xFFFFFFFF)
            for f in range(N_CAT):
                missing = pa.array(c[f] == 0)
                cols[f"C{f + 1}"] = pc.if_else(missing, pa.scalar(None, pa.string()), _hex8(hashed[f]))
            pacsv.write_csv(pa.table(cols), sink, write_options=opts)
            probs[start : start + len(p)] = p
            b.update(len(y))
    probs.flush()
    return path
