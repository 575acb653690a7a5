"""The OCI referrers API path: a small front adds the API to a real registry (see
``api_proxy.py``); paging, server- and client-side ``artifactType`` filtering, and copies
between two registries that both have the API (no fallback tag written there)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from syncd.config.schema import RegistryConfig
from syncd.registry.pool import ClientPool
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw, tags
from tests.referrers.api_proxy import ReferrersFront
from tests.referrers.conftest import (
    NOTARY_TYPE,
    SBOM_TYPE,
    SIGSTORE_TYPE,
    artifact,
    fallback_tag,
    make_config,
    sync,
)

REPO = "api/app"


@pytest.fixture
def fronts(registries: RegistryFactory) -> Iterator[list[ReferrersFront]]:
    started: list[ReferrersFront] = []
    yield started
    for f in started:
        f.stop()


def front(
    registries: RegistryFactory, started: list[ReferrersFront], **kw: bool | int
) -> ReferrersFront:
    f = ReferrersFront(registries(), **kw)  # type: ignore[arg-type]
    started.append(f.start())
    return f


async def test_client_pages_and_filters(
    registries: RegistryFactory, fronts: list[ReferrersFront], source: Registry
) -> None:
    server_filters = front(registries, fronts, page_size=1, filters=True)
    no_filters = front(registries, fronts, page_size=2, filters=False)
    for f in (server_filters, no_filters):
        img = image("api-client")
        push(f.url, REPO, "v1", img)
        arts = [
            artifact(img, SBOM_TYPE, "sbom"),
            artifact(img, NOTARY_TYPE, "sig-1"),
            artifact(img, NOTARY_TYPE, "sig-2"),
        ]
        for a in arts:
            push(f.url, REPO, None, a)
        regs = {
            "f": RegistryConfig(name="f", url=f.url),
            "plain": RegistryConfig(name="plain", url=source.url),
        }
        async with ClientPool(regs) as pool:
            c = pool.client("f")
            everything = await c.referrers(REPO, img.digest)
            assert everything is not None
            assert [d.digest for d in everything.children] == [a.digest for a in arts]
            sigs = await c.referrers(REPO, img.digest, NOTARY_TYPE)
            assert sigs is not None
            assert [d.digest for d in sigs.children] == [arts[1].digest, arts[2].digest]
            assert {d.artifact_type for d in sigs.children} == {NOTARY_TYPE}
            none = await c.referrers(REPO, arts[0].digest)
            assert none is not None and none.children == ()
            # a registry without the API: None, the caller falls back on tags
            push(source.url, REPO, "v1", img)
            assert await pool.client("plain").referrers(REPO, img.digest) is None
    # three referrers, one a page: three requests for the unfiltered listing
    assert server_filters.referrers_requests == 3 + 2 + 1


async def test_copy_between_registries_with_the_api(
    registries: RegistryFactory, fronts: list[ReferrersFront]
) -> None:
    src = front(registries, fronts, page_size=1, filters=False)
    dst = front(registries, fronts)
    img = image("api-copy")
    push(src.url, REPO, "v1", img)
    sbom = artifact(img, SBOM_TYPE, "sbom-api")
    sig = artifact(img, NOTARY_TYPE, "sig-api")
    sbom_sig = artifact(sbom, SIGSTORE_TYPE, "bundle-of-sbom")
    for a in (sbom, sig, sbom_sig):
        push(src.url, REPO, None, a)

    result = await sync(make_config(src.url, [dst.url], [REPO]))
    assert result.ok, result.failures
    assert result.synced == 1 and result.referrers_copied == 3
    assert src.referrers_requests > 0 and dst.referrers_requests > 0
    for a in (sbom, sig, sbom_sig):
        assert manifest_raw(dst.url, REPO, a.digest) == a.raw
    # the target lists them through its API, from their subject fields ...
    assert [e["digest"] for e in dst.listed(REPO, img.digest)] == [sbom.digest, sig.digest]
    assert [e["digest"] for e in dst.listed(REPO, sbom.digest)] == [sbom_sig.digest]
    # ... so no fallback tag is written there
    assert tags(dst.upstream.url, REPO) == ["v1"]
    assert manifest_raw(dst.url, REPO, fallback_tag(img.digest)) is None

    again = await sync(make_config(src.url, [dst.url], [REPO]))
    assert again.ok and again.referrers_copied == 0


async def test_single_type_is_filtered_by_server_or_client(
    registries: RegistryFactory, fronts: list[ReferrersFront]
) -> None:
    for filters in (True, False):
        src = front(registries, fronts, page_size=1, filters=filters)
        dst = registries()  # no API at the target: the fallback index is written there
        img = image(f"api-filter-{filters}")
        push(src.url, REPO, "v1", img)
        sbom = artifact(img, SBOM_TYPE, f"sbom-{filters}")
        sig = artifact(img, NOTARY_TYPE, f"sig-{filters}")
        for a in (sig, sbom):
            push(src.url, REPO, None, a)
        result = await sync(make_config(src.url, [dst], [REPO], referrers_types=(SBOM_TYPE,)))
        assert result.ok and result.referrers_copied == 1
        assert manifest_raw(dst.url, REPO, sbom.digest) == sbom.raw
        assert manifest_raw(dst.url, REPO, sig.digest) is None
        index = manifest_raw(dst.url, REPO, fallback_tag(img.digest))
        assert (
            index is not None and sbom.digest.encode() in index and sig.digest.encode() not in index
        )
