"""Named components of each kind (rewards, losses, balancers, selectors, schedules, ...).

``steerl list KIND`` prints a kind's registry with each entry's one-line description.
A recipe may name a registered component, or ``package.module:attribute`` in the user's code.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(LookupError):
    """A name could not be resolved; the message says what is available."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A mapping from names to components of one kind."""

    _kinds: dict[str, Registry[Any]] = {}

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        Registry._kinds[kind] = self

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            doc = description or _first_line(inspect.getdoc(obj))
            self._entries[name] = Entry(name, obj, doc)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Look up ``name``; ``module:attr`` imports it from the user's code."""
        if name in self._entries:
            return self._entries[name].obj
        if ":" in name:
            return import_object(name, self.kind)
        raise RegistryError(
            f"unknown {self.kind} {name!r}. Registered: {', '.join(sorted(self._entries))}. "
            f"To use your own, name it as 'package.module:function' (importable from the "
            f"working directory) or register it with the decorator."
        )

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @classmethod
    def kinds(cls) -> dict[str, Registry[Any]]:
        return dict(cls._kinds)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def import_object(spec: str, kind: str = "object") -> Any:
    """Import ``package.module:attribute`` with an error that says what to do."""
    import sys
    from pathlib import Path

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RegistryError(f"{kind} {spec!r} must look like 'package.module:function'")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is reported the same way
        raise RegistryError(
            f"cannot import module {module_name!r} for {kind} {spec!r}: "
            f"{type(e).__name__}: {e}. Check that the module is on PYTHONPATH or in the "
            "current directory, and that it imports cleanly."
        ) from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise RegistryError(
            f"module {module_name!r} has no attribute {attr!r} (for {kind} {spec!r}); "
            f"public names there: {', '.join(n for n in dir(module) if not n.startswith('_'))}"
        ) from None
    return obj
