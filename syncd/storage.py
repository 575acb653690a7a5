"""Where images live: the one seam the copy engine and the rule pass see of a registry.

``ImageStore`` is the set of calls the engine layers (copy, blobs, referrers, the rule
pass, prune, verify) make on "a place that holds images". ``RegistryClient`` (distribution
spec over HTTP) and ``LayoutClient`` (an OCI image layout on disk) satisfy it structurally
(``syncd.registry.pool`` has mypy check that they do). Methods are noun_verb as the
distribution spec's endpoints; absence is a value (``None``, ``False``), failure a
``syncd.errors`` exception.

Pure: typing only, no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from syncd.manifest import Manifest

# A request body that can be produced (once) as a stream of chunks.
BodyFactory = Callable[[], AsyncIterable[bytes]]
# What an upload request carries: bytes in hand, or a stream.
Body = bytes | BodyFactory


class ManifestHead(Protocol):
    """What a manifest HEAD tells: enough to decide whether a copy is needed."""

    @property
    def digest(self) -> str: ...

    @property
    def media_type(self) -> str: ...

    @property
    def size(self) -> int: ...


class ImageStore(Protocol):
    """Manifests, blobs, uploads and listings of one registry (or layout)."""

    @property
    def name(self) -> str:
        """The name the config gives it (metric labels, logs)."""
        ...

    @property
    def origin(self) -> str:
        """Normalised address: equal for two clients of one place, whatever their names."""
        ...

    @property
    def max_concurrency(self) -> int:
        """Streams one copy may hold open here at once."""
        ...

    @property
    def attempts(self) -> int:
        """Attempts per request (what a streamed blob's own retry budget follows)."""
        ...

    @property
    def can_mount(self) -> bool:
        """Whether asking for a cross-repository mount is worth a request here."""
        ...

    def with_retries(self, retries: int) -> ImageStore:
        """The same place with another retry budget (a rule's ``retries``)."""
        ...

    # -- manifests -------------------------------------------------------------------------
    async def manifest_head(self, repository: str, reference: str) -> ManifestHead | None: ...

    async def manifest_get(
        self, repository: str, reference: str, *, absent_ok: bool = False
    ) -> Manifest: ...

    async def manifest_put(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str: ...

    async def manifest_delete(self, repository: str, digest: str) -> bool: ...

    # -- blobs -----------------------------------------------------------------------------
    async def blob_head(self, repository: str, digest: str) -> int | None: ...

    def blob_get(
        self, repository: str, digest: str, *, size: int = 0, offset: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...

    async def blob_mount(
        self, repository: str, digest: str, from_repository: str
    ) -> str | None: ...

    # -- uploads ---------------------------------------------------------------------------
    async def upload_start(self, repository: str) -> str: ...

    async def upload_patch(
        self, repository: str, location: str, offset: int, chunk: Body, *, length: int | None = None
    ) -> str:
        """One chunk at ``offset`` (a stream states its ``length``); the next location."""
        ...

    async def upload_put(
        self, repository: str, location: str, digest: str, size: int, body: Body | None = None
    ) -> None:
        """Commit the upload as ``digest`` (with its last bytes, if any)."""
        ...

    async def upload_status(self, repository: str, location: str) -> tuple[int, str]: ...

    async def upload_cancel(self, repository: str, location: str) -> None: ...

    # -- listings --------------------------------------------------------------------------
    async def tags_list(self, repository: str, *, missing_ok: bool = True) -> list[str]: ...

    async def catalog(self) -> list[str]: ...

    async def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> Manifest | None: ...
