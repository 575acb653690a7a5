"""Manifest media types and parsing into the descriptors the copy engine walks.

The exact bytes of a manifest are always kept (``Manifest.raw``): re-serialising JSON would
change the digest, and digests must be preserved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from syncd.digest import digest_of
from syncd.errors import ManifestInvalidError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# The OCI artifact manifest of image-spec 1.1 release candidates (dropped from 1.1.0, but
# stored by registries and tools of that time): copied like any manifest, blobs first.
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
# Sent on every manifest GET/HEAD; a registry that only knows schema1 would otherwise
# down-convert, which changes the digest.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, OCI_ARTIFACT])
# Layers that must not be pushed elsewhere (image-spec "non-distributable layers", Docker's
# foreign layers of Windows base images): recognised by media type only. A descriptor's
# ``urls`` is just an extra place to fetch from (image-spec descriptor.md), not a licence
# to skip the blob.
NONDISTRIBUTABLE_MARKERS = (".nondistributable.", ".foreign.")


def is_nondistributable(media_type: str) -> bool:
    """Whether a layer of this media type stays out of copies."""
    return any(m in media_type for m in NONDISTRIBUTABLE_MARKERS)


# Large enough for indexes with hundreds of platforms; small enough that a hostile
# registry cannot make us buffer gigabytes (the spec suggests servers accept >= 4 MiB).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Platform:
    """``os/architecture[/variant]`` of an index child."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a manifest says about one blob or child manifest."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    artifact_type: str = ""
    annotations: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index as fetched: its exact bytes, type, digest and parsed parts."""

    raw: bytes
    media_type: str
    digest: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str = ""
    annotations: tuple[tuple[str, str], ...] = field(default=())

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Config first, then layers: every blob an image manifest needs at the target."""
        return ((self.config,) if self.config else ()) + self.layers

    @property
    def size(self) -> int:
        return len(self.raw)


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestInvalidError(f"{where}: descriptor is not an object")
    try:
        media_type = str(obj.get("mediaType", ""))
        digest = str(obj["digest"])
        size = int(obj["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestInvalidError(f"{where}: descriptor lacks digest or size ({e})") from None
    if size < 0:
        raise ManifestInvalidError(f"{where}: negative size in descriptor {digest}")
    platform = None
    p = obj.get("platform")
    if isinstance(p, dict) and p.get("os") and p.get("architecture"):
        platform = Platform(str(p["os"]), str(p["architecture"]), str(p.get("variant", "")))
    ann = obj.get("annotations") or {}
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=platform,
        artifact_type=str(obj.get("artifactType", "")),
        annotations=tuple(sorted((str(k), str(v)) for k, v in ann.items()))
        if isinstance(ann, dict)
        else (),
        urls=tuple(str(u) for u in obj.get("urls") or ()),
    )


def parse_manifest(raw: bytes, content_type: str = "", *, where: str = "manifest") -> Manifest:
    """Parse manifest bytes. The media type comes from the body, else the Content-Type.

    Raises ``ManifestInvalidError`` for schema1, unknown types, oversize or malformed JSON.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestInvalidError(
            f"{where}: manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit"
        )
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestInvalidError(f"{where}: manifest is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ManifestInvalidError(f"{where}: manifest is not a JSON object")
    header_type = content_type.split(";")[0].strip()
    media_type = str(doc.get("mediaType") or "")
    if not media_type:
        # OCI allows mediaType to be absent; tell index from image by its fields.
        if header_type in INDEX_TYPES | IMAGE_TYPES:
            media_type = header_type
        elif "manifests" in doc:
            media_type = OCI_INDEX
        elif "layers" in doc or "config" in doc:
            media_type = OCI_MANIFEST
    if doc.get("schemaVersion") == 1 or media_type in SCHEMA1_TYPES:
        raise ManifestInvalidError(
            f"{where}: Docker schema1 manifests are not supported (deprecated, and they "
            "cannot be copied with their digest preserved); rebuild or re-push the image"
        )
    digest = digest_of(raw)
    subject = _descriptor(doc["subject"], where) if isinstance(doc.get("subject"), dict) else None
    ann = doc.get("annotations") or {}
    annotations = (
        tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else ()
    )
    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise ManifestInvalidError(f"{where}: index has no 'manifests' list")
        return Manifest(
            raw=raw,
            media_type=media_type,
            digest=digest,
            children=tuple(_descriptor(c, where) for c in children),
            subject=subject,
            artifact_type=str(doc.get("artifactType", "")),
            annotations=annotations,
        )
    if media_type in IMAGE_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list) or "config" not in doc:
            raise ManifestInvalidError(f"{where}: image manifest lacks config or layers")
        config = _descriptor(doc["config"], where)
        return Manifest(
            raw=raw,
            media_type=media_type,
            digest=digest,
            config=config,
            layers=tuple(
                d
                for d in (_descriptor(x, where) for x in layers)
                if not is_nondistributable(d.media_type)
            ),
            subject=subject,
            artifact_type=str(doc.get("artifactType") or config.media_type),
            annotations=annotations,
        )
    if media_type == OCI_ARTIFACT:
        # Opaque apart from what a copy needs: its blobs go first, like an image's layers.
        blobs = doc.get("blobs") or []
        if not isinstance(blobs, list):
            raise ManifestInvalidError(f"{where}: artifact manifest 'blobs' is not a list")
        return Manifest(
            raw=raw,
            media_type=media_type,
            digest=digest,
            layers=tuple(_descriptor(b, where) for b in blobs),
            subject=subject,
            artifact_type=str(doc.get("artifactType", "")),
            annotations=annotations,
        )
    raise ManifestInvalidError(f"{where}: unsupported manifest media type {media_type!r}")
