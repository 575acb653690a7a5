"""Pull budgets, several accounts, long Retry-Afters, 429 storms and a steady pace.

A real registry sits behind ``QuotaFront``, which enforces Docker Hub's documented pull
limits per account and window, and answers 429 as Docker Hub does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import yaml

from syncd.config.schema import AccountConfig, Config, QuotaReserve
from syncd.metrics import Metrics
from syncd.registry.ratelimit import MANIFEST_READ
from syncd.secret import Secret
from syncd.sync import open_syncer
from tests.faults.conftest import config_for, run_once, summary, wait_for
from tests.faults.quota_front import QuotaFront
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, manifest_raw

REPO = "lib/app"


@pytest.fixture
def fronts() -> Iterator[list[QuotaFront]]:
    made: list[QuotaFront] = []
    try:
        yield made
    finally:
        for f in made:
            f.close()


def _source(config: Config, **changes: object) -> Config:
    """``config`` with its source registry's settings changed."""
    regs = dict(config.registries)
    regs["src"] = dataclasses.replace(regs["src"], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(config, registries=regs)


async def test_a_pass_over_budget_copies_new_tags_first_switches_accounts_and_completes_later(
    source: Registry,
    target: Registry,
    fronts: list[QuotaFront],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 4 tags already mirrored, then changed at the source (re-checks that need a pull),
    # and 8 new tags: 12 pulls wanted, 2 accounts x (6 - reserve 1) = 10 allowed per window.
    for i in range(4):
        push(source.url, REPO, f"old{i}", image(f"old-{i}", layers=1, size=300))
    plain = config_for(source.url, [target.url], [REPO])
    async with open_syncer(plain) as syncer:
        assert (await syncer.run_rule(plain.rules[0])).synced == 4
    for i in range(4):
        push(source.url, REPO, f"old{i}", image(f"old-{i}-rebuilt", layers=1, size=300))
    for i in range(8):
        push(source.url, REPO, f"new{i}", image(f"new-{i}", layers=1, size=300))

    window = 6.0
    front = QuotaFront(source.url, limit=6, window=window, users={"bot1": "pw1", "bot2": "pw2"})
    fronts.append(front)
    config = _source(
        config_for(front.url, [target.url], [REPO], concurrency=2),
        credentials=(
            AccountConfig("bot1", Secret("pw1")),
            AccountConfig("bot2", Secret("pw2")),
        ),
        quota_reserve=QuotaReserve(1, percent=False),
        # Shorter than the window: the pass does not wait for it, a later pass completes.
        max_retry_wait=1.0,
    )
    caplog.set_level(logging.DEBUG, logger="syncd.registry.limits")
    metrics = Metrics()
    async with open_syncer(config, metrics) as syncer:
        first = await syncer.run_rule(config.rules[0])
        print(f"\npass 1: synced={first.synced} failed={first.failed} in {first.seconds:.1f}s")
        print(f"pulls per (account, window): {front.pulls_per_window()}")
        assert first.synced == 10 and first.failed == 2, first.failures
        for i in range(8):
            assert manifest_raw(target.url, REPO, f"new{i}") == manifest_raw(
                source.url, REPO, f"new{i}"
            ), f"new{i} was not copied first"
        assert all("pull budget at its reserve" in f for f in first.failures), first.failures
        spent = front.pulls_per_window()
        assert spent == {("bot1", 0): 5, ("bot2", 0): 5}, "budget minus reserve, no more"
        assert not [p for p in front.pulls if p.status == 429], "syncd never ran into a 429"
        for account in ("0", "1"):
            quota = metrics.registry_quota_remaining.labels(registry="src", account=account)
            assert quota._value.get() == 1
        assert metrics.quota_waits.labels(registry="src")._value.get() >= 2
        lines = [r.getMessage() for r in caplog.records]
        assert any("switching to account 1" in m for m in lines)
        assert any("via account 1" in m for m in lines)  # the debug log names the index
        assert not any("bot1" in m or "bot2" in m or "pw1" in m for m in lines)

        wait_for(
            lambda: front.window_over("bot1") and front.window_over("bot2"),
            window + 30,
            "the budget windows to end",
        )
        second = await syncer.run_rule(config.rules[0])
        print(f"pass 2: synced={second.synced} failed={second.failed} in {second.seconds:.1f}s")
    assert second.ok and second.synced == 2, second.failures
    for tag in [*(f"old{i}" for i in range(4)), *(f"new{i}" for i in range(8))]:
        assert manifest_raw(target.url, REPO, tag) == manifest_raw(source.url, REPO, tag), tag
    assert all(n <= 5 for n in front.pulls_per_window().values()), front.pulls_per_window()


def _write(path: Path, source: str, target: str, **registry: object) -> Path:
    doc = {
        "registries": {"src": {"url": source, **registry}, "t0": {"url": target}},
        "defaults": {"retries": 5},
        "rules": [{"name": "r", "source": "src", "targets": ["t0"], "repositories": [REPO]}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_retry_after_an_hour_makes_once_exit_1_within_seconds(
    source: Registry, target: Registry, fronts: list[QuotaFront], tmp_path: Path
) -> None:
    for i in range(6):
        push(source.url, REPO, f"v{i}", image(f"hour-{i}", layers=1, size=300))
    front = QuotaFront(source.url)
    fronts.append(front)
    front.refuse_all("3600")
    cfg = _write(tmp_path / "syncd.yml", front.url, target.url)
    start = time.monotonic()
    done = run_once(cfg, timeout=60)
    seconds = time.monotonic() - start
    print(f"\nonce against Retry-After: 3600 exited {done.returncode} in {seconds:.1f}s")
    print(done.stdout[-600:])
    assert done.returncode == 1, done.stdout + done.stderr
    # Seconds, not the hour asked for (nor a capped wait of max_retry_wait, 2 minutes).
    assert seconds < 30
    assert summary(done.stdout)["failed"] == 6
    assert "Retry-After" in done.stdout + done.stderr
    # Left alone: the requests already in flight when the first 429 came back, no more.
    assert len(front.refused) <= 8, front.refused


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_registry_that_asked_for_a_long_pause_is_skipped_by_the_next_passes(
    source: Registry, target: Registry, fronts: list[QuotaFront], form: str
) -> None:
    for i in range(3):
        push(source.url, REPO, f"v{i}", image(f"pause-{i}", layers=1, size=300))
    front = QuotaFront(source.url)
    fronts.append(front)
    later = datetime.now(UTC) + timedelta(hours=1)
    front.refuse_all("3600" if form == "seconds" else format_datetime(later, usegmt=True))
    config = config_for(front.url, [target.url], [REPO])
    metrics = Metrics()
    async with open_syncer(config, metrics) as syncer:
        first = await syncer.run_rule(config.rules[0])
        assert first.failed == 3 and first.synced == 0
        asked = len(front.refused) + len(front.forwarded)
        second = await syncer.run_rule(config.rules[0])
    print(f"\npass 2: {second.failures}")
    assert second.failed == 1 and second.failures[0].startswith("pass skipped: src: left alone")
    assert len(front.refused) + len(front.forwarded) == asked, "pass 2 sent nothing"
    failures = metrics.image_failures.labels(rule="r", target="t0", reason="rate_limited")
    assert failures._value.get() == 4


async def test_a_429_storm_shrinks_concurrency_and_successes_restore_it(
    source: Registry, target: Registry, fronts: list[QuotaFront], caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(30):
        push(source.url, REPO, f"v{i}", image(f"storm-{i}", layers=1, size=200))
    front = QuotaFront(source.url)
    fronts.append(front)
    metrics = Metrics()
    gauge = metrics.registry_concurrency.labels(registry="src", kind=MANIFEST_READ)
    front.storm(12, on_first_success=gauge._value.get)
    config = config_for(front.url, [target.url], [REPO], concurrency=8, retries=12)
    caplog.set_level(logging.INFO, logger="syncd.registry.limits")
    async with open_syncer(config, metrics) as syncer:
        first = await syncer.run_rule(config.rules[0])
        after_first = gauge._value.get()
        second = await syncer.run_rule(config.rules[0])
    downs = [r.getMessage() for r in caplog.records if "concurrency down to" in r.getMessage()]
    print(f"\nconcurrency when the storm ended: {front.storm_seen}; after pass 1 {after_first}; ")
    print(f"after pass 2 {gauge._value.get()}; decreases: {downs}")
    assert first.ok and first.synced == 30, first.failures
    assert second.ok
    assert front.storm_seen and front.storm_seen[0] < 8, "the storm shrank the limit"
    assert downs and len(downs) < 12, "halved once per round of refusals, not per 429"
    assert gauge._value.get() == 8, "successes grew the limit back to max_concurrency"


async def test_requests_per_second_paces_a_registry(
    source: Registry, target: Registry, fronts: list[QuotaFront]
) -> None:
    for i in range(6):
        push(source.url, REPO, f"v{i}", image(f"pace-{i}", layers=1, size=200))
    front = QuotaFront(source.url)
    fronts.append(front)
    rate = 20.0
    config = _source(config_for(front.url, [target.url], [REPO]), requests_per_second=rate)
    result = await _one_pass(config)
    assert result
    times = sorted(t for t, *_ in front.forwarded)
    span = times[-1] - times[0]
    print(f"\n{len(times)} requests at {rate:g}/s took {span:.2f}s")
    assert span >= (len(times) - 1) / rate * 0.9


async def _one_pass(config: Config) -> bool:
    async with open_syncer(config) as syncer:
        return (await syncer.run_rule(config.rules[0])).ok


async def test_a_budget_window_within_max_retry_wait_is_waited_for(
    source: Registry, target: Registry, fronts: list[QuotaFront]
) -> None:
    for i in range(6):
        push(source.url, REPO, f"v{i}", image(f"wait-{i}", layers=1, size=200))
    window = 2.0
    front = QuotaFront(source.url, limit=4, window=window, users={"bot": "pw"})
    fronts.append(front)
    config = _source(
        config_for(front.url, [target.url], [REPO], concurrency=3),
        credentials=(AccountConfig("bot", Secret("pw")),),
        quota_reserve=QuotaReserve(1, percent=False),
        max_retry_wait=30.0,
    )
    metrics = Metrics()
    async with open_syncer(config, metrics) as syncer:
        result = await syncer.run_rule(config.rules[0])
    spent = front.pulls_per_window()
    print(f"\none pass, 6 pulls over windows of 3: {spent} in {result.seconds:.1f}s")
    assert result.ok and result.synced == 6, result.failures
    assert spent == {("bot", 0): 3, ("bot", 1): 3}
    assert not [p for p in front.pulls if p.status == 429]
    assert metrics.quota_waits.labels(registry="src")._value.get() >= 1
    quota = metrics.registry_quota_remaining.labels(registry="src", account="")
    assert quota._value.get() == 1
