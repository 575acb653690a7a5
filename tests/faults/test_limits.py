"""Limits against broken registries: size caps, bounded error bodies, page limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from syncd.config.schema import RegistryConfig
from syncd.errors import ManifestInvalidError, RegistryError, ServerError, SyncdError
from syncd.metrics import Metrics
from syncd.registry import listing as listing_module
from syncd.registry.pool import ClientPool
from syncd.registry.transport import MAX_ERROR_BODY
from tests.faults.shims import BrokenRegistry


@pytest.fixture
def broken() -> Iterator[BrokenRegistry]:
    server = BrokenRegistry()
    try:
        yield server
    finally:
        server.close()


def pool(server: BrokenRegistry, metrics: Metrics | None = None) -> ClientPool:
    return ClientPool({"b": RegistryConfig(name="b", url=server.url)}, metrics=metrics, retries=3)


async def test_manifest_over_4_mib_is_refused_with_a_clear_error(broken: BrokenRegistry) -> None:
    async with pool(broken) as p:
        with pytest.raises(SyncdError) as err:
            await p.client("b").manifest_get("huge", "v1")
    text = str(err.value)
    print(f"\n{type(err.value).__name__}: {text}")
    assert "4194304" in text and "over" in text
    assert isinstance(err.value, ServerError | ManifestInvalidError)
    gets = [r for r in broken.requests if r[0] == "GET"]
    print(f"manifest GETs: {len(gets)}")
    assert len(gets) == 1, "an oversized manifest will not shrink: it must not be retried"


async def test_an_endless_error_body_is_read_only_to_64_kib(broken: BrokenRegistry) -> None:
    start = time.monotonic()
    async with pool(broken) as p:
        with pytest.raises(RegistryError) as err:
            await p.client("b").manifest_get("noisy", "v1")
    seconds = time.monotonic() - start
    assert err.value.status == 500
    assert len(str(err.value)) < 2000  # the message quotes at most a snippet
    # The server counts a request's bytes once it has noticed the closed connection.
    deadline = time.monotonic() + 10
    while len(broken.error_bytes_sent) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # sleep-ok: poll interval of a bounded wait
    sent = broken.error_bytes_sent
    print(f"\nerror body bytes the server got out per request: {sent}; {seconds:.1f}s")
    assert len(sent) == 3  # 5xx is retried: three attempts
    # Had the client read the body it would have taken all 256 MiB; it took 64 KiB and
    # hung up, so the server could push no more than the socket buffers hold.
    assert all(n < 16 * 1024 * 1024 for n in sent)
    assert MAX_ERROR_BODY == 64 * 1024


async def test_a_link_loop_stops_at_the_page_limit(
    broken: BrokenRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limit is 10,000 pages; 50 keeps the test fast and proves the same loop.
    monkeypatch.setattr(listing_module, "MAX_PAGES", 50)
    async with pool(broken) as p:
        with pytest.raises(ServerError) as err:
            await p.client("b").tags_list("loop")
    assert "exceeded 50 pages" in str(err.value)
    assert len([r for r in broken.requests if r[1] == "/v2/loop/tags/list"]) == 50
