"""The pieces of one blob upload: its session at a target, and the bytes it is fed.

Split from ``syncd.blobs``, which tees one source read into a queue per target; each
target's upload takes exactly the bytes of its next request from its queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.blobs import Endpoint


@dataclass(slots=True, eq=False)
class UploadSession:
    """One target's upload of one blob: where it is and what the registry acknowledged."""

    endpoint: Endpoint
    location: str
    future: asyncio.Future[str]
    chunked: bool
    acked: int = 0  # end of the last PATCH the registry answered
    best: int = 0  # the most ever acknowledged, so only real progress resets ``failures``
    failures: int = 0  # failed attempts since the last progress


class Pieces:
    """A consumer's view of its queue: exactly ``n`` bytes at a time, or an error."""

    def __init__(self, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        self._queue = queue

    async def take(self, n: int) -> AsyncIterator[bytes]:
        left = n
        while left > 0:
            item = await self._queue.get()
            if item is None or isinstance(item, BaseException) or len(item) > left:
                raise SourceFailedError()
            left -= len(item)
            yield item

    def body(self, n: int) -> Callable[[], AsyncIterator[bytes]]:
        """A request body factory for the next ``n`` bytes (used once: not replayable)."""
        return lambda: self.take(n)

    async def end(self) -> None:
        if await self._queue.get() is not None:
            raise SourceFailedError()


class SourceFailedError(Exception):
    """Raised inside an upload body when the source stream failed; aborts that request."""


def drain(q: asyncio.Queue[Any]) -> None:
    while not q.empty():
        q.get_nowait()


def force_put(q: asyncio.Queue[Any], item: Any) -> None:
    drain(q)
    q.put_nowait(item)
