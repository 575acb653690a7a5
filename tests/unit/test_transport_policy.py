"""The transport's pure pieces: the retry wait strategy, the policy per budget, redaction."""

from __future__ import annotations

import pytest
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from syncd.errors import ClientRequestError, RateLimitedError, ServerError, SyncdError
from syncd.registry.auth import Authenticator
from syncd.registry.limits import RegistryLimits
from syncd.registry.transport import RetryAfterOrBackoff, Transport, redact_url


def _limits(max_retry_wait: float) -> RegistryLimits:
    return RegistryLimits(
        registry="r",
        authenticators=(Authenticator(registry="r"),),
        max_concurrency=1,
        max_retry_wait=max_retry_wait,
    )


async def test_retry_after_is_waited_up_to_max_retry_wait_and_other_errors_back_off() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    failures: list[SyncdError] = [
        RateLimitedError("429", retry_after=3.0),
        RateLimitedError("429", retry_after=60.0),
        ServerError("500"),
        RateLimitedError("429 without Retry-After"),
    ]

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    policy = AsyncRetrying(
        sleep=record,
        wait=RetryAfterOrBackoff(_limits(max_retry_wait=5.0)),
        stop=stop_after_attempt(5),
        retry=retry_if_exception(lambda e: isinstance(e, SyncdError) and e.retryable),
        reraise=True,
    )
    assert await policy(call) == "ok"
    assert waits[:2] == [3.0, 5.0]
    # Attempts 3 and 4 back off: 0.25 s doubling (1 s, 2 s) plus up to 1 s of jitter.
    assert 1.0 <= waits[2] <= 2.0
    assert 2.0 <= waits[3] <= 3.0


async def test_one_policy_per_budget_and_a_refusal_is_not_retried() -> None:
    transport = Transport(
        name="r", base_url="http://127.0.0.1:1", authenticator=Authenticator(registry="r")
    )
    assert transport._policy(3) is transport._policy(3)
    assert transport._policy(3) is not transport._policy(5)
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ClientRequestError("request refused with 400", registry="r", status=400)

    with pytest.raises(ClientRequestError):
        await transport._retried(3, refused)
    assert calls == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:secret@reg.example.com:5000/v2/a/blobs/uploads/u?_state=S&digest=d",
            "https://reg.example.com:5000/v2/a/blobs/uploads/u",
        ),
        (
            "https://Reg.Example.com/v2/a/manifests/v1#frag",
            "https://reg.example.com/v2/a/manifests/v1",
        ),
        ("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5000/v2/"),
        ("https://token@[::1]:5443/v2/?X-Amz-Signature=s", "https://[::1]:5443/v2/"),
        ("/v2/a/tags/list?last=x&n=1000", "/v2/a/tags/list"),
        ("http://[bad", "(unparseable URL)"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
