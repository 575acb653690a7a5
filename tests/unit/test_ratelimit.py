"""The arithmetic of rate limits: header parsing, AIMD, token bucket, pull budgets."""

from __future__ import annotations

import math

import pytest

from syncd.registry.ratelimit import (
    BLOB_READ,
    MANIFEST_READ,
    UPLOAD,
    Aimd,
    Budget,
    Quota,
    TokenBucket,
    is_counted,
    parse_quota,
    parse_retry_after,
    request_kind,
    reserve_of,
)

# Sun, 06 Dec 2026 12:00:00 GMT
NOON = 1796558400.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 3600 ", 3600.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),  # a negative delay means "now"
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Sun, 06 Dec 2026 12:01:00 GMT", 60.0),  # IMF-fixdate (RFC 9110 5.6.7)
        ("Sunday, 06-Dec-26 12:00:30 GMT", 30.0),  # obsolete RFC 850 form
        ("Sun Dec  6 12:02:00 2026", None),  # asctime has no zone: not trusted
        ("Sun, 06 Dec 2026 11:00:00 GMT", 0.0),  # in the past
        ("", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOON)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100;w=21600", Quota(100, 21600)),
        ("76;w=21600", Quota(76, 21600)),
        ("0;w=21600", Quota(0, 21600)),
        ("100", Quota(100, 0)),
        (" 5 ; w=60 ", Quota(5, 60)),
        ("5;W=60", Quota(5, 60)),
        ("5;q=1;w=60", Quota(5, 60)),
        ("5;w=x", Quota(5, 0)),
        ("-1;w=60", None),
        ("many", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_quota(value: str | None, expected: Quota | None) -> None:
    assert parse_quota(value) == expected


@pytest.mark.parametrize(
    ("limit", "amount", "percent", "expected"),
    [
        (100, 10, True, 10),
        (200, 10, True, 20),
        (6, 10, True, 1),  # a share is rounded up: never a reserve of 0 by rounding
        (100, 0, True, 0),
        (100, 25, False, 25),
        (10, 25, False, 10),  # never more than the whole budget
        (100, 2.5, True, 3),
    ],
)
def test_reserve_of(limit: int, amount: float, percent: bool, expected: int) -> None:
    assert reserve_of(limit, amount, percent) == expected


@pytest.mark.parametrize(
    ("method", "path", "kind", "counted"),
    [
        ("GET", "/v2/library/nginx/manifests/latest", MANIFEST_READ, True),
        ("HEAD", "/v2/library/nginx/manifests/latest", MANIFEST_READ, False),
        ("GET", "/v2/library/nginx/tags/list", MANIFEST_READ, False),
        ("GET", "/v2/_catalog", MANIFEST_READ, False),
        ("GET", "/v2/a/blobs/sha256:ab", BLOB_READ, False),
        ("HEAD", "/v2/a/blobs/sha256:ab", BLOB_READ, False),
        ("POST", "/v2/a/blobs/uploads/", UPLOAD, False),
        ("PATCH", "http://r/v2/a/blobs/uploads/u1?_state=x", UPLOAD, False),
        ("GET", "http://r/v2/a/blobs/uploads/u1", UPLOAD, False),
        ("PUT", "/v2/a/manifests/v1", UPLOAD, False),
        ("DELETE", "/v2/a/manifests/sha256:ab", UPLOAD, False),
    ],
)
def test_request_kind_and_what_docker_hub_counts(
    method: str, path: str, kind: str, counted: bool
) -> None:
    assert request_kind(method, path) == kind
    assert is_counted(method, path) is counted


def test_aimd_halves_once_per_round_and_grows_by_one_per_window() -> None:
    a = Aimd(8)
    epoch = a.epoch
    assert a.decrease(epoch) and a.limit == 4
    # Other answers to the same round of requests do not halve again.
    assert not a.decrease(epoch) and a.limit == 4
    assert a.decrease(a.epoch) and a.limit == 2
    assert a.decrease(a.epoch) and a.limit == 1
    assert not a.decrease(a.epoch) and a.limit == 1  # never below 1
    grown = []
    for _ in range(1 + 2 + 3 + 4 + 5 + 6 + 7):
        if a.increase():
            grown.append(a.limit)
    assert grown == [2, 3, 4, 5, 6, 7, 8]
    assert not a.increase() and a.limit == 8  # never above the configured limit


def test_aimd_a_decrease_restarts_the_window_of_successes() -> None:
    a = Aimd(4)
    a.decrease(a.epoch)  # 2
    a.increase()
    a.decrease(a.epoch)  # 1
    assert a.limit == 1
    assert a.increase() and a.limit == 2


def test_token_bucket_spaces_requests_evenly() -> None:
    bucket = TokenBucket(10)
    delays = [bucket.delay(100.0) for _ in range(4)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # Idle time does not pile up into a burst beyond the bucket's size.
    assert bucket.delay(200.0) == 0.0
    assert bucket.delay(200.0) == pytest.approx(0.1)


def test_token_bucket_with_a_burst() -> None:
    bucket = TokenBucket(2, burst=3)
    delays = [bucket.delay(0.0) for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        TokenBucket(0)


def budget(**kw: object) -> Budget:
    return Budget(reserve_amount=1, reserve_percent=False, **kw)  # type: ignore[arg-type]


def test_budget_probes_alone_until_the_headers_tell() -> None:
    b = budget()
    assert b.spendable(0.0)
    b.in_flight = 1
    assert not b.spendable(0.0) and b.ready_at(0.0) is None  # waits for the answer
    assert b.observe(Quota(6, 60), Quota(5, 60), sent=0.0, now=0.1)
    b.in_flight = 0
    assert b.limit == 6 and b.remaining == 5 and b.window_end == pytest.approx(60.1)


def test_budget_stops_at_the_reserve_counting_requests_in_flight() -> None:
    b = budget()
    b.observe(Quota(6, 60), Quota(3, 60), sent=0.0, now=0.0)
    assert b.spendable(1.0)
    b.in_flight = 2  # 3 left, 2 on the way: one more would eat into the reserve of 1
    assert not b.spendable(1.0) and b.at_reserve(1.0)
    b.in_flight = 0
    b.observe(Quota(6, 60), Quota(1, 60), sent=1.0, now=1.1)
    assert not b.spendable(2.0) and b.ready_at(2.0) == 60.0


def test_budget_keeps_the_smallest_count_of_a_window() -> None:
    b = budget()
    b.observe(None, Quota(4, 60), sent=0.0, now=0.0)
    # A late answer to an earlier request reports more than is left: ignored.
    assert not b.observe(None, Quota(5, 60), sent=0.0, now=1.0)
    assert b.remaining == 4 and b.limit == 4


def test_budget_a_new_window_only_from_requests_sent_after_the_old_one_ended() -> None:
    b = budget()
    b.observe(Quota(6, 10), Quota(1, 10), sent=0.0, now=0.0)
    assert b.ready_at(5.0) == 10.0
    # After the estimated end: nothing known, one probe at a time.
    assert b.spendable(10.0) and b.ready_at(10.0) is None
    assert not b.observe(Quota(6, 10), Quota(6, 10), sent=9.0, now=10.5)  # sent too early
    assert b.remaining == 1
    assert b.observe(Quota(6, 10), Quota(5, 10), sent=10.5, now=10.6)
    assert b.remaining == 5 and b.window_end == pytest.approx(20.6) and b.spendable(11.0)


def test_budget_without_a_window_follows_the_latest_request() -> None:
    b = budget()
    b.observe(None, Quota(5), sent=1.0, now=1.1)
    b.observe(None, Quota(3), sent=3.0, now=3.1)
    b.observe(None, Quota(4), sent=2.0, now=3.2)  # older request: ignored
    assert b.remaining == 3 and math.isinf(b.window_end)
    b.observe(None, Quota(9), sent=4.0, now=4.1)  # refilled
    assert b.remaining == 9


def test_budget_absent_headers_mean_unlimited_and_a_429_sends_the_account_away() -> None:
    b = budget()
    b.observe_absent()
    b.in_flight = 50
    assert b.spendable(0.0) and not b.at_reserve(0.0)
    b.refused(30.0)
    assert not b.spendable(10.0) and b.at_reserve(10.0) and b.ready_at(10.0) == 30.0
    assert b.spendable(30.0)


def test_budget_percent_reserve() -> None:
    b = Budget()  # 10%
    b.observe(Quota(100, 21600), Quota(11, 21600), sent=0.0, now=0.0)
    assert b.reserve == 10 and b.spendable(1.0)
    b.observe(Quota(100, 21600), Quota(10, 21600), sent=0.5, now=1.0)
    assert not b.spendable(1.0)
