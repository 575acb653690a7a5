"""What a registry lets us send, and when: the transport asks here before every request.

One ``RegistryLimits`` per registry and process. Before a request goes out, ``slot()``

1. picks an account (several ``credentials`` are used in turn): one that no 429 has sent
   away, and, for a request the registry counts against a pull budget, one whose budget is
   above the reserve; if none is, it waits for the earliest to come back when that is
   within ``max_retry_wait``, and fails the request at once (``RateLimitedError``) when not;
2. takes a slot of the adaptive concurrency limit of the request's kind (manifest reads,
   blob reads, uploads), which 429 and 503 answers halve and successes grow back;
3. keeps the steady pace of ``requests_per_second``, if set.

After the answer the transport reports it (``answered``, and ``refused`` for a 429), which
feeds the budgets (``RateLimit-*`` headers), the concurrency limits and the metrics. The
arithmetic lives in ``syncd.registry.ratelimit``; this module adds waiting and reporting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from syncd.durations import format_duration
from syncd.errors import RateLimitedError
from syncd.registry.auth import Authenticator
from syncd.registry.ratelimit import (
    KINDS,
    Aimd,
    Budget,
    TokenBucket,
    is_counted,
    parse_quota,
    request_kind,
)

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_MAX_RETRY_WAIT = 120.0
# A waiter re-checks at least this often, so a lost wake-up costs a second, not a hang.
_RECHECK = 1.0
# Bound on the waits of one request for an account (each ends in a change or a re-check).
_MAX_WAITS = 100_000
_OVERLOAD = (429, 503)


@dataclass(slots=True)
class Account:
    """One set of credentials of a registry and its pull budget. Known by its index only:
    the name and secret never reach logs or metrics."""

    index: int
    auth: Authenticator
    budget: Budget
    reported: bool = False  # "at the reserve" was logged for the current window


@dataclass(slots=True)
class Slot:
    """What one request holds while it is in flight."""

    kind: str
    counted: bool
    account: Account
    epoch: int
    sent: float

    @property
    def auth(self) -> Authenticator:
        return self.account.auth


class _Held:
    """The async context manager of ``RegistryLimits.slot``."""

    __slots__ = ("_limits", "_method", "_path", "_slot")

    def __init__(self, limits: RegistryLimits, method: str, path: str) -> None:
        self._limits = limits
        self._method = method
        self._path = path

    async def __aenter__(self) -> Slot:
        self._slot = await self._limits.acquire(self._method, self._path)
        return self._slot

    async def __aexit__(self, *exc: object) -> None:
        self._limits.release(self._slot)


class _Adaptive:
    """A semaphore whose size follows an ``Aimd`` limit; first come, first served."""

    def __init__(self, maximum: int, gauge: Any) -> None:
        self.aimd = Aimd(maximum)
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._gauge = gauge
        self._show()

    def try_acquire(self) -> int | None:
        """The epoch of a slot taken at once, or None when the caller must wait."""
        if self.in_use < self.aimd.limit and not self._waiters:
            self.in_use += 1
            return self.aimd.epoch
        return None

    async def acquire(self) -> int:
        epoch = self.try_acquire()
        if epoch is not None:
            return epoch
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise
        return self.aimd.epoch

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def overloaded(self, epoch: int) -> bool:
        changed = self.aimd.decrease(epoch)
        if changed:
            self._show()
        return changed

    def succeeded(self) -> bool:
        changed = self.aimd.increase()
        if changed:
            self._show()
            self._wake()
        return changed

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.aimd.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    def _show(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.aimd.limit)


def _clock(seconds_from_now: float) -> str:
    """A wall-clock time for messages: when a wait of that many seconds ends."""
    at = datetime.now(UTC).timestamp() + seconds_from_now
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RegistryLimits:
    """Accounts, pull budgets, adaptive concurrency and pace of one registry."""

    def __init__(
        self,
        *,
        registry: str,
        authenticators: Sequence[Authenticator],
        max_concurrency: int = 8,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        reserve: tuple[float, bool] = (10.0, True),
        requests_per_second: float | None = None,
        metrics: Metrics | None = None,
        budgeted: bool = False,
    ) -> None:
        if not authenticators:
            raise ValueError("a registry needs at least one (possibly anonymous) account")
        self.registry = registry
        self.max_retry_wait = max_retry_wait
        self.metrics = metrics
        self.accounts = [
            Account(i, auth, Budget(reserve_amount=reserve[0], reserve_percent=reserve[1]))
            for i, auth in enumerate(authenticators)
        ]
        self._current = 0
        self._configured_budget = budgeted
        self._slots = {
            kind: _Adaptive(
                max_concurrency,
                metrics.registry_concurrency.labels(registry=registry, kind=kind)
                if metrics
                else None,
            )
            for kind in KINDS
        }
        self._bucket = TokenBucket(requests_per_second) if requests_per_second else None
        self._changed = asyncio.Event()
        self._waiting = 0  # requests waiting in _account for a change

    # -- what others ask -----------------------------------------------------------------
    @property
    def budgeted(self) -> bool:
        """Whether pulls from this registry are scarce: a budget was configured (a reserve,
        several accounts) or the registry has sent its budget headers."""
        return self._configured_budget or any(a.budget.remaining is not None for a in self.accounts)

    def concurrency(self, kind: str) -> int:
        return self._slots[kind].aimd.limit

    def learn(self, header: str | None) -> bool:
        """Teach every account the registry's challenge (from the ``/v2/`` ping)."""
        learned = [a.auth.learn(header) for a in self.accounts]
        return learned[0]

    def blocked(self) -> RateLimitedError | None:
        """The error to report while every account was sent away for longer than
        ``max_retry_wait`` (the registry is left alone until then); None otherwise."""
        now = time.monotonic()
        until = min(a.budget.refused_until for a in self.accounts)
        if until - now <= self.max_retry_wait:
            return None
        return self._left_alone(until - now)

    # -- before a request ----------------------------------------------------------------
    def slot(self, method: str, path: str) -> _Held:
        """``async with limits.slot(method, path) as slot``: hold an account, a concurrency
        slot and a place in the pace for one request (a plain class, not a generator: it
        sits on every request's path)."""
        return _Held(self, method, path)

    async def acquire(self, method: str, path: str) -> Slot:
        kind, counted = request_kind(method, path), is_counted(method, path)
        # Nearly always the current account is fine: check it before the general search.
        account = self.accounts[self._current]
        budget = account.budget
        now = time.monotonic()
        if not (budget.spendable(now) if counted else now >= budget.refused_until):
            account = await self._account(counted)
        if counted:
            account.budget.in_flight += 1
        slots = self._slots[kind]
        acquired = False
        try:
            taken = slots.try_acquire()
            epoch = taken if taken is not None else await slots.acquire()
            acquired = True
            if self._bucket is not None:
                delay = self._bucket.delay(time.monotonic())
                if delay > 0:
                    await asyncio.sleep(delay)
        except BaseException:
            if acquired:
                slots.release()
            self._unspend(account, counted)
            raise
        if len(self.accounts) > 1:
            log.debug(
                "%s (%s) via account %d",
                method,
                kind,
                account.index,
                extra={"registry": self.registry, "account": account.index},
            )
        return Slot(kind, counted, account, epoch, time.monotonic())

    def release(self, slot: Slot) -> None:
        self._slots[slot.kind].release()
        self._unspend(slot.account, slot.counted)

    def _unspend(self, account: Account, counted: bool) -> None:
        if counted:
            account.budget.in_flight -= 1
            self._notify()

    async def _account(self, counted: bool) -> Account:
        waited = False
        for _ in range(_MAX_WAITS):
            now = time.monotonic()
            n = len(self.accounts)
            for i in range(n):
                account = self.accounts[(self._current + i) % n]
                ok = (
                    account.budget.spendable(now)
                    if counted
                    else now >= account.budget.refused_until
                )
                if ok:
                    self._use(account)
                    return account
            # None is ready. If each will be at a known time, wait for the first (or give up
            # when that is too far away); otherwise answers in flight will tell.
            readies = [
                a.budget.ready_at(now) if counted else a.budget.refused_until for a in self.accounts
            ]
            if all(r is not None for r in readies):
                wake = min(r for r in readies if r is not None)
                if not waited:
                    waited = True
                    self._count_wait()
                    if wake - now <= self.max_retry_wait:
                        self._note_wait(wake - now, counted)
                if wake - now > self.max_retry_wait:
                    raise self._spent_error(wake - now, counted)
                await self._wait(wake - now)
            else:
                await self._wait(_RECHECK)
        raise RateLimitedError(
            f"waited too often for an account of {self.registry}", registry=self.registry
        )

    def _use(self, account: Account) -> None:
        if account.index == self._current:
            return
        log.info(
            "registry %s: switching to account %d (account %d is spent until its window resets)",
            self.registry,
            account.index,
            self._current,
            extra={"registry": self.registry, "account": account.index, "event": "account"},
        )
        self._current = account.index

    async def _wait(self, seconds: float) -> None:
        event = self._changed
        self._waiting += 1
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=max(0.0, min(seconds, _RECHECK)))
        finally:
            self._waiting -= 1

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next round of waiting.
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- after the answer ----------------------------------------------------------------
    def answered(self, slot: Slot, status: int, headers: Mapping[str, str]) -> None:
        """Every answer: grow or shrink the concurrency limit, read the budget headers."""
        slots = self._slots[slot.kind]
        if status in _OVERLOAD:
            if slots.overloaded(slot.epoch):
                log.info(
                    "registry %s: %s concurrency down to %d after a %d",
                    self.registry,
                    slot.kind,
                    slots.aimd.limit,
                    status,
                    extra={"registry": self.registry, "event": "concurrency"},
                )
        elif status < 500 and slots.succeeded():
            log.debug(
                "registry %s: %s concurrency up to %d",
                self.registry,
                slot.kind,
                slots.aimd.limit,
                extra={"registry": self.registry, "event": "concurrency"},
            )
        budget = slot.account.budget
        remaining = parse_quota(headers.get("RateLimit-Remaining"))
        now = time.monotonic()
        if remaining is not None:
            was_spent = slot.account.reported
            if budget.observe(
                parse_quota(headers.get("RateLimit-Limit")), remaining, sent=slot.sent, now=now
            ):
                slot.account.reported = False
                if was_spent:
                    log.info(
                        "registry %s: a new budget window for account %d: %d pulls left",
                        self.registry,
                        slot.account.index,
                        remaining.count,
                        extra={"registry": self.registry, "account": slot.account.index},
                    )
            self._show_budget(slot.account)
            if budget.at_reserve(now) and not slot.account.reported:
                slot.account.reported = True
                log.warning(
                    "registry %s: pull budget%s down to its reserve (%s of %s left, reserve "
                    "%d); no more pulls on it until its window resets (about %s)",
                    self.registry,
                    self._of(slot.account),
                    budget.remaining,
                    budget.limit,
                    budget.reserve,
                    _clock(budget.window_end - now) if math.isfinite(budget.window_end) else "?",
                    extra={"registry": self.registry, "event": "quota_reserve"},
                )
        elif slot.counted and status == 200:
            budget.observe_absent()
        self._notify()

    def refused(self, slot: Slot, retry_after: float | None) -> tuple[float | None, bool]:
        """A 429: the account stays away as asked. Returns how long the retry should wait
        (None: the usual backoff) and whether it may be retried at all."""
        if retry_after is None:
            return None, True
        now = time.monotonic()
        slot.account.budget.refused(now + retry_after)
        self._notify()
        if any(now >= a.budget.refused_until for a in self.accounts):
            return 0.0, True  # another account takes over at once
        if retry_after > self.max_retry_wait:
            log.warning(
                "registry %s asked to be left alone for %s (Retry-After), more than "
                "max_retry_wait %s: its requests fail until %s",
                self.registry,
                format_duration(retry_after),
                format_duration(self.max_retry_wait),
                _clock(retry_after),
                extra={"registry": self.registry, "event": "rate_limited"},
            )
            return retry_after, False
        return retry_after, True

    # -- reporting -----------------------------------------------------------------------
    def _of(self, account: Account) -> str:
        return f" of account {account.index}" if len(self.accounts) > 1 else ""

    def _show_budget(self, account: Account) -> None:
        if self.metrics is None or account.budget.remaining is None:
            return
        label = str(account.index) if len(self.accounts) > 1 else ""
        self.metrics.registry_quota_remaining.labels(registry=self.registry, account=label).set(
            account.budget.remaining
        )

    def _count_wait(self) -> None:
        if self.metrics is not None:
            self.metrics.quota_waits.labels(registry=self.registry).inc()

    def _note_wait(self, seconds: float, counted: bool) -> None:
        log.debug(
            "registry %s: %s; waiting %s",
            self.registry,
            "every account's pull budget is at its reserve"
            if counted
            else "asked to slow down (Retry-After)",
            format_duration(seconds),
            extra={"registry": self.registry, "event": "quota_wait"},
        )

    def _left_alone(self, seconds: float) -> RateLimitedError:
        err = RateLimitedError(
            f"left alone until {_clock(seconds)} as it asked (Retry-After over "
            f"max_retry_wait {format_duration(self.max_retry_wait)})",
            registry=self.registry,
            retry_after=seconds,
        )
        err.retryable = False
        return err

    def _spent_error(self, seconds: float, counted: bool) -> RateLimitedError:
        if not counted or all(time.monotonic() < a.budget.refused_until for a in self.accounts):
            return self._left_alone(seconds)
        err = RateLimitedError(
            f"pull budget at its reserve until about {_clock(seconds)}, more than "
            f"max_retry_wait {format_duration(self.max_retry_wait)} away",
            registry=self.registry,
            retry_after=seconds,
        )
        err.retryable = False
        return err
