"""What is retried and what is not, against real registries behind small fault shims."""

from __future__ import annotations

import itertools
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


async def test_an_exhausted_docker_hub_quota_paces_requests(
    source: Registry, target: Registry, shims: list[RateLimitShim], caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        push(source.url, "a/b", f"v{i}", image(f"q{i}"))
    # 18000 pulls per hour: one pull's worth of quota every 0.2 s. Two pulls left.
    shim = RateLimitShim(source.url, quota=(18000, 2, 3600))
    shims.append(shim)
    caplog.set_level(logging.WARNING, logger="syncd.registry.transport")
    result = await sync(config_for(shim.url, [target.url], ["a/b"], concurrency=3))
    assert result.ok and result.synced == 3, result.failures
    assert shim.pulls >= 3  # more pulls than the quota allowed, and none refused
    times = [t for t, _, _ in shim.forwarded]
    exhausted_at = next(
        i for i, (_, m, p) in enumerate(shim.forwarded) if m == "GET" and "/manifests/" in p
    )
    later = times[exhausted_at + 2 :]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    print(f"\nrequests after the quota ran out: {len(later)}, smallest gap {min(gaps):.2f}s")
    assert gaps and min(gaps) >= 0.15
    warnings = [r for r in caplog.records if "quota exhausted" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per request


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
