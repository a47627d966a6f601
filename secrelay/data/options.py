"""File loaders from plain options (TOML ``[data.options]``, the CLI's ``--data-options``).

The libFM/libSVM and CSV/Parquet readers take typed objects (:class:`FieldMap`,
:class:`TabularSpec`); a config file can only hold tables. This module turns tables
into those objects, with every problem named by its key, so every registered loader
works from TOML and the command line:

- **libFM** (``field:feat:val``): a declared field map
  (``fields = {user_id = {role = "user", keys = [0]}, ...}``, ``user_field``,
  ``item_field``) or, with no ``fields``, one inferred from the file — one field per
  libFM field index, in index order, as in the public libFM CTR sets. The field of
  ``user_key`` (default: the lowest index) is the user; ``item_keys`` (default: the
  next lowest) are item fields; the rest are context.
- **CSV / Parquet**: ``user_column``, ``label_column``, optional ``label_threshold``,
  ``timestamp_column`` and ``item_id_field``, and ``fields = [{column = ..., role =
  ..., name, separator, max_len}, ...]`` (``[data.columns]`` style).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from protocols.errors import ConfigError, DataFormatError, InvalidParameterError
from secrelay.data._io import PathLike
from secrelay.data.libfm import FieldMap, FieldMapEntry
from secrelay.data.tabular_spec import ColumnField, TabularSpec
from secrelay.options import parse_options

__all__ = ["field_map_from_options", "infer_field_map", "tabular_spec_from_options"]


@dataclass(frozen=True)
class _FieldOptions:
    role: Literal["user", "item", "context"]
    keys: list[int]
    max_len: int | None = None


def infer_field_map(
    path: PathLike, *, user_key: int | None = None, item_keys: Sequence[int] | None = None
) -> FieldMap:
    """One field per libFM field index found in ``path`` (``field:feat:val`` tokens).

    Raises
    ------
    DataFormatError
        If the file is not in libFM format (libSVM files need a declared map).
    ConfigError
        If ``user_key`` / ``item_keys`` name indices the file does not have.
    """
    keys: set[int] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            for tok in line.split()[1:]:
                parts = tok.split(":")
                if len(parts) != 3:
                    raise DataFormatError(
                        f"{path}:{lineno}: token {tok!r} is not field:feat:val — a field map "
                        "can be inferred from libFM files only; declare data.options.fields "
                        "for a libSVM file"
                    )
                try:
                    keys.add(int(parts[0]))
                except ValueError:
                    raise DataFormatError(
                        f"{path}:{lineno}: field index {parts[0]!r} is not an integer"
                    ) from None
    if len(keys) < 2:
        raise DataFormatError(f"{path}: needs at least two libFM fields (user and item)")
    ordered = sorted(keys)
    user = ordered[0] if user_key is None else int(user_key)
    items = [k for k in ordered if k != user][:1] if item_keys is None else list(item_keys)
    missing = sorted({user, *items} - keys)
    if missing:
        raise ConfigError(
            f"data.options.user_key / item_keys name field indices {missing} that {path} "
            f"does not have (it has {ordered})"
        )
    entries = []
    for k in ordered:
        role = "user" if k == user else ("item" if k in items else "context")
        entries.append(FieldMapEntry(f"field_{k}", role, (k,)))  # type: ignore[arg-type]
    return FieldMap(
        tuple(entries),
        user_field=f"field_{user}",
        item_field=f"field_{items[0]}" if items else None,
    )


def field_map_from_options(
    path: PathLike, options: Mapping[str, Any]
) -> tuple[FieldMap, dict[str, Any]]:
    """The field map of ``options`` (declared or inferred) and the remaining loader
    keywords."""
    rest = dict(options)
    fields = rest.pop("fields", None)
    user_field = rest.pop("user_field", None)
    item_field = rest.pop("item_field", None)
    user_key = rest.pop("user_key", None)
    item_keys = rest.pop("item_keys", None)
    if fields is None:
        if user_field is not None or item_field is not None:
            raise ConfigError(
                "data.options.user_field / item_field name fields of a declared field map; "
                "add data.options.fields, or use user_key / item_keys to pick fields of an "
                "inferred one"
            )
        return infer_field_map(path, user_key=user_key, item_keys=item_keys), rest
    if not isinstance(fields, Mapping) or not fields:
        raise ConfigError(
            "data.options.fields must be a table {name = {role = ..., keys = [...]}}; "
            f"got {fields!r}"
        )
    if user_field is None:
        raise ConfigError("data.options.user_field is required with data.options.fields")
    entries = []
    for name, spec in fields.items():
        f = parse_options(_FieldOptions, spec, f"data.options.fields.{name}")
        entries.append(FieldMapEntry(name, f.role, tuple(f.keys), f.max_len))
    try:
        fmap = FieldMap(tuple(entries), user_field=user_field, item_field=item_field)
    except ConfigError:
        raise
    except InvalidParameterError as exc:  # name the section
        raise ConfigError(f"data.options: {exc}") from None
    return fmap, rest


@dataclass(frozen=True)
class _ColumnOptions:
    column: str
    role: Literal["user", "item", "context"]
    name: str | None = None
    separator: str | None = None
    max_len: int | None = None


@dataclass(frozen=True)
class _SpecOptions:
    fields: list[Any]
    user_column: str
    label_column: str
    label_threshold: float | None = None
    timestamp_column: str | None = None
    item_id_field: str | None = None


_SPEC_KEYS = {"fields", "user_column", "label_column", "label_threshold", "timestamp_column"}
_SPEC_KEYS |= {"item_id_field"}


def tabular_spec_from_options(options: Mapping[str, Any]) -> tuple[TabularSpec, dict[str, Any]]:
    """The :class:`TabularSpec` of ``options`` and the remaining loader keywords."""
    spec_part = {k: v for k, v in options.items() if k in _SPEC_KEYS}
    rest = {k: v for k, v in options.items() if k not in _SPEC_KEYS}
    if "fields" not in spec_part or "user_column" not in spec_part:
        raise ConfigError(
            "a CSV/Parquet data set needs its columns described: data.options.fields = "
            "[{column = ..., role = 'user' | 'item' | 'context'}, ...], "
            "data.options.user_column and data.options.label_column"
        )
    s = parse_options(_SpecOptions, spec_part, "data.options")
    columns = [
        ColumnField(**vars(parse_options(_ColumnOptions, c, f"data.options.fields[{i}]")))
        for i, c in enumerate(s.fields)
    ]
    try:
        spec = TabularSpec(
            tuple(columns),
            user_column=s.user_column,
            label_column=s.label_column,
            label_threshold=s.label_threshold,
            timestamp_column=s.timestamp_column,
            item_id_field=s.item_id_field,
        )
    except ConfigError:
        raise
    except InvalidParameterError as exc:
        raise ConfigError(f"data.options: {exc}") from None
    return spec, rest
