"""Shared plumbing of the file loaders: reading text, error messages, vocabularies.

Private to :mod:`secrelay.data`. Every malformed-input error goes through
:func:`format_error` so that all loaders report ``<file>, line <n>: <reason>``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocols.errors import DataFormatError, InvalidParameterError
from secrelay.data.dataset import CTRDataset

__all__ = [
    "LoadResult",
    "Vocabulary",
    "data_error",
    "read_lines",
]

PathLike = str | os.PathLike[str]


def data_error(
    path: PathLike, line: int | None, reason: str, *, unit: str = "line"
) -> DataFormatError:
    """A :class:`DataFormatError` naming ``path``, the 1-based ``line`` and ``reason``.

    ``unit`` names what ``line`` counts (``"row"`` for Parquet files).
    """
    where = f"{os.fspath(path)}" if line is None else f"{os.fspath(path)}, {unit} {line}"
    return DataFormatError(f"{where}: {reason}")


def read_lines(path: PathLike, *, encoding: str = "utf-8", what: str = "file") -> list[str]:
    """All lines of a text file, without line terminators.

    Raises
    ------
    DataFormatError
        If the file does not exist, is empty (or holds only blank lines), or is
        not valid ``encoding``; the message names the file and, for a decoding
        error, the 1-based line of the first bad byte.
    """
    p = Path(path)
    if not p.is_file():
        raise data_error(p, None, f"{what} not found (expected a file at this path)")
    raw = p.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise data_error(
            p, line, f"bad encoding: byte {raw[e.start]:#04x} is not valid {encoding}"
        ) from None
    lines = text.splitlines()
    if not any(s.strip() for s in lines):
        raise data_error(p, 1, f"empty {what}: no data lines")
    return lines


def _sort_key(value: Hashable) -> tuple[int, float, str]:
    """Order numbers (or strings that spell integers) numerically, everything else as text."""
    if isinstance(value, bool):
        return (0, float(value), "")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (0, float(value), "")
    s = str(value)
    try:
        return (0, float(int(s)), "")
    except ValueError:
        return (1, 0.0, s)


@dataclass(frozen=True)
class Vocabulary:
    """The raw values of one field; raw value ``values[i]`` is coded ``i + 1``.

    Index 0 stays reserved for padding / unknown. Values are sorted (integers,
    including strings that spell integers, numerically; everything else as
    text), so the coding is deterministic and independent of row order.
    """

    name: str
    values: tuple[Hashable, ...]
    _index: dict[Hashable, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {v: i + 1 for i, v in enumerate(self.values)})

    @classmethod
    def from_values(cls, name: str, values: Iterable[Hashable]) -> Vocabulary:
        """The sorted distinct ``values``."""
        return cls(name, tuple(sorted(set(values), key=_sort_key)))

    @property
    def size(self) -> int:
        """``len(values) + 1`` (index 0 reserved); at least 2 so a :class:`Field` accepts it."""
        return max(len(self.values) + 1, 2)

    def code(self, value: Hashable) -> int:
        """Code of ``value`` (0 when unknown)."""
        return self._index.get(value, 0)

    def encode(self, values: Iterable[Hashable]) -> np.ndarray:
        """Codes of ``values`` as ``int64`` (0 for unknown values)."""
        idx = self._index
        return np.fromiter((idx.get(v, 0) for v in values), dtype=np.int64)

    def decode(self, code: int) -> Hashable | None:
        """Raw value of ``code`` (``None`` for 0)."""
        if code == 0:
            return None
        if not 0 < code <= len(self.values):
            raise InvalidParameterError(
                f"code {code} is outside the vocabulary of {self.name!r} [0, {len(self.values)}]"
            )
        return self.values[code - 1]


@dataclass(frozen=True)
class LoadResult:
    """A loaded data set together with the raw values behind each field's codes.

    Attributes
    ----------
    dataset:
        The integer-coded data.
    vocabularies:
        Field name → :class:`Vocabulary` (raw value ``values[i]`` has code ``i + 1``).
    """

    dataset: CTRDataset
    vocabularies: Mapping[str, Vocabulary]
