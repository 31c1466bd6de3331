"""How handlers get what an app's lifespan built: Litestar's dependency injection.

Every app (command API, query API, stubs) hands its dependencies to handlers the same
way, as named dependencies (``Provide``); none reaches into ``app.state``. The provider
takes no arguments, so Litestar parses nothing per request: resolving one costs a
function call (the query API's hot path stays lean, see docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from litestar.di import Provide

T = TypeVar("T")


class Slot(Generic[T]):
    """One dependency of an app: filled by its lifespan, read by handlers through DI."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._value: T | None = None

    def fill(self, value: T | None) -> None:
        """Hold ``value`` (``None`` empties the slot when the lifespan ends)."""
        self._value = value

    def get(self) -> T:
        """The value; raises ``RuntimeError`` outside the app's lifespan."""
        if self._value is None:
            raise RuntimeError(f"{self.name} is used outside the app's lifespan")
        return self._value

    def provide(self) -> Provide:
        """The Litestar provider of this dependency (no arguments, no thread)."""
        return Provide(self.get, sync_to_thread=False)
