"""A CLI flag for every field of a config dataclass, and configs built back from the flags.

`--hidden-units 256,128` sets the tuple field `hidden_units`; booleans take `--batch-norm` /
`--no-batch-norm`. Flags left unset keep the dataclass default, or the value from a TOML file.

A TOML config is read strictly (`features.strict`): its tables and keys; unknown keys are refused
and values type-checked, naming the file, the table and the key. (A checkpoint's config.json:
`rankers.checkpoint.CheckpointDir.settings`.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from features.strict import check_fields


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple or tp is tuple


def _parser_for(tp: Any, name: str) -> Any:
    if any(typing.get_origin(a) is dict for a in typing.get_args(tp)):  # a config of fields: JSON

        def parse_json(text: str) -> dict[str, Any]:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"--{name}: {text!r} is not JSON ({e})") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"--{name}: {text!r}: expected a JSON object of fields")
            return value

        return parse_json
    if _is_tuple(tp):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = args[0] if args else str

        def parse(text: str) -> tuple:
            try:
                return tuple(item(v) for v in text.split(",") if v.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"--{name}: {text!r} is not a comma-separated list of {item.__name__}"
                ) from None

        return parse
    return tp


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
) -> None:
    """Adds `--field-name` for each field of the dataclass `cls` but those in `skip` (default: unset,
    so the TOML file or the dataclass default applies); `helps` replaces the help of named fields."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        as_json = any(typing.get_origin(a) is dict for a in typing.get_args(tp))  # fields of a config
        if isinstance(tp, types.UnionType) and not as_json:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = (helps or {}).get(f.name, f"default {default!r}")
        if tp is bool:
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif as_json:
            help_text += " (a JSON object of its fields)"
            group.add_argument(flag, dest=f.name, type=_parser_for(tp, f.name), default=None, help=help_text)
        elif tp in (int, float, str) or _is_tuple(tp):
            group.add_argument(flag, dest=f.name, type=_parser_for(tp, f.name), default=None, help=help_text)


def add_shared_flags(parser: argparse.ArgumentParser, owners: dict[str, type]) -> None:
    """One flag per field name over several config dataclasses (`owners`: name -> class); the help
    of a field several of them share lists each one's default."""
    defaults: dict[str, list[str]] = {}
    for owner, cls in owners.items():
        instance = cls()
        for f in dataclasses.fields(cls):
            defaults.setdefault(f.name, []).append(f"{owner} {getattr(instance, f.name)!r}")
    helps = {k: "default: " + "; ".join(v) for k, v in defaults.items() if len(v) > 1}
    seen: set[str] = set()
    for cls in owners.values():
        add_dataclass_flags(parser, cls, skip=tuple(seen), helps=helps)
        seen |= {f.name for f in dataclasses.fields(cls)}


def dataclass_from_args(
    cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None, where: str = ""
) -> Any:
    """`cls(**values)`: values from `base` (e.g. a TOML table) overridden by the flags that were set.
    `base` is read strictly (`features.strict.check_fields`): unknown keys and values of the wrong
    type raise ValueError naming `where` (default: the class), the key and the value."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = check_fields(cls, base or {}, where or cls.__name__, partial=True)
    values |= {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**values)


def flags_set(
    cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None, where: str = ""
) -> dict[str, Any]:
    """The fields of `cls` given by `base` or by flags, as a dict (for configs stored as dicts);
    `base` is checked as in `dataclass_from_args`."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = check_fields(cls, base or {}, where or cls.__name__, partial=True)
    return out | {k: v for k, v in vars(args).items() if k in names and v is not None}


TOML_TABLES = ("train", "ranker", "backbone")  # of `rankers train --config`


def read_toml(path: str | Path | None, tables: tuple[str, ...] = TOML_TABLES) -> dict[str, Any]:
    """The tables of a TOML config file ({} without one); ValueError naming the file if it cannot be
    read, or holds a key outside a table or a table not among `tables`. The tables' keys are checked
    by their readers (`dataclass_from_args`, `flags_set`)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            content = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read the TOML config ({e})") from e
    expected = ", ".join(f"[{t}]" for t in tables)
    for key, value in content.items():
        if not isinstance(value, dict):
            raise ValueError(f"{path}: key {key!r} is outside a table; expected it in one of {expected}")
        if key not in tables:
            raise ValueError(f"{path}: unknown table [{key}]; expected some of {expected}")
    return content
