"""``RegistryClient``: one method per distribution-spec endpoint, nothing else.

Methods are noun_verb (``blob_head``, ``manifest_put``). Absence is a value (``None``),
failure is an exception. Deciding what to copy belongs to the copy engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from syncd.digest import digest_of
from syncd.errors import (
    CatalogUnsupportedError,
    DigestMismatchError,
    ManifestInvalidError,
    RegistryError,
    ServerError,
)
from syncd.manifest import ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX, Manifest, parse_manifest
from syncd.reference import TAG_RE, hub_repository, is_docker_hub, split_origin
from syncd.registry import listing
from syncd.registry.auth import repository_scope
from syncd.registry.listing import paginate
from syncd.registry.transport import (
    BodyFactory,
    Request,
    Response,
    Transport,
    redact_url,
)

# 1 MiB keeps per-chunk Python overhead (hashing, queueing) small against the bytes moved
# while bounding memory per stream.
CHUNK_SIZE = 1024 * 1024
# First-page answers that mean "this registry has no referrers API": 404 is what the spec
# leaves to registries without it (distribution-spec "Listing Referrers"); 400, 405 and
# 406 are what real ones send for a path they do not route or an Accept they refuse.
NO_REFERRERS_API = (400, 404, 405, 406)
# A POST without a body still states its length: CherryPy-based registries (zuul-registry)
# answer 411 Length Required otherwise (RFC 9110 section 8.6 lets a server insist).
_EMPTY_BODY = {"Content-Length": "0"}


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What a manifest HEAD tells: enough to decide whether a copy is needed."""

    digest: str
    media_type: str
    size: int


def _blob_timeout(size: int) -> aiohttp.ClientTimeout:
    # Scaled to size: at least 5 minutes, plus a second per MiB (1 MiB/s floor).
    return aiohttp.ClientTimeout(total=300 + size / (1024 * 1024), connect=15, sock_read=120)


class RegistryClient:
    """The endpoints of one registry. Cheap to copy with another retry budget."""

    def __init__(
        self,
        transport: Transport,
        *,
        retries: int = 0,
        _variants: dict[int, RegistryClient] | None = None,
    ) -> None:
        self.transport = transport
        self._attempts = retries
        self._hub = is_docker_hub(split_origin(transport.base_url)[1])
        # The copies with other retry budgets, shared by all of them: every job asks for
        # its rule's budget, and a new client per job was a measurable share of a pass.
        self._variants = _variants if _variants is not None else {retries: self}

    def wire(self, repository: str) -> str:
        """The repository as this registry's API names it: on Docker Hub a one-component
        name is an official image, ``library/NAME``. Callers keep the operator's spelling
        (metrics, logs, reports); only requests use this one."""
        return hub_repository(repository) if self._hub else repository

    @property
    def origin(self) -> str:
        """The registry's normalised origin: equal for two clients of one registry."""
        return self.transport.origin

    @property
    def name(self) -> str:
        return self.transport.name

    @property
    def max_concurrency(self) -> int:
        """Parallel connections to this registry (``max_concurrency``)."""
        return self.transport.max_concurrency

    @property
    def host(self) -> str:
        return self.transport.host

    def with_retries(self, retries: int) -> RegistryClient:
        variant = self._variants.get(retries)
        if variant is None:
            variant = self._variants[retries] = RegistryClient(
                self.transport, retries=retries, _variants=self._variants
            )
        return variant

    @property
    def attempts(self) -> int:
        """Attempts per request for this client (a rule's ``retries``, else the default)."""
        return self._attempts or self.transport.retries

    async def send(self, req: Request) -> Response:
        """Any request with this client's retry budget (``registry.listing`` pages with it)."""
        return await self._send(req)

    async def _send(self, req: Request) -> Response:
        return await self.transport.send(req, self._attempts)

    async def ping(self) -> None:
        await self.transport.ping(self._attempts)

    # -- manifests ---------------------------------------------------------------------
    async def manifest_head(self, repository: str, reference: str) -> ManifestInfo | None:
        """Digest, type and size of a manifest, or None if the tag/digest is absent."""
        repository = self.wire(repository)
        resp = await self._send(
            Request(
                "HEAD",
                f"/v2/{repository}/manifests/{reference}",
                repository=repository,
                headers={"Accept": ACCEPT},
                absent=(404,),
                scopes=(repository_scope(repository, "pull"),),
            )
        )
        if resp.status == 404:
            return None
        digest = resp.headers.get("Docker-Content-Digest", "")
        if not digest:
            # Without the header a HEAD cannot tell the digest; fetch the bytes instead.
            m = await self.manifest_get(repository, reference)
            return ManifestInfo(m.digest, m.media_type, m.size)
        return ManifestInfo(
            digest,
            resp.headers.get("Content-Type", "").split(";")[0],
            int(resp.headers.get("Content-Length", "0") or 0),
        )

    async def manifest_get(
        self, repository: str, reference: str, *, absent_ok: bool = False
    ) -> Manifest:
        """The exact manifest bytes, parsed, with the digest checked two ways."""
        repository = self.wire(repository)
        resp = await self._send(
            Request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                repository=repository,
                headers={"Accept": ACCEPT},
                scopes=(repository_scope(repository, "pull"),),
                max_body=MAX_MANIFEST_BYTES,
            )
        )
        where = f"{self.name}/{repository}@{reference}"
        manifest = parse_manifest(resp.body, resp.headers.get("Content-Type", ""), where=where)
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise DigestMismatchError(where, reference, manifest.digest)
        header = resp.headers.get("Docker-Content-Digest", "")
        if header.startswith("sha256:") and header != manifest.digest:
            raise DigestMismatchError(f"{where} (Docker-Content-Digest)", header, manifest.digest)
        return manifest

    async def manifest_put(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """PUT the exact bytes; returns the digest, verified against what the registry says."""
        repository = self.wire(repository)
        resp = await self._send(
            Request(
                "PUT",
                f"/v2/{repository}/manifests/{reference}",
                repository=repository,
                headers={"Content-Type": media_type},
                body=raw,
                expect=(201, 200),
                scopes=(repository_scope(repository, "pull,push"),),
            )
        )
        expected = digest_of(raw)
        reported = resp.headers.get("Docker-Content-Digest", "")
        if not reported:
            info = await self.manifest_head(repository, expected)
            reported = info.digest if info else ""
        if reported != expected:
            raise DigestMismatchError(
                f"{self.name}/{repository}:{reference} (pushed manifest)", expected, reported
            )
        return reported

    async def manifest_delete(self, repository: str, digest: str) -> bool:
        """Delete the manifest ``digest``; False if the repository did not have it.

        Distribution deletes only by digest (a tag answers 400 DIGEST_INVALID), and the
        deletion removes every tag of the repository that points at it (distribution
        docs, "Deleting an Image"): callers check the other tags first. A registry with
        deletes turned off answers 405 UNSUPPORTED, raised as ``ClientRequestError``.
        """
        resp = await self._send(
            Request(
                "DELETE",
                f"/v2/{repository}/manifests/{digest}",
                repository=repository,
                expect=(202, 200),
                absent=(404,),
                scopes=(repository_scope(repository, "delete"),),
            )
        )
        return resp.status != 404

    # -- blobs -------------------------------------------------------------------------
    async def blob_head(self, repository: str, digest: str) -> int | None:
        """The blob's size if the repository has it, else None."""
        repository = self.wire(repository)
        resp = await self._send(
            Request(
                "HEAD",
                f"/v2/{repository}/blobs/{digest}",
                repository=repository,
                absent=(404,),
                scopes=(repository_scope(repository, "pull"),),
            )
        )
        if resp.status == 404:
            return None
        return int(resp.headers.get("Content-Length", "0") or 0)

    @asynccontextmanager
    async def blob_get(
        self, repository: str, digest: str, *, size: int = 0, offset: int = 0
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob in chunks of up to ``CHUNK_SIZE``; never holds it whole."""
        repository = self.wire(repository)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        req = Request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            repository=repository,
            headers=headers,
            expect=(206,) if offset else (200,),
            scopes=(repository_scope(repository, "pull"),),
            timeout=_blob_timeout(size),
            attempts=self._attempts,
        )
        async with self.transport.stream(req) as resp:
            yield resp.content.iter_chunked(CHUNK_SIZE)

    def _location(self, resp: Response) -> str:
        loc = resp.headers.get("Location", "")
        if not loc:
            raise ServerError(
                "upload answered without a Location header",
                registry=self.name,
                url=redact_url(resp.url),
                status=resp.status,
            )
        return urljoin(resp.url, loc)

    @property
    def can_mount(self) -> bool:
        """False once the registry refused a cross-repository mount as unsupported."""
        return "mount" not in self.transport.lacks

    async def blob_mount(self, repository: str, digest: str, from_repository: str) -> str | None:
        """Ask the registry to mount a blob from another repository.

        Returns None when mounted (201). When the registry declines it opens an upload
        session instead (202); its location is returned so the upload can use it directly.
        A registry without mounts (zuul-registry answers 404 to the ``mount`` query; the
        distribution spec makes mounting optional) gets a plain upload session, and no
        mount is asked of it again.
        """
        repository = self.wire(repository)
        from_repository = self.wire(from_repository)
        resp = await self._send(
            Request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                repository=repository,
                query=(("mount", digest), ("from", from_repository)),
                headers=_EMPTY_BODY,
                expect=(201, 202),
                absent=(404, 405),
                scopes=(
                    repository_scope(repository, "pull,push"),
                    repository_scope(from_repository, "pull"),
                ),
            )
        )
        if resp.status in (404, 405):
            self.transport.lacks.add("mount")
            return await self.upload_start(repository)
        return None if resp.status == 201 else self._location(resp)

    async def upload_start(self, repository: str) -> str:
        """POST a new upload session; returns its absolute location."""
        repository = self.wire(repository)
        resp = await self._send(
            Request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                repository=repository,
                headers=_EMPTY_BODY,
                expect=(202,),
                scopes=(repository_scope(repository, "pull,push"),),
            )
        )
        return self._location(resp)

    async def upload_put(
        self,
        repository: str,
        location: str,
        digest: str,
        size: int,
        body: BodyFactory | bytes | None = None,
    ) -> None:
        """Finish an upload: a monolithic streamed PUT (or an empty one after PATCHes)."""
        repository = self.wire(repository)
        sep = "&" if "?" in location else "?"
        await self._send(
            Request(
                "PUT",
                f"{location}{sep}digest={digest}",
                repository=repository,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size if body is not None else 0),
                },
                body=body if body is not None else b"",
                expect=(201, 204),
                scopes=(repository_scope(repository, "pull,push"),),
                # A streamed body cannot be replayed: the blob step retries the whole upload.
                retry=body is None or isinstance(body, bytes),
                timeout=_blob_timeout(size),
            )
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
        """Send one chunk at ``offset``; returns the location for the next one.

        ``chunk`` is bytes or a streamed body factory of ``length`` bytes. Never retried
        here: a PATCH that broke part-way may have left bytes in the session, so only the
        copy engine, after asking ``upload_status``, knows where to go on.
        """
        repository = self.wire(repository)
        size = len(chunk) if isinstance(chunk, bytes) else length
        if size is None:
            raise ValueError("a streamed chunk needs its length")
        resp = await self._send(
            Request(
                "PATCH",
                location,
                repository=repository,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + size - 1}",
                    "Content-Length": str(size),
                },
                body=chunk,
                expect=(202,),
                scopes=(repository_scope(repository, "pull,push"),),
                retry=False,
                timeout=_blob_timeout(size),
            )
        )
        return self._location(resp)

    async def upload_status(self, repository: str, location: str) -> tuple[int, str]:
        """How many bytes an upload session holds (``Range: 0-N``), and its location."""
        repository = self.wire(repository)
        resp = await self._send(
            Request(
                "GET",
                location,
                repository=repository,
                expect=(204,),
                scopes=(repository_scope(repository, "pull,push"),),
            )
        )
        rng = resp.headers.get("Range", "")
        m = re.match(r"^(?:bytes=)?0-(\d+)$", rng)
        offset = int(m.group(1)) + 1 if m else 0
        loc = resp.headers.get("Location")
        return offset, urljoin(resp.url, loc) if loc else location

    async def upload_cancel(self, repository: str, location: str) -> None:
        repository = self.wire(repository)
        await self._send(
            Request(
                "DELETE",
                location,
                repository=repository,
                expect=(204, 200),
                absent=(404,),
                scopes=(repository_scope(repository, "pull,push"),),
                retry=False,
            )
        )

    # -- listings ----------------------------------------------------------------------
    async def tags_list(self, repository: str, *, missing_ok: bool = True) -> list[str]:
        """Every tag of a repository.

        A repository that does not exist is an empty list, or with ``missing_ok=False`` a
        ``NotFoundError`` (a source repository a rule names exactly must exist).
        """
        repository = self.wire(repository)
        names = await paginate(
            self,
            f"/v2/{repository}/tags/list",
            "tags",
            repository,
            repository_scope(repository, "pull"),
            missing_ok=missing_ok,
        )
        # Only tag-shaped names (distribution spec, "Pulling manifests"): zuul-registry
        # lists a manifest pushed by digest (an index's child) as a "tag" ``sha256:…``,
        # which is no tag and must not be copied as one.
        return [n for n in names if TAG_RE.match(n)]

    async def catalog(self) -> list[str]:
        """Every repository of the registry, through ``_catalog`` pagination."""
        try:
            return await paginate(
                self, "/v2/_catalog", "repositories", "", "registry:catalog:*", missing_ok=False
            )
        except RegistryError as e:
            # Docker Hub, GHCR, zuul-registry have none: 404 or 405 for the path, or the
            # spec's UNSUPPORTED code, which some send in a 401 (whose words are in the
            # message rather than in ``details``).
            unsupported = any(d.code == "UNSUPPORTED" for d in e.details) or (
                "UNSUPPORTED" in e.message
            )
            if not unsupported and e.status not in (404, 405):
                raise
            raise CatalogUnsupportedError(
                f"registry {self.name!r} does not list its repositories (GET /v2/_catalog "
                f"answered {e.status}{' UNSUPPORTED' if unsupported else ''})",
                status=e.status,
            ) from None

    # -- referrers ---------------------------------------------------------------------
    async def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> Manifest | None:
        """The OCI 1.1 referrers of ``digest`` as one index, or None without the API.

        ``GET /v2/<name>/referrers/<digest>`` (distribution-spec 1.1 "Listing Referrers").
        A registry that implements it must not answer 404, so a 404 (or 400/405/406, or a
        first page that is not an image index) means "no referrers API here" and the
        caller falls back on the referrers tag schema. Pages (``Link``
        ``rel="next"``) are merged into one index. With ``artifact_type`` the filter is
        asked of the server; a server that did not apply it (no ``artifactType`` in
        ``OCI-Filters-Applied``) is filtered here, so the answer is the same either way.
        """
        repository = self.wire(repository)
        path = f"/v2/{repository}/referrers/{digest}"
        query: tuple[tuple[str, str], ...] = (
            (("artifactType", artifact_type),) if artifact_type else ()
        )
        entries: list[object] = []
        pages: list[Manifest] = []
        filtered_here = False
        for page in range(listing.MAX_PAGES):
            resp = await self._send(
                Request(
                    "GET",
                    path,
                    repository=repository,
                    query=query,
                    headers={"Accept": OCI_INDEX},
                    # Only the first page may say "no API"; a later 404 is a broken server.
                    absent=NO_REFERRERS_API if page == 0 else (),
                    scopes=(repository_scope(repository, "pull"),),
                    max_body=MAX_MANIFEST_BYTES,
                )
            )
            if resp.status in NO_REFERRERS_API:
                return None
            where = f"{self.name}/{repository} referrers of {digest}"
            try:
                index = parse_manifest(resp.body, OCI_INDEX, where=where)
            except ManifestInvalidError:
                index = None
            if index is None or not index.is_index:
                if page == 0:
                    # A 200 that is not an image index (an HTML page, a registry UI,
                    # ``{}``): not the API, as go-containerregistry also reads it.
                    return None
                raise ServerError(
                    "referrers answer is not an image index",
                    registry=self.name,
                    repository=repository,
                )
            pages.append(index)
            applied = resp.headers.get("OCI-Filters-Applied", "")
            if artifact_type and "artifacttype" not in applied.lower().replace(" ", ""):
                filtered_here = True
            entries.extend(json.loads(index.raw).get("manifests") or [])
            next_path = listing.next_page(resp)
            if next_path is None:
                break
            # The link carries its own query (the filter, a cursor); ours is dropped.
            path, query = next_path, ()
        else:
            raise ServerError(
                f"referrers listing exceeded {listing.MAX_PAGES} pages",
                registry=self.name,
                repository=repository,
            )
        if len(pages) == 1 and not filtered_here:
            return pages[0]
        if filtered_here:
            entries = [
                e for e in entries if isinstance(e, dict) and e.get("artifactType") == artifact_type
            ]
        raw = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=2
        ).encode()
        return parse_manifest(raw, OCI_INDEX, where=f"{self.name}/{repository} referrers")
