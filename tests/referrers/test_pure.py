"""Table tests of the pure parts of syncd.referrers: tag shapes, signature types, merging."""

from __future__ import annotations

import json
from typing import Any

import pytest

from syncd.manifest import OCI_INDEX, parse_manifest
from syncd.referrers import (
    fallback_tag,
    is_referrer_tag,
    is_signature_type,
    merge_fallback_index,
)

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (f"sha256-{HEX}", True),
        (f"sha256-{HEX}.sig", True),
        (f"sha256-{HEX}.att", True),
        (f"sha256-{HEX}.sbom", True),
        (f"sha256-{HEX}.other", False),
        (f"sha256-{HEX[:-1]}", False),
        (f"sha256-{HEX.upper()}", False),
        (f"sha512-{HEX}{HEX}", False),
        ("v1.2.3", False),
        (f"x-sha256-{HEX}", False),
    ],
)
def test_referrer_tags(tag: str, expected: bool) -> None:
    assert is_referrer_tag(tag) is expected


def test_fallback_tag() -> None:
    assert fallback_tag(f"sha256:{HEX}") == f"sha256-{HEX}"


@pytest.mark.parametrize(
    ("artifact_type", "expected"),
    [
        ("application/vnd.dev.cosign.artifact.sig.v1+json", True),
        ("application/vnd.cncf.notary.signature", True),
        ("application/vnd.dev.sigstore.bundle.v0.3+json", True),
        ("application/vnd.dev.sigstore.bundle+json;version=0.2", True),
        ("application/spdx+json", False),
        ("application/vnd.in-toto+json", False),
        ("application/vnd.dsse.envelope.v1+json", False),
        ("", False),
    ],
)
def test_signature_types(artifact_type: str, expected: bool) -> None:
    assert is_signature_type(artifact_type) is expected


def entry(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{n:064x}",
        "size": 100 + n,
        **extra,
    }


def index(*entries: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries), **extra}
    ).encode()


def digests(raw: bytes) -> list[str]:
    return [m["digest"] for m in json.loads(raw)["manifests"]]


def test_merge_keeps_existing_entries_and_adds_each_once() -> None:
    existing = parse_manifest(index(entry(1), entry(2), annotations={"k": "v"}))
    raw = merge_fallback_index(existing, None, [entry(2), entry(3), entry(3)])
    assert raw is not None
    assert digests(raw) == [entry(1)["digest"], entry(2)["digest"], entry(3)["digest"]]
    assert json.loads(raw)["annotations"] == {"k": "v"}


def test_merge_is_none_when_nothing_is_new() -> None:
    existing = parse_manifest(index(entry(1), entry(2)))
    assert merge_fallback_index(existing, None, [entry(2), entry(1)]) is None


def test_merge_reuses_the_source_bytes_when_they_say_exactly_this() -> None:
    source = parse_manifest(index(entry(1), entry(2)))
    assert merge_fallback_index(None, source, [entry(1), entry(2)]) == source.raw
    # a subset (types filtered, or one failed) makes a new index of what is there
    raw = merge_fallback_index(None, source, [entry(2)])
    assert raw is not None and raw != source.raw and digests(raw) == [entry(2)["digest"]]
