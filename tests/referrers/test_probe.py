"""The referrers-API probe against registries that answer it in their own ways.

A real registry in front of which the referrers endpoint answers 400, 404, 405, 406, or
200 with something that is not an image index: each means "no referrers API", the tag
schemes are used, the answer is remembered for the registry (one probe per process), and
no image fails because of the probe.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw, tags
from tests.referrers.api_proxy import ReferrersFront
from tests.referrers.conftest import (
    SBOM_TYPE,
    artifact,
    attach,
    cosign_signature,
    fallback_tag,
    make_config,
    sync,
)

REPO = "probe/app"
HTML = "text/html"
JSON = "application/json"


@pytest.fixture
def fronts() -> Iterator[list[ReferrersFront]]:
    started: list[ReferrersFront] = []
    yield started
    for f in started:
        f.stop()


@pytest.mark.parametrize(
    "inject",
    [
        (400, b'{"errors":[{"code":"NAME_INVALID"}]}', JSON),
        (404, b"404 page not found", "text/plain"),
        (405, b"", "text/plain"),
        (406, b"not acceptable", "text/plain"),
        (200, b"<html><body>Registry UI</body></html>", HTML),
        (200, b'{"repositories": []}', JSON),
    ],
    ids=["400", "404", "405", "406", "200-html", "200-not-index"],
)
async def test_no_api_answers_use_the_tag_schemes(
    registries: RegistryFactory,
    fronts: list[ReferrersFront],
    target: Registry,
    inject: tuple[int, bytes, str],
) -> None:
    f = ReferrersFront(registries(), inject=inject).start()
    fronts.append(f)
    upstream = f.upstream
    images = [image(f"probe-{i}") for i in range(3)]
    for i, img in enumerate(images):
        push(upstream.url, REPO, f"v{i}", img)
    sbom = artifact(images[0], SBOM_TYPE, '{"spdxVersion": "SPDX-2.3"}')
    attach(upstream, REPO, sbom)
    sig = cosign_signature(upstream, REPO, images[1], "v1")

    result = await sync(make_config(f.url, [target], [REPO]))

    assert result.failed == 0 and result.synced == 3, result.failures
    # Probed once for the whole registry, then remembered.
    assert f.referrers_requests == 1
    for i, img in enumerate(images):
        assert manifest_raw(target.url, REPO, f"v{i}") == img.raw
    # The tag schemes carried both kinds of referrer.
    assert manifest_raw(target.url, REPO, sbom.digest) == sbom.raw
    assert fallback_tag(images[0].digest) in tags(target.url, REPO)
    assert manifest_raw(target.url, REPO, fallback_tag(images[1].digest) + ".sig") == sig.raw


@pytest.mark.parametrize(
    ("inject", "probes"),
    [
        ((403, b'{"errors":[{"code":"DENIED"}]}', JSON), 1),
        ((500, b"internal error", "text/plain"), 3),
    ],
    ids=["403-remembered", "500-asked-again"],
)
async def test_a_failing_probe_fails_no_image(
    registries: RegistryFactory,
    fronts: list[ReferrersFront],
    target: Registry,
    inject: tuple[int, bytes, str],
    probes: int,
) -> None:
    """A refusal is remembered as "no API"; a server error answers "no" for that image only
    (asked again for the next). Either way every image and its cosign signature arrive."""
    f = ReferrersFront(registries(), inject=inject).start()
    fronts.append(f)
    images = [image(f"probe-fail-{i}") for i in range(3)]
    for i, img in enumerate(images):
        push(f.upstream.url, REPO, f"v{i}", img)
    sig = cosign_signature(f.upstream, REPO, images[2], "v2")
    cfg = make_config(f.url, [target], [REPO], concurrency=1, retries=1)

    result = await sync(cfg)

    assert result.failed == 0 and result.synced == 3, result.failures
    # Remembered: one probe. Not remembered: at least one per image.
    assert f.referrers_requests == probes if probes == 1 else f.referrers_requests >= probes
    assert manifest_raw(target.url, REPO, fallback_tag(images[2].digest) + ".sig") == sig.raw
