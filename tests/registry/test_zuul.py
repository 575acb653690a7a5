"""RegistryClient against zuul-registry: what it lacks, and how the client copes.

docs/registries.md lists each difference; these tests hold the client to that page.
"""

from __future__ import annotations

import pytest

from syncd.config.schema import RegistryConfig
from syncd.registry.pool import ClientPool
from syncd.secret import Secret
from tests.helpers.images import image, multiarch, push
from tests.helpers.registry import Registry

pytestmark = pytest.mark.parametrize("source", ["zuul"], indirect=True)
UA = "syncd/"


def pool_for(reg: Registry) -> ClientPool:
    password = Secret(reg.password) if reg.password else None
    cfg = RegistryConfig(name="z", url=reg.url, username=reg.username, password=password)
    return ClientPool({"z": cfg})


async def test_tags_are_tags_and_the_page_size_is_asked_once(source: Registry) -> None:
    idx = multiarch("zt")
    push(source.url, "team/app", "v1", idx)
    push(source.url, "team/app", "v2", image("zt2"))
    mark = source.log_mark()
    async with pool_for(source) as pool:
        c = pool.client("z")
        # The children of the index were pushed by digest: zuul-registry lists them as
        # "tags" named sha256:…; they are not tags.
        assert sorted(await c.tags_list("team/app")) == ["v1", "v2"]
        assert sorted(await c.tags_list("team/app")) == ["v1", "v2"]
    lists = [a for a in source.accesses(mark, UA) if a.kind == "tags_list"]
    # The first listing learns that `n` is refused (404), then lists without it.
    assert [("n=" in a.path, a.status) for a in lists] == [(True, 404), (False, 200), (False, 200)]


async def test_manifest_head_by_tag_names_every_type_exactly(source: Registry) -> None:
    idx = multiarch("zh")
    push(source.url, "team/app", "v1", idx)
    async with pool_for(source) as pool:
        info = await pool.client("z").manifest_head("team/app", "v1")
    assert info is not None and info.digest == idx.digest and info.size == len(idx.raw)


async def test_a_refused_mount_becomes_an_upload_and_is_not_asked_again(source: Registry) -> None:
    one, two = image("zm1", layers=1), image("zm2", layers=1)
    push(source.url, "a/one", "v1", one)
    mark = source.log_mark()
    async with pool_for(source) as pool:
        c = pool.client("z")
        assert c.can_mount
        blob = two.layers[0]
        location = await c.blob_mount("a/two", blob.digest, "a/one")
        assert location is not None and not c.can_mount
        # The session the fallback opened takes the blob; the POST stated its length.
        await c.upload_put("a/two", location, blob.digest, len(blob.data), blob.data)
        assert await c.blob_head("a/two", blob.digest) == len(blob.data)
    accesses = source.accesses(mark, UA)
    posts = [(a.status, "mount=" in a.path) for a in accesses if a.method == "POST"]
    assert (404, True) in posts and (202, False) in posts and all(s != 411 for s, _ in posts)
