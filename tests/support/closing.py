"""Factory fixtures whose products are closed when the test ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar


class _Closable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Closable)


@contextlib.asynccontextmanager
async def closing_all(build: Callable[..., C]) -> AsyncIterator[Callable[..., C]]:
    """`build` as a factory for a test (its keyword overrides passed through); everything it
    made is closed, in the order made, on the way out."""
    made: list[C] = []

    def make(**overrides: Any) -> C:
        made.append(build(**overrides))
        return made[-1]

    try:
        yield make
    finally:
        for item in made:
            await item.aclose()
