"""One generic name → object registry, used for every extension point.

Accountants (:mod:`protocols.dp.accountants`), models, data sets, strategies and
methods (:mod:`secrelay`) are each a :class:`Registry`; they share one rule:
registering a taken name is refused unless ``force=True`` (no silent override), and
looking up an unknown name raises one error that lists the valid names.

Pure Python, no dependencies, so the pure ``protocols`` layer can use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from protocols.errors import InvalidParameterError

__all__ = ["Registry"]

T = TypeVar("T")
_MISSING = object()


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is used in error messages).

    Parameters
    ----------
    kind:
        What the entries are, e.g. ``"model"`` (``"unknown model 'x'; ..."``).
    lower_case:
        Names must be lower case and lookups are case-insensitive.
    check:
        Called with each entry at registration; returns a problem (``str``) or
        ``None``.

    Examples
    --------
    >>> r: Registry[int] = Registry("number")
    >>> r.register("one", 1)
    1
    >>> r.get("one")
    1
    >>> r.register("one", 2)
    Traceback (most recent call last):
    ...
    protocols.errors.InvalidParameterError: a number named 'one' is already registered; pass force=True to replace it
    >>> r.get("two")
    Traceback (most recent call last):
    ...
    protocols.errors.InvalidParameterError: unknown number 'two'; choose one of ['one']
    """

    def __init__(
        self,
        kind: str,
        *,
        lower_case: bool = False,
        check: Callable[[T], str | None] | None = None,
    ) -> None:
        self.kind = kind
        self.lower_case = lower_case
        self._check = check
        self._entries: dict[str, T] = {}

    def _key(self, name: object) -> str:
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(
                f"{self.kind} names must be non-empty strings; got {name!r}"
            )
        return name

    @overload
    def register(self, name: str, entry: T, *, force: bool = False) -> T: ...

    @overload
    def register(self, name: str, *, force: bool = False) -> Callable[[T], T]: ...

    def register(
        self, name: str, entry: T | None = None, *, force: bool = False
    ) -> T | Callable[[T], T]:
        """Add ``entry`` under ``name`` (or, without ``entry``, return a decorator)."""
        key = self._key(name)
        if self.lower_case and key != key.lower():
            raise InvalidParameterError(
                f"{self.kind} names must be lower case (lookups are case-insensitive); got {name!r}"
            )

        def add(obj: T) -> T:
            if self._check is not None:
                problem = self._check(obj)
                if problem:
                    raise InvalidParameterError(f"cannot register {self.kind} {name!r}: {problem}")
            if key in self._entries and not force:
                raise InvalidParameterError(
                    f"a {self.kind} named {key!r} is already registered; "
                    "pass force=True to replace it"
                )
            self._entries[key] = obj
            return obj

        if entry is None:
            return add
        return add(entry)

    def get(self, name: str, default: object = _MISSING) -> T:
        """The entry under ``name``; an unknown name lists the valid ones (or, as
        with :meth:`dict.get`, returns ``default`` when one is given)."""
        key = name.lower() if self.lower_case and isinstance(name, str) else name
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            if default is not _MISSING:
                return default  # type: ignore[return-value]
            raise InvalidParameterError(
                f"unknown {self.kind} {name!r}; choose one of {self.names()}"
            ) from None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that replace an entry temporarily)."""
        self._entries.pop(self._key(name), None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        key = name.lower() if self.lower_case and isinstance(name, str) else name
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, entry: T) -> None:
        """``registry[name] = entry`` is an explicit replacement (``register(force=True)``)."""
        self.register(name, entry, force=True)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.unregister(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
