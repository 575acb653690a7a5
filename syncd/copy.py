"""The copy engine: one image (manifest or index) from a source to one or more targets.

Order is the integrity guarantee: blobs first, then index children, then the tagged
manifest, so no tag ever points at something incomplete; a cancelled or failed copy
leaves only unreferenced blobs behind, which the next pass reuses.

Cheap exits come first (regclient's BlobCopy ladder): the tag already has the digest →
nothing; the blob is in the target repository → skip; it is elsewhere in the target
registry → mount; only then is it streamed, read once from the source and teed to every
target that lacks it, with sha256 checked on the way and the last chunk held back until
the digest is proven, so a corrupt blob is never committed.

Blobs above ``chunked_threshold`` go up as PATCH chunks with the last chunk in the
committing PUT. The hash state is kept at every chunk boundary, so an upload that breaks
part-way resumes at the offset the registry reports (re-reading the source with a Range
GET from the nearest checkpoint) and still verifies the whole blob before the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from syncd.errors import (
    ClientRequestError,
    DigestMismatchError,
    ManifestInvalidError,
    NotFoundError,
    OverwriteRefusedError,
    SyncdError,
)
from syncd.manifest import Descriptor, Manifest, Platform, parse_manifest
from syncd.metrics import Metrics
from syncd.registry.client import RegistryClient
from syncd.rules import backup_tag, platform_selected

log = logging.getLogger(__name__)

# Chunks buffered per target while teeing one source stream: bounds memory to
# QUEUE_DEPTH x CHUNK_SIZE per target however large the blob.
QUEUE_DEPTH = 4
# Remembered blob locations and manifests per process (the daemon keeps them across
# passes, which is what makes no-op passes and cross-repository mounts cheap).
MAX_LOCATIONS = 200_000
MAX_MANIFESTS = 8_192
# Blobs above this go up in PATCH chunks, so an upload that breaks part-way resumes where
# the registry says it stopped; smaller ones take the fewest requests (POST + one PUT).
CHUNKED_THRESHOLD = 32 * 1024 * 1024
# 16 MiB: few requests per blob for a busy target, little to redo if a chunk is lost.
UPLOAD_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A repository on a registry."""

    client: RegistryClient
    repository: str

    def __str__(self) -> str:
        return f"{self.client.name}/{self.repository}"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Where one image goes, and the policy for an existing tag there."""

    endpoint: Endpoint
    tag: str | None
    overwrite: bool = True
    backup: str | None = None


@dataclass(slots=True)
class TargetOutcome:
    """What happened at one target."""

    target: str
    repository: str
    action: str  # "up_to_date" | "copied" | "failed"
    digest: str = ""
    error: BaseException | None = None
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class ImageResult:
    """The copy of one source image to all its targets."""

    source: str
    reference: str
    digest: str = ""
    source_digest: str = ""
    manifest: Manifest | None = None
    outcomes: list[TargetOutcome] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or any(o.action == "failed" for o in self.outcomes)

    @property
    def copied(self) -> bool:
        return any(o.action == "copied" for o in self.outcomes)


class _LRU(OrderedDict[Any, Any]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(slots=True)
class _BlobCounts:
    copied: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes: int = 0


def filter_platforms(manifest: Manifest, platforms: Sequence[str]) -> Manifest:
    """A new index keeping only the children of the named platforms.

    Serialised deterministically, so the same source index and filter give the same
    digest on every pass (otherwise every pass would look like a change).
    """
    doc = json.loads(manifest.raw)
    kept = [
        c
        for c, d in zip(doc.get("manifests", []), manifest.children, strict=False)
        if d.platform is None or platform_selected(platforms, d.platform)
    ]
    if not kept:
        raise ManifestInvalidError(
            f"index {manifest.digest} has no child for platforms {', '.join(platforms)}"
        )
    doc["manifests"] = kept
    raw = json.dumps(doc, indent=3, sort_keys=False).encode()
    return parse_manifest(raw, manifest.media_type)


class CopyEngine:
    """Copies images; remembers, per target registry, where blobs already live."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        chunked_threshold: int = CHUNKED_THRESHOLD,
        chunk_size: int = UPLOAD_CHUNK,
    ) -> None:
        self.metrics = metrics
        self.chunked_threshold = chunked_threshold
        self.chunk_size = chunk_size
        # (target registry, digest) -> a repository known to hold it
        self._locations: _LRU = _LRU(MAX_LOCATIONS)
        self._manifests: _LRU = _LRU(MAX_MANIFESTS)
        # (target registry, repository, digest) -> future of the task making it present
        self._inflight: dict[tuple[str, str, str], asyncio.Future[str]] = {}
        # (target registry, digest) -> future of an upload under way somewhere in it
        self._uploading: dict[tuple[str, str], asyncio.Future[str]] = {}

    # -- manifests -----------------------------------------------------------------------
    async def manifest(self, endpoint: Endpoint, digest: str) -> Manifest:
        """A manifest by digest, from the cache (content-addressed, so never stale)."""
        cached = self._manifests.get(digest)
        if cached is not None:
            self._manifests.move_to_end(digest)
            return cached  # type: ignore[no-any-return]
        m = await endpoint.client.manifest_get(endpoint.repository, digest)
        self._manifests.remember(digest, m)
        return m

    async def resolve(
        self, source: Endpoint, reference: str, platforms: Sequence[str] = ()
    ) -> tuple[str, Manifest | None]:
        """The source digest of ``reference`` (one HEAD) and, when known, its manifest."""
        info = await source.client.manifest_head(source.repository, reference)
        if info is None:
            raise NotFoundError(
                f"{reference} not found",
                registry=source.client.name,
                repository=source.repository,
            )
        cached = self._manifests.get(info.digest)
        if platforms and cached is None:
            cached = await self.manifest(source, info.digest)
        return info.digest, cached

    async def desired(self, source: Endpoint, digest: str, platforms: Sequence[str]) -> Manifest:
        """The manifest the targets must end up with (filtered when platforms say so)."""
        m = await self.manifest(source, digest)
        if platforms and m.is_index:
            key = ("filtered", digest, tuple(platforms))
            filtered = self._manifests.get(key)
            if filtered is None:
                filtered = filter_platforms(m, platforms)
                self._manifests.remember(key, filtered)
            return filtered
        if platforms and not m.is_index and m.config is not None:
            platform = await self._image_platform(source, m)
            if platform is not None and not platform_selected(platforms, platform):
                raise ManifestInvalidError(
                    f"image is {platform}, not one of {', '.join(platforms)}"
                )
        return m

    async def _image_platform(self, source: Endpoint, m: Manifest) -> Platform | None:
        assert m.config is not None
        key = ("platform", m.config.digest)
        if key in self._manifests:
            return self._manifests[key]  # type: ignore[no-any-return]
        data = bytearray()
        async with source.client.blob_get(
            source.repository, m.config.digest, size=m.config.size
        ) as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > 4 * 1024 * 1024:
                    return None
        try:
            cfg = json.loads(bytes(data))
            platform = Platform(
                str(cfg["os"]), str(cfg["architecture"]), str(cfg.get("variant", ""))
            )
        except (ValueError, KeyError, TypeError):
            platform = None
        self._manifests.remember(key, platform)
        return platform

    async def children(self, source: Endpoint, m: Manifest) -> list[Manifest]:
        return [await self.manifest(source, c.digest) for c in m.children]

    # -- one image -------------------------------------------------------------------------
    async def copy_image(
        self,
        source: Endpoint,
        reference: str,
        targets: Sequence[TargetSpec],
        *,
        platforms: Sequence[str] = (),
        source_digest: str | None = None,
        dry_run: bool = False,
    ) -> ImageResult:
        """Bring every target to the source's digest for ``reference``.

        Failures are recorded per target in the result; this only raises on cancellation.
        """
        result = ImageResult(source=str(source), reference=reference)
        try:
            if source_digest is None:
                source_digest, _ = await self.resolve(source, reference, platforms)
            result.source_digest = source_digest
            if platforms:
                manifest: Manifest | None = await self.desired(source, source_digest, platforms)
                assert manifest is not None
                result.digest = manifest.digest
            else:
                manifest = self._manifests.get(source_digest)
                result.digest = source_digest
        except SyncdError as e:
            result.error = e
            return result
        result.manifest = manifest

        # Phase 1: where does each target stand? (one HEAD each)
        heads = await asyncio.gather(
            *(self._check_target(spec, result.digest, dry_run) for spec in targets),
            return_exceptions=True,
        )
        todo: list[TargetSpec] = []
        for spec, head in zip(targets, heads, strict=True):
            t = spec.endpoint
            outcome = TargetOutcome(t.client.name, t.repository, "up_to_date", result.digest)
            result.outcomes.append(outcome)
            if isinstance(head, asyncio.CancelledError):
                raise head
            if isinstance(head, BaseException):
                outcome.action, outcome.error = "failed", head
            elif head:
                outcome.action = "copy" if dry_run else "copying"
                todo.append(spec)
        if dry_run or not todo:
            return result
        # Phase 2: everything the manifest references, teed to all targets that lack it.
        start = time.monotonic()
        endpoints = [spec.endpoint for spec in todo]
        counts = {t: _BlobCounts() for t in endpoints}
        failures: dict[Endpoint, BaseException] = {}
        try:
            if result.manifest is None:
                result.manifest = await self.desired(source, result.source_digest, ())
            await self._push_tree(source, endpoints, result.manifest, counts, failures)
        except SyncdError as e:
            for t in endpoints:
                failures.setdefault(t, e)
        # Phase 3: the tagged manifest, last, only where everything arrived.
        m = result.manifest

        async def tag(spec: TargetSpec) -> None:
            assert m is not None
            await self._put_manifest(spec.endpoint, spec.tag or m.digest, m)

        ready = [spec for spec in todo if spec.endpoint not in failures]
        tagged = await asyncio.gather(*(tag(spec) for spec in ready), return_exceptions=True)
        for spec, err in zip(ready, tagged, strict=True):
            if isinstance(err, asyncio.CancelledError):
                raise err
            if isinstance(err, BaseException):
                failures[spec.endpoint] = err
        for outcome, spec in zip(result.outcomes, targets, strict=True):
            if outcome.action != "copying":
                continue
            t = spec.endpoint
            c = counts[t]
            outcome.blobs_copied, outcome.blobs_mounted = c.copied, c.mounted
            outcome.blobs_skipped, outcome.bytes_copied = c.skipped, c.bytes
            outcome.seconds = time.monotonic() - start
            if t in failures:
                outcome.action, outcome.error = "failed", failures[t]
            else:
                outcome.action = "copied"
        return result

    async def _check_target(self, spec: TargetSpec, digest: str, dry_run: bool) -> bool:
        """True if the target needs the image; raises if policy forbids the move."""
        t = spec.endpoint
        current = await t.client.manifest_head(t.repository, spec.tag or digest)
        if current is not None and current.digest == digest:
            return False
        if current is not None and spec.tag:
            if not spec.overwrite:
                raise OverwriteRefusedError(f"{t}:{spec.tag}", current.digest, digest)
            if spec.backup and not dry_run:
                await self._backup(t, spec.tag, spec.backup, current.digest)
        return True

    async def _backup(self, t: Endpoint, tag: str, template: str, digest: str) -> None:
        """Keep the manifest a tag is about to leave under the backup tag."""
        name = backup_tag(template, tag, datetime.now(UTC))
        old = await t.client.manifest_get(t.repository, digest)
        await self._put_manifest(t, name, old)
        log.info(
            "kept %s:%s (%s) as %s before overwriting",
            t,
            tag,
            digest,
            name,
            extra={"target": t.client.name, "repository": t.repository, "event": "backup"},
        )

    async def _put_manifest(self, t: Endpoint, reference: str, m: Manifest) -> None:
        await t.client.manifest_put(t.repository, reference, m.raw, m.media_type)
        if self.metrics:
            self.metrics.manifest_pushes.labels(target=t.client.name, repository=t.repository).inc()

    async def _push_tree(
        self,
        source: Endpoint,
        targets: list[Endpoint],
        m: Manifest,
        counts: dict[Endpoint, _BlobCounts],
        failures: dict[Endpoint, BaseException],
    ) -> None:
        """Make everything ``m`` references present at each target (not ``m`` itself)."""
        if not m.is_index:
            await asyncio.gather(
                *(self.ensure_blob(source, targets, b, counts, failures) for b in m.blobs)
            )
            return
        for child_desc in m.children:
            live = [t for t in targets if t not in failures]
            if not live:
                return
            # A child already in the repository brings its blobs with it.
            heads = await asyncio.gather(
                *(t.client.manifest_head(t.repository, child_desc.digest) for t in live),
                return_exceptions=True,
            )
            lacking = []
            for t, head in zip(live, heads, strict=True):
                if isinstance(head, asyncio.CancelledError):
                    raise head
                if isinstance(head, BaseException):
                    failures.setdefault(t, head)
                elif head is None:
                    lacking.append(t)
            if not lacking:
                continue
            child = await self.manifest(source, child_desc.digest)
            await self._push_tree(source, lacking, child, counts, failures)
            ready = [t for t in lacking if t not in failures]
            puts = await asyncio.gather(
                *(self._put_manifest(t, child.digest, child) for t in ready),
                return_exceptions=True,
            )
            for t, err in zip(ready, puts, strict=True):
                if isinstance(err, asyncio.CancelledError):
                    raise err
                if isinstance(err, BaseException):
                    failures.setdefault(t, err)

    async def missing(
        self, source: Endpoint, t: Endpoint, m: Manifest
    ) -> tuple[list[Descriptor], int]:
        """Read-only: the blobs and child manifests ``t`` lacks for ``m`` (for ``plan``)."""
        if not m.is_index:
            sizes = await asyncio.gather(
                *(t.client.blob_head(t.repository, b.digest) for b in m.blobs)
            )
            return [b for b, size in zip(m.blobs, sizes, strict=True) if size is None], 0
        blobs: dict[str, Descriptor] = {}
        manifests = 0
        for child_desc in m.children:
            if await t.client.manifest_head(t.repository, child_desc.digest) is not None:
                continue
            manifests += 1
            child = await self.manifest(source, child_desc.digest)
            child_blobs, _ = await self.missing(source, t, child)
            blobs.update((b.digest, b) for b in child_blobs)
        return list(blobs.values()), manifests

    # -- blobs ---------------------------------------------------------------------------
    async def ensure_blob(
        self,
        source: Endpoint,
        targets: Sequence[Endpoint],
        blob: Descriptor,
        counts: dict[Endpoint, _BlobCounts],
        failures: dict[Endpoint, BaseException],
    ) -> None:
        """Make ``blob`` present in every live target repository, transferring it once.

        Concurrent callers for the same (target registry, repository, digest) share one
        task (single-flight); a failed task is forgotten so a later caller tries again.
        Per-target errors land in ``failures``; one target's failure never stops another.
        """
        waits: list[tuple[Endpoint, asyncio.Future[str]]] = []
        mine: list[tuple[Endpoint, asyncio.Future[str]]] = []
        for t in targets:
            if t in failures:
                continue
            key = (t.client.name, t.repository, blob.digest)
            fut = self._inflight.get(key)
            if fut is not None:
                waits.append((t, fut))
                continue
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            mine.append((t, fut))
        try:
            prepared = await asyncio.gather(
                *(self._prepare(t, blob, counts[t]) for t, _ in mine), return_exceptions=True
            )
            uploads: list[tuple[Endpoint, str, asyncio.Future[str]]] = []
            for (t, fut), prep in zip(mine, prepared, strict=True):
                if isinstance(prep, asyncio.CancelledError):
                    raise prep
                if isinstance(prep, BaseException):
                    fut.set_exception(prep)
                elif prep is None:
                    fut.set_result("present")
                else:
                    uploads.append((t, prep, fut))
            if uploads:
                await self._upload(source, blob, uploads, counts)
        finally:
            for t, fut in mine:
                self._inflight.pop((t.client.name, t.repository, blob.digest), None)
                if not fut.done():
                    fut.cancel()
        for t, fut in mine:
            if not fut.cancelled() and fut.exception() is not None:
                failures.setdefault(t, fut.exception())  # type: ignore[arg-type]
        for t, fut in waits:
            try:
                await asyncio.shield(fut)
            except SyncdError as e:
                failures.setdefault(t, e)

    def _remember(self, t: Endpoint, digest: str) -> None:
        self._locations.remember((t.client.name, digest), t.repository)

    async def _prepare(self, t: Endpoint, blob: Descriptor, counts: _BlobCounts) -> str | None:
        """None if the blob is (now) in ``t``; else an upload location to stream it to."""
        if await t.client.blob_head(t.repository, blob.digest) is not None:
            self._remember(t, blob.digest)
            counts.skipped += 1
            if self.metrics:
                self.metrics.blobs_skipped.labels(target=t.client.name).inc()
            return None
        reg_key = (t.client.name, blob.digest)
        pending = self._uploading.get(reg_key)
        if pending is not None:
            # Another repository of this registry is receiving it now: wait, then mount.
            with contextlib.suppress(SyncdError, asyncio.CancelledError):
                await asyncio.shield(pending)
        location: str | None = None
        known = self._locations.get(reg_key)
        if known and known != t.repository:
            location = await t.client.blob_mount(t.repository, blob.digest, known)
            if location is None:
                self._remember(t, blob.digest)
                counts.mounted += 1
                if self.metrics:
                    self.metrics.blobs_mounted.labels(target=t.client.name).inc()
                return None
            # Declined (the source repository lost it, or no pull right there): forget it.
            self._locations.pop(reg_key, None)
        if location is None:
            location = await t.client.upload_start(t.repository)
        return location

    async def _upload(
        self,
        source: Endpoint,
        blob: Descriptor,
        uploads: list[tuple[Endpoint, str, asyncio.Future[str]]],
        counts: dict[Endpoint, _BlobCounts],
    ) -> None:
        """Stream one source read to every upload, then resume or redo the failed ones.

        A chunked upload that broke is resumed from the offset the registry reports
        (re-reading the source from the nearest hash checkpoint); one the registry will not
        resume, and every monolithic one, starts a fresh session. Attempts are bounded:
        ``retries`` failures in a row that gained no new acknowledged bytes end it.
        """
        registry_futs: list[tuple[str, str]] = []
        for t, _, _ in uploads:
            reg_key = (t.client.name, blob.digest)
            if reg_key not in self._uploading:
                self._uploading[reg_key] = asyncio.get_running_loop().create_future()
                registry_futs.append(reg_key)
        try:
            chunked = blob.size > self.chunked_threshold
            sessions = [_Session(t, loc, fut, chunked) for t, loc, fut in uploads]
            # offset -> hash state of the blob's first ``offset`` bytes, at chunk boundaries:
            # what lets a resumed upload still verify the WHOLE blob.
            checkpoints: dict[int, Any] = {}
            if chunked:
                checkpoints[0] = hashlib.new(blob.digest.partition(":")[0])
            attempts = max(1, source.client.attempts)
            # Each batch is one source read: (sessions, offset the registry already holds).
            batches: list[tuple[list[_Session], int]] = [(sessions, 0)]
            while batches:
                failed: list[tuple[_Session, BaseException]] = []
                for group, resume_at in batches:
                    errors = await self._tee(
                        source, blob, group, resume_at=resume_at, checkpoints=checkpoints
                    )
                    for s, err in zip(group, errors, strict=True):
                        if err is None:
                            self._copied(s.endpoint, blob, counts)
                            s.future.set_result("copied")
                        else:
                            failed.append((s, err))
                retry: list[_Session] = []
                for s, err in failed:
                    if s.acked > s.best:
                        s.best = s.acked  # new bytes acknowledged: the budget starts over
                        s.failures = 0
                    s.failures += 1
                    if isinstance(err, SyncdError) and err.retryable and s.failures < attempts:
                        retry.append(s)
                    else:
                        s.future.set_exception(err)
                        await self._abandon(s)
                if not retry:
                    return
                log.warning(
                    "blob %s: upload to %d target(s) failed (%s), retrying",
                    blob.digest,
                    len(retry),
                    "; ".join(str(err) for _, err in failed)[:300],
                    extra={"event": "retry", "digest": blob.digest},
                )
                for s in retry:
                    if source.client.transport.metrics:
                        source.client.transport.metrics.retries.labels(
                            registry=s.endpoint.client.name
                        ).inc()
                worst = max(s.failures for s in retry)
                await asyncio.sleep(min(10.0, 0.25 * 2 ** (worst - 1)))
                batches = []
                fresh: list[_Session] = []
                for s in retry:
                    at = await self._resume_point(s, blob)
                    if at is not None:
                        batches.append(([s], at))
                        continue
                    try:
                        s.location = await s.endpoint.client.upload_start(s.endpoint.repository)
                    except SyncdError as e:
                        s.future.set_exception(e)
                        continue
                    s.acked = 0
                    fresh.append(s)
                if fresh:
                    # Targets starting over still share one source read.
                    batches.append((fresh, 0))
        finally:
            for reg_key in registry_futs:
                fut = self._uploading.pop(reg_key)
                fut.set_result("done")

    async def _abandon(self, s: _Session) -> None:
        """Best effort: tell the registry to drop a session we give up on (its partial
        bytes would otherwise wait for the registry's upload purging)."""
        with contextlib.suppress(SyncdError):
            await s.endpoint.client.upload_cancel(s.endpoint.repository, s.location)

    def _copied(self, t: Endpoint, blob: Descriptor, counts: dict[Endpoint, _BlobCounts]) -> None:
        self._remember(t, blob.digest)
        counts[t].copied += 1
        counts[t].bytes += blob.size
        if self.metrics:
            self.metrics.blobs_copied.labels(target=t.client.name).inc()
            self.metrics.blob_bytes_copied.labels(target=t.client.name).inc(blob.size)

    async def _resume_point(self, s: _Session, blob: Descriptor) -> int | None:
        """The offset to resume ``s`` at, or None to start a fresh session.

        Asks the registry (``GET`` on the upload URL, ``Range: 0-N``). CNCF distribution
        2.8 refuses, and cancels, a session whose stored size no longer matches the offset
        signed into its upload URL, which is what a break in the middle of a PATCH body
        leaves behind (it keeps the partial bytes); then only a fresh session works. A
        break before any body byte arrived (a dropped keep-alive connection, a registry
        restarted between chunks) resumes.
        """
        t = s.endpoint
        if not s.chunked or s.acked == 0:
            return None
        try:
            offset, location = await t.client.upload_status(t.repository, s.location)
        except SyncdError as e:
            log.info(
                "blob %s: %s cannot resume its upload (%s); starting afresh",
                blob.digest,
                t,
                e,
                extra={"event": "upload_restart", "digest": blob.digest},
            )
            return None
        # "0-0" means both 0 and 1 byte in distribution's answer; neither is worth resuming.
        if not 1 < offset <= blob.size:
            with contextlib.suppress(SyncdError):
                await t.client.upload_cancel(t.repository, location)
            return None
        s.location = location
        s.acked = offset
        log.info(
            "blob %s: resuming upload to %s at byte %d of %d",
            blob.digest,
            t,
            offset,
            blob.size,
            extra={"event": "upload_resume", "digest": blob.digest},
        )
        return offset

    def _pieces(self, chunk: bytes, offset: int, chunked: bool) -> list[bytes]:
        """``chunk`` (starting at ``offset``) split so no piece crosses a chunk boundary."""
        if not chunked:
            return [chunk]
        out = []
        size = self.chunk_size
        while chunk:
            room = size - offset % size
            out.append(chunk[:room])
            chunk = chunk[room:]
            offset += room
        return out

    async def _tee(
        self,
        source: Endpoint,
        blob: Descriptor,
        sessions: Sequence[_Session],
        *,
        resume_at: int = 0,
        checkpoints: dict[int, Any],
    ) -> list[BaseException | None]:
        """One GET from the source, streamed to every session at once.

        With ``resume_at`` the registry already holds that many bytes: the source is read
        from the nearest checkpoint before it, those bytes are hashed but not sent. Returns
        one error (or None) per session. A source failure fails all of them.
        """
        chunked = sessions[0].chunked
        start = max(k for k in checkpoints if k <= resume_at) if resume_at else 0
        queues: list[asyncio.Queue[bytes | BaseException | None]] = [
            asyncio.Queue(QUEUE_DEPTH) for _ in sessions
        ]
        dead = [False] * len(sessions)

        async def put_all(item: bytes | BaseException | None) -> None:
            for i, q in enumerate(queues):
                if not dead[i]:
                    await q.put(item)

        async def produce() -> None:
            try:
                try:
                    await read(start)
                except ClientRequestError as e:
                    # A source that ignores Range answers 200 (or 416): nothing has been
                    # forwarded yet, so hash from byte 0 instead and still skip what the
                    # target holds.
                    if not start or e.status not in (200, 416):
                        raise
                    await read(0)
            except BaseException as e:
                for q in queues:
                    _force_put(q, e)
                raise

        async def read(begin_at: int) -> None:
            algorithm = blob.digest.partition(":")[0]
            h = checkpoints[begin_at].copy() if begin_at else hashlib.new(algorithm)
            offset = begin_at
            held: bytes | None = None
            async with source.client.blob_get(
                source.repository, blob.digest, size=blob.size, offset=begin_at
            ) as chunks:
                async for chunk in chunks:
                    for piece in self._pieces(chunk, offset, chunked):
                        h.update(piece)
                        begin, offset = offset, offset + len(piece)
                        if chunked and offset % self.chunk_size == 0:
                            checkpoints.setdefault(offset, h.copy())
                        if offset <= resume_at:
                            continue  # the registry has these bytes already
                        if begin < resume_at:
                            piece = piece[resume_at - begin :]
                        if held is not None:
                            await put_all(held)
                        held = piece
            actual = f"{algorithm}:{h.hexdigest()}"
            if actual != blob.digest or offset != blob.size:
                raise DigestMismatchError(
                    f"{source}@{blob.digest}",
                    f"{blob.digest} ({blob.size} bytes)",
                    f"{actual} ({offset} bytes)",
                )
            # Only now, with the digest proven, may the last bytes go out: the
            # target cannot commit an upload it has not received in full.
            if held is not None:
                await put_all(held)
            await put_all(None)

        async def consume(i: int) -> None:
            s = sessions[i]
            t = s.endpoint
            pieces = _Pieces(queues[i])
            try:
                if s.chunked:
                    await self._send_chunks(s, blob, pieces, resume_at)
                else:
                    await t.client.upload_put(
                        t.repository,
                        s.location,
                        blob.digest,
                        blob.size,
                        pieces.body(blob.size),
                    )
            except BaseException:
                dead[i] = True
                _drain(queues[i])
                raise

        results = await asyncio.gather(
            produce(), *(consume(i) for i in range(len(sessions))), return_exceptions=True
        )
        source_error = results[0]
        out: list[BaseException | None] = []
        for r in results[1:]:
            if isinstance(source_error, BaseException):
                out.append(source_error)
            elif isinstance(r, BaseException):
                out.append(r)
            else:
                out.append(None)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
        return out

    async def _send_chunks(
        self, s: _Session, blob: Descriptor, pieces: _Pieces, offset: int
    ) -> None:
        """PATCH chunk after chunk from ``offset``; the last chunk rides in the committing PUT.

        ``s.acked`` advances only when the registry answers a PATCH, so after a failure it
        is the last offset the registry is known to hold.
        """
        t = s.endpoint
        while True:
            boundary = (offset // self.chunk_size + 1) * self.chunk_size
            if boundary >= blob.size:
                n = blob.size - offset
                if n == 0:
                    await pieces.end()  # the digest is proven before the commit
                await t.client.upload_put(
                    t.repository,
                    s.location,
                    blob.digest,
                    n,
                    pieces.body(n) if n else None,
                )
                return
            n = boundary - offset
            s.location = await t.client.upload_patch(
                t.repository, s.location, offset, pieces.body(n), length=n
            )
            offset = boundary
            s.acked = offset


@dataclass(slots=True, eq=False)
class _Session:
    """One target's upload of one blob: where it is and what the registry acknowledged."""

    endpoint: Endpoint
    location: str
    future: asyncio.Future[str]
    chunked: bool
    acked: int = 0  # end of the last PATCH the registry answered
    best: int = 0  # the most ever acknowledged, so only real progress resets ``failures``
    failures: int = 0  # failed attempts since the last progress


class _Pieces:
    """A consumer's view of its queue: exactly ``n`` bytes at a time, or an error."""

    def __init__(self, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        self._queue = queue

    async def take(self, n: int) -> AsyncIterator[bytes]:
        left = n
        while left > 0:
            item = await self._queue.get()
            if item is None or isinstance(item, BaseException) or len(item) > left:
                raise _SourceFailed()
            left -= len(item)
            yield item

    def body(self, n: int) -> Callable[[], AsyncIterator[bytes]]:
        """A request body factory for the next ``n`` bytes (used once: not replayable)."""
        return lambda: self.take(n)

    async def end(self) -> None:
        if await self._queue.get() is not None:
            raise _SourceFailed()


class _SourceFailed(Exception):
    """Raised inside an upload body when the source stream failed; aborts that request."""


def _drain(q: asyncio.Queue[Any]) -> None:
    while not q.empty():
        q.get_nowait()


def _force_put(q: asyncio.Queue[Any], item: Any) -> None:
    _drain(q)
    q.put_nowait(item)
