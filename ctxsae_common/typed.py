"""Typed configs: dataclass fields with help text, and dataclasses built from plain dicts (JSON,
TOML) with every value's type checked against the field's annotation.

    @dataclass(frozen=True)
    class Sweep:
        width: int = param(256, "features per SAE")

    from_dict(Sweep, {"width": "big"}, "[sweep]")
    # InputError: [sweep].width = 'big' must be an integer

A wrong type, an unknown field or a value `__post_init__` rejects is one InputError that names
the field; lists become tuples where the field is a tuple."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, Union

from ctxsae_common.errors import InputError


def param(default: Any, help: str) -> Any:
    """A dataclass field with help text; the text is what ``--help`` and the docs show. A list
    or dict default is turned into a default factory."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    if dataclasses.is_dataclass(default) and not isinstance(default, type) and not getattr(
            default.__dataclass_params__, "frozen", False):
        return field(default_factory=lambda: dataclasses.replace(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def field_help(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls`."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def require(ok: bool, message: str) -> None:
    """Raise InputError(message) unless `ok`: for `__post_init__` checks of user values."""
    if not ok:
        raise InputError(message)


def describe(hint: Any) -> str:
    """A type annotation in words, for error messages and docs."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else describe(a) for a in args)
    if origin is tuple:
        return f"a list of {describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(hint):
        return f"a table of {hint.__name__} fields"
    return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as the annotated type (lists -> tuples, ints -> floats), or _Mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = args[0] if args else Any
        if len(args) == 2 and args[1] is not Ellipsis:  # a fixed-length tuple
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        return tuple(_coerce(v, item, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        key, item = args if args else (Any, Any)
        return {_coerce(k, key, where): _coerce(v, item, where) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where)
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value


def _table(where: str, name: str) -> str:
    """Where a nested table is: "f.toml" -> "f.toml [name]", "f.toml [a]" -> "f.toml [a.name]"."""
    return f"{where[:-1]}.{name}]" if where.endswith("]") else f"{where} [{name}]"


def from_dict(cls: type, values: Any, where: str, defaults: Any = None) -> Any:
    """An instance of dataclass `cls` from `values`, a dict of its fields (missing fields take
    the defaults, or those of `defaults`, an instance, when given). Names `where` (a file and
    a table, e.g. "quick.toml [sweep]") and the field in every error."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: must be a table of fields, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields are {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[name] = from_dict(hint, value, _table(where, name), getattr(defaults, name, None))
            continue
        try:
            kwargs[name] = _coerce(value, hint, _table(where, name))
        except _Mismatch:
            raise InputError(f"{where}: {name} = {value!r} must be {describe(hint)}") from None
    if defaults is not None:
        for name in fields:
            kwargs.setdefault(name, getattr(defaults, name))
    try:
        return cls(**kwargs)
    except (TypeError, InputError) as e:
        raise InputError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuples as lists)."""
    return dataclasses.asdict(obj)
