"""A registry is a dict that refuses duplicate names and lists the known ones on a miss."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def __setitem__(self, name, value):
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
        super().__setitem__(name, value)

    def __missing__(self, name):
        raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` on a class or function."""

        def deco(obj: T) -> T:
            self[name] = obj
            return obj

        return deco
