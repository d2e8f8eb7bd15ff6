"""The `rankers` command line's flags: one generator from config dataclasses (a field and its
comment are a flag with help and a TOML key), help on every flag, and `--help` that answers fast."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from rankers._args import add_dataclass_flags, dataclass_from_args, field_comments, read_toml
from rankers.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Throwaway:
    """A config as a new engineer would add one."""

    widths: tuple[int, ...] = (8, 4)  # widths of the layers, each >= 1
    # How much to shrink, in [0, 1): the comment above a field is its help too.
    shrink: float = 0.5
    name: str = "x"  # a name; "x" or "y"
    # one that continues the line above, so it belongs to `name`, not to `flag`
    flag: bool = False  # turns it on


def test_a_field_with_its_comment_is_a_flag_with_help_and_a_toml_key(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Throwaway)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["widths"] == "widths of the layers, each >= 1 (default: 8,4)"
    assert (
        helps["shrink"]
        == "How much to shrink, in [0, 1): the comment above a field is its help too. (default: 0.5)"
    )
    assert helps["name"].startswith('a name; "x" or "y" one that continues the line above')
    assert helps["flag"] == "turns it on (default: False)"
    toml = tmp_path / "c.toml"
    toml.write_text("[t]\nwidths = [3]\nshrink = 0.25\n")
    args = parser.parse_args(["--shrink", "0.1", "--flag"])
    config = dataclass_from_args(Throwaway, args, read_toml(toml, ("t",))["t"], f"{toml} [t]")
    assert config == Throwaway(widths=(3,), shrink=0.1, flag=True)
    toml.write_text("[t]\nwidth = [3]\n")
    with pytest.raises(ValueError, match=r"c.toml \[t\]: unknown key 'width'"):
        dataclass_from_args(Throwaway, args, read_toml(toml, ("t",))["t"], f"{toml} [t]")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser and subparser of `rankers`, and `train`'s for every backbone and preset."""
    from rankers.config import backbone_configs, presets

    out: dict[str, argparse.ArgumentParser] = {}

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        out[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    walk(f"{name} {sub}", p)

    walk("rankers", build_parser())
    for backbone in [*backbone_configs(), *presets()]:
        argv = ["train", "--backbone", backbone]
        walk(
            f"rankers train --backbone {backbone}",
            build_parser(argv)._subparsers._group_actions[0].choices["train"],
        )  # type: ignore[union-attr]
    return out


def test_a_field_that_cannot_be_a_flag_is_refused_by_name() -> None:
    @dataclass(frozen=True)
    class Odd:
        path: set[str] = frozenset()  # a type no flag parses  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"Odd.path: type set\[str\] has no flag"):
        add_dataclass_flags(argparse.ArgumentParser(), Odd)


def test_every_flag_says_what_it_does_not_only_its_default() -> None:
    only_default = re.compile(r"^\(?default:?[^)]*\)?\W*$", re.IGNORECASE)
    bad = []
    for name, parser in _parsers().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = (action.help or "").strip()
            without = re.sub(r"\(default:[^)]*\)", "", text).strip(" ;,.")
            if not text or only_default.match(text) or len(without) < 8:
                bad.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {text!r}")
    assert not bad, "\n".join(bad)


def test_backbone_flags_are_listed_only_under_their_backbone() -> None:
    helps = {
        a.dest: a.help
        for a in build_parser(["train"])._subparsers._group_actions[0].choices["train"]._actions
    }  # type: ignore[union-attr]
    assert helps["hidden_units"] == argparse.SUPPRESS and helps["num_heads"] == argparse.SUPPRESS
    din = build_parser(["train", "--backbone", "din"])._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    listed = {a.dest for a in din._actions if a.help != argparse.SUPPRESS}
    from rankers.backbones.din import DINConfig

    assert {f.name for f in fields(DINConfig)} <= listed and "hidden_units" not in listed


@pytest.mark.parametrize("command", ["", *COMMANDS, "convert criteo", "train --backbone din"])
def test_help_imports_no_heavy_module(command: str) -> None:
    """What keeps `--help` fast: parsers are built without torch, torchrec or scikit-learn (3 s, 5 s
    and 1.7 s to import on the 2-core machine). The time itself is a benchmark, not a test:
    `python -m benchmarks.cli_help` (benchmarks/README.md, "Command line")."""
    code = (
        "import sys\n"
        "from rankers.cli import main\n"
        "try:\n    main(sys.argv[1:] + ['--help'])\nexcept SystemExit:\n    pass\n"
        "print('imported:', *[m for m in ('torch', 'torchrec', 'sklearn') if m in sys.modules])"
    )
    argv = [sys.executable, "-c", code, *command.split()]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=True)
    assert "usage: rankers" in run.stdout
    last = run.stdout.strip().splitlines()[-1]
    assert last == "imported:", f"rankers {command} --help {last}"


def test_copied_defaults_match_their_sources() -> None:
    import inspect

    from rankers.bidding import evaluate as ev
    from rankers.bidding import run
    from rankers.bidding.calibration import calibrate
    from rankers.bidding.fit import CalibrateOptions
    from rankers.cli import bid

    given = inspect.signature(calibrate).parameters
    for f in fields(CalibrateOptions):
        assert given[f.name].default == getattr(CalibrateOptions(), f.name), f.name
    assert bid.AGENTS == ev.AGENTS and tuple(ev.BID_FLAGS) == run.BID_FLAGS
    help_ = {
        a.dest: a.help for a in build_parser(["bid"])._subparsers._group_actions[0].choices["bid"]._actions
    }  # type: ignore[union-attr]
    m = ev.MarketModel()
    for key, value in (("median", m.median), ("sigma", m.sigma), ("corr", m.corr), ("seed", m.seed)):
        assert help_[f"market_{key}"].endswith(f"default {value:g}"), key


def test_every_config_field_has_a_comment() -> None:
    from rankers.config import RankerConfig, TrainConfig, backbone_configs

    for cls in (RankerConfig, TrainConfig, *backbone_configs().values()):
        missing = [f.name for f in fields(cls) if f.name not in field_comments(cls)]
        assert not missing, f"{cls.__name__}: fields without a comment (their help): {missing}"


def test_a_converter_takes_its_fields_from_a_toml_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rankers.cli import main

    toml = tmp_path / "c.toml"
    toml.write_text("[synthetic]\nrows = 400\nmax_vocab = 50\n")
    args = ["convert", "synthetic", "--out", str(tmp_path / "d"), "--config", str(toml), "--rows", "500"]
    assert main(args) == 0
    assert "| train | 400 |" in capsys.readouterr().out  # the flag over the file: 80% of 500
    toml.write_text("[synthetic]\nrow = 400\n")
    assert main([*args[:3], str(tmp_path / "e"), *args[4:]]) == 2
    assert f"{toml} [synthetic]: unknown key 'row'" in capsys.readouterr().err


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_nproc_below_one_is_refused_by_name(nproc: str, capsys: pytest.CaptureFixture[str]) -> None:
    from rankers.cli import main

    assert main(["train", "--data", "d", "--out", "o", "--nproc", nproc]) == 2
    assert f"--nproc {nproc}: expected an integer >= 1" in capsys.readouterr().err
