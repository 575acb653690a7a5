"""Edges of carrying referrers: entries kept at the target, dangling source entries,
platform-filtered indexes, and one image under two tags."""

from __future__ import annotations

import json

from tests.helpers.images import image, multiarch, push
from tests.helpers.registry import Registry, http, manifest_raw
from tests.referrers.conftest import (
    NOTARY_TYPE,
    SBOM_TYPE,
    artifact,
    attach,
    fallback_tag,
    make_config,
    sync,
)

REPO = "edge/app"


def listed(reg: Registry, subject: str) -> list[str]:
    raw = manifest_raw(reg.url, REPO, fallback_tag(subject))
    return [m["digest"] for m in json.loads(raw)["manifests"]] if raw else []


async def test_target_index_entries_are_kept_and_merged(source: Registry, target: Registry) -> None:
    img = image("edge-merge")
    push(source.url, REPO, "v1", img)
    push(target.url, REPO, "v1", img)
    # something the target alone has, e.g. a scan result attached there
    local = artifact(img, "application/vnd.example.scan+json", "scanned at the target")
    attach(target, REPO, local)
    sbom = artifact(img, SBOM_TYPE, "edge-sbom")
    sig = artifact(img, NOTARY_TYPE, "edge-sig")
    attach(source, REPO, sbom)
    attach(source, REPO, sig)
    result = await sync(make_config(source, [target], [REPO]))
    assert result.ok and result.skipped == 1 and result.referrers_copied == 2
    assert listed(target, img.digest) == [local.digest, sbom.digest, sig.digest]
    again = await sync(make_config(source, [target], [REPO]))
    assert again.ok and again.referrers_copied == 0
    assert listed(target, img.digest) == [local.digest, sbom.digest, sig.digest]


async def test_dangling_source_entry_is_skipped(source: Registry, target: Registry) -> None:
    img = image("edge-dangling")
    push(source.url, REPO, "v1", img)
    gone = artifact(img, NOTARY_TYPE, "deleted later")
    kept = artifact(img, SBOM_TYPE, "still there")
    attach(source, REPO, gone)
    attach(source, REPO, kept)
    status, _, _ = http("DELETE", f"{source.url}/v2/{REPO}/manifests/{gone.digest}")
    assert status == 202
    result = await sync(make_config(source, [target], [REPO]))
    assert result.ok, result.failures
    assert result.referrers_copied == 1
    assert listed(target, img.digest) == [kept.digest]


async def test_platform_filtered_index_carries_only_its_childrens_referrers(
    source: Registry, target: Registry
) -> None:
    idx = multiarch("edge-platforms")
    push(source.url, REPO, "v1", idx)
    (amd64, _), (arm64, _) = idx.children
    of_index = artifact(idx, NOTARY_TYPE, "signs the whole index")
    of_arm64 = artifact(arm64, SBOM_TYPE, "arm64 sbom")
    of_amd64 = artifact(amd64, SBOM_TYPE, "amd64 sbom")
    for a in (of_index, of_arm64, of_amd64):
        attach(source, REPO, a)
    result = await sync(make_config(source, [target], [REPO], platforms=("linux/arm64",)))
    assert result.ok and result.synced == 1
    # the index at the target is a new one: the source index's signature refers to nothing there
    assert result.referrers_copied == 1
    assert manifest_raw(target.url, REPO, of_arm64.digest) == of_arm64.raw
    assert manifest_raw(target.url, REPO, of_index.digest) is None
    assert manifest_raw(target.url, REPO, of_amd64.digest) is None
    assert listed(target, arm64.digest) == [of_arm64.digest]


async def test_one_image_under_two_tags_carries_its_referrers_once(
    source: Registry, target: Registry
) -> None:
    img = image("edge-two-tags")
    push(source.url, REPO, "v1", img)
    push(source.url, REPO, "latest", img)
    arts = [artifact(img, NOTARY_TYPE, f"sig-{i}") for i in range(3)]
    for a in arts:
        attach(source, REPO, a)
    mark = target.log_mark()
    result = await sync(make_config(source, [target], [REPO], concurrency=4))
    assert result.ok and result.synced == 2
    assert result.referrers_copied == 3
    puts = [a.path for a in target.accesses(mark, "syncd/") if a.kind == "manifest_put"]
    assert sum(a.digest in p for p in puts for a in arts) == 3


async def test_a_referrer_that_cannot_be_copied_fails_its_image_until_fixed(
    source: Registry, target: Registry
) -> None:
    img = image("edge-broken")
    push(source.url, REPO, "v1", img)
    sbom = artifact(img, SBOM_TYPE, "its layer goes missing at the source")
    attach(source, REPO, sbom)
    payload = sbom.layers[0]
    source.blob_path(payload.digest).unlink()
    first = await sync(make_config(source, [target], [REPO]))
    assert first.failed == 1 and first.referrers_copied == 0
    assert first.failures[0].startswith(f"src/{REPO}:v1 -> t0/{REPO}: ")
    assert payload.digest in first.failures[0]
    assert manifest_raw(target.url, REPO, "v1") == img.raw  # the image itself arrived
    assert listed(target, img.digest) == []
    # repaired at the source: the next pass (image up to date) brings the referrer
    source.blob_path(payload.digest).write_bytes(payload.data)
    second = await sync(make_config(source, [target], [REPO]))
    assert second.ok and second.skipped == 1 and second.referrers_copied == 1
    assert listed(target, img.digest) == [sbom.digest]
