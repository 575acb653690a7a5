"""RegistryLimits without a network: accounts in turn, waits within the cap, fail-fast beyond."""

from __future__ import annotations

import asyncio
import time

import pytest

from syncd.errors import RateLimitedError
from syncd.metrics import Metrics
from syncd.registry.auth import Authenticator
from syncd.registry.limits import RegistryLimits
from syncd.registry.ratelimit import BLOB_READ, MANIFEST_READ

GET = ("GET", "/v2/library/nginx/manifests/latest")
HEAD = ("HEAD", "/v2/library/nginx/manifests/latest")


def limits(accounts: int = 1, **kw: object) -> RegistryLimits:
    auths = [Authenticator(registry="hub") for _ in range(accounts)]
    return RegistryLimits(registry="hub", authenticators=auths, **kw)  # type: ignore[arg-type]


def budget_headers(limit: int, left: int, window: int) -> dict[str, str]:
    return {"RateLimit-Limit": f"{limit};w={window}", "RateLimit-Remaining": f"{left};w={window}"}


async def pull(lim: RegistryLimits, left: int, *, limit: int = 10, window: int = 3600) -> int:
    """One counted request answered with ``left`` pulls remaining; the account it used."""
    async with lim.slot(*GET) as slot:
        lim.answered(slot, 200, budget_headers(limit, left, window))
        return slot.account.index


async def test_accounts_take_turns_and_a_far_window_fails_at_once() -> None:
    metrics = Metrics()
    lim = limits(2, reserve=(2.0, False), max_retry_wait=60.0, metrics=metrics)
    assert [await pull(lim, left) for left in (5, 4, 3, 2)] == [0, 0, 0, 0]
    assert [await pull(lim, left) for left in (3, 2)] == [1, 1]
    with pytest.raises(RateLimitedError) as err:
        await lim.acquire(*GET)  # an hour away: not waited for
    assert not err.value.retryable and "pull budget at its reserve" in str(err.value)
    # Free requests still go out.
    async with lim.slot(*HEAD) as slot:
        assert slot.account.index == 1
    quota = metrics.registry_quota_remaining
    assert quota.labels(registry="hub", account="0")._value.get() == 2
    assert quota.labels(registry="hub", account="1")._value.get() == 2
    assert metrics.quota_waits.labels(registry="hub")._value.get() == 1
    assert lim.blocked() is None  # a spent budget does not stop passes: HEADs are free


async def test_a_near_window_is_waited_for() -> None:
    lim = limits(reserve=(0.0, False), max_retry_wait=5.0)
    await pull(lim, 0, window=1)
    start = time.monotonic()
    slot = await lim.acquire(*GET)  # the probe of the next window
    lim.release(slot)
    assert time.monotonic() - start > 0.5  # the rest of the one-second window


async def test_a_long_retry_after_blocks_the_registry_and_a_short_one_pauses_it() -> None:
    lim = limits(max_retry_wait=10.0)
    slot = await lim.acquire(*HEAD)
    lim.answered(slot, 429, {})
    assert lim.refused(slot, 3600.0) == (3600.0, False)
    lim.release(slot)
    blocked = lim.blocked()
    assert blocked is not None and "left alone until" in str(blocked)
    with pytest.raises(RateLimitedError):
        await lim.acquire("GET", "/v2/a/blobs/sha256:00")

    lim = limits(max_retry_wait=10.0)
    slot = await lim.acquire(*HEAD)
    assert lim.refused(slot, 0.3) == (0.3, True)
    lim.release(slot)
    start = time.monotonic()
    lim.release(await lim.acquire(*HEAD))
    assert time.monotonic() - start >= 0.25


async def test_a_429_moves_to_the_next_account_at_once() -> None:
    lim = limits(2, max_retry_wait=10.0)
    slot = await lim.acquire(*GET)
    assert lim.refused(slot, 3600.0) == (0.0, True)
    lim.release(slot)
    async with lim.slot(*GET) as again:
        assert again.account.index == 1


async def test_concurrency_is_halved_per_round_and_limits_the_requests_in_flight() -> None:
    metrics = Metrics()
    lim = limits(max_concurrency=4, metrics=metrics)
    gauge = metrics.registry_concurrency.labels(registry="hub", kind=MANIFEST_READ)
    held = [await lim.acquire(*HEAD) for _ in range(4)]
    for slot in held:  # one round of 429s halves once
        lim.answered(slot, 429, {})
    assert lim.concurrency(MANIFEST_READ) == 2 and gauge._value.get() == 2
    assert lim.concurrency(BLOB_READ) == 4  # other kinds are not touched
    for slot in held[:2]:
        lim.release(slot)
    waiter = asyncio.ensure_future(lim.acquire(*HEAD))
    await asyncio.sleep(0)  # sleep-ok: one loop turn, to show the waiter does not get in
    assert not waiter.done()  # 2 in flight, limit 2
    lim.release(held[2])  # 1 in flight: the waiter gets in
    extra = await asyncio.wait_for(waiter, 1)
    lim.release(held[3])
    lim.release(extra)
    for _ in range(2 + 3):
        slot = await lim.acquire(*HEAD)
        lim.answered(slot, 200, {})
        lim.release(slot)
    assert lim.concurrency(MANIFEST_READ) == 4 and gauge._value.get() == 4
