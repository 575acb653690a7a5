"""The copy engine: one image (manifest or index) from a source to one or more targets.

Order is the integrity guarantee: blobs first, then index children, then the tagged
manifest, so no tag ever points at something incomplete; a cancelled or failed copy
leaves only unreferenced blobs behind, which the next pass reuses.

Cheap exits come first (regclient's BlobCopy ladder): the tag already has the digest →
nothing; the blob is in the target repository → skip; it is elsewhere in the target
registry → mount; only then is it streamed, read once from the source and teed to every
target that lacks it, with sha256 checked on the way and the last chunk held back until
the digest is proven, so a corrupt blob is never committed.

The blob part of that ladder, and resumable uploads, live in ``syncd.blobs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from syncd.blobs import BlobMover
from syncd.blobs_session import BlobCounts
from syncd.copy_flight import Lookahead, TargetClaims, gather_all
from syncd.copy_result import ImageResult, TargetOutcome, TargetSpec
from syncd.endpoint import Endpoint
from syncd.errors import (
    FencedError,
    NotFoundError,
    OverwriteRefusedError,
    ServerError,
    SyncdError,
)
from syncd.facts import TargetFacts
from syncd.lru import LRU
from syncd.manifest import Manifest
from syncd.platforms import PlatformFilter
from syncd.rules import backup_tag
from syncd.singleflight import SingleFlight
from syncd.state import MemoryStore, StateStore

if TYPE_CHECKING:
    from syncd.metrics import Metrics


log = logging.getLogger(__name__)

# Manifests remembered per process: content-addressed, so never stale; the daemon keeps
# them across passes, which is what makes no-op passes cheap.
MAX_MANIFESTS = 8_192


class CopyEngine:
    """Copies images in integrity order; caches manifests by digest across passes and
    keeps what it learns about targets in the state store (``syncd.facts``)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        blobs: BlobMover | None = None,
        store: StateStore | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.metrics = metrics
        # Asked right before every manifest PUT (the step that makes a tag visible): false
        # once this replica lost its cluster lease (syncd/ownership.py).
        self.fence = fence
        self.store: StateStore = blobs.store if blobs is not None else store or MemoryStore()
        self._manifests: LRU = LRU(MAX_MANIFESTS)
        self._fetching: SingleFlight[str, Manifest] = SingleFlight()
        # What a rule's ``platforms`` make of a source image (cached with the manifests).
        self.platforms = PlatformFilter(self.manifest, self._manifests)
        # (target registry, repository, tag, digest): the copy of a tag under way
        self._tag_copies = TargetClaims()
        # (target registry, repository, child digest): the push of an index child under way
        self._child_pushes = TargetClaims()
        # (target origin, repository, manifest digest): a manifest PUT under way that
        # writes or reads that digest's link in the repository (see ``put_manifest``).
        self._writes: SingleFlight[tuple[str, str, str], None] = SingleFlight()
        # Trusted target tags (``target_recheck``), images found complete at a target and
        # where else a blob may be there: kept in the state store.
        self.facts = TargetFacts(self.store, self.manifest, self.children)
        # A mover handed in brings its own locator (or none).
        self.blobs = blobs or BlobMover(metrics, store=self.store, locator=self.facts)

    def forget_registry(self, name: str) -> None:
        """Drop what was learned about registry ``name`` (a reload changed or removed it);
        manifests are content-addressed and stay."""
        self.blobs.forget_registry(name)
        self.facts.forget_registry(name)

    # -- manifests -----------------------------------------------------------------------
    async def manifest(self, endpoint: Endpoint, digest: str) -> Manifest:
        """A manifest by digest, from the cache (content-addressed, so never stale)."""
        cached = self._manifests.get(digest)
        if cached is not None:
            self._manifests.move_to_end(digest)
            return cached  # type: ignore[no-any-return]
        # Tags that share a manifest (``latest`` and the newest version) are resolved at
        # the same moment; one GET serves them all. A failed GET is not shared: it may be
        # this repository's problem only, so each waiter then tries for itself.
        flight = self._fetching.claim(digest)
        if flight is not None:
            shared = (await SingleFlight.join(flight)).value
            if shared is not None:
                return shared
            return await self.manifest(endpoint, digest)
        m: Manifest | None = None
        try:
            m = await endpoint.client.manifest_get(endpoint.repository, digest)
            self._manifests.remember(digest, m)
        finally:
            self._fetching.land(digest, m)
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

    async def children(self, source: Endpoint, m: Manifest) -> list[Manifest]:
        # Fetched side by side: an index's children are otherwise one round trip each.
        return await gather_all([self.manifest(source, c.digest) for c in m.children])

    # -- one image -------------------------------------------------------------------------
    def look_ahead(self, specs: Sequence[TargetSpec]) -> Lookahead:
        """Start the HEAD of each target tag now, alongside the source's HEAD.

        Whether a target is up to date needs both answers, but neither request needs the
        other's: sent together, a tag already in place costs one round trip, not two.
        """
        return Lookahead(
            {
                spec.endpoint: asyncio.ensure_future(
                    spec.endpoint.client.manifest_head(spec.endpoint.repository, spec.tag)
                )
                for spec in specs
                if spec.tag and self.facts.trusted(spec) is None
            }
        )

    async def copy_image(
        self,
        source: Endpoint,
        reference: str,
        targets: Sequence[TargetSpec],
        *,
        platforms: Sequence[str] = (),
        source_digest: str | None = None,
        dry_run: bool = False,
        looked: Lookahead | None = None,
        artifact: bool = False,
        gate: asyncio.Semaphore | None = None,
    ) -> ImageResult:
        """Bring every target to the source's digest for ``reference``.

        Failures are recorded per target in the result; this only raises on cancellation.
        ``artifact``: a referrer (signature, SBOM), not an image whose layers other
        repositories may share (see ``TargetFacts.locate``). ``gate``: held while the image
        is copied (phases 2 and 3), not while its targets are checked.
        """
        result = ImageResult(source=str(source), reference=reference)
        try:
            if source_digest is None:
                source_digest, _ = await self.resolve(source, reference, platforms)
            result.source_digest = source_digest
            if platforms:
                manifest: Manifest | None = await self.platforms.desired(
                    source, source_digest, platforms
                )
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
        heads: list[bool | BaseException]
        if len(targets) == 1:
            # Most rules have one target: no task and gather for it (every tag, every pass).
            try:
                heads = [await self._check_target(targets[0], result.digest, dry_run, looked)]
            except Exception as e:
                heads = [e]
        else:
            heads = await asyncio.gather(
                *(self._check_target(spec, result.digest, dry_run, looked) for spec in targets),
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
            elif not artifact and not dry_run:
                self.facts.image_present(t, result.digest)
        if dry_run or not todo:
            return result
        # One copy of a tag at a time per target: a rule running alongside another that
        # covers the same repository waits for that copy instead of pushing it again.
        claimed, joined = self._tag_copies.split(
            (
                (
                    # By origin, not name: two names (or a reloaded config's and the old
                    # one's) for one registry are still one tag.
                    s.endpoint.client.origin,
                    s.endpoint.repository,
                    s.tag or result.digest,
                    result.digest,
                ),
                s.endpoint,
                s,
            )
            for s in todo
        )
        failures: dict[Endpoint, BaseException] = {}
        with self._tag_copies.owning(
            claimed, failures, "another copy of this tag to this target was interrupted"
        ):
            async with gate or nullcontext():
                counts, seconds = await self._copy_to(
                    source, result, [spec for _, _, spec in claimed], failures
                )
        await TargetClaims.join(joined, failures)
        for outcome, spec in zip(result.outcomes, targets, strict=True):
            if outcome.action != "copying":
                continue
            t = spec.endpoint
            if t in failures:
                outcome.action, outcome.error = "failed", failures[t]
            elif t in joined:
                outcome.action = "up_to_date"
            else:
                outcome.action = "copied"
                if not artifact:
                    self.facts.image_present(t, result.digest, pushed=True)
            if t in counts:
                c = counts[t]
                outcome.blobs_copied, outcome.blobs_mounted = c.copied, c.mounted
                outcome.blobs_skipped, outcome.bytes_copied = c.skipped, c.bytes
                outcome.seconds = seconds
        return result

    async def _copy_to(
        self,
        source: Endpoint,
        result: ImageResult,
        specs: list[TargetSpec],
        failures: dict[Endpoint, BaseException],
    ) -> tuple[dict[Endpoint, BlobCounts], float]:
        """Phases 2 and 3 of a copy for ``specs``; per-target errors land in ``failures``."""
        start = time.monotonic()
        endpoints = [spec.endpoint for spec in specs]
        counts = {t: BlobCounts() for t in endpoints}
        if not specs:
            return counts, 0.0
        # Phase 2: everything the manifest references, teed to all targets that lack it.
        try:
            if result.manifest is None:
                result.manifest = await self.manifest(source, result.source_digest)
            await self._push_tree(source, endpoints, result.manifest, counts, failures)
        except SyncdError as e:
            for t in endpoints:
                failures.setdefault(t, e)
        # Phase 3: the tagged manifest, last, only where everything arrived.
        m = result.manifest

        async def tag(spec: TargetSpec) -> None:
            assert m is not None
            await self._put_manifest(spec.endpoint, spec.tag or m.digest, m)

        ready = [spec for spec in specs if spec.endpoint not in failures]
        tagged = await asyncio.gather(*(tag(spec) for spec in ready), return_exceptions=True)
        for spec, err in zip(ready, tagged, strict=True):
            if isinstance(err, asyncio.CancelledError):
                raise err
            if isinstance(err, BaseException):
                failures[spec.endpoint] = err
            elif m is not None:
                self.facts.verified(spec, m.digest)
        return counts, time.monotonic() - start

    async def _check_target(
        self, spec: TargetSpec, digest: str, dry_run: bool, looked: Lookahead | None = None
    ) -> bool:
        """True if the target needs the image; raises if policy forbids the move."""
        t = spec.endpoint
        # plan and once --dry-run ask the target: they report what is there now.
        if not dry_run and self.facts.trusted(spec) == digest:
            return False
        early = looked.take(t) if looked else None
        try:
            if early is not None:
                current = await early
            else:
                current = await t.client.manifest_head(t.repository, spec.tag or digest)
        except ServerError as e:
            # A registry killed while writing a tag can leave the tag's link empty: it then
            # answers 5xx for that tag, every time, and only a new PUT of the tag mends it.
            # When the policy needs no look at what the tag held, push over it.
            if not (spec.tag and spec.overwrite and not spec.backup):
                raise
            log.warning(
                "%s:%s cannot be read (%s): pushing it again",
                t,
                spec.tag,
                e,
                extra={"target": t.client.name, "repository": t.repository, "event": "repush"},
            )
            self.facts.distrust(spec)
            return True
        if current is not None and current.digest == digest:
            if not dry_run:
                self.facts.verified(spec, digest)
            return False
        self.facts.distrust(spec)
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
        try:
            await self.put_manifest(t, reference, m)
        except SyncdError:
            # Perhaps a blob we remembered there is gone (a registry GC): check again next time.
            self.blobs.forget_repository(t)
            raise

    async def put_manifest(self, t: Endpoint, reference: str, m: Manifest) -> None:
        """PUT ``m`` at ``t``; the one place a manifest push is counted, and the one place
        the cluster fence is asked (every tag, child and referrer index goes through it)."""
        # A PUT of a manifest rewrites its revision link in the repository, and an index PUT
        # reads the links of its children: distribution 2.8 refuses an index whose child is
        # being written at that moment (DIGEST_INVALID with MANIFEST_BLOB_UNKNOWN), which
        # happens when a child is also a tag of its own that a pass copies alongside. So the
        # PUTs that write or read one digest in one repository take turns; the keys are
        # taken in sorted order, which rules out two PUTs waiting on each other.
        digests = sorted({m.digest, *(c.digest for c in m.children)})
        async with AsyncExitStack() as turns:
            for d in digests:
                await turns.enter_async_context(
                    self._writes.turn((t.client.origin, t.repository, d))
                )
            await self._put_now(t, reference, m)

    async def _put_now(self, t: Endpoint, reference: str, m: Manifest) -> None:
        # Asked as late as can be: a turn above may have waited while the lease ran out.
        if self.fence is not None and not self.fence():
            raise FencedError(f"{t}:{reference}: cluster lease lost, not writing it")
        await t.client.manifest_put(t.repository, reference, m.raw, m.media_type)
        if self.metrics:
            self.metrics.manifest_pushes.labels(target=t.client.name, repository=t.repository).inc()

    async def _push_tree(
        self,
        source: Endpoint,
        targets: list[Endpoint],
        m: Manifest,
        counts: dict[Endpoint, BlobCounts],
        failures: dict[Endpoint, BaseException],
    ) -> None:
        """Make everything ``m`` references present at each target (not ``m`` itself)."""
        if not m.is_index:
            await asyncio.gather(
                *(self.blobs.ensure_blob(source, targets, b, counts, failures) for b in m.blobs)
            )
            return
        # The children (one per platform) go side by side, each complete before its own
        # manifest is pushed; blobs they share are still transferred once (BlobMover).
        await gather_all(
            [self._push_child(source, targets, d.digest, counts, failures) for d in m.children]
        )

    async def _push_child(
        self,
        source: Endpoint,
        targets: list[Endpoint],
        digest: str,
        counts: dict[Endpoint, BlobCounts],
        failures: dict[Endpoint, BaseException],
    ) -> None:
        """One child manifest of an index: its tree, then the child itself, by digest.

        Two tags of one index (``latest`` and its version) push the same children at the
        same moment. A second PUT of a child rewrites its link file in the registry while
        the other tag's index PUT is reading it, and distribution 2.8 then refuses that
        index (DIGEST_INVALID with MANIFEST_BLOB_UNKNOWN; docs/benchmarks.md, "Results").
        So there is one push per child and target repository at a time; the other copies
        wait for it and share its outcome.
        """
        claimed, joined = self._child_pushes.split(
            ((t.client.origin, t.repository, digest), t, None) for t in targets if t not in failures
        )
        with self._child_pushes.owning(
            claimed, failures, f"another push of child manifest {digest} was interrupted"
        ):
            if claimed:
                await self._push_child_to(
                    source, [t for _, t, _ in claimed], digest, counts, failures
                )
        await TargetClaims.join(joined, failures)

    async def _push_child_to(
        self,
        source: Endpoint,
        live: list[Endpoint],
        digest: str,
        counts: dict[Endpoint, BlobCounts],
        failures: dict[Endpoint, BaseException],
    ) -> None:
        # A child already in the repository brings its blobs with it.
        heads = await asyncio.gather(
            *(t.client.manifest_head(t.repository, digest) for t in live),
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
            return
        child = await self.manifest(source, digest)
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
