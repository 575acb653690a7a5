"""``LayoutClient``: an OCI image layout behind the methods the copy engine calls on a
``RegistryClient``, with the same signatures and the same answers (absence is ``None``,
failure an exception), so rules, the blob mover and referrers need not know which is which.

- ``oci:ROOT``: one layout per repository at ``ROOT/<repository>/``; read and written.
- ``oci-archive:FILE``: a tar of one layout; read only (see ``syncd.layout.names`` for how
  its images get repository names).

An upload session is a temporary file in the target layout: start creates it, chunks
append to it (hashing on the way), commit checks the digest and size, fsyncs and renames
it into ``blobs/<alg>/``. A mount is a hard link from another repository's layout under the
same root. Tags are ``index.json`` entries, replaced atomically (``syncd.layout.fs``) after
everything they reference is present. There is no referrers API: the referrers tag schema
(``sha256-<hex>`` tags) is used, as with a registry without it.

Every blob read is verified against its digest; a mismatch names the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from syncd.config.schema import layout_url
from syncd.digest import digest_of
from syncd.errors import (
    ClientRequestError,
    DigestMismatchError,
    LayoutInvalidError,
    LayoutIOError,
    ManifestInvalidError,
    NotFoundError,
)
from syncd.layout import archive as tar
from syncd.layout import fs
from syncd.layout.directory import LayoutDirectory
from syncd.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from syncd.reference import DIGEST_RE
from syncd.registry.client import ManifestInfo
from syncd.registry.transport import BodyFactory

if TYPE_CHECKING:
    from syncd.metrics import Metrics

T = TypeVar("T")
CHUNK_SIZE = 1024 * 1024
DEFAULT_RETRIES = 5
# An upload session nobody wrote to for this long was abandoned (the blob mover starts a
# fresh session after a failed monolithic upload without cancelling the old one, as a
# registry's upload purging would reclaim it); its file is removed, so a daemon does not
# collect them.
UPLOAD_IDLE = 900.0
# Open streams a blob transfer may hold on a layout (``transfer_needs``): a layout has no
# connection pool to exhaust, only file descriptors.
LAYOUT_STREAMS = 64


@dataclass(slots=True)
class _Upload:
    repository: str
    tmp: fs.TempFile
    hasher: Any
    size: int = 0
    used: float = field(default_factory=time.monotonic)

    def write(self, data: bytes) -> None:
        self.tmp.write(data)
        self.hasher.update(data)
        self.size += len(data)
        self.used = time.monotonic()


@dataclass(slots=True)
class _State:
    """What every copy of one layout's client shares (``with_retries`` makes copies)."""

    name: str
    url: str
    kind: str
    path: str
    metrics: Metrics | None
    retries: int
    directory: LayoutDirectory | None = None
    contents: tar.ArchiveContents | None = None
    uploads: dict[str, _Upload] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    cleaned: set[str] = field(default_factory=set)


class LayoutClient:
    """An ``oci:`` directory or ``oci-archive:`` file, spoken to like a registry."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        metrics: Metrics | None = None,
        retries: int = DEFAULT_RETRIES,
        _state: _State | None = None,
        _attempts: int = 0,
    ) -> None:
        if _state is None:
            parsed = layout_url(url)
            if parsed is None:
                raise ValueError(f"not an OCI layout url: {url!r}")
            kind, path = parsed
            _state = _State(name, url, kind, os.path.abspath(path), metrics, retries)
            if kind == "oci":
                _state.directory = LayoutDirectory(_state.path, name)
        self._state = _state
        self._attempts = _attempts

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def host(self) -> str:
        return self._state.url

    @property
    def origin(self) -> str:
        """What tells two layouts apart: the kind and the absolute path."""
        return f"{self._state.kind}:{self._state.path}"

    @property
    def max_concurrency(self) -> int:
        """Streams one copy may hold open here: files, not connections, so no real cap."""
        return LAYOUT_STREAMS

    @property
    def metrics(self) -> Metrics | None:
        return self._state.metrics

    @property
    def can_mount(self) -> bool:
        """A layout links blobs between its repositories (``blob_mount``)."""
        return True

    def with_retries(self, retries: int) -> LayoutClient:
        return LayoutClient(self.name, self.host, _state=self._state, _attempts=retries)

    @property
    def attempts(self) -> int:
        return self._attempts or self._state.retries

    async def ping(self) -> None:
        """Check the layout can be read: the directory exists, or the archive scans."""
        if self._state.directory is not None:
            if not await self._io(os.path.isdir, self._state.path):
                raise NotFoundError(f"{self._state.path} is not a directory", registry=self.name)
        else:
            await self._contents()

    async def aclose(self) -> None:
        """Drop upload sessions left open (their temporary files go with them)."""
        uploads = list(self._state.uploads.values())
        self._state.uploads.clear()
        for u in uploads:
            await self._io(u.tmp.discard)

    # -- helpers -------------------------------------------------------------------------
    async def _io(self, fn: Callable[..., T], *args: Any, repository: str = "") -> T:
        """Run blocking file work in a thread; an ``OSError`` becomes ``LayoutIOError``
        naming the path, so a full disk fails images, never the pass."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as e:
            where = e.filename or self._state.path
            raise LayoutIOError(
                f"{where}: {e.strerror or e}", registry=self.name, repository=repository
            ) from None

    def _dir(self) -> LayoutDirectory:
        d = self._state.directory
        if d is None:
            raise ClientRequestError(
                f"{self._state.path} is an oci-archive, which syncd reads but does not write",
                registry=self.name,
            )
        return d

    async def _contents(self) -> tar.ArchiveContents:
        """The archive's scan, redone when the file changed since the last one."""
        st = self._state
        now = await self._io(_stamp_or_none, st.path)
        if now is None:
            raise LayoutInvalidError(f"{st.path} is missing", registry=self.name)
        if st.contents is None or st.contents.stamp != now:
            st.contents = await self._io(tar.scan, st.path)
        return st.contents

    async def _clean(self, repository: str) -> None:
        """Once per process and repository: remove what a killed writer left behind."""
        d = self._state.directory
        if d is None or repository in self._state.cleaned:
            return
        self._state.cleaned.add(repository)
        with contextlib.suppress(LayoutIOError, LayoutInvalidError):
            await self._io(d.clean, repository)

    def _lock(self, repository: str) -> asyncio.Lock:
        return self._state.locks.setdefault(repository, asyncio.Lock())

    async def _tags(self, repository: str) -> dict[str, dict[str, Any]] | None:
        if self._state.directory is not None:
            return await self._io(self._state.directory.tags, repository)
        return (await self._contents()).images.get(repository)

    def _check_digest(self, digest: str) -> None:
        if not DIGEST_RE.match(digest):
            raise ClientRequestError(f"invalid digest {digest!r}", registry=self.name)

    async def _blob_place(self, repository: str, digest: str) -> tuple[str, int, int, str] | None:
        """``(file, offset, size, name for messages)`` of a blob, or None when absent."""
        self._check_digest(digest)
        rel = fs.blob_relpath(digest)
        if self._state.directory is not None:
            path = self._state.directory.blob_path(repository, digest)
            size = await self._io(_size_or_none, path)
            return None if size is None else (path, 0, size, path)
        contents = await self._contents()
        member = contents.members.get(rel)
        if member is None:
            return None
        return self._state.path, member.offset, member.size, f"{self._state.path}:{rel}"

    async def _read_small(self, repository: str, digest: str) -> tuple[bytes, str] | None:
        place = await self._blob_place(repository, digest)
        if place is None:
            return None
        path, offset, size, shown = place
        if size > MAX_MANIFEST_BYTES:
            raise LayoutInvalidError(
                f"{shown} is {size} bytes, over the {MAX_MANIFEST_BYTES} byte manifest limit",
                registry=self.name,
                repository=repository,
            )
        data = await self._io(_read_range, path, offset, size)
        actual = digest_of(data) if digest.startswith("sha256:") else _digest(data, digest)
        if actual != digest:
            raise DigestMismatchError(shown, digest, actual)
        return data, shown

    async def _resolve(self, repository: str, reference: str) -> dict[str, Any] | None:
        """The index descriptor of a tag (None if absent); a digest stands for itself.

        A malformed descriptor fails that tag, naming the index file.
        """
        if DIGEST_RE.match(reference):
            return {"digest": reference}
        tags = await self._tags(repository)
        entry = tags.get(reference) if tags else None
        if entry is None:
            return None
        digest, size = entry.get("digest"), entry.get("size")
        if (
            not isinstance(digest, str)
            or not DIGEST_RE.match(digest)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or not isinstance(entry.get("mediaType", ""), str)
        ):
            raise LayoutInvalidError(
                f"{self._index_name(repository)}: the entry of tag {reference} is not a valid "
                "descriptor (digest, size, mediaType)",
                registry=self.name,
                repository=repository,
            )
        return entry

    def _index_name(self, repository: str) -> str:
        if self._state.directory is not None:
            return os.path.join(self._state.directory.layout(repository), fs.INDEX_JSON)
        return f"{self._state.path}:{fs.INDEX_JSON}"

    # -- manifests -----------------------------------------------------------------------
    async def manifest_head(self, repository: str, reference: str) -> ManifestInfo | None:
        """Digest, type and size of a manifest, or None if the tag/digest is absent.

        A tag whose manifest blob is missing raises ``LayoutInvalidError`` naming the file
        (at a target the copy engine then writes the tag again).
        """
        entry = await self._resolve(repository, reference)
        if entry is None:
            return None
        digest = str(entry.get("digest", ""))
        if "mediaType" in entry and "size" in entry:
            place = await self._blob_place(repository, digest)
            if place is None:
                raise LayoutInvalidError(
                    f"tag {reference} names {digest}, but {fs.blob_relpath(digest)} is missing",
                    registry=self.name,
                    repository=repository,
                )
            return ManifestInfo(digest, str(entry["mediaType"]), int(entry["size"]))
        try:
            got = await self._read_small(repository, digest)
        except LayoutInvalidError:
            return None  # too large to be a manifest: a layer, not what was asked for
        if got is None:
            return None
        raw, shown = got
        try:
            m = parse_manifest(raw, where=shown)
        except ManifestInvalidError:  # a blob that is not a manifest is no manifest
            return None
        return ManifestInfo(m.digest, m.media_type, m.size)

    async def manifest_get(
        self, repository: str, reference: str, *, absent_ok: bool = False
    ) -> Manifest:
        """The exact manifest bytes, parsed, verified against the digest naming them."""
        entry = await self._resolve(repository, reference)
        where = f"{self.name}/{repository}"
        if entry is None:
            raise NotFoundError(f"{reference} not found", registry=self.name, repository=repository)
        digest = str(entry.get("digest", ""))
        got = await self._read_small(repository, digest)
        if got is None:
            raise NotFoundError(
                f"{reference}: {fs.blob_relpath(digest)} is missing from the layout",
                registry=self.name,
                repository=repository,
            )
        raw, shown = got
        m = parse_manifest(raw, str(entry.get("mediaType", "")), where=f"{where} ({shown})")
        return m

    async def manifest_put(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """Store the exact bytes as a blob and, for a tag, point index.json at them.

        Like a registry, refuses a manifest whose blobs or child manifests are not in the
        layout yet, so no tag can name an incomplete image.
        """
        d = self._dir()
        await self._clean(repository)
        digest = digest_of(raw)
        target = f"{self.name}/{repository}:{reference}"
        if DIGEST_RE.match(reference) and reference != digest:
            raise DigestMismatchError(f"{target} (pushed manifest)", reference, digest)
        m = parse_manifest(raw, media_type, where=target)
        needed = [b.digest for b in m.blobs] + [c.digest for c in m.children]
        missing = await self._io(d.missing, repository, needed) if needed else []
        if missing:
            raise ClientRequestError(
                f"manifest {digest} references what the layout lacks: {', '.join(missing)}",
                registry=self.name,
                repository=repository,
            )
        await self._io(d.put_blob_bytes, repository, digest, raw)
        if not DIGEST_RE.match(reference):
            descriptor = {"mediaType": m.media_type, "digest": digest, "size": len(raw)}
            async with self._lock(repository):
                await self._io(d.set_tag, repository, reference, descriptor)
        return digest

    async def manifest_delete(self, repository: str, digest: str) -> bool:
        """Refused as a registry without deletion refuses it (405): prune then says so."""
        raise ClientRequestError(
            "deletes not supported", registry=self.name, repository=repository, status=405
        )

    # -- blobs ---------------------------------------------------------------------------
    async def blob_head(self, repository: str, digest: str) -> int | None:
        """The blob's size if the layout holds it, else None."""
        place = await self._blob_place(repository, digest)
        return None if place is None else place[2]

    @asynccontextmanager
    async def blob_get(
        self, repository: str, digest: str, *, size: int = 0, offset: int = 0
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob in chunks; read from the start, it is verified against its digest
        at the end (``DigestMismatchError`` naming the file)."""
        place = await self._blob_place(repository, digest)
        if place is None:
            rel = fs.blob_relpath(digest)
            raise NotFoundError(
                f"blob {digest} not found ({rel} is missing from the layout)",
                registry=self.name,
                repository=repository,
            )
        path, start, length, shown = place
        f = await self._io(open, path, "rb")
        try:
            yield self._chunks(f, start, length, offset, digest, shown)
        finally:
            await self._io(f.close)

    async def _chunks(
        self, f: Any, start: int, length: int, offset: int, digest: str, shown: str
    ) -> AsyncIterator[bytes]:
        h = hashlib.new(digest.partition(":")[0]) if offset == 0 else None
        await self._io(f.seek, start + offset)
        left = length - offset
        while left > 0:
            chunk = await self._io(f.read, min(CHUNK_SIZE, left))
            if not chunk:
                raise LayoutInvalidError(f"{shown} is cut short", registry=self.name)
            left -= len(chunk)
            if h is not None:
                h.update(chunk)
                if left == 0 and f"{h.name}:{h.hexdigest()}" != digest:
                    raise DigestMismatchError(shown, digest, f"{h.name}:{h.hexdigest()}")
            yield chunk

    async def blob_mount(self, repository: str, digest: str, from_repository: str) -> str | None:
        """Link a blob from another repository's layout: None when done, else (it has
        none) an upload session, as a registry opens one when it declines a mount."""
        d = self._dir()
        self._check_digest(digest)
        await self._clean(repository)
        if await self._io(d.mount, repository, digest, from_repository):
            return None
        return await self.upload_start(repository)

    async def upload_start(self, repository: str) -> str:
        """A new upload session: a locked temporary file in the repository's layout."""
        d = self._dir()
        await self._clean(repository)

        def start() -> fs.TempFile:
            layout = d.prepare(repository)
            return fs.temp_file(layout, "blob")

        now = time.monotonic()
        for loc, old in list(self._state.uploads.items()):
            if now - old.used > UPLOAD_IDLE:
                del self._state.uploads[loc]
                await self._io(old.tmp.discard)
        tmp = await self._io(start)
        location = f"layout-upload:{uuid.uuid4().hex}"
        self._state.uploads[location] = _Upload(repository, tmp, hashlib.sha256())
        return location

    def _upload(self, repository: str, location: str) -> _Upload:
        u = self._state.uploads.get(location)
        if u is None or u.repository != repository:
            raise ClientRequestError(
                "upload session unknown", registry=self.name, repository=repository, status=404
            )
        return u

    async def _append(self, u: _Upload, body: bytes | BodyFactory, length: int) -> None:
        before = u.size
        if isinstance(body, bytes):
            await self._io(u.write, body)
        else:
            async for piece in body():
                await self._io(u.write, piece)
        if u.size - before != length:
            raise ClientRequestError(
                f"upload body was {u.size - before} bytes, not {length}",
                registry=self.name,
                repository=u.repository,
            )

    async def upload_patch(
        self,
        repository: str,
        location: str,
        offset: int,
        chunk: bytes | BodyFactory,
        *,
        length: int | None = None,
    ) -> str:
        """Append one chunk at ``offset`` (which must be where the session stands)."""
        size = len(chunk) if isinstance(chunk, bytes) else length
        if size is None:
            raise ValueError("a streamed chunk needs its length")
        u = self._upload(repository, location)
        if offset != u.size:
            raise ClientRequestError(
                f"chunk at {offset}, but the upload holds {u.size} bytes",
                registry=self.name,
                repository=repository,
                status=416,
            )
        await self._append(u, chunk, size)
        return location

    async def upload_put(
        self,
        repository: str,
        location: str,
        digest: str,
        size: int,
        body: BodyFactory | bytes | None = None,
    ) -> None:
        """Finish an upload: the last bytes, then verify, fsync and rename into blobs/."""
        d = self._dir()
        u = self._upload(repository, location)
        self._check_digest(digest)
        if body is not None:
            await self._append(u, body, size)
        if not digest.startswith("sha256:"):
            raise ClientRequestError(f"unsupported digest {digest}", registry=self.name)
        actual = f"sha256:{u.hasher.hexdigest()}"
        if actual != digest:
            del self._state.uploads[location]
            await self._io(u.tmp.discard)
            raise DigestMismatchError(f"{self.name}/{repository} (uploaded blob)", digest, actual)
        final = d.blob_path(repository, digest)

        def commit() -> None:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            u.tmp.commit(final)

        del self._state.uploads[location]
        try:
            await self._io(commit)
        except BaseException:
            await self._io(u.tmp.discard)
            raise

    async def upload_status(self, repository: str, location: str) -> tuple[int, str]:
        """How many bytes an upload session holds, and its location."""
        return self._upload(repository, location).size, location

    async def upload_cancel(self, repository: str, location: str) -> None:
        u = self._state.uploads.pop(location, None)
        if u is not None:
            await self._io(u.tmp.discard)

    # -- listings --------------------------------------------------------------------------
    async def tags_list(self, repository: str, *, missing_ok: bool = True) -> list[str]:
        """Every tag of a repository (``ref.name`` annotations of its index.json)."""
        tags = await self._tags(repository)
        if tags is None:
            if missing_ok:
                return []
            raise NotFoundError(
                f"no OCI layout for {repository} in {self._state.path}",
                registry=self.name,
                repository=repository,
            )
        return sorted(tags)

    async def catalog(self) -> list[str]:
        """Every repository: layouts found under the root, or the names in the archive."""
        if self._state.directory is not None:
            return await self._io(self._state.directory.repositories)
        return sorted((await self._contents()).images)

    # -- referrers ---------------------------------------------------------------------------
    async def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> Manifest | None:
        """A layout has no referrers API: the ``sha256-<hex>`` tag schema stands in."""
        return None


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _stamp_or_none(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _read_range(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _digest(data: bytes, digest: str) -> str:
    algorithm = digest.partition(":")[0]
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
