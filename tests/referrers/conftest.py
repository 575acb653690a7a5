"""Building blocks for referrer tests: artifacts with a ``subject``, pushed the way OCI 1.1
clients and cosign push them to a registry without the referrers API, and a pass runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from syncd.config.schema import Config
from tests.helpers import passes
from tests.helpers.images import OCI_INDEX, OCI_MANIFEST, Blob, Image, Index, push, push_manifest
from tests.helpers.registry import Registry, manifest_raw

SBOM_TYPE = "application/spdx+json"
NOTARY_TYPE = "application/vnd.cncf.notary.signature"
SIGSTORE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY = Blob(b"{}", "application/vnd.oci.empty.v1+json")


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


def subject_of(img: Image | Index) -> dict[str, Any]:
    return {"mediaType": img.media_type, "digest": img.digest, "size": len(img.raw)}


def artifact(subject: Image | Index, artifact_type: str, payload: str) -> Image:
    """An OCI 1.1 artifact manifest (empty config, one layer) that refers to ``subject``."""
    return Image(
        EMPTY,
        [Blob(payload.encode(), artifact_type)],
        OCI_MANIFEST,
        subject=subject_of(subject),
        artifact_type=artifact_type,
        annotations={"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    )


def attach(reg: Registry, repo: str, art: Image) -> str:
    """Push ``art`` by digest and add it to the subject's ``sha256-<hex>`` index, as an OCI
    1.1 client does against a registry without the referrers API."""
    push(reg.url, repo, None, art)
    assert art.subject is not None
    tag = fallback_tag(art.subject["digest"])
    raw = manifest_raw(reg.url, repo, tag)
    doc = json.loads(raw) if raw else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if all(m["digest"] != art.digest for m in doc["manifests"]):
        doc["manifests"].append(art.descriptor())
    push_manifest(reg.url, repo, tag, json.dumps(doc, indent=2).encode(), OCI_INDEX)
    return art.digest


def cosign_signature(reg: Registry, repo: str, subject: Image | Index, seed: str) -> Image:
    """A cosign-style signature image pushed as the legacy tag ``sha256-<hex>.sig``."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{reg.host}/{repo}"},
                "image": {"docker-manifest-digest": subject.digest},
                "type": "cosign container image signature",
            },
            "optional": {"seed": seed},
        }
    ).encode()
    cfg = Blob(
        json.dumps({"architecture": "", "os": "", "rootfs": {}}).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    sig = Image(
        cfg,
        [Blob(payload, "application/vnd.dev.cosign.simplesigning.v1+json")],
        OCI_MANIFEST,
    )
    push(reg.url, repo, fallback_tag(subject.digest) + ".sig", sig)
    return sig


def make_config(
    source: Registry | str,
    targets: Sequence[Registry | str],
    repositories: Sequence[str],
    **rule: Any,
) -> Config:
    """The shared builder, with the 2 retries these tests were written for."""
    rule.setdefault("retries", 2)
    return passes.make_config(source, targets, repositories, **rule)


sync = passes.sync
