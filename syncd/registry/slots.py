"""Transfer slots per registry, taken together for every registry a transfer touches.

A teed blob copy holds a connection to the source (the GET) while its uploads need
connections to the targets, and each registry's connection pool is bounded
(``max_concurrency``). Taken one side at a time, transfers can hold all of one side's
connections while each waits for the other side's: a deadlock. Taking the slots of every
registry involved in one step, only when all are free (regclient's ``BlobCopy`` acquires
the source and target throttles together for this reason), means a transfer never holds
one side while it waits for the other, and at most ``max_concurrency`` transfers use a
registry at once, so the connections they hold never exhaust its pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager


class TransferSlots:
    """Counts transfers in flight per registry name, against each registry's capacity."""

    def __init__(self) -> None:
        self._in_use: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []
        # The most slots ever held at once per registry (observability, and tests).
        self.peak: dict[str, int] = {}

    def in_use(self, name: str) -> int:
        return self._in_use.get(name, 0)

    @asynccontextmanager
    async def take(self, needs: Mapping[str, tuple[int, int]]) -> AsyncIterator[None]:
        """Hold ``needs`` (registry name -> (slots, capacity)) for the body, all or none.

        A need above its registry's capacity is cut to the capacity, so a transfer that
        cannot fit alone still runs (alone) rather than waiting forever.
        """
        caps = {name: max(1, cap) for name, (_, cap) in needs.items()}
        want = {name: min(n, caps[name]) for name, (n, _) in needs.items()}
        while not all(self.in_use(name) + n <= caps[name] for name, n in want.items()):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        for name, n in want.items():
            self._in_use[name] = self.in_use(name) + n
            self.peak[name] = max(self.peak.get(name, 0), self._in_use[name])
        try:
            yield
        finally:
            # No await here: a cancelled transfer must give its slots back all the same.
            for name, n in want.items():
                left = self.in_use(name) - n
                if left > 0:
                    self._in_use[name] = left
                else:
                    self._in_use.pop(name, None)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
