"""Strict reading of the library's JSON and TOML files: unknown keys refused, every value type-checked.

`check_fields(cls, values, where)` checks the values of a config dataclass as read from a file against
the dataclass's field annotations, and returns them converted (lists become tuples, an integer for a
float becomes a float, nested dataclasses are built). Every error is a one-line `ValueError` that
names `where` (the file, and the table or entry in it), the key, the value as given and what was
expected. No third-party validation library: the annotations of the dataclasses are the schema.

Example:
    >>> check_fields(TrainConfig, {"epochs": "three"}, "cfg.toml [train]")
    Traceback (most recent call last):
    ValueError: cfg.toml [train] epochs: "three" is a string; expected an integer
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_BARE: dict[Any, Any] = {tuple: tuple[Any, ...], list: list[Any], dict: dict[str, Any]}


def _is_union(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def shown(value: object, limit: int = 60) -> str:
    """`value` as it reads in a JSON file (a string in double quotes), cut to about `limit` characters."""
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):  # keys that are no strings, a cycle: never from a parsed file
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return _NAMES.get(type(value), f"a {type(value).__name__}")


def describe(tp: Any) -> str:
    """What a value of annotation `tp` looks like in a file, e.g. "a list, each an integer"."""
    tp = _BARE.get(tp, tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any value"
    if _is_union(tp):
        return " or ".join(describe(a) for a in args)
    if origin in (tuple, list) and (origin is list or args[-1:] == (Ellipsis,)):
        return f"a list, each {describe(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} [{', '.join(describe(a) for a in args)}]"
    if origin is dict:
        return f"an object, each value {describe(args[1])}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"an object of {tp.__name__} fields"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _outer_fits(tp: Any, value: object) -> bool:
    """Whether `value` is of the outer kind `tp` asks for (a list, an object, a scalar)."""
    tp = _BARE.get(tp, tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if isinstance(value, bool) or tp is bool:  # a bool is an int to Python, never to a config
        return tp is bool and isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, tp)


def check_value(value: object, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` and converted (a list to a tuple for a tuple type,
    an int to a float, an object to a dataclass); ValueError naming `where` and the value otherwise.

    Args:
        value: as parsed from JSON or TOML.
        tp: a field annotation: bool, int, float, str, None, Any, `tuple[X, ...]`, `tuple[X, Y]`,
            `list[X]`, `dict[str, X]`, a dataclass, or a union `X | Y` of those.
        where: the file and the key, e.g. "cfg.toml [train] epochs".
    """
    tp = _BARE.get(tp, tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    wrong = ValueError(f"{where}: {shown(value)} is {_kind(value)}; expected {describe(tp)}")
    if _is_union(tp):
        fitting = [a for a in args if _outer_fits(a, value)]
        if len(fitting) == 1:  # the value's error inside the one member of its kind is the useful one
            return check_value(value, fitting[0], where)
        for a in fitting:
            try:
                return check_value(value, a, where)
            except ValueError:
                continue
        raise wrong
    if not _outer_fits(tp, value):
        raise wrong
    if tp is float:
        return float(value)  # type: ignore[arg-type]  # an int, by _outer_fits
    if origin in (tuple, list):
        items = typing.cast(list[Any], value)
        if origin is tuple and args[-1:] != (Ellipsis,) and len(items) != len(args):
            raise wrong
        each = [args[0]] * len(items) if origin is list or args[-1:] == (Ellipsis,) else list(args)
        out = [check_value(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(items, each, strict=True))]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        pairs = typing.cast(dict[Any, Any], value).items()
        return {check_value(k, args[0], where): check_value(v, args[1], f"{where}.{k}") for k, v in pairs}
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), value, where)
    return value


def check_keys(
    values: object, where: str, required: Collection[str] = (), optional: Collection[str] | None = ()
) -> dict[str, Any]:
    """`values` if it is an object holding every key of `required` and no key outside `required`
    and `optional` (any other key when `optional` is None); ValueError naming `where` and the key."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: {shown(values)} is {_kind(values)}; expected an object")
    known = sorted({*required, *(optional or ())})
    missing = [k for k in required if k not in values]
    unknown = sorted(str(k) for k in values if optional is not None and k not in known)
    if unknown:  # first: a misspelt key is also a missing one, and its own name is the clue
        also = f" (and missing {missing})" if missing else ""
        raise ValueError(f"{where}: unknown key {unknown[0]!r}{also}; expected some of {known}")
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}; required keys: {sorted(required)}")
    return values


def check_fields(cls: type, values: object, where: str, partial: bool = False) -> dict[str, Any]:
    """The fields of the dataclass `cls` given in `values` (an object read from a file), checked and
    converted by `check_value`: unknown keys and missing fields without a default are refused.

    Args:
        cls: a dataclass; its annotations say what each value must be.
        values: the object read from the file.
        where: the file and the table or entry, e.g. "run/config.json [train]".
        partial: accept missing fields without a default (they come from elsewhere, e.g. flags).

    Returns:
        The given fields by name, converted (lists to tuples, nested dataclasses built).
    """
    fields = dataclasses.fields(cls)
    unset = dataclasses.MISSING
    required = [f.name for f in fields if not partial and f.default is unset and f.default_factory is unset]
    given = check_keys(values, where, required, [f.name for f in fields])
    hints = typing.get_type_hints(cls) if given else {}
    return {k: check_value(v, hints[k], f"{where} {k}") for k, v in given.items()}


def build(cls: type, values: object, where: str) -> Any:
    """`cls(**fields)` from the object `values` checked by `check_fields`; the dataclass's own checks
    of its values raise naming `where` too."""
    checked = check_fields(cls, values, where)
    try:
        return cls(**checked)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def read_json(path: str | Path, what: str = "") -> Any:
    """The parsed content of the JSON file `path`; ValueError naming the file (and `what` it should
    be) if it is missing, cannot be read or is not JSON."""
    expected = f"; expected {what}" if what else ""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: missing{expected}") from None
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise ValueError(f"{path}: cannot read it as JSON ({e}){expected}") from None
