"""A table with a column of every role a spec can name, made here (deterministic, seeded): the input of
the `rankers convert table` tests and of predicting from raw rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

SPEC = """
keys = ["request_id"]
group = "user"
time = "ts"

[split]
by = "time"
fractions = [0.7, 0.15, 0.15]

[[label]]
column = "click"
task = "ctr"

[[label]]
column = "buy"
task = "cvr"

[[dense]]
column = "age"
transform = "standardise"

[[dense]]
column = "price"
transform = "log1p"

[[dense]]
column = "score"
transform = "bucketize"
buckets = 4

[[categorical]]
columns = ["user", "item_id", "cate_id"]

[[categorical]]
column = "city"
hash_buckets = 16

[[multi]]
column = "tags"
delimiter = "|"

[[sequence]]
column = "hist_item_id"
delimiter = "^"
max_len = 5
table = "item_id"

[[sequence]]
column = "hist_cate_id"
delimiter = "^"
max_len = 5
table = "cate_id"
"""


def make_rows(n: int, seed: int = 0, first_ts: int = 1_700_000_000) -> list[dict[str, object]]:
    """`n` rows, one a minute from `first_ts`: a click is likelier when the item is in the history
    (what DIN attends to), for some users, and with tag "a"; a buy only after a click."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        user, item = int(rng.integers(0, 50)), int(rng.integers(0, 40))
        hist = rng.integers(0, 40, size=int(rng.integers(0, 8)))
        tags = rng.choice(["a", "b", "c", "d"], size=int(rng.integers(0, 3)), replace=False)
        price = float(rng.exponential(20)) if rng.random() > 0.1 else None
        logit = 3.0 * (item in set(hist.tolist())) + 1.5 * (user % 3 == 0) - 1.5 + 1.0 * ("a" in tags)
        click = int(rng.random() < 1 / (1 + np.exp(-logit)))
        rows.append(
            {
                "request_id": f"r{seed}-{i:05d}",
                "ts": first_ts + i * 60,
                "user": f"u{user}",
                "age": int(rng.integers(18, 70)),
                "price": "" if price is None else f"{price:.2f}",
                "score": f"{rng.random():.3f}",
                "city": f"city{int(rng.integers(0, 30))}",
                "item_id": item,
                "cate_id": item % 7,
                "tags": "|".join(tags),
                "hist_item_id": "^".join(map(str, hist)),
                "hist_cate_id": "^".join(str(h % 7) for h in hist),
                "click": click,
                "buy": int(click and rng.random() < 0.3),
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def din_layout(n: int, seed: int = 1) -> pa.Table:
    """The layout DIN examples in other libraries use (`din_layout.toml` beside this file): label,
    user_id, gender, age, item_id, cate_id, and histories as list<int64>. A click is likelier for an
    item of a category in the history, and for three categories."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, 30, n)
    hist = [rng.integers(1, 30, size=int(rng.integers(1, 8))).tolist() for _ in range(n)]
    label = [
        int(rng.random() < (0.75 if i % 9 in {x % 9 for x in h} else 0.1) + 0.1 * (i % 9 < 3))
        for i, h in zip(items, hist, strict=True)
    ]
    return pa.table(
        {
            "label": label,
            "user_id": rng.integers(0, 40, n),
            "gender": rng.integers(0, 2, n),
            "age": rng.integers(0, 6, n),
            "item_id": items,
            "cate_id": items % 9,
            "hist_item_id": pa.array(hist, pa.list_(pa.int64())),
            "hist_cate_id": pa.array([[x % 9 for x in h] for h in hist], pa.list_(pa.int64())),
        }
    )


def convert_din_layout(directory: Path, n: int) -> tuple[pa.Table, Path]:
    """(`din_layout(n)`, its dataset converted by `din_layout.toml` under `directory`)."""
    import pyarrow.parquet as pq

    from features.datasets.table import convert_table
    from features.spec import load_spec

    table = din_layout(n)
    pq.write_table(table, directory / "din.parquet")
    spec = load_spec(Path(__file__).with_name("din_layout.toml"))
    return table, convert_table(directory / "din.parquet", spec, directory / "d", progress=False)
