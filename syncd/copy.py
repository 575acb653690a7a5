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
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from syncd.blobs import LRU, BlobCounts, BlobMover, Endpoint
from syncd.errors import (
    FencedError,
    ManifestInvalidError,
    NotFoundError,
    OverwriteRefusedError,
    ServerError,
    SyncdError,
)
from syncd.manifest import Descriptor, Manifest, Platform, parse_manifest
from syncd.registry.client import ManifestInfo
from syncd.rules import backup_tag, platform_selected

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
# What a copy waiting on another one gets: the error that one ended with, or None.
_Outcome = asyncio.Future[BaseException | None]

# Manifests remembered per process: content-addressed, so never stale; the daemon keeps
# them across passes, which is what makes no-op passes cheap.
MAX_MANIFESTS = 8_192
# Target tags remembered for ``target_recheck`` (a few hundred bytes each).
MAX_VERIFIED = 200_000
# Images found up to date, one per target repository, kept per target registry: where to
# look for a blob missing elsewhere in that registry (``CopyEngine._locate``).
MAX_PRESENT_IMAGES = 4_096
# How many of them one lookup may read (a manifest GET each, plus an index's children).
LOCATE_BATCH = 8


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Where one image goes, and the policy for an existing tag there."""

    endpoint: Endpoint
    tag: str | None
    overwrite: bool = True
    backup: str | None = None
    # ``target_recheck`` seconds: how long a tag this process pushed or found at the
    # source's digest is taken as still there without a HEAD (0: HEAD every time).
    recheck: float = 0.0


async def _all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Await every one side by side, then raise the first error, if any: unlike a plain
    gather, nothing is left running unobserved after a failure."""
    got = await asyncio.gather(*aws, return_exceptions=True)
    for g in got:
        if isinstance(g, BaseException):
            raise g
    return cast(list[T], got)


class Lookahead:
    """Target HEADs sent early (``CopyEngine.look_ahead``); each is used at most once.

    ``close`` cancels or collects what the copy never used (a source that failed, an
    image refused before its targets were looked at), so no task outlives its job and no
    error goes unobserved.
    """

    def __init__(self, tasks: dict[Endpoint, asyncio.Future[ManifestInfo | None]]) -> None:
        self._tasks = tasks

    def take(self, t: Endpoint) -> asyncio.Future[ManifestInfo | None] | None:
        return self._tasks.pop(t, None)

    async def close(self) -> None:
        left = list(self._tasks.values())
        self._tasks.clear()
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)


class _OnePerKey:
    """Work on a key done by one copy at a time; the others wait and share its outcome
    (the error it ended with, or None)."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], _Outcome] = {}

    def split(
        self, items: Iterable[tuple[tuple[str, ...], Endpoint, T]]
    ) -> tuple[list[tuple[tuple[str, ...], Endpoint, T]], dict[Endpoint, _Outcome]]:
        """Claim each free key for the caller (which must then run ``owning``); for a key
        already being worked on, the outcome to wait for instead."""
        mine: list[tuple[tuple[str, ...], Endpoint, T]] = []
        joined: dict[Endpoint, _Outcome] = {}
        for key, t, item in items:
            other = self._running.get(key)
            if other is not None:
                joined[t] = other
                continue
            self._running[key] = asyncio.get_running_loop().create_future()
            mine.append((key, t, item))
        return mine, joined

    @contextmanager
    def owning(
        self,
        claimed: Iterable[tuple[tuple[str, ...], Endpoint, Any]],
        failures: dict[Endpoint, BaseException],
        interrupted: str,
    ) -> Iterator[None]:
        """Release the claimed keys when the work ends, each with its target's failure."""
        aborted: BaseException | None = None
        try:
            yield
        except BaseException:
            aborted = SyncdError(interrupted)
            raise
        finally:
            for key, t, _ in claimed:
                self._running.pop(key).set_result(failures.get(t) or aborted)

    @staticmethod
    async def join(
        joined: dict[Endpoint, _Outcome], failures: dict[Endpoint, BaseException]
    ) -> None:
        """Wait for the work other copies are doing; their failures become ours."""
        for t, outcome in joined.items():
            err = await asyncio.shield(outcome)
            if err is not None:
                failures.setdefault(t, err)


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
    """Copies images in integrity order; caches manifests by digest across passes."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        blobs: BlobMover | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.metrics = metrics
        # Asked right before every manifest PUT (the step that makes a tag visible): false
        # once this replica lost its cluster lease (syncd/ownership.py).
        self.fence = fence
        self.blobs = blobs or BlobMover(metrics)
        self._manifests: LRU = LRU(MAX_MANIFESTS)
        self._fetching: dict[str, asyncio.Future[Manifest | None]] = {}
        # (target registry, repository, tag, digest): the copy of a tag under way
        self._tag_copies = _OnePerKey()
        # (target registry, repository, child digest): the push of an index child under way
        self._child_pushes = _OnePerKey()
        # (target registry, repository, tag) -> (digest, until when it is trusted): only
        # for specs with ``recheck``; what a daemon saves on its target's per-tag HEADs.
        self._verified: LRU = LRU(MAX_VERIFIED)
        # target registry -> target repository -> digest of an image found up to date
        # there; and the (registry, digest) already read for blobs
        self._present_images: dict[str, LRU] = {}
        self._located: LRU = LRU(MAX_MANIFESTS)
        self._locating: dict[str, asyncio.Lock] = {}
        self.blobs.locate = self._locate

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
        pending = self._fetching.get(digest)
        if pending is not None:
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared
            return await self.manifest(endpoint, digest)
        fut: asyncio.Future[Manifest | None] = asyncio.get_running_loop().create_future()
        self._fetching[digest] = fut
        m: Manifest | None = None
        try:
            m = await endpoint.client.manifest_get(endpoint.repository, digest)
            self._manifests.remember(digest, m)
        finally:
            del self._fetching[digest]
            fut.set_result(m)
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
        # Fetched side by side: an index's children are otherwise one round trip each.
        return await _all([self.manifest(source, c.digest) for c in m.children])

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
                if spec.tag and self._trusted(spec) is None
            }
        )

    # -- where else a blob may be at a target ----------------------------------------------
    async def _locate(self, t: Endpoint, digest: str) -> str | None:
        """Another repository of ``t``'s registry that holds ``digest``, if one is found.

        Asked by the blob mover for a blob missing from ``t`` that this process has not
        seen anywhere in the registry. The candidates are images found up to date there
        (their blobs are all present with them): up to ``LOCATE_BATCH`` not yet read are
        read now, from that registry (one manifest GET each, none when cached by digest:
        not from the source, whose pulls may be rate-limited), and their blobs remembered
        as located there. This is what lets a fresh ``once`` mount a base layer that an
        earlier run stored under another repository. Best effort: a manifest that cannot
        be read only means no hint.
        """
        registry = t.client.name
        images = self._present_images.get(registry)
        if not images:
            return None
        async with self._locating.setdefault(registry, asyncio.Lock()):
            found = self.blobs.location(registry, digest)
            if found:
                return found
            todo = [
                (Endpoint(t.client, repo), d)
                for repo, d in reversed(images.items())
                if repo != t.repository and (registry, d) not in self._located
            ][:LOCATE_BATCH]
            for _, d in todo:
                self._located.remember((registry, d), True)
            await asyncio.gather(*(self._note_blobs(where, d) for where, d in todo))
            return self.blobs.location(registry, digest)

    async def _note_blobs(self, where: Endpoint, digest: str) -> None:
        try:
            m = await self.manifest(where, digest)
            for image in await self.children(where, m) if m.is_index else [m]:
                for b in image.blobs:
                    self.blobs.hint(where.client.name, b.digest, where.repository)
        except SyncdError as e:
            log.debug("could not read %s@%s for blob locations: %s", where, digest, e)

    # -- what a target tag was last seen at (``target_recheck``) ---------------------------
    def _trusted(self, spec: TargetSpec) -> str | None:
        """The digest ``spec``'s tag is taken to hold without asking, if any."""
        if spec.recheck <= 0 or not spec.tag:
            return None
        t = spec.endpoint
        entry = self._verified.get((t.client.name, t.repository, spec.tag))
        if entry is None or time.monotonic() >= entry[1]:
            return None
        return entry[0]  # type: ignore[no-any-return]

    def _verified_at(self, spec: TargetSpec, digest: str) -> None:
        if spec.recheck <= 0 or not spec.tag:
            return
        t = spec.endpoint
        # Spread over the second half of the window: tags first seen in one pass are
        # then not all asked again in one later pass.
        until = time.monotonic() + spec.recheck * random.uniform(0.5, 1.0)
        self._verified.remember((t.client.name, t.repository, spec.tag), (digest, until))

    def _distrust(self, spec: TargetSpec) -> None:
        if spec.tag:
            t = spec.endpoint
            self._verified.pop((t.client.name, t.repository, spec.tag), None)

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
    ) -> ImageResult:
        """Bring every target to the source's digest for ``reference``.

        Failures are recorded per target in the result; this only raises on cancellation.
        ``artifact``: a referrer (signature, SBOM), not an image whose layers other
        repositories may share (see ``_locate``).
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
            elif not artifact:
                images = self._present_images.setdefault(t.client.name, LRU(MAX_PRESENT_IMAGES))
                images.remember(t.repository, result.digest)
        if dry_run or not todo:
            return result
        # One copy of a tag at a time per target: a rule running alongside another that
        # covers the same repository waits for that copy instead of pushing it again.
        claimed, joined = self._tag_copies.split(
            (
                (
                    s.endpoint.client.name,
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
            counts, seconds = await self._copy_to(
                source, result, [spec for _, _, spec in claimed], failures
            )
        await _OnePerKey.join(joined, failures)
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

        ready = [spec for spec in specs if spec.endpoint not in failures]
        tagged = await asyncio.gather(*(tag(spec) for spec in ready), return_exceptions=True)
        for spec, err in zip(ready, tagged, strict=True):
            if isinstance(err, asyncio.CancelledError):
                raise err
            if isinstance(err, BaseException):
                failures[spec.endpoint] = err
            elif m is not None:
                self._verified_at(spec, m.digest)
        return counts, time.monotonic() - start

    async def _check_target(
        self, spec: TargetSpec, digest: str, dry_run: bool, looked: Lookahead | None = None
    ) -> bool:
        """True if the target needs the image; raises if policy forbids the move."""
        t = spec.endpoint
        if self._trusted(spec) == digest:
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
            self._distrust(spec)
            return True
        if current is not None and current.digest == digest:
            self._verified_at(spec, digest)
            return False
        self._distrust(spec)
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
        if self.fence is not None and not self.fence():
            raise FencedError(f"{t}:{reference}: cluster lease lost, not writing it")
        try:
            await t.client.manifest_put(t.repository, reference, m.raw, m.media_type)
        except SyncdError:
            # Perhaps a blob we remembered there is gone (a registry GC): check again next time.
            self.blobs.forget_repository(t)
            raise
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
        await _all(
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
        index (DIGEST_INVALID with MANIFEST_BLOB_UNKNOWN: seen in a cold benchmark pass).
        So there is one push per child and target repository at a time; the other copies
        wait for it and share its outcome.
        """
        claimed, joined = self._child_pushes.split(
            ((t.client.name, t.repository, digest), t, None) for t in targets if t not in failures
        )
        with self._child_pushes.owning(
            claimed, failures, f"another push of child manifest {digest} was interrupted"
        ):
            if claimed:
                await self._push_child_to(
                    source, [t for _, t, _ in claimed], digest, counts, failures
                )
        await _OnePerKey.join(joined, failures)

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
