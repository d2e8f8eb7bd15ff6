"""The demo: synthetic data -> train -> evaluate -> calibrate -> bidding replay, as library calls.

Example:
    >>> run_demo("build/demo", rows=250_000)   # prints each step's tables
"""

from __future__ import annotations

from pathlib import Path


def run_demo(out: str | Path, rows: int = 250_000, overwrite: bool = False) -> None:
    """Writes synthetic Criteo-shaped data from a known teacher under `out`, trains the MLP
    baseline on it, and prints the test metrics, the calibration report and a bidding replay on
    the test split.

    Args:
        out: directory for the data (`synthetic/`) and the checkpoint (`mlp/`).
        rows: rows in all (80% train, 10% valid, 10% test).
        overwrite: replace the data and checkpoint of an earlier demo there.
    """
    from features.datasets.synthetic import SyntheticConfig, write_synthetic
    from rankers.bidding.fit import calibrate_checkpoint
    from rankers.bidding.run import BidConfig, bid_report
    from rankers.config import RankerConfig, TrainConfig
    from rankers.results import results_table
    from rankers.train import train

    out = Path(out)
    data, ckpt = out / "synthetic", out / "mlp"
    print(f"1/4 synthetic Criteo-shaped data from a known teacher -> {data}")
    write_synthetic(data, SyntheticConfig(rows=rows, min_count=10), overwrite=overwrite)
    print(f"2/4 training the MLP baseline -> {ckpt}")
    ranker_config = RankerConfig(backbone="mlp", embedding_dim=16)
    config = TrainConfig(epochs=3, batch_size=1024, embedding_lr=0.02)
    result = train(data, ckpt, ranker_config, config, overwrite=overwrite)
    print("3/4 evaluation (test rows never seen in training or early stopping)\n")
    print(results_table(result, "mlp"))
    print("\n4/4 calibration on the valid split, then a bidding replay on the test split\n")
    text, saved = calibrate_checkpoint(ckpt)
    print(text + "\nsaved " + ", ".join(map(str, saved)))
    length = max(20, min(1000, rows // 10 // 20))  # the test split (10%) as 20 or more episodes
    print(bid_report(BidConfig(data=data / "test", predictor=ckpt, goal="click", episode_length=length)))
