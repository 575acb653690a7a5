"""RegistryClient against a real distribution registry."""

from __future__ import annotations

import pytest

from syncd.config.schema import RegistryConfig
from syncd.errors import DigestMismatchError, ManifestInvalidError, NotFoundError
from syncd.metrics import Metrics
from syncd.registry.pool import ClientPool
from tests.helpers.images import image, multiarch, push
from tests.helpers.registry import Registry


def pool_for(reg: Registry, metrics: Metrics | None = None) -> ClientPool:
    return ClientPool({"r": RegistryConfig(name="r", url=reg.url)}, metrics=metrics)


async def test_manifest_head_get_and_digest(source: Registry) -> None:
    idx = multiarch("m")
    push(source.url, "team/app", "v1", idx)
    async with pool_for(source) as pool:
        c = pool.client("r")
        info = await c.manifest_head("team/app", "v1")
        assert info is not None and info.digest == idx.digest
        m = await c.manifest_get("team/app", "v1")
        assert m.raw == idx.raw and m.is_index and len(m.children) == 2
        assert await c.manifest_head("team/app", "nope") is None
        with pytest.raises(NotFoundError):
            await c.manifest_get("team/app", "nope")


async def test_blob_upload_stream_and_mount(source: Registry) -> None:
    img = image("b", layers=1, size=3 * 1024 * 1024)
    push(source.url, "a/one", "v1", img)
    blob = img.layers[0]
    async with pool_for(source) as pool:
        c = pool.client("r")
        assert await c.blob_head("a/one", blob.digest) == len(blob.data)
        assert await c.blob_head("a/two", blob.digest) is None
        got = bytearray()
        async with c.blob_get("a/one", blob.digest, size=len(blob.data)) as chunks:
            async for chunk in chunks:
                got += chunk
        assert bytes(got) == blob.data
        assert await c.blob_mount("a/two", blob.digest, "a/one") is None
        assert await c.blob_head("a/two", blob.digest) == len(blob.data)
        # a mount the registry declines opens an upload session we can use
        other = image("c", layers=1)
        loc = await c.blob_mount("a/three", other.layers[0].digest, "a/one")
        assert loc is not None
        await c.upload_put(
            "a/three", loc, other.layers[0].digest, len(other.layers[0].data), other.layers[0].data
        )
        assert await c.blob_head("a/three", other.layers[0].digest) is not None


async def test_chunked_upload_and_status(source: Registry) -> None:
    data = image("p", layers=1, size=300_000).layers[0]
    async with pool_for(source) as pool:
        c = pool.client("r")
        loc = await c.upload_start("x/y")
        half = len(data.data) // 2
        loc = await c.upload_patch("x/y", loc, 0, data.data[:half])
        offset, loc = await c.upload_status("x/y", loc)
        assert offset == half
        loc = await c.upload_patch("x/y", loc, half, data.data[half:])
        await c.upload_put("x/y", loc, data.digest, 0, None)
        assert await c.blob_head("x/y", data.digest) == len(data.data)


async def test_tags_and_catalog_paginate(source: Registry) -> None:
    img = image("t", layers=1, size=100)
    push(source.url, "p/q", "t0", img)
    for i in range(1, 1203):
        # same manifest, many tags: cheap
        from tests.helpers.images import push_manifest

        push_manifest(source.url, "p/q", f"t{i}", img.raw, img.media_type)
    push(source.url, "p/r", "x", img)
    async with pool_for(source) as pool:
        c = pool.client("r")
        tags = await c.tags_list("p/q")
        assert len(tags) == 1203 and len(set(tags)) == 1203
        assert await c.catalog() == ["p/q", "p/r"]
        assert await c.tags_list("does/not-exist") == []


async def test_manifest_put_verifies(source: Registry) -> None:
    img = image("v", layers=1, size=100)
    push(source.url, "v/w", "v1", img)
    async with pool_for(source) as pool:
        c = pool.client("r")
        d = await c.manifest_put("v/w", "v2", img.raw, img.media_type)
        assert d == img.digest
        wrong = "sha256:" + "0" * 64
        with pytest.raises((DigestMismatchError, NotFoundError)):
            await c.manifest_get("v/w", wrong)


async def test_schema1_refused(source: Registry) -> None:
    from syncd.manifest import parse_manifest

    with pytest.raises(ManifestInvalidError, match="schema1"):
        parse_manifest(b'{"schemaVersion": 1, "name": "x", "fsLayers": []}')
