"""The copy engine's ordering logic, against an in-memory "where images live".

Only the engine's own decisions are under test here: in which order it writes, when it
stops, how often it moves one blob. ``MemoryImageStore`` implements ``syncd.storage``'s
``ImageStore`` in memory and logs every write; how the registry protocol itself behaves
is tested against real registries elsewhere (tests/copy, tests/registry).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from syncd.copy import CopyEngine
from syncd.copy_result import ImageResult, TargetSpec
from syncd.endpoint import Endpoint
from syncd.errors import ClientRequestError, NotFoundError
from syncd.manifest import Manifest, parse_manifest
from syncd.storage import BodyFactory, ImageStore
from tests.helpers.images import Image, Index, image, layer, multiarch


@dataclass(frozen=True, slots=True)
class Head:
    digest: str
    media_type: str
    size: int


@dataclass(eq=False)  # hashed by identity, as Endpoint needs
class MemoryImageStore:
    """Repositories of manifests and blobs in dicts; every write appended to ``log``."""

    name: str
    origin: str = ""
    max_concurrency: int = 8
    attempts: int = 1
    can_mount: bool = True
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    manifests: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    # digest -> error raised when an upload of it is committed
    broken: dict[str, Exception] = field(default_factory=dict)
    # awaited before an upload is committed (lets a test hold copies side by side)
    gate: asyncio.Event | None = None
    _uploads: dict[str, tuple[str, bytearray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.origin = self.origin or f"memory://{self.name}"

    def with_retries(self, retries: int) -> MemoryImageStore:
        return self

    def holds(self, repository: str, img: Image | Index, tag: str | None = None) -> None:
        """Put ``img`` (children first) into ``repository``, as a test's starting point."""
        if isinstance(img, Index):
            for child, _ in img.children:
                self.holds(repository, child)
        for b in img.blobs:
            self.blobs.setdefault(repository, {})[b.digest] = b.data
        refs = self.manifests.setdefault(repository, {})
        for ref in (img.digest, tag):
            if ref:
                refs[ref] = (img.raw, img.media_type)

    # -- manifests -------------------------------------------------------------------------
    async def manifest_head(self, repository: str, reference: str) -> Head | None:
        await asyncio.sleep(0)  # sleep-ok: a registry answers later; let other copies run
        found = self.manifests.get(repository, {}).get(reference)
        if found is None:
            return None
        raw, media_type = found
        return Head("sha256:" + hashlib.sha256(raw).hexdigest(), media_type, len(raw))

    async def manifest_get(
        self, repository: str, reference: str, *, absent_ok: bool = False
    ) -> Manifest:
        found = self.manifests.get(repository, {}).get(reference)
        if found is None:
            raise NotFoundError(f"{reference} not found", registry=self.name)
        return parse_manifest(*found)

    async def manifest_put(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        m = parse_manifest(raw, media_type)
        have_blobs = self.blobs.get(repository, {})
        have_manifests = self.manifests.get(repository, {})
        lacking = [b.digest for b in m.blobs if b.digest not in have_blobs]
        lacking += [c.digest for c in m.children if c.digest not in have_manifests]
        assert not lacking, f"{reference} pushed before {lacking}"
        self.log.append(("manifest", repository, reference))
        refs = self.manifests.setdefault(repository, {})
        refs[m.digest] = refs[reference] = (raw, media_type)
        return m.digest

    async def manifest_delete(self, repository: str, digest: str) -> bool:
        return self.manifests.get(repository, {}).pop(digest, None) is not None

    # -- blobs -----------------------------------------------------------------------------
    async def blob_head(self, repository: str, digest: str) -> int | None:
        data = self.blobs.get(repository, {}).get(digest)
        return None if data is None else len(data)

    @asynccontextmanager
    async def blob_get(
        self, repository: str, digest: str, *, size: int = 0, offset: int = 0
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self.blobs[repository][digest][offset:]

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1024):
                yield data[i : i + 1024]

        yield chunks()

    async def blob_mount(self, repository: str, digest: str, from_repository: str) -> str | None:
        data = self.blobs.get(from_repository, {}).get(digest)
        if data is None:
            return await self.upload_start(repository)
        self.log.append(("mount", repository, digest))
        self.blobs.setdefault(repository, {})[digest] = data
        return None

    # -- uploads ---------------------------------------------------------------------------
    async def upload_start(self, repository: str) -> str:
        location = f"upload-{len(self._uploads)}"
        self._uploads[location] = (repository, bytearray())
        return location

    async def upload_patch(
        self,
        repository: str,
        location: str,
        offset: int,
        chunk: bytes | BodyFactory,
        *,
        length: int | None = None,
    ) -> str:
        await _feed(self._uploads[location][1], chunk)
        return location

    async def upload_put(
        self,
        repository: str,
        location: str,
        digest: str,
        size: int,
        body: BodyFactory | bytes | None = None,
    ) -> None:
        _, data = self._uploads.pop(location)
        if body is not None:
            await _feed(data, body)
        if self.gate is not None:
            await self.gate.wait()
        if digest in self.broken:
            raise self.broken[digest]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        self.log.append(("blob", repository, digest))
        self.blobs.setdefault(repository, {})[digest] = bytes(data)

    async def upload_status(self, repository: str, location: str) -> tuple[int, str]:
        return len(self._uploads[location][1]), location

    async def upload_cancel(self, repository: str, location: str) -> None:
        self._uploads.pop(location, None)

    # -- listings --------------------------------------------------------------------------
    async def tags_list(self, repository: str, *, missing_ok: bool = True) -> list[str]:
        return sorted(r for r in self.manifests.get(repository, {}) if ":" not in r)

    async def catalog(self) -> list[str]:
        return sorted(self.manifests)

    async def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> Manifest | None:
        return None


async def _feed(into: bytearray, body: bytes | Callable[[], AsyncIterable[bytes]]) -> None:
    if isinstance(body, bytes):
        into += body
        return
    async for chunk in body():
        into += chunk


def _is_store(s: MemoryImageStore) -> ImageStore:
    return s  # mypy, were it run on tests, checks the fake against the seam here too


def _pair() -> tuple[MemoryImageStore, MemoryImageStore]:
    return MemoryImageStore("src"), MemoryImageStore("dst")


async def test_blobs_then_children_then_the_tagged_index() -> None:
    src, dst = _pair()
    index = multiarch("order")
    src.holds("app", index, "v1")
    result = await CopyEngine().copy_image(
        Endpoint(src, "app"), "v1", [TargetSpec(Endpoint(_is_store(dst), "app"), "v1")]
    )
    assert not result.failed, result.outcomes
    written = [(kind, ref) for kind, _, ref in dst.log]
    assert written[-1] == ("manifest", "v1")
    for child, _ in index.children:
        child_at = written.index(("manifest", child.digest))
        for b in child.blobs:
            assert written.index(("blob", b.digest)) < child_at
        assert child_at < len(written) - 1
    assert len(written) == len(index.blobs) + len(index.children) + 1


async def test_a_failed_blob_means_no_manifest_put() -> None:
    src, dst = _pair()
    img = image("broken")
    src.holds("app", img, "v1")
    dst.broken[img.layers[-1].digest] = ClientRequestError("refused", status=400)
    result = await CopyEngine().copy_image(
        Endpoint(src, "app"), "v1", [TargetSpec(Endpoint(dst, "app"), "v1")]
    )
    assert [o.action for o in result.outcomes] == ["failed"]
    assert not [entry for entry in dst.log if entry[0] == "manifest"]
    assert "v1" not in dst.manifests.get("app", {})


async def test_one_upload_per_blob_across_concurrent_copies() -> None:
    """Two images sharing a base layer, copied at once into two repositories of one
    registry, and a second tag of one of them: each blob goes up once, the shared one is
    mounted into the other repository."""
    src, dst = _pair()
    base = layer("base", 4096)
    one, two = image("one", shared=[base]), image("two", shared=[base])
    src.holds("one", one, "v1")
    src.holds("one", one, "latest")
    src.holds("two", two, "v1")
    dst.gate = asyncio.Event()
    engine = CopyEngine()

    def copy(repo: str, tag: str) -> asyncio.Future[ImageResult]:
        return asyncio.ensure_future(
            engine.copy_image(Endpoint(src, repo), tag, [TargetSpec(Endpoint(dst, repo), tag)])
        )

    copies = [copy("one", "v1"), copy("one", "latest"), copy("two", "v1")]
    # Every copy is past its target HEAD (so all three are under way) before any upload
    # may finish: the copies overlap for certain.
    async with asyncio.timeout(10):
        while len(dst._uploads) < len({b.digest for b in one.blobs + two.blobs}):
            await asyncio.sleep(0)  # sleep-ok: yields until the uploads have started
        dst.gate.set()
        results = await asyncio.gather(*copies)
    assert not any(r.failed for r in results)
    uploads = [digest for kind, _, digest in dst.log if kind == "blob"]
    assert sorted(uploads) == sorted({b.digest for b in one.blobs + two.blobs})
    assert [(repo, d) for kind, repo, d in dst.log if kind == "mount"] in (
        [("one", base.digest)],
        [("two", base.digest)],
    )
