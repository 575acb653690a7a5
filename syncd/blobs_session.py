"""The small parts ``syncd.blobs`` is built from: per-target blob counts, one target's
upload session, its queue of chunks, and the connections a tee holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.endpoint import Endpoint


@dataclass(slots=True)
class BlobCounts:
    """Blob work done for one target during one image copy."""

    copied: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes: int = 0


def transfer_needs(
    source: Endpoint, sessions: Sequence[UploadSession]
) -> dict[str, tuple[int, int]]:
    """Connections one tee holds at once, per registry: the source GET, and one upload
    request per target session (chunks go one after the other)."""
    needs: dict[str, tuple[int, int]] = {}
    for client in [source.client, *(s.endpoint.client for s in sessions)]:
        held = needs.get(client.name, (0, 0))[0]
        needs[client.name] = (held + 1, client.max_concurrency)
    return needs


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
