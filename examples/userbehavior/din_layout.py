"""Writes the "DIN layout" parquet (label, user_id, item_id, cate_id, hist_item_id, hist_cate_id;
histories list<int64>, oldest first) from a Taobao UserBehavior CSV, for examples/userbehavior/spec.toml:

    python examples/userbehavior/din_layout.py ../shared/data/taobao/UserBehavior_head_650users.csv ub.parquet

What it does, and no more: each user's behaviours (any type) are ordered by time (ties in file order);
every behaviour after the user's first is a positive (label 1, its item and category) and gets one
negative (label 0): an item drawn uniformly from every item of the file (never the positive's item;
it may be one the user saw), with that item's first category. Both share the history: the items and
categories of the user's earlier behaviours (same-second ones included), the `MAX_LEN` most recent.
Raw ids are kept. `rankers convert userbehavior` does this properly (behaviours strictly earlier in
time, day-based splits, a conversion label, calendar checks); this script only shows the layout.
"""

import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq

MAX_LEN = 50


def main(src: str, dst: str, seed: int = 0) -> None:
    names = ["user_id", "item_id", "cate_id", "behavior", "ts"]
    t = pv.read_csv(src, read_options=pv.ReadOptions(column_names=names)).to_pydict()
    rows = sorted(range(len(t["ts"])), key=lambda i: (t["user_id"][i], t["ts"][i], i))
    cate: dict[int, int] = {}
    for item, c in zip(t["item_id"], t["cate_id"], strict=True):
        cate.setdefault(item, c)  # an item's first category in file order
    items, rng = np.array(list(cate)), np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in ("label", "user_id", "item_id", "cate_id")}
    out |= {"hist_item_id": [], "hist_cate_id": []}
    for k, i in enumerate(rows):
        user = t["user_id"][i]
        first = k
        while first > 0 and t["user_id"][rows[first - 1]] == user and k - first < MAX_LEN:
            first -= 1
        if first == k:
            continue  # the user's first behaviour: no history
        hist = [t["item_id"][j] for j in rows[first:k]]
        neg = int(rng.choice(items))
        while neg == t["item_id"][i]:
            neg = int(rng.choice(items))
        for label, item in ((1, t["item_id"][i]), (0, neg)):
            for key, value in zip(
                out, (label, user, item, cate[item], hist, [cate[h] for h in hist]), strict=True
            ):
                out[key].append(value)
    types = [pa.int8(), pa.int64(), pa.int64(), pa.int64(), pa.list_(pa.int64()), pa.list_(pa.int64())]
    pq.write_table(pa.table({k: pa.array(v, ty) for (k, v), ty in zip(out.items(), types, strict=True)}), dst)
    print(f"{dst}: {len(out['label'])} rows ({len(out['label']) // 2} positives), {len(items)} items")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
