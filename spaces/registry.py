"""A tiny generic registry with "did you mean" suggestions (presets, cards, tasks, metrics, models)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnipetlError(ValueError):
    """Bad user input. The message is one line that names the field and the value."""


def did_you_mean(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' Did you mean: X?' when a close choice exists, else a list of the choices."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    if close:
        return f" Did you mean: {close[0]}?"
    return f" Choose one of: {', '.join(sorted(choices))}."


class Registry(Generic[T]):
    """Name → object, with aliases and an error that suggests the closest name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, item: T, *, aliases: tuple[str, ...] = ()) -> T:
        if name in self._items:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        for alias in aliases:
            self._aliases[alias] = name
        return item

    def decorator(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item, aliases=aliases)

        return wrap

    def canonical(self, name: str) -> str:
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnipetlError(f"Unknown {self.kind} {name!r}.{did_you_mean(name, self.names(aliases=True))}")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def names(self, *, aliases: bool = False) -> list[str]:
        out = list(self._items)
        if aliases:
            out += list(self._aliases)
        return out

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())
