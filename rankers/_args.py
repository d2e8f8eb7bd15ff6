"""A CLI flag and a TOML key for every field of a config dataclass, and configs built back from them.

A field's comment in the dataclass source IS its help: `hidden_units: tuple[int, ...] = (256, 128)
# widths of the hidden layers` becomes `--hidden-units` with that help and its default, so adding a
field (with its comment) is the whole change. Tuples take `--hidden-units 256,128`, booleans
`--batch-norm` / `--no-batch-norm`, fields that accept a dict a JSON object. Flags left unset keep
the dataclass default, or the value from a TOML file.

A TOML config is read strictly (`features.strict`): its tables and keys; unknown keys are refused
and values type-checked, naming the file, the table and the key. (A checkpoint's config.json:
`rankers.checkpoint.checkpoint_config`.) Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.strict import check_fields


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of the dataclass `cls` (and its dataclass bases): the
    comment lines right above the field and the one at the end of its line, joined; a comment-only
    line that continues the previous field's (it follows one ending in ';' or ',', or starts with no
    capital) belongs to that field. Fields without a comment are absent."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined where no source is kept (e.g. an interactive session)
            continue
        out |= _comments_of(source)
    return out


def _comments_of(source: str) -> dict[str, str]:
    """`field_comments` of one class's source."""
    lines = source.splitlines()
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    alone = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
    body = ast.parse(source).body[0]
    fields = [n for n in getattr(body, "body", []) if isinstance(n, ast.AnnAssign)]
    out: dict[str, list[str]] = {}
    previous: tuple[str, int] | None = None  # the last field with a trailing comment, and its line
    for node in fields:
        if not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n in alone:
            above.insert(0, comments[n])
            n -= 1
        if above and previous and previous[1] == n:  # right after a field with a trailing comment
            ended = out[previous[0]][-1].endswith((";", ","))
            if ended or not above[0][:1].isupper():
                out[previous[0]] += above
                above = []
        end = node.end_lineno or node.lineno
        trailing = [comments[end]] if end in comments and end not in alone else []
        if above or trailing:
            out[node.target.id] = above + trailing
        previous = (node.target.id, end) if trailing else None
    return {name: " ".join(parts) for name, parts in out.items()}


def shown_default(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if isinstance(value, tuple) and all(not isinstance(v, tuple) for v in value):
        return ",".join(map(str, value)) if value else "none"
    if value is None or value == "":
        return "unset"  # the field's comment says what unset means
    return str(value)


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple or tp is tuple


def _takes_dict(tp: Any) -> bool:
    return any(typing.get_origin(a) is dict for a in typing.get_args(tp))


def _parser_for(tp: Any, name: str) -> Any:
    if _takes_dict(tp):  # a mapping (or a config of fields): JSON

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
    skip: Sequence[str] = (),
    helps: dict[str, str] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
    defaults: dict[str, Any] | None = None,
    hidden: bool = False,
    title: str = "",
) -> None:
    """Adds `--field-name` for each field of the dataclass `cls` but those in `skip` (unset: the TOML
    file or the dataclass default applies), in a group titled `title` (default: the class name).

    Args:
        parser: where the flags go.
        cls: the config dataclass; each field's help is its comment (`field_comments`).
        skip: fields without a flag.
        helps: replaces the help of the named fields.
        choices: the values the named fields accept.
        defaults: the defaults to show for the named fields (e.g. a preset's), instead of the class's.
        hidden: parse the flags but list none of them in --help (another backbone's).
        title: the group's title.
    """
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in skip or tp is Any:
            continue
        as_json = _takes_dict(tp)
        if isinstance(tp, types.UnionType) and not as_json:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_text = (helps or {}).get(f.name, comments.get(f.name, ""))
        help_text = f"{help_text} (default: {shown_default(default)})".replace("%", "%%").lstrip()
        if as_json:
            help_text += "; a JSON object"
        options: dict[str, Any] = {"dest": f.name, "default": None}
        options["help"] = argparse.SUPPRESS if hidden else help_text
        if f.name in (choices or {}):
            options["choices"] = list((choices or {})[f.name])
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif as_json or tp in (int, float, str) or _is_tuple(tp):
            group.add_argument(flag, type=_parser_for(tp, f.name), **options)
        else:  # a field must be a flag, or be skipped by name
            raise TypeError(
                f"{cls.__name__}.{f.name}: type {tp} has no flag; expected bool, int, float, str, tuple, dict"
            )


def dataclass_from_args(
    cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None, where: str = ""
) -> Any:
    """`cls(**values)`: values from `base` (e.g. a TOML table) overridden by the flags that were set.
    `base` is read strictly (`features.strict.check_fields`): unknown keys and values of the wrong
    type raise ValueError naming `where` (default: the class), the key and the value."""
    return cls(**flags_set(cls, args, base, where))


def flags_set(
    cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None, where: str = ""
) -> dict[str, Any]:
    """The fields of `cls` given by `base` or by flags, as a dict; `base` is checked as in
    `dataclass_from_args`."""
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
