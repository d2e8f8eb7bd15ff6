"""Strict config files: a checkpoint's config.json (`checkpoint_config`, `RankerConfig.from_dict`,
`Predictor.load`, `train --resume`) and TOML configs (`train --config`).

Every refusal is a one-line ValueError (the CLI: `rankers: error: ...`, exit 2) naming the file, the
table or entry, the key and the value as given.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from rankers._args import dataclass_from_args, read_toml
from rankers.backbones.mlp import MLPConfig
from rankers.checkpoint import checkpoint_config
from rankers.cli import build_parser, main
from rankers.cli.train import run_configs
from rankers.config import RankerConfig, TrainConfig
from tests.conftest import one_line_error

WHERE = "run/config.json"


def _config() -> dict[str, Any]:
    """A config.json as `CheckpointDir.write_config` writes it, through JSON."""
    ranker = RankerConfig(
        backbone="mlp", backbone_config={"hidden_units": (8, 4)}, task_weights=(("ctr", 2),)
    )
    train = TrainConfig(epochs=3, lr=0.01, sharding_tables={"C1": "row_wise"})
    written = {"ranker": ranker.to_dict(), "train": asdict(train), "data": "/data/x", "prior": {"ctr": 0.25}}
    return json.loads(json.dumps(written))


def test_a_written_config_json_reads_back() -> None:
    saved = checkpoint_config(_config(), WHERE)
    ranker = RankerConfig(
        backbone="mlp", backbone_config={"hidden_units": (8, 4)}, task_weights=(("ctr", 2),)
    )
    assert saved.ranker.to_dict() == ranker.to_dict() and saved.ranker.task_weights == (("ctr", 2.0),)
    assert saved.train == TrainConfig(epochs=3, lr=0.01, sharding_tables={"C1": "row_wise"})
    assert saved.data == "/data/x" and saved.prior == {"ctr": 0.25}


@pytest.mark.parametrize(
    "ranker",
    [
        RankerConfig(backbone="finalmlp_criteo_x1", embedding_dim=4),
        RankerConfig(
            backbone="esmm", backbone_config={"cvr_tower": "autoint", "cvr_config": {"num_heads": 1}}
        ),
        RankerConfig(backbone="din", tasks=("ctr",), embedding_l2=1e-6, sequence_lookup="collection"),
    ],
)
def test_ranker_configs_read_back(ranker: RankerConfig) -> None:
    again = RankerConfig.from_dict(json.loads(ranker.to_json()), WHERE)
    assert again.to_dict() == ranker.to_dict()
    assert again.backbone_config == ranker.backbone_config


def _set(path: str, value: Any) -> Any:
    """An edit of the config: `value` at the slash-separated `path` (None: the key removed)."""

    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for key in parents:
            d = d[key]
        if value is None:
            d.pop(last)
        else:
            d[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_set("ranker/colour", "red"), ("run/config.json [ranker]: unknown key 'colour'", "'embedding_dim'")),
        (_set("train/epoch", 3), ("run/config.json [train]: unknown key 'epoch'", "'epochs'")),
        (_set("prior/ctr", "0.25"), ('run/config.json prior.ctr: "0.25" is a string; expected a number',)),
        (
            _set("train/epochs", True),
            ("run/config.json [train] epochs: true is a boolean; expected an integer",),
        ),
        (
            _set("ranker/embedding_dim", True),
            ("[ranker] embedding_dim: true is a boolean; expected an integer",),
        ),
        (_set("prior/ctr", 1.5), ("run/config.json prior.ctr: 1.5 is not a probability",)),
        (_set("prior/ctr", float("nan")), ("run/config.json prior.ctr: nan is not a probability",)),
        (_set("prior", [0.25]), ("run/config.json prior: [0.25] is a list; expected an object",)),
        (_set("data", 3), ("run/config.json data: 3 is an integer; expected a string",)),
        (_set("prior", None), ("run/config.json: missing key 'prior'",)),
        (_set("extra", 1), ("run/config.json: unknown key 'extra'",)),
        (_set("ranker/backbone", None), ("run/config.json [ranker]: missing key 'backbone'",)),
        (_set("ranker/backbone", "mlpp"), ("[ranker] backbone: unknown backbone 'mlpp'",)),
        (
            _set("ranker/backbone_config/hidden_unit", [8]),
            ("[ranker] backbone_config: unknown key 'hidden_unit'",),
        ),
        (
            _set("ranker/backbone_config/hidden_units", [8, "4"]),
            ('[ranker] backbone_config hidden_units[1]: "4" is a string; expected an integer',),
        ),
        (_set("ranker/task_weights", [["ctr", "2"]]), ('[ranker] task_weights[0][1]: "2" is a string',)),
        (_set("train/lr", -1.0), ("run/config.json [train]: lr -1.0 must be > 0",)),
        (_set("train/sharding_tables", {"C1": 3}), ("[train] sharding_tables.C1: 3 is an integer",)),
    ],
)
def test_config_json_is_read_strictly(edit: Any, words: tuple[str, ...]) -> None:
    config = _config()
    edit(config)
    message = one_line_error(lambda: checkpoint_config(config, WHERE))
    for word in words:
        assert word in message, (word, message)


def test_an_esmm_tower_config_is_checked_against_the_tower() -> None:
    ranker = RankerConfig(backbone="esmm", backbone_config={"cvr_tower": "autoint"}).to_dict()
    ranker["backbone_config"]["cvr_config"] = [["num_heads", "two"]]
    message = one_line_error(lambda: RankerConfig.from_dict(ranker, f"{WHERE} [ranker]"))
    assert 'run/config.json [ranker] backbone_config cvr_config num_heads: "two" is a string' in message, (
        message
    )


def test_a_checkpoint_with_a_bad_config_json_is_refused_by_name(
    synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rankers.predictor import Predictor

    ckpt = tmp_path / "ck"
    flags = ["--epochs", "1", "--batch-size", "4096", "--hidden-units", "8", "--no-progress"]
    assert (
        main(
            ["train", "--data", str(synthetic_small), "--out", str(ckpt), *flags, "--checkpoint-every", "99"]
        )
        == 0
    )
    path = ckpt / "config.json"
    good = path.read_text()
    Predictor.load(ckpt)

    config = json.loads(good)
    config["ranker"]["colour"] = "red"
    path.write_text(json.dumps(config))
    message = one_line_error(lambda: Predictor.load(ckpt))
    assert "config.json [ranker]: unknown key 'colour'" in message, message

    resume = ["train", "--resume", str(ckpt), "--epochs", "2", "--no-progress"]
    for key, value, words in (
        ("epochs", True, f"{path} [train] epochs: true is a boolean; expected an integer"),
        ("shuffle_buffr", 1, f"{path} [train]: unknown key 'shuffle_buffr'"),
    ):
        config = json.loads(good)
        config["train"][key] = value
        path.write_text(json.dumps(config))
        capsys.readouterr()
        assert main(resume) == 2
        assert f"rankers: error: {words}" in capsys.readouterr().err
    config = json.loads(good)
    config["prior"] = {"ctr": "0.2"}
    path.write_text(json.dumps(config))
    assert main(resume) == 2
    assert f'{path} prior.ctr: "0.2" is a string; expected a number' in capsys.readouterr().err

    path.write_text(good)
    assert main(resume) == 0  # the config as written resumes
    assert json.loads(path.read_text())["train"]["epochs"] == 2


# TOML configs


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[train]\nepochs = "three"\n', '[train] epochs: "three" is a string; expected an integer'),
        ("[train]\nepochs = true\n", "[train] epochs: true is a boolean; expected an integer"),
        ("[trian]\nepochs = 3\n", ": unknown table [trian]; expected some of [train], [ranker], [backbone]"),
        ("epochs = 3\n", ": key 'epochs' is outside a table"),
        ("[train]\nepoch = 3\n", "[train]: unknown key 'epoch'; expected some of"),
        ("[ranker]\nembeding_dim = 8\n", "[ranker]: unknown key 'embeding_dim'; expected some of"),
        ('[ranker]\nembedding_dim = "8"\n', '[ranker] embedding_dim: "8" is a string; expected an integer'),
        (
            '[ranker]\ntask_weights = {ctr = "x"}\n',
            '[ranker] task_weights.ctr: "x" is a string; expected a number',
        ),
        ('[ranker]\nbackbone = "mlpp"\n', "[ranker] backbone: unknown backbone 'mlpp'"),
        ('[ranker]\ntasks = "ctr"\n', '[ranker] tasks: "ctr" is a string; expected a list, each a string'),
        ("[backbone]\nhidden_unit = [8]\n", "[backbone]: unknown key 'hidden_unit'; expected some of"),
        (
            '[backbone]\nhidden_units = ["8"]\n',
            '[backbone] hidden_units[0]: "8" is a string; expected an integer',
        ),
        ("[train]\nlr = 'fast'\n", '[train] lr: "fast" is a string; expected a number'),
        ("[train\n", "cannot read the TOML config"),
    ],
)
def test_toml_configs_are_read_strictly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, words: str
) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(toml)
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--config", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rankers: error: {path}") and words in err and err.count("\n") == 1, err


def test_a_toml_config_sets_every_table(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(
        "[train]\nepochs = 2\nlr = 1\nsharding_tables = {C1 = 'row_wise'}\n"
        "[ranker]\nbackbone = 'mlp'\nembedding_dim = 8\nembedding_l2 = 0\ntask_weights = {ctr = 2}\n"
        "tasks = ['ctr']\n[backbone]\nhidden_units = [16, 8]\nbatch_norm = true\n"
    )
    args = build_parser().parse_args(["train", "--config", str(path), "--dropout", "0.1"])
    toml = read_toml(path)
    ranker, resolved = run_configs(args, toml)
    assert ranker.embedding_dim == 8 and ranker.embedding_l2 == 0.0 and ranker.tasks == ("ctr",)
    assert ranker.task_weights == (("ctr", 2.0),)
    assert ranker.backbone_config == MLPConfig(hidden_units=(16, 8), batch_norm=True, dropout=0.1)
    train = dataclass_from_args(TrainConfig, args, toml["train"], f"{path} [train]")
    assert train == TrainConfig(epochs=2, lr=1.0, sharding_tables=(("C1", "row_wise"),))
    assert resolved == train
