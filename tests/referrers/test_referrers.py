"""Referrers travel with their image, against real registries without the referrers API.

The source is seeded the way OCI 1.1 clients (oras, notation, cosign 2 in OCI 1.1 mode) and
cosign's legacy mode write to a registry without the API: artifacts with ``subject`` pushed
by digest plus the ``sha256-<hex>`` index tag, and ``sha256-<hex>.sig`` tags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from syncd.config.schema import TagFilter
from syncd.metrics import Metrics
from tests.helpers.images import Image, Index, image, multiarch, push
from tests.helpers.registry import Registry, manifest_raw, tags
from tests.referrers.conftest import (
    NOTARY_TYPE,
    SBOM_TYPE,
    SIGSTORE_TYPE,
    artifact,
    attach,
    cosign_signature,
    fallback_tag,
    make_config,
    sync,
)

UA = "syncd/"
REPO = "team/app"


@dataclass
class Seeded:
    v1: Image
    v2: Index
    sbom: Image
    notary: Image
    cosign: Image
    sbom_sig: Image
    child_sig: Image

    @property
    def by_digest(self) -> list[Image]:
        return [self.sbom, self.notary, self.sbom_sig, self.child_sig]


def seed(src: Registry) -> Seeded:
    v1 = image("ref-v1")
    v2 = multiarch("ref-v2")
    push(src.url, REPO, "v1", v1)
    push(src.url, REPO, "v2", v2)
    sbom = artifact(v1, SBOM_TYPE, '{"spdxVersion": "SPDX-2.3", "name": "v1"}')
    notary = artifact(v1, NOTARY_TYPE, "notary-signature-of-v1")
    sbom_sig = artifact(sbom, SIGSTORE_TYPE, "bundle-signing-the-sbom")
    child = v2.children[1][0]
    child_sig = artifact(child, NOTARY_TYPE, "notary-signature-of-arm64")
    for art in (sbom, notary, sbom_sig, child_sig):
        attach(src, REPO, art)
    cosign = cosign_signature(src, REPO, v1, "v1")
    return Seeded(v1, v2, sbom, notary, cosign, sbom_sig, child_sig)


def listed(reg: Registry, subject: str) -> list[str]:
    raw = manifest_raw(reg.url, REPO, fallback_tag(subject))
    return [m["digest"] for m in json.loads(raw)["manifests"]] if raw else []


def tag_names(reg: Registry) -> list[str]:
    # zuul-registry also lists manifests pushed by digest, as "tags" named sha256:…
    return [t for t in tags(reg.url, REPO) if not t.startswith("sha256:")]


@pytest.mark.parametrize(
    ("source", "target"),
    [("distribution", "distribution"), ("zuul", "distribution"), ("distribution", "zuul")],
    indirect=True,
)
async def test_every_referrer_arrives_with_its_digest_and_is_discoverable(
    source: Registry, target: Registry
) -> None:
    s = seed(source)
    metrics = Metrics()
    result = await sync(make_config(source, [target], [REPO]), metrics)
    assert result.ok, result.failures
    # the referrer tags travelled with v1/v2, they were not copied as images of their own
    assert result.synced == 2
    assert result.referrers_copied == 5
    assert metrics.referrers_copied.labels(target="t0")._value.get() == 5
    for art in s.by_digest:
        assert manifest_raw(target.url, REPO, art.digest) == art.raw
    assert manifest_raw(target.url, REPO, fallback_tag(s.v1.digest) + ".sig") == s.cosign.raw
    # discoverable through the referrers tag schema at the target, byte for byte the source's
    for subject in (s.v1.digest, s.sbom.digest, s.v2.children[1][0].digest):
        assert manifest_raw(target.url, REPO, fallback_tag(subject)) == manifest_raw(
            source.url, REPO, fallback_tag(subject)
        )
    assert listed(target, s.v1.digest) == [s.sbom.digest, s.notary.digest]
    assert listed(target, s.sbom.digest) == [s.sbom_sig.digest]
    assert listed(target, s.v2.children[1][0].digest) == [s.child_sig.digest]
    assert tag_names(target) == tag_names(source)

    # a second pass copies nothing and writes nothing
    smark, tmark = source.log_mark(), target.log_mark()
    again = await sync(make_config(source, [target], [REPO]))
    assert again.ok and again.referrers_copied == 0 and again.synced == 0
    t = target.counts(tmark, UA)
    assert t["manifest_put"] == t["upload_post"] == t["upload_put"] == 0
    assert again.skipped == 2
    # zuul-registry's token requests and its tag listing without a page size make its
    # request counts differ from distribution's, which these are.
    if source.implementation == target.implementation == "distribution":
        # What checking 2 images, 5 referrers and a cosign tag costs in a fresh process
        # (docs/referrers.md): source HEADs of 2 tags, 3 fallback index tags, 1 cosign
        # tag, and the GETs of those indexes and of v2's index (cached in a long-lived
        # daemon); target HEADs of 2 tags, 3 fallback index tags (equal to the source's,
        # so the 4 entries are not checked one by one) and 1 cosign tag; one API probe on
        # each side.
        c = source.counts(smark, UA)
        assert c["tags_list"] == 1 and c["manifest_head"] == 6 and c["referrers"] == 1
        assert c["manifest_get"] == 4 and sum(c.values()) - c["ping"] == 12
        assert t["manifest_head"] == 6 and t["referrers"] == 1
        assert sum(t.values()) - t["ping"] == 7

    # a referrer added at the source later arrives on the next pass and is merged in
    late = artifact(s.v1, "application/vnd.in-toto+json", '{"predicateType": "slsa"}')
    attach(source, REPO, late)
    third = await sync(make_config(source, [target], [REPO]))
    assert third.ok and third.referrers_copied == 1
    assert manifest_raw(target.url, REPO, late.digest) == late.raw
    assert listed(target, s.v1.digest) == [s.sbom.digest, s.notary.digest, late.digest]


async def test_referrers_false_copies_none(source: Registry, target: Registry) -> None:
    s = seed(source)
    cfg = make_config(
        source, [target], [REPO], referrers=False, tags=TagFilter(include=(r"^v\d+$",))
    )
    result = await sync(cfg)
    assert result.ok and result.synced == 2 and result.referrers_copied == 0
    assert tags(target.url, REPO) == ["v1", "v2"]
    for art in [*s.by_digest, s.cosign]:
        assert manifest_raw(target.url, REPO, art.digest) is None


async def test_referrers_false_selects_no_referrer_tags_as_images(
    source: Registry, target: Registry
) -> None:
    """No tag filter at all: the ``sha256-<hex>`` index and the cosign tag stay behind."""
    s = seed(source)
    result = await sync(make_config(source, [target], [REPO], referrers=False))
    assert result.ok and result.synced == 2 and result.referrers_copied == 0
    assert tags(target.url, REPO) == ["v1", "v2"]
    assert manifest_raw(target.url, REPO, s.cosign.digest) is None


async def test_referrers_false_copies_referrer_tags_an_include_names(
    source: Registry, target: Registry
) -> None:
    """An include pattern that matches them asks for them: they are copied as images."""
    s = seed(source)
    sig_tag = fallback_tag(s.v1.digest) + ".sig"
    cfg = make_config(
        source,
        [target],
        [REPO],
        referrers=False,
        tags=TagFilter(include=(r"^v1$", r"\.sig$")),
    )
    result = await sync(cfg)
    assert result.ok and result.synced == 2 and result.referrers_copied == 0
    assert tags(target.url, REPO) == sorted(["v1", sig_tag])
    assert manifest_raw(target.url, REPO, sig_tag) == s.cosign.raw


async def test_referrers_types_restricts(source: Registry, target: Registry) -> None:
    s = seed(source)
    cfg = make_config(source, [target], [REPO], referrers_types=(SBOM_TYPE,))
    result = await sync(cfg)
    assert result.ok and result.referrers_copied == 1
    assert manifest_raw(target.url, REPO, s.sbom.digest) == s.sbom.raw
    for art in (s.notary, s.sbom_sig, s.child_sig, s.cosign):
        assert manifest_raw(target.url, REPO, art.digest) is None
    assert listed(target, s.v1.digest) == [s.sbom.digest]
    assert fallback_tag(s.v1.digest) + ".sig" not in tags(target.url, REPO)
