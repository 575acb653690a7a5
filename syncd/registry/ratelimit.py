"""The arithmetic of registry rate limits: pure values, no I/O, no clock of their own.

Every function and class here takes the current time as an argument, so that the rules can
be tested with a table of numbers; ``syncd.registry.limits`` drives them from the event loop.

- ``parse_retry_after``: RFC 9110 section 10.2.3, delay-seconds or an HTTP-date.
- ``parse_quota``: Docker Hub's ``RateLimit-Limit``/``RateLimit-Remaining`` values,
  ``100;w=21600`` (a count and its window in seconds), after the IETF draft
  "RateLimit header fields for HTTP" that Docker Hub follows.
- ``Aimd``: additive increase, multiplicative decrease of a concurrency limit (RFC 5681's
  congestion avoidance): halve on an overload answer, add one per window of successes.
- ``TokenBucket``: a steady request pace (the generic cell rate algorithm, ITU-T I.371).
- ``Budget``: what one account may still spend of a registry's pull budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# Kinds of request that get their own adaptive concurrency limit: a registry that throttles
# pulls of manifests often serves blobs from a CDN, and uploads stress other parts of it.
MANIFEST_READ = "manifest_read"
BLOB_READ = "blob_read"
UPLOAD = "upload"
KINDS = (MANIFEST_READ, BLOB_READ, UPLOAD)


def request_kind(method: str, path: str) -> str:
    """Which adaptive limit a request counts against."""
    if method not in ("GET", "HEAD") or "/blobs/uploads" in path:
        return UPLOAD
    if "/blobs/" in path:
        return BLOB_READ
    # Manifests, and the listings that come with them (tags, catalog, referrers).
    return MANIFEST_READ


def is_counted(method: str, path: str) -> bool:
    """Whether a registry with a pull budget counts this request against it.

    Docker Hub counts manifest GETs only; a HEAD of a manifest and a blob GET are free
    (docs.docker.com, "Docker Hub usage and limits", "pull definition").
    """
    return method == "GET" and "/manifests/" in path


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait, from a ``Retry-After`` value; ``now`` is Unix time (for a date).

    A date in the past means "now" (0). Anything unparsable is ignored (None), as the
    header is advisory.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # HTTP-dates are GMT; a date without a zone is not one
        return max(0.0, when.timestamp() - now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class Quota:
    """One ``RateLimit-*`` value: a count and the window (seconds; 0 if not given)."""

    count: int
    window: int = 0


def parse_quota(value: str | None) -> Quota | None:
    """``76;w=21600`` as ``Quota(76, 21600)``; None for a missing or malformed value."""
    if not value:
        return None
    head, _, params = value.partition(";")
    try:
        count = int(head.strip())
    except ValueError:
        return None
    if count < 0:
        return None
    window = 0
    for param in params.split(";"):
        key, _, val = param.strip().partition("=")
        if key.strip().lower() == "w" and val.strip().isdigit():
            window = int(val.strip())
    return Quota(count, window)


def reserve_of(limit: int, amount: float, percent: bool) -> int:
    """How many pulls of a budget of ``limit`` are kept back: a count, or a share rounded up."""
    if percent:
        return min(limit, math.ceil(limit * amount / 100))
    return min(limit, int(amount))


class Aimd:
    """A concurrency limit between 1 and ``maximum`` that adapts to overload answers.

    ``decrease`` takes the epoch its request was admitted in: answers to requests sent
    before the last decrease were already accounted for by it, so a burst of 429s to one
    round of requests halves the limit once, not once per request (TCP's one reduction per
    window, RFC 5681 section 3.1).
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.epoch = 0
        self._successes = 0

    def decrease(self, epoch: int) -> bool:
        """An overload answer (429/503) to a request of ``epoch``; True if the limit fell."""
        if epoch != self.epoch:
            return False
        self.epoch += 1
        self._successes = 0
        new = max(1, self.limit // 2)
        changed = new != self.limit
        self.limit = new
        return changed

    def increase(self) -> bool:
        """A success; every ``limit`` successes in a row add one. True if the limit rose."""
        if self.limit >= self.maximum:
            return False
        self._successes += 1
        if self._successes < self.limit:
            return False
        self._successes = 0
        self.limit += 1
        return True


class TokenBucket:
    """At most ``rate`` requests per second on average, ``burst`` of them back to back.

    ``delay(now)`` books the next request and says how long it must wait; bookings queue
    up, so callers that wait their delay go out evenly spaced.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._slack = max(0.0, burst - 1.0) * self.interval
        self._tat = -math.inf  # theoretical arrival time of the next request

    def delay(self, now: float) -> float:
        tat = max(self._tat, now)
        wait = max(0.0, tat - self._slack - now)
        self._tat = tat + self.interval
        return wait


@dataclass(slots=True)
class Budget:
    """One account's pull budget at one registry, as its headers tell it.

    Conservative by construction, so that spending never goes past the reserve:

    - within a window the smallest ``remaining`` seen is kept (answers to concurrent
      requests arrive in any order, and an early answer may report a larger number);
    - requests in flight are counted as spent until their answer arrives;
    - a window is taken to start when its first answer arrives, which is no earlier than
      it really started, so the estimated end is no earlier than the real one; only
      answers to requests sent after that end may start a new window;
    - while nothing is known (no answer yet, or a window just ended), one counted request
      at a time probes the budget.

    A registry that answers without the headers has no budget (``unlimited``).
    """

    reserve_amount: float = 10.0
    reserve_percent: bool = True
    limit: int | None = None
    remaining: int | None = None
    window_end: float = 0.0
    # When the request behind the accepted value was sent (windowless budgets).
    value_sent: float = -math.inf
    in_flight: int = 0
    unlimited: bool = False
    # A 429 asked this account to stay away until then (monotonic seconds).
    refused_until: float = 0.0

    @property
    def reserve(self) -> int:
        if self.limit is None:
            return 0
        return reserve_of(self.limit, self.reserve_amount, self.reserve_percent)

    def known(self, now: float) -> bool:
        return self.remaining is not None and now < self.window_end

    def spendable(self, now: float) -> bool:
        """Whether one more counted request may go out on this account now."""
        if now < self.refused_until:
            return False
        if self.unlimited:
            return True
        if not self.known(now):
            return self.in_flight == 0
        assert self.remaining is not None
        return self.remaining - self.in_flight > self.reserve

    def at_reserve(self, now: float) -> bool:
        """Known to be spent down to the reserve (not merely busy probing)."""
        if now < self.refused_until:
            return True
        if self.unlimited or not self.known(now):
            return False
        assert self.remaining is not None
        return self.remaining - self.in_flight <= self.reserve

    def ready_at(self, now: float) -> float | None:
        """When this account may be spendable again; None if it waits for answers instead."""
        if now < self.refused_until:
            return self.refused_until
        if self.known(now) and self.remaining is not None and self.remaining <= self.reserve:
            return self.window_end
        return None

    def observe(
        self, limit: Quota | None, remaining: Quota | None, *, sent: float, now: float
    ) -> bool:
        """An answer's headers, for a request sent at ``sent``. True if a new window began."""
        if remaining is None:
            return False
        self.unlimited = False
        window = remaining.window or (limit.window if limit else 0)
        if limit is not None:
            self.limit = limit.count
        elif self.limit is None:
            self.limit = remaining.count
        if not window:
            # No window to reason about: the answer to the latest request sent is the news.
            self.window_end = math.inf
            if sent >= self.value_sent:
                self.remaining, self.value_sent = remaining.count, sent
            return False
        if self.remaining is None or (now >= self.window_end and sent >= self.window_end):
            # The window is assumed to begin with this answer (see the class docstring).
            self.remaining, self.value_sent = remaining.count, sent
            self.window_end = now + window
            return True
        self.remaining = min(self.remaining, remaining.count)
        return False

    def observe_absent(self) -> None:
        """An answer to a counted request without the headers: this account is not limited."""
        if self.remaining is None:
            self.unlimited = True

    def refused(self, until: float) -> None:
        """A 429: nothing more on this account before ``until``."""
        self.refused_until = max(self.refused_until, until)
