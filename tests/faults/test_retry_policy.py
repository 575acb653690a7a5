"""What is retried and what is not, against real registries behind small fault shims."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.metrics import Metrics
from tests.faults.conftest import UA, config_for, sync
from tests.faults.shims import RateLimitShim
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, http, manifest_raw


@pytest.fixture
def shims() -> Iterator[list[RateLimitShim]]:
    made: list[RateLimitShim] = []
    try:
        yield made
    finally:
        for s in made:
            s.close()


async def test_a_missing_source_blob_is_asked_for_once(source: Registry, target: Registry) -> None:
    good, bad = image("good"), image("gone")
    push(source.url, "a/b", "good", good)
    push(source.url, "a/b", "gone", bad)
    missing = bad.layers[0].digest
    status, _, _ = http("DELETE", f"{source.url}/v2/a/b/blobs/{missing}")
    assert status == 202
    mark = source.log_mark()
    metrics = Metrics()
    result = await sync(config_for(source.url, [target.url], ["a/b"]), metrics)
    assert result.synced == 1 and result.failed == 1
    gets = [a for a in source.accesses(mark, UA) if a.kind == "blob_get" and missing in a.path]
    assert [a.status for a in gets] == [404], "a 404 cannot change: it must not be retried"
    assert metrics.retries.labels(registry="src")._value.get() == 0
    assert metrics.retries.labels(registry="t0")._value.get() == 0
    assert manifest_raw(target.url, "a/b", "gone") is None


async def test_429_with_retry_after_slows_the_pass_and_it_succeeds(
    source: Registry, target: Registry, shims: list[RateLimitShim]
) -> None:
    for i in range(3):
        push(source.url, "a/b", f"v{i}", image(f"rl{i}"))
    shim = RateLimitShim(target.url, refuse=4, retry_after=0.5)
    shims.append(shim)
    metrics = Metrics()
    start = time.monotonic()
    result = await sync(config_for(source.url, [shim.url], ["a/b"]), metrics)
    seconds = time.monotonic() - start
    assert result.ok and result.synced == 3, result.failures
    assert len(shim.refused) == 4
    retries = metrics.retries.labels(registry="t0")._value.get()
    print(f"\n429 x4 with Retry-After 0.5: {retries:.0f} retries counted, pass {seconds:.1f}s")
    assert retries >= 3  # the ping's 429 is retried too, but counted with the others
    # After a 429 with Retry-After nothing went to the registry before the pause ended.
    first_forwarded = min(t for t, _, _ in shim.forwarded)
    assert first_forwarded - shim.refused[-1] >= 0.45
    for i in range(3):
        assert manifest_raw(target.url, "a/b", f"v{i}") is not None


async def test_a_budget_at_its_reserve_stops_pulls_but_not_heads(
    source: Registry, target: Registry, shims: list[RateLimitShim], caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        push(source.url, "a/b", f"v{i}", image(f"q{i}"))
    # Two pulls left of 18000 per hour: far below the default reserve of 10%, and the
    # window ends long after max_retry_wait. HEADs are free; no manifest GET may go out.
    shim = RateLimitShim(source.url, quota=(18000, 2, 3600))
    shims.append(shim)
    caplog.set_level(logging.WARNING, logger="syncd.registry.limits")
    metrics = Metrics()
    start = time.monotonic()
    result = await sync(config_for(shim.url, [target.url], ["a/b"], concurrency=3), metrics)
    seconds = time.monotonic() - start
    assert result.failed == 3 and result.synced == 0
    assert all("pull budget at its reserve" in f for f in result.failures), result.failures
    assert shim.pulls == 0
    assert any(m == "HEAD" for _, m, _ in shim.forwarded)
    failures = metrics.image_failures.labels(rule="r", target="t0", reason="rate_limited")
    assert failures._value.get() == 3
    assert metrics.quota_waits.labels(registry="src")._value.get() == 3
    quota = metrics.registry_quota_remaining.labels(registry="src", account="")
    assert quota._value.get() == 2
    warnings = [r for r in caplog.records if "down to its reserve" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per request
    print(f"\nbudget at the reserve: 3 images failed in {seconds:.1f}s, 0 pulls spent")


async def test_an_unreachable_target_fails_the_pass_after_one_round_of_retries(
    source: Registry,
) -> None:
    """Every image of the pass needs the dead target; they share one failed ping instead of
    each sitting through the retry schedule (which made a 50-tag pass take 5 minutes)."""
    import asyncio

    from tests.helpers.registry import free_port

    for i in range(12):
        push(source.url, "d/t", f"v{i}", image(f"dead-target-{i}", layers=1, size=500))
    dead = f"http://127.0.0.1:{free_port()}"
    metrics = Metrics()
    started = time.monotonic()
    result = await asyncio.wait_for(sync(config_for(source.url, [dead], ["d/t"]), metrics), 60)
    assert result.failed == 12 and result.synced == 0
    errors = metrics.registry_requests.labels(registry="t0", method="GET", code="error")
    assert errors._value.get() == 5  # one ping, its five attempts (retries: 5)
    print(f"\n12 images to an unreachable target failed in {time.monotonic() - started:.1f}s")


def _tag_link(reg: Registry, repo: str, tag: str) -> Path:
    return (
        reg.root
        / "docker/registry/v2/repositories"
        / repo
        / "_manifests/tags"
        / tag
        / "current/link"
    )


async def test_a_tag_link_emptied_by_a_killed_registry_is_pushed_again(
    source: Registry, target: Registry
) -> None:
    # A target SIGKILLed while writing a tag leaves its link file empty (seen in the
    # killed-target fault test): every HEAD of that tag then answers 500.
    img = image("emptied-link")
    push(source.url, "e/l", "v1", img)
    cfg = config_for(source.url, [target.url], ["e/l"], retries=2)
    assert (await sync(cfg)).synced == 1
    _tag_link(target, "e/l", "v1").write_text("")
    assert http("HEAD", f"{target.url}/v2/e/l/manifests/v1")[0] == 500

    result = await sync(cfg)
    assert result.ok and result.synced == 1
    assert manifest_raw(target.url, "e/l", "v1") == img.raw

    # Where the old manifest matters (a backup of it, or overwrite: false), it fails instead.
    _tag_link(target, "e/l", "v1").write_text("")
    guarded = config_for(source.url, [target.url], ["e/l"], retries=2, overwrite=False)
    result = await sync(guarded)
    assert result.failed == 1 and "server error 500" in result.failures[0]
