"""The `rankers` command line, run in-process through `main`."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rankers.cli import main
from tests.conftest import shared_file


@pytest.mark.shared_data
def test_convert_train_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_file("criteo/train_head10k.tsv")
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    args = [
        "convert",
        "criteo",
        str(src),
        "--out",
        str(data),
        "--min-count",
        "10",
        "--split",
        "0.72,0.08,0.2",
    ]
    assert main([*args, "--split-by", "order"]) == 0
    assert "| train | 7,200 |" in capsys.readouterr().out

    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(ckpt),
                "--epochs",
                "1",
                "--hidden-units",
                "16,8",
                "--batch-size",
                "512",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| mlp | test | ctr |" in out and "| constant prior | test | ctr |" in out

    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0
    assert "| checkpoint | test | ctr |" in capsys.readouterr().out

    # New unlabeled rows mapped with the training vocabularies, then scored.
    new = tmp_path / "new"
    unlabeled = shared_file("criteo/test_unlabeled_head10k.tsv")
    assert main(["convert", "criteo", str(unlabeled), "--out", str(new), "--vocabulary-from", str(data)]) == 0
    preds = tmp_path / "p.parquet"
    predict = ["predict", "--checkpoint", str(ckpt), "--data", str(new / "unlabeled"), "--out", str(preds)]
    assert main(predict) == 0
    table = pq.read_table(preds)
    assert table.column_names == ["p_ctr"] and table.num_rows == 10_000


def test_errors_are_one_line_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "none: not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--backbone", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--hidden-units", "a,b"])
    assert "hidden-units" in capsys.readouterr().err


def test_toml_config_sets_fields_and_flags_override(synthetic_small: Path, tmp_path: Path) -> None:
    import json

    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nepochs = 1\nmax_steps = 2\nprogress = false\n[backbone]\nhidden_units = [8]\n")
    ckpt = tmp_path / "ck"
    assert (
        main(
            [
                "train",
                "--data",
                str(synthetic_small),
                "--out",
                str(ckpt),
                "--config",
                str(toml),
                "--dropout",
                "0.1",
            ]
        )
        == 0
    )
    config = json.loads((ckpt / "config.json").read_text())
    assert config["ranker"]["backbone_config"] == {"hidden_units": [8], "dropout": 0.1, "batch_norm": False}
    assert config["train"]["max_steps"] == 2
    toml.write_text("[train]\nepoch = 1\n")
    assert main(["train", "--data", str(synthetic_small), "--out", str(ckpt), "--config", str(toml)]) == 2


@pytest.mark.parametrize(
    ("backbone", "extra", "recorded"),
    [
        ("autoint", ["--attention-layers", "2", "--num-heads", "2", "--attention-dim", "8"], "autoint"),
        ("autoint_plus", ["--dnn-units", "16"], "autoint_plus"),
        ("finalmlp", ["--fs1-context", "I1,C3", "--num-heads", "4"], "finalmlp"),
        # The preset's model at full size; its training settings, with these flags on top.
        ("finalmlp_criteo_x1", ["--embedding-dim", "4"], "finalmlp"),
    ],
)
def test_train_any_backbone_or_preset(
    synthetic_small: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backbone: str,
    extra: list[str],
    recorded: str,
) -> None:
    import json

    ckpt = tmp_path / "ck"
    args = ["train", "--data", str(synthetic_small), "--out", str(ckpt), "--backbone", backbone]
    flags = ["--epochs", "1", "--max-steps", "3", "--batch-size", "256", "--no-progress", *extra]
    assert main([*args, *flags]) == 0
    assert f"| {backbone} | test | ctr |" in capsys.readouterr().out
    config = json.loads((ckpt / "config.json").read_text())
    assert config["ranker"]["backbone"] == recorded
    if backbone == "finalmlp_criteo_x1":
        assert config["ranker"]["preset"] == backbone and config["ranker"]["embedding_dim"] == 4
        assert config["ranker"]["backbone_config"]["num_heads"] == 200
        assert config["ranker"]["embedding_l2"] == 1e-5
        assert config["train"]["lr_decay"] == 0.1 and config["train"]["batch_size"] == 256
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0


def test_flags_of_another_backbone_are_refused(synthetic_small: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(synthetic_small), "--out", str(tmp_path / "o"), "--backbone", "autoint"]
    assert main([*args, "--fs1-context", "C1"]) == 2


@pytest.mark.shared_data
def test_convert_taobao_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from features.schema import Schema

    src = shared_file("taobao/UserBehavior_head_650users.csv")
    assert main(["convert", "userbehavior", str(src), "--out", str(tmp_path / "ub"), "--max-len", "20"]) == 0
    assert "| test | 18,366 |" in capsys.readouterr().out
    schema = Schema.load(tmp_path / "ub")
    assert schema.tasks == ("ctr", "cvr") and schema.sequences[0].max_len == 20
    assert [lab.name for lab in schema.labels] == ["click", "conversion"]
    src = shared_file("taobao/alimama_joined_sample100.csv")
    args = ["convert", "taobao-ad", str(src), "--out", str(tmp_path / "ad"), "--split-by", "random"]
    assert main([*args, "--split", "0.8,0.1,0.1"]) == 0
    assert "| train | 80 |" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "ad" / "test").column_names[-3:] == ["hist_adgroup_id", "click", "user"]
    assert main([*args[:3], "--out", str(tmp_path / "ad2"), "--layout", "dmr"]) == 2
    assert "the joined layout, but config layout is 'dmr'" in capsys.readouterr().err


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("source", "convert", "backbone"),
    [
        ("taobao/UserBehavior_head_650users.csv", ["userbehavior", "--max-len", "20"], "din"),
        ("taobao/UserBehavior_head_650users.csv", ["userbehavior", "--max-len", "20"], "dien"),
        # about 10 validation rows without a click: AUC cannot select the epoch there, LogLoss can
        (
            "taobao/alimama_joined_sample100.csv",
            ["taobao-ad", "--split-by", "random"],
            "din --monitor-metric logloss",
        ),
        (
            "taobao/alimama_dmr_sample99.csv",
            ["taobao-ad", "--split-by", "random"],
            "dien --monitor-metric logloss",
        ),
        # the unpooled EmbeddingCollection lookup, sharded through DistributedModelParallel too
        (
            "taobao/alimama_dmr_sample99.csv",
            ["taobao-ad", "--split-by", "random"],
            "din --sequence-lookup collection --monitor-metric logloss",
        ),
    ],
)
def test_taobao_sources_train_din_and_dien_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, convert: list[str], backbone: str
) -> None:
    import json

    data, ckpt = tmp_path / "data", tmp_path / "ck"
    assert main(["convert", convert[0], str(shared_file(source)), "--out", str(data), *convert[1:]]) == 0
    backbone, *extra = backbone.split()
    args = ["train", "--data", str(data), "--out", str(ckpt), "--backbone", backbone, "--tasks", "ctr"]
    flags = ["--epochs", "2", "--max-steps", "6", "--batch-size", "64", "--no-progress", *extra]
    assert main([*args, *flags]) == 0
    out = capsys.readouterr().out
    assert f"| {backbone} | test | ctr |" in out and "gAUC" in out
    lookup = "collection" if "collection" in extra else "bag"
    assert json.loads((ckpt / "config.json").read_text())["ranker"]["sequence_lookup"] == lookup
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ctr"} and "gauc" in metrics["test"]["ctr"]
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0


@pytest.mark.shared_data
def test_convert_aliexpress_and_aliccp_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from features.schema import Schema

    train, test = shared_file("aliexpress/train_1k.csv"), shared_file("aliexpress/test_1k.csv")
    args = ["convert", "aliexpress", str(train), "--test", str(test), "--out", str(tmp_path / "ax")]
    assert main([*args, "--min-count", "2", "--valid-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "| train | 800 |" in out and "| valid | 200 |" in out and "| test | 1,000 |" in out
    schema = Schema.load(tmp_path / "ax")
    assert schema.tasks == ("ctr", "cvr") and schema.group == "search_id" and len(schema.categorical) == 16
    args = ["convert", "aliexpress", "--test", str(test), "--out", str(tmp_path / "ax2")]
    assert main([*args, "--vocabulary-from", str(tmp_path / "ax")]) == 0
    assert pq.read_table(tmp_path / "ax2" / "test").equals(pq.read_table(tmp_path / "ax" / "test"))

    files = [shared_file(f"ali_ccp/{s}_sample.csv") for s in ("train", "val", "test")]
    args = ["convert", "aliccp", str(files[0]), "--valid", str(files[1]), "--test", str(files[2])]
    assert main([*args, "--out", str(tmp_path / "cc")]) == 0
    out = capsys.readouterr().out
    assert "| train | 100 |" in out and "| valid | 50 |" in out and "| test | 50 |" in out
    schema = Schema.load(tmp_path / "cc")
    assert [lab.name for lab in schema.labels] == ["click", "conversion"] and schema.group == "101"
    raw = ["convert", "aliccp", str(tmp_path / "cc"), "--test", str(files[2]), "--out", str(tmp_path / "x")]
    assert main(raw) == 2  # a directory is the raw layout, which takes no --test file
    assert "valid/test files are for the encoded layout" in capsys.readouterr().err


def test_esmm_trains_from_the_cli_with_tower_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    data, ckpt = tmp_path / "funnel", tmp_path / "ck"
    args = ["convert", "synthetic", "--out", str(data), "--rows", "3000", "--funnel"]
    assert main(args) == 0
    tower = ["--ctr-tower", "mlp", "--cvr-tower", "autoint", "--cvr-config", '{"attention_layers": 1}']
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(ckpt),
        "--backbone",
        "esmm",
        *tower,
        "--monitor",
        "ctcvr",
    ]
    assert main([*args, "--epochs", "1", "--batch-size", "256", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for task in ("ctr", "cvr", "ctcvr"):
        assert f"| esmm | test | {task} |" in out
    config = json.loads((ckpt / "config.json").read_text())["ranker"]["backbone_config"]
    assert config["cvr_tower"] == "autoint" and dict(config["cvr_config"]) == {"attention_layers": 1}
    bad = [
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "x"),
        "--backbone",
        "esmm",
        "--cvr-config",
        "[1]",
    ]
    with pytest.raises(SystemExit):
        main(bad)


@pytest.mark.distributed
@pytest.mark.shared_data
def test_two_processes_match_one_and_their_checkpoint_loads_in_one(
    criteo_8k_2k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--nproc 2` (torchrun, gloo, a free port) on the Criteo sample: the same test AUC as one
    process with the same global batch and seed (within 0.005), and the row-wise sharded checkpoint
    it writes gives the single-process Predictor the same test metrics."""
    import json

    from rankers.predictor import Predictor

    common = ["--epochs", "3", "--batch-size", "256", "--embedding-lr", "0.02", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--data", str(criteo_8k_2k), "--out", str(one), *common]) == 0
    args = ["train", "--data", str(criteo_8k_2k), "--out", str(two), "--nproc=2", "--sharding", "row_wise"]
    assert main([*args, *common]) == 0
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert abs(m1["test"]["ctr"]["auc"] - m2["test"]["ctr"]["auc"]) < 0.005
    again = Predictor.load(two).evaluate(criteo_8k_2k / "test")["ctr"]
    assert again["auc"] == pytest.approx(m2["test"]["ctr"]["auc"], abs=1e-6)
    assert again["rows"] == m2["test"]["ctr"]["rows"]


@pytest.mark.shared_data
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(
    criteo_8k_2k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL after a checkpoint partway through an epoch, `--resume`, finish: the weights
    (predictions) and metrics equal an uninterrupted run's bit for bit (1 thread, CPU)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    from rankers.predictor import Predictor

    flags = [
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "7",
        "--no-progress",
        "--threads",
        "1",
    ]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "--data", str(criteo_8k_2k), "--out", str(whole), *flags]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "rankers",
        "train",
        "--data",
        str(criteo_8k_2k),
        "--out",
        str(cut),
        *flags,
    ]
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / ".cut.partial" / "state" / "progress.json"  # built beside --out until complete
    deadline, seen = time.monotonic() + 120, None
    while time.monotonic() < deadline and run.poll() is None:
        try:
            seen = json.loads(progress.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or being replaced
            seen = None
        if seen and seen["step"] > 0 and seen["epoch"] >= 1:  # mid-epoch, in the second epoch
            break
        time.sleep(0.005)
    assert run.poll() is None, "the run ended before a mid-epoch checkpoint could be seen"
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not cut.exists()  # nothing at --out until the run is complete
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(cut)]) == 2
    assert f"{tmp_path / '.cut.partial'} holds an unfinished run: --resume {cut}" in capsys.readouterr().err
    assert main(["train", "--data", str(criteo_8k_2k), "--out", str(cut), *flags]) == 2  # would discard it
    assert "holds an unfinished run" in capsys.readouterr().err
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    for row in (*a["history"], *b["history"]):
        row.pop("examples_per_s")
    assert a["history"] == b["history"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    pa, pb = (Predictor.load(d).predict_proba(criteo_8k_2k / "test")["ctr"] for d in (whole, cut))
    assert np.array_equal(pa, pb)
    capsys.readouterr()
    files = {f: f.read_bytes() for f in cut.rglob("*") if f.is_file()}
    assert main(["train", "--resume", str(cut)]) == 0  # finished: says so, trains nothing
    said = capsys.readouterr().out
    assert said.startswith(f"{cut}: the run is finished"), said
    assert said.rstrip().endswith("nothing to resume"), said
    assert {f: f.read_bytes() for f in cut.rglob("*") if f.is_file()} == files


def test_per_table_sharding_from_flags(synthetic_small: Path, tmp_path: Path) -> None:
    import json

    ckpt = tmp_path / "ck"
    args = ["train", "--data", str(synthetic_small), "--out", str(ckpt), "--epochs", "1", "--max-steps", "3"]
    tables = '{"C1": "data_parallel", "C2": "row_wise"}'
    assert main([*args, "--batch-size", "256", "--no-progress", "--sharding-tables", tables]) == 0
    plan = {row["table"]: row for row in json.loads((ckpt / "metrics.json").read_text())["sharding_plan"]}
    assert plan["C1"]["sharding"] == "data_parallel" and plan["C1"]["kernel"] == "dense"
    assert plan["C2"]["sharding"] == "row_wise" and plan["C3"]["sharding"] == "table_wise"
    bad = [*args[:4], str(tmp_path / "x"), "--sharding-tables", '{"C1": "grid"}', "--no-progress"]
    assert main(bad) == 2
    assert main([*args[:4], str(tmp_path / "y"), "--sharding-tables", '{"Z9": "row_wise"}']) == 2


@pytest.mark.distributed
def test_a_state_saved_at_an_epoch_end_resumes_with_another_process_count(
    synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One process trains an epoch; `--resume --nproc 2 --epochs 2` trains the second in two
    processes on the re-sharded state. `--resume` takes no other settings."""
    import json

    ckpt = tmp_path / "ck"
    args = [
        "train",
        "--data",
        str(synthetic_small),
        "--out",
        str(ckpt),
        "--epochs",
        "1",
        "--batch-size",
        "512",
    ]
    assert main([*args, "--checkpoint-every", "1000", "--no-progress"]) == 0
    first = json.loads((ckpt / "metrics.json").read_text())
    assert main(["train", "--resume", str(ckpt), "--lr", "0.1"]) == 2
    assert "own data and settings; drop --lr (it takes --debug, --device, --epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(ckpt), "--nproc", "2", "--epochs", "2", "--no-progress"]) == 0
    second = json.loads((ckpt / "metrics.json").read_text())
    assert second["processes"] == 2 and second["train_config"]["epochs"] == 2
    assert json.loads((ckpt / "config.json").read_text())["train"]["epochs"] == 2  # a later --resume keeps it
    assert [r["epoch"] for r in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    assert second["history"][1]["steps"] == first["history"][0]["steps"]  # the global batch is kept
    assert second["history"][1]["loss"] < first["history"][0]["loss"]
