"""Single-flight: one piece of work per key at a time; callers that arrive while it runs
share its outcome instead of doing it again (the idea of ggcr's per-digest ``workers.Do``).

A flight that failed is forgotten the moment it lands, so a later caller flies anew; what a
waiter does with a shared failure (take it as its own, or try for itself) is its choice.
Waiters are shielded: cancelling one never cancels the flight the others wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[V]):
    """How a flight ended: its value, or the error it ended with."""

    value: V | None = None
    error: BaseException | None = None


Flight = asyncio.Future[Outcome[V]]


class SingleFlight(Generic[K, V]):
    """The flights under way, by key."""

    def __init__(self) -> None:
        self._flights: dict[K, Flight[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def claim(self, key: K) -> Flight[V] | None:
        """None: ``key`` is the caller's to fly now, and it must ``land`` it (in a
        ``finally``); otherwise the flight under way, to ``join``."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def land(self, key: K, value: V | None = None, error: BaseException | None = None) -> None:
        """End the caller's flight of ``key`` and share how it ended; the key is free again."""
        self._flights.pop(key).set_result(Outcome(value, error))

    @staticmethod
    async def join(flight: Flight[V]) -> Outcome[V]:
        """Wait for a flight another caller is flying (shielded from this one's cancel)."""
        return await asyncio.shield(flight)

    @asynccontextmanager
    async def turn(self, key: K) -> AsyncIterator[None]:
        """Fly ``key`` after every flight of it under way has landed: work on one key done
        one caller after another, each seeing what the previous one left."""
        while (flight := self.claim(key)) is not None:
            await self.join(flight)
        try:
            yield
        finally:
            self.land(key)
