"""Concurrency helpers of the copy engine: side-by-side awaits, early target HEADs, and
single-flight claims taken for a batch of targets at once (over ``syncd.singleflight``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from syncd.errors import SyncdError
from syncd.singleflight import Flight, SingleFlight

if TYPE_CHECKING:
    from syncd.endpoint import Endpoint
    from syncd.storage import ManifestHead

T = TypeVar("T")


async def gather_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Await every one side by side, then raise the first error, if any: unlike a plain
    gather, nothing is left running unobserved after a failure."""
    got = await asyncio.gather(*aws, return_exceptions=True)
    for g in got:
        if isinstance(g, BaseException):
            raise g
    return cast(list[T], got)


class Lookahead:
    """Target HEADs sent early (``CopyEngine.look_ahead``); each is used at most once.

    ``close`` cancels or collects what the copy never used (a source that failed, an
    image refused before its targets were looked at), so no task outlives its job and no
    error goes unobserved.
    """

    def __init__(self, tasks: dict[Endpoint, asyncio.Future[ManifestHead | None]]) -> None:
        self._tasks = tasks

    def take(self, t: Endpoint) -> asyncio.Future[ManifestHead | None] | None:
        return self._tasks.pop(t, None)

    async def close(self) -> None:
        if not self._tasks:
            return
        left = list(self._tasks.values())
        self._tasks.clear()
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)


class TargetClaims:
    """Single-flight (``syncd.singleflight``) for a batch of targets: work on a key done by
    one copy at a time, the others wait and share its outcome (the error it ended with)."""

    def __init__(self) -> None:
        self._flights: SingleFlight[tuple[str, ...], None] = SingleFlight()

    def split(
        self, items: Iterable[tuple[tuple[str, ...], Endpoint, T]]
    ) -> tuple[list[tuple[tuple[str, ...], Endpoint, T]], dict[Endpoint, Flight[None]]]:
        """Claim each free key for the caller (which must then run ``owning``); for a key
        already being worked on, the flight to wait for instead."""
        mine: list[tuple[tuple[str, ...], Endpoint, T]] = []
        joined: dict[Endpoint, Flight[None]] = {}
        for key, t, item in items:
            other = self._flights.claim(key)
            if other is not None:
                joined[t] = other
                continue
            mine.append((key, t, item))
        return mine, joined

    @contextmanager
    def owning(
        self,
        claimed: Iterable[tuple[tuple[str, ...], Endpoint, Any]],
        failures: dict[Endpoint, BaseException],
        interrupted: str,
    ) -> Iterator[None]:
        """Release the claimed keys when the work ends, each with its target's failure."""
        aborted: BaseException | None = None
        try:
            yield
        except BaseException:
            aborted = SyncdError(interrupted)
            raise
        finally:
            for key, t, _ in claimed:
                self._flights.land(key, error=failures.get(t) or aborted)

    @staticmethod
    async def join(
        joined: dict[Endpoint, Flight[None]], failures: dict[Endpoint, BaseException]
    ) -> None:
        """Wait for the work other copies are doing; their failures become ours."""
        for t, flight in joined.items():
            err = (await SingleFlight.join(flight)).error
            if err is not None:
                failures.setdefault(t, err)
