"""One typed parser for config sections and method options.

:func:`parse_options` builds a dataclass from a mapping (a TOML table), checking
every key against the dataclass' type hints. Every problem is collected — unknown
keys (with the valid ones listed), wrong types (naming the dotted key and the type
expected), the ``checks`` a caller adds — and reported at once in one
:class:`~protocols.errors.ConfigError`. ``[run]``, ``[federated]``, …
(:mod:`secrelay.config`) and every method's ``method.options`` use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from protocols.errors import ConfigError, InvalidParameterError

__all__ = ["describe_type", "parse_options", "type_ok"]

T = TypeVar("T")


def type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as read from TOML/JSON) fits the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(tp))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def describe_type(tp: Any) -> str:
    """``tp`` in words for an error message."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "unset"
    if origin is not None:
        return str(getattr(origin, "__name__", origin))
    return str(getattr(tp, "__name__", tp))


def _convert(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is float:
        return float(value)
    if origin is dict or tp is dict:
        return dict(value)
    if origin is tuple or tp is tuple:
        return tuple(value)
    if origin is list or tp is list:
        return list(value)
    return value


def _where(prefix: str) -> str:
    return f"section [{prefix}]" if prefix else "the config"


def _collect(cls: Any, data: Any, prefix: str, problems: list[str]) -> dict[str, Any] | None:
    if not isinstance(data, Mapping):
        problems.append(f"{prefix or 'config'} must be a table; got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        keys = ", ".join(repr(u) for u in unknown)
        dotted = f" ({', '.join(f'{prefix}.{u}' for u in unknown)})" if prefix else ""
        guesses = {
            u: m[0]
            for u in unknown
            if (m := difflib.get_close_matches(u, sorted(known), n=1, cutoff=0.6))
        }
        hint = ""
        if len(unknown) == 1 and guesses:
            hint = f" — did you mean {next(iter(guesses.values()))!r}?"
        elif guesses:
            hint = " — did you mean " + ", ".join(f"{m!r} for {u!r}" for u, m in guesses.items())
            hint += "?"
        problems.append(
            f"unknown key(s) {keys} in {_where(prefix)}{dotted}{hint}; "
            f"valid keys: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            continue
        tp = hints[name]
        dotted = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            sub = _collect(tp, value, dotted, problems)
            if sub is not None:
                kwargs[name] = _instantiate(tp, sub, dotted, problems)
            continue
        if not type_ok(value, tp):
            problems.append(f"{dotted} must be {describe_type(tp)}; got {value!r}")
            continue
        kwargs[name] = _convert(value, tp)
    return kwargs


def _instantiate(cls: Any, kwargs: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    try:
        return cls(**kwargs)
    except ConfigError as e:
        problems.append(str(e))
    except InvalidParameterError as e:
        problems.append(f"[{prefix}] {e}" if prefix else str(e))
    return None


def parse_options(
    cls: type[T],
    data: Mapping[str, Any],
    prefix: str = "",
    *,
    checks: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> T:
    """Build the dataclass ``cls`` from ``data``.

    Parameters
    ----------
    cls:
        A dataclass whose fields are the valid keys; nested dataclass fields are
        sub-tables. Its ``__post_init__`` may raise :class:`ConfigError` /
        :class:`InvalidParameterError` for range checks.
    data:
        The table read from TOML / JSON.
    prefix:
        The dotted name of the table (``"method.options"``), used in messages.
    checks:
        Extra checks on the typed keyword arguments (only the keys given), run when
        every key has the right type; each returns the problems found.

    Raises
    ------
    ConfigError
        Listing every problem, each naming its dotted key.
    """
    problems: list[str] = []
    kwargs = _collect(cls, data, prefix, problems)
    if kwargs is not None and not problems and checks is not None:
        problems.extend(checks(kwargs))
    if problems or kwargs is None:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    out = _instantiate(cls, kwargs, prefix, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return typing.cast(T, out)
