"""The pure side of referrers: cosign's legacy tags and their types, which artifact types
are signatures, the referrers tag schema's ``sha256-<hex>`` tags and merging its index, and
the values a referrer search finds and a carry reports."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd.manifest import OCI_INDEX, Manifest

# Image -> SBOM -> signature of the SBOM -> ... ; deeper chains are not followed (and a
# cycle, impossible with content addressing but cheap to rule out, stops at the bound too).
MAX_DEPTH = 4

# cosign's legacy tags carry no artifactType; these are the types syncd gives them, for
# ``referrers_types`` and the signature gate. ``.sig`` and ``.sbom`` use the types cosign
# itself writes when it stores them as OCI 1.1 referrers; ``.att`` holds DSSE envelopes.
COSIGN_SIG_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_SBOM_TYPE = "application/vnd.dev.cosign.artifact.sbom.v1+json"
COSIGN_ATT_TYPE = "application/vnd.dsse.envelope.v1+json"
COSIGN_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("sig", COSIGN_SIG_TYPE),
    ("att", COSIGN_ATT_TYPE),
    ("sbom", COSIGN_SBOM_TYPE),
)

# Artifact types that make an image "signed" for ``require_signature``.
SIGNATURE_TYPES = frozenset(
    {
        COSIGN_SIG_TYPE,
        # cosign's simple-signing payload, when a signature manifest is listed by its layer type
        "application/vnd.dev.cosign.simplesigning.v1+json",
        # Notary Project (notation) signatures, and the name its drafts used
        "application/vnd.cncf.notary.signature",
        "application/vnd.cncf.notary.v2.signature",
        # Sigstore bundles (cosign 2.x/3.x with the new bundle format)
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
_SIGSTORE_BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle"

_REFERRER_TAG_RE = re.compile(r"^sha256-[0-9a-f]{64}(\.(sig|att|sbom))?$")


def is_referrer_tag(tag: str) -> bool:
    """True for ``sha256-<64 hex>`` and ``sha256-<64 hex>.{sig,att,sbom}`` tags.

    Such tags travel with the image they name, so a rule does not also copy them as images.
    """
    return _REFERRER_TAG_RE.match(tag) is not None


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``sha256:ab..`` -> ``sha256-ab..``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"


def is_signature_type(artifact_type: str) -> bool:
    """Whether an artifact of this type is a signature (see ``SIGNATURE_TYPES``)."""
    return artifact_type in SIGNATURE_TYPES or artifact_type.startswith(_SIGSTORE_BUNDLE_PREFIX)


def merge_fallback_index(
    existing: Manifest | None, source_index: Manifest | None, entries: Sequence[dict[str, Any]]
) -> bytes | None:
    """The ``sha256-<hex>`` index a target should hold, or None if it already does.

    Entries already at the target are kept (another tool may have put them there) and
    none is added twice. With no index at the target and exactly the source's referrers
    to list, the source's bytes are used, so the tag has the same digest on both sides.
    """
    wanted: dict[str, dict[str, Any]] = {}
    for e in entries:
        wanted.setdefault(str(e["digest"]), e)
    if existing is not None:
        have = {c.digest for c in existing.children}
        new = [e for d, e in wanted.items() if d not in have]
        if not new:
            return None
        doc = json.loads(existing.raw)
        doc["manifests"] = [*(doc.get("manifests") or []), *new]
        return json.dumps(doc, indent=2).encode()
    if source_index is not None and [c.digest for c in source_index.children] == list(wanted):
        return source_index.raw
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(wanted.values())}
    return json.dumps(doc, indent=2).encode()


@dataclass(frozen=True, slots=True)
class Referrer:
    """One artifact that refers to ``subject``, as found at the source."""

    subject: str
    digest: str
    media_type: str
    size: int
    artifact_type: str
    depth: int = 1
    # A cosign legacy tag travels as that tag; everything else by digest only.
    tag: str = ""
    # The descriptor exactly as the source listed it, for the target's fallback index.
    entry: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def reference(self) -> str:
        """What the copy asks the source for: the cosign tag, else the digest."""
        return self.tag or self.digest


@dataclass(slots=True)
class Carried:
    """What ``SourceReferrers.carry`` did for one image."""

    copied: int = 0
    # (referrer, "target/repository") that a dry run would copy
    planned: list[tuple[Referrer, str]] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)
