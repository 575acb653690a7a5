"""Blob transfers to target registries: skip, mount, or stream once to every target.

The ladder for one blob at one target repository: present (HEAD) → skip; known to live in
another repository of the same registry → mount; otherwise upload. Uploads of one blob to
several targets share one source read, teed chunk by chunk, with sha256 checked on the way
and the last bytes held back until the digest is proven, so a corrupt blob is never
committed. Concurrent requests for the same blob at the same place share one task.

Blobs above ``chunked_threshold`` go up as PATCH chunks with the last chunk in the
committing PUT. The hash state is kept at every chunk boundary, so an upload that breaks
part-way resumes at the offset the registry reports (re-reading the source with a Range
GET from the nearest checkpoint) and still verifies the whole blob before the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from syncd.blobs_session import (
    BlobCounts,
    Pieces,
    UploadSession,
    drain,
    force_put,
    transfer_needs,
)
from syncd.endpoint import Endpoint, registry_of
from syncd.errors import (
    AuthError,
    ClientRequestError,
    DigestMismatchError,
    SyncdError,
)
from syncd.lru import LRU
from syncd.manifest import Descriptor
from syncd.registry.slots import TransferSlots
from syncd.singleflight import Flight, SingleFlight
from syncd.state import MemoryStore, StateStore

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

# Chunks buffered per target while teeing one source stream: bounds memory to
# QUEUE_DEPTH x CHUNK_SIZE per target however large the blob.
QUEUE_DEPTH = 4
# Blobs remembered as seen per target repository (``PRESENT_TTL``).
MAX_LOCATIONS = 200_000
# How long a blob this process saw in a target repository is taken as still there without
# another HEAD: long enough to cover a pass (images of one repository share layers), short
# enough that a registry garbage collection is noticed on a later pass.
PRESENT_TTL = 600.0
# Blobs above this go up in PATCH chunks, so an upload that breaks part-way resumes where
# the registry says it stopped; smaller ones take the fewest requests (POST + one PUT).
CHUNKED_THRESHOLD = 32 * 1024 * 1024
# 16 MiB: few requests per blob for a busy target, little to redo if a chunk is lost.
UPLOAD_CHUNK = 16 * 1024 * 1024


class BlobLocator(Protocol):
    """Finds another repository of a target's registry that holds a blob, if it can."""

    async def locate(self, t: Endpoint, digest: str) -> str | None: ...


class BlobMover:
    """Makes blobs present at targets; records, per target registry, where they live (in
    the state store, so a later process mounts what an earlier one stored)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        chunked_threshold: int = CHUNKED_THRESHOLD,
        chunk_size: int = UPLOAD_CHUNK,
        store: StateStore | None = None,
        locator: BlobLocator | None = None,
    ) -> None:
        self.metrics = metrics
        self.chunked_threshold = chunked_threshold
        self.chunk_size = chunk_size
        # Where blobs live in each target registry (kept by registry address, syncd.state)
        self.store: StateStore = store if store is not None else MemoryStore()
        # (target registry, repository, digest) -> when this process last saw it there
        self._present: LRU = LRU(MAX_LOCATIONS)
        # (target registry, repository, digest): the work making it present there
        self._inflight: SingleFlight[tuple[str, str, str], str] = SingleFlight()
        # (target registry, digest): an upload under way somewhere in that registry
        self._uploading: SingleFlight[tuple[str, str], None] = SingleFlight()
        # Source and target connections of a tee, taken together (see registry/slots.py).
        self.slots = TransferSlots()
        # Asked, when a blob is missing from a repository and nothing is known of it, for
        # another repository of that registry that has it (the copy engine's TargetFacts
        # looks through images it found up to date there).
        self.locator = locator

    async def ensure_blob(
        self,
        source: Endpoint,
        targets: Sequence[Endpoint],
        blob: Descriptor,
        counts: dict[Endpoint, BlobCounts],
        failures: dict[Endpoint, BaseException],
    ) -> None:
        """Make ``blob`` present in every live target repository, transferring it once.

        Concurrent callers for the same (target registry, repository, digest) share one
        task (single-flight); a failed task is forgotten so a later caller tries again.
        Per-target errors land in ``failures``; one target's failure never stops another.
        """
        waits: list[tuple[Endpoint, Flight[str]]] = []
        mine: list[tuple[Endpoint, asyncio.Future[str]]] = []
        for t in targets:
            if t in failures:
                continue
            key = (t.client.name, t.repository, blob.digest)
            flight = self._inflight.claim(key)
            if flight is not None:
                waits.append((t, flight))
                continue
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            # Waiters get this target's outcome when it is known, not when the batch ends.
            fut.add_done_callback(functools.partial(self._landed, key))
            mine.append((t, fut))
        # Claim each target registry for this blob before the first await: a concurrent
        # copy of the same blob into another repository of that registry then waits and
        # mounts instead of uploading it again. All claims are taken in one step, so two
        # copies spanning the same registries can never wait on each other.
        claims: list[tuple[str, str]] = []
        pending: dict[Endpoint, Flight[None]] = {}
        for t, _ in mine:
            reg_key = (t.client.name, blob.digest)
            if reg_key in claims:
                continue
            other = self._uploading.claim(reg_key)
            if other is None:
                claims.append(reg_key)
            else:
                pending[t] = other
        try:
            prepared = await asyncio.gather(
                *(self._prepare(source, t, blob, counts[t], pending.get(t)) for t, _ in mine),
                return_exceptions=True,
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
            for reg_key in claims:
                self._uploading.land(reg_key)
            for _, fut in mine:
                if not fut.done():
                    fut.cancel()
        for t, fut in mine:
            if not fut.cancelled() and fut.exception() is not None:
                failures.setdefault(t, fut.exception())  # type: ignore[arg-type]
        for t, flight in waits:
            err = (await SingleFlight.join(flight)).error
            if isinstance(err, SyncdError):
                failures.setdefault(t, err)
            elif err is not None:
                raise err

    def _landed(self, key: tuple[str, str, str], fut: asyncio.Future[str]) -> None:
        """One target's part of a flight ended: share how, and free its key."""
        if fut.cancelled():
            self._inflight.land(key, error=asyncio.CancelledError())
        elif (err := fut.exception()) is not None:
            self._inflight.land(key, error=err)
        else:
            self._inflight.land(key, fut.result())

    def _remember(self, t: Endpoint, digest: str) -> None:
        self.store.blob_put(registry_of(t), digest, t.repository)
        self._present.remember((t.client.name, t.repository, digest), time.monotonic())

    def forget_repository(self, t: Endpoint) -> None:
        """Stop trusting what was seen in ``t`` (a manifest PUT there failed: maybe a GC)."""
        for key in [k for k in self._present if k[0] == t.client.name and k[1] == t.repository]:
            del self._present[key]
        self.store.repository_forget(registry_of(t), t.repository)

    def forget_registry(self, name: str) -> None:
        """Forget every location and presence learned at registry ``name``."""
        for key in [k for k in self._present if k[0] == name]:
            del self._present[key]

    def _seen(self, t: Endpoint, digest: str) -> bool:
        at = self._present.get((t.client.name, t.repository, digest))
        return at is not None and time.monotonic() - at < PRESENT_TTL

    async def _prepare(
        self,
        source: Endpoint,
        t: Endpoint,
        blob: Descriptor,
        counts: BlobCounts,
        pending: Flight[None] | None,
    ) -> str | None:
        """None if the blob is (now) in ``t``; else an upload location to stream it to."""
        if self._seen(t, blob.digest):
            self._skipped(t, blob, counts)
            return None
        if t.client.origin == source.client.origin and t.repository != source.repository:
            # Promotion inside one registry: the source repository has every blob, so a
            # mount links it without a byte read or written (distribution-spec "Mounting
            # a blob from another repository"). A mount answers 201 also when the target
            # already had it; a declined one (202) opens the session the upload needs.
            return await self._mount(t, blob, counts, source.repository)
        if pending is not None:
            # Another repository of this registry is receiving it now: wait, then mount.
            with contextlib.suppress(asyncio.CancelledError):
                await SingleFlight.join(pending)
        location: str | None = None
        known = self.store.blob_where(registry_of(t), blob.digest)
        if known and known != t.repository and t.client.can_mount:
            # A mount answers 201 whether it links the blob or the repository already had
            # it, so it stands in for the HEAD: one request instead of two.
            location = await self._mount(t, blob, counts, known)
            if location is None:
                return None
        if await t.client.blob_head(t.repository, blob.digest) is not None:
            if location is not None:
                with contextlib.suppress(SyncdError):
                    await t.client.upload_cancel(t.repository, location)
            self._skipped(t, blob, counts)
            return None
        if location is None and self.locator is not None and t.client.can_mount:
            # Missing here, and this process has not seen it in another repository of the
            # registry: one that holds an image found up to date may have it (a base layer
            # shared across repositories, in a fresh `once`). A declined mount opens the
            # upload session the blob needs anyway, so a wrong guess costs no request.
            elsewhere = await self.locator.locate(t, blob.digest)
            if elsewhere and elsewhere != t.repository:
                location = await self._mount(t, blob, counts, elsewhere)
                if location is None:
                    return None
        if location is None:
            location = await t.client.upload_start(t.repository)
        return location

    async def _mount(
        self, t: Endpoint, blob: Descriptor, counts: BlobCounts, from_repository: str
    ) -> str | None:
        """None once mounted; else the upload session the registry opened instead."""
        try:
            location = await t.client.blob_mount(t.repository, blob.digest, from_repository)
        except AuthError as e:
            # The target's credentials may push here but not pull from the other
            # repository (a token registry then refuses the mount outright instead of
            # answering 202): upload instead, as a declined mount would.
            log.info(
                "%s: mount of %s from %s refused (%s); uploading",
                t,
                blob.digest,
                from_repository,
                e,
                extra={"event": "mount_refused", "digest": blob.digest},
            )
            self.store.blob_delete(registry_of(t), blob.digest)
            return await t.client.upload_start(t.repository)
        if location is None:
            self._remember(t, blob.digest)
            counts.mounted += 1
            if self.metrics:
                self.metrics.blobs_mounted.labels(target=t.client.name).inc()
            return None
        # Declined (the other repository lost it, or no pull right there): forget it.
        self.store.blob_delete(registry_of(t), blob.digest)
        return location

    def _skipped(self, t: Endpoint, blob: Descriptor, counts: BlobCounts) -> None:
        self._remember(t, blob.digest)
        counts.skipped += 1
        if self.metrics:
            self.metrics.blobs_skipped.labels(target=t.client.name).inc()

    async def _upload(
        self,
        source: Endpoint,
        blob: Descriptor,
        uploads: list[tuple[Endpoint, str, asyncio.Future[str]]],
        counts: dict[Endpoint, BlobCounts],
    ) -> None:
        """Stream one source read to every upload, then resume or redo the failed ones.

        A chunked upload that broke is resumed from the offset the registry reports
        (re-reading the source from the nearest hash checkpoint); one the registry will not
        resume, and every monolithic one, starts a fresh session. Attempts are bounded:
        ``retries`` failures in a row that gained no new acknowledged bytes end it.
        """
        chunked = blob.size > self.chunked_threshold
        sessions = [UploadSession(t, loc, fut, chunked) for t, loc, fut in uploads]
        # offset -> hash state of the blob's first ``offset`` bytes, at chunk boundaries:
        # what lets a resumed upload still verify the WHOLE blob.
        checkpoints: dict[int, Any] = {}
        if chunked:
            checkpoints[0] = hashlib.new(blob.digest.partition(":")[0])
        attempts = max(1, source.client.attempts)
        # Each batch is one source read: (sessions, offset the registry already holds).
        batches: list[tuple[list[UploadSession], int]] = [(sessions, 0)]
        while batches:
            failed: list[tuple[UploadSession, BaseException]] = []
            for group, resume_at in batches:
                async with self.slots.take(transfer_needs(source, group)):
                    errors = await self._tee(
                        source, blob, group, resume_at=resume_at, checkpoints=checkpoints
                    )
                for s, err in zip(group, errors, strict=True):
                    if err is None:
                        self._copied(s.endpoint, blob, counts)
                        s.future.set_result("copied")
                    else:
                        failed.append((s, err))
            retry: list[UploadSession] = []
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
                if self.metrics:
                    self.metrics.retries.labels(registry=s.endpoint.client.name).inc()
            worst = max(s.failures for s in retry)
            await asyncio.sleep(min(10.0, 0.25 * 2 ** (worst - 1)))
            batches = []
            fresh: list[UploadSession] = []
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

    async def _abandon(self, s: UploadSession) -> None:
        """Best effort: tell the registry to drop a session we give up on (its partial
        bytes would otherwise wait for the registry's upload purging)."""
        with contextlib.suppress(SyncdError):
            await s.endpoint.client.upload_cancel(s.endpoint.repository, s.location)

    def _copied(self, t: Endpoint, blob: Descriptor, counts: dict[Endpoint, BlobCounts]) -> None:
        self._remember(t, blob.digest)
        counts[t].copied += 1
        counts[t].bytes += blob.size
        if self.metrics:
            self.metrics.blobs_copied.labels(target=t.client.name).inc()
            self.metrics.blob_bytes_copied.labels(target=t.client.name).inc(blob.size)

    async def _resume_point(self, s: UploadSession, blob: Descriptor) -> int | None:
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
        sessions: Sequence[UploadSession],
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
                    force_put(q, e)
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
            pieces = Pieces(queues[i])
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
                drain(queues[i])
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
        self, s: UploadSession, blob: Descriptor, pieces: Pieces, offset: int
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
