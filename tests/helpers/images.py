"""Build small, valid images in memory and push them with a plain HTTP client.

Layers are real gzip'd tars (so skopeo and registries accept them); content is derived from
a seed so a test can make shared or distinct layers on purpose.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.registry import http

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def layer(seed: str, size: int = 2048, *, media_type: str = OCI_LAYER) -> Blob:
    """A gzip'd tar with one file of ``size`` pseudo-random (incompressible) bytes."""
    rnd = random.Random(seed)
    content = rnd.randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"data-{hashlib.md5(seed.encode()).hexdigest()[:8]}")  # noqa: S324
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return Blob(gzip.compress(buf.getvalue(), mtime=0, compresslevel=1), media_type)


@dataclass
class Image:
    """An image manifest with its blobs; ``raw`` is the exact manifest bytes."""

    config: Blob
    layers: list[Blob]
    media_type: str = OCI_MANIFEST
    subject: dict[str, Any] | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    raw: bytes = field(init=False)

    def __post_init__(self) -> None:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        doc["config"] = self.config.descriptor()
        doc["layers"] = [b.descriptor() for b in self.layers]
        if self.subject:
            doc["subject"] = self.subject
        if self.annotations:
            doc["annotations"] = self.annotations
        self.raw = json.dumps(doc, indent=3).encode()

    @property
    def digest(self) -> str:
        return sha(self.raw)

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]

    def descriptor(self, platform: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.raw),
        }
        if platform:
            os_, arch, *variant = platform.split("/")
            d["platform"] = {"os": os_, "architecture": arch}
            if variant:
                d["platform"]["variant"] = variant[0]
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d


@dataclass
class Index:
    children: list[tuple[Image, str]]
    media_type: str = OCI_INDEX
    raw: bytes = field(init=False)

    def __post_init__(self) -> None:
        doc = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [img.descriptor(p) for img, p in self.children],
        }
        self.raw = json.dumps(doc, indent=2).encode()

    @property
    def digest(self) -> str:
        return sha(self.raw)

    @property
    def blobs(self) -> list[Blob]:
        return [b for img, _ in self.children for b in img.blobs]


def image(
    seed: str,
    *,
    layers: int = 2,
    size: int = 2048,
    shared: list[Blob] | None = None,
    platform: str = "linux/amd64",
    docker: bool = False,
) -> Image:
    """A runnable-looking image: ``shared`` layers first, then ``layers`` of its own."""
    os_, arch, *_ = platform.split("/")
    lt = DOCKER_LAYER if docker else OCI_LAYER
    own = [layer(f"{seed}-{i}", size, media_type=lt) for i in range(layers)]
    all_layers = [Blob(b.data, lt) for b in (shared or [])] + own
    cfg = {
        "architecture": arch,
        "os": os_,
        "config": {"Env": [f"SEED={seed}"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": [sha(gzip.decompress(b.data)) for b in all_layers],
        },
    }
    config = Blob(json.dumps(cfg).encode(), DOCKER_CONFIG if docker else OCI_CONFIG)
    return Image(config, all_layers, DOCKER_MANIFEST if docker else OCI_MANIFEST)


def multiarch(
    seed: str, platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"), **kw: Any
) -> Index:
    return Index([(image(f"{seed}-{p}", platform=p, **kw), p) for p in platforms])


# -- pushing with plain HTTP ------------------------------------------------------------
def push_blob(url: str, repo: str, blob: Blob, **kw: Any) -> None:
    status, _, _ = http("HEAD", f"{url}/v2/{repo}/blobs/{blob.digest}", **kw)
    if status == 200:
        return
    status, headers, body = http("POST", f"{url}/v2/{repo}/blobs/uploads/", data=b"", **kw)
    assert status == 202, (status, body)
    loc = headers["Location"]
    if loc.startswith("/"):
        loc = url + loc
    sep = "&" if "?" in loc else "?"
    status, _, body = http(
        "PUT",
        f"{loc}{sep}digest={blob.digest}",
        data=blob.data,
        headers={"Content-Type": "application/octet-stream"},
        **kw,
    )
    assert status == 201, (status, body)


def push_manifest(url: str, repo: str, ref: str, raw: bytes, media_type: str, **kw: Any) -> None:
    status, _, body = http(
        "PUT",
        f"{url}/v2/{repo}/manifests/{ref}",
        data=raw,
        headers={"Content-Type": media_type},
        **kw,
    )
    assert status == 201, (status, body)


def push(url: str, repo: str, tag: str | None, img: Image | Index, **kw: Any) -> str:
    """Push an image or index (children first) and tag it; returns its digest."""
    if isinstance(img, Index):
        for child, _ in img.children:
            push(url, repo, None, child, **kw)
    else:
        for b in img.blobs:
            push_blob(url, repo, b, **kw)
    push_manifest(url, repo, tag or img.digest, img.raw, img.media_type, **kw)
    return img.digest
