"""What the copy engine remembers about its targets, kept in the state store.

Two memories make passes cheap, and both outlive the process when the store is a file:

* ``target_recheck``: a target tag syncd pushed, or found at the source's digest, is taken
  as still there without a HEAD until its window ends. The window is kept as wall-clock time
  in the store, so a restarted daemon trusts what the previous process checked.
* Blob locations: where in a target registry a blob lives, so a blob missing from one
  repository is mounted from another (one request, no bytes). When none is known, the images
  found up to date in that registry are read for their blobs (``locate``).

Everything remembered is checked by the registry before harm can come of it: a declined
mount falls back to an upload, and a failed manifest PUT forgets the repository's blobs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from syncd.endpoint import Endpoint, registry_of
from syncd.errors import SyncdError
from syncd.lru import LRU
from syncd.manifest import Manifest
from syncd.singleflight import SingleFlight
from syncd.state import StateStore

if TYPE_CHECKING:
    from syncd.copy_result import TargetSpec

log = logging.getLogger(__name__)

# Images found up to date, per target registry: where to look for a blob missing elsewhere
# in that registry (``TargetFacts.locate``).
MAX_PRESENT_IMAGES = 4_096
# How many of them one lookup may read (a manifest GET each, plus an index's children).
LOCATE_BATCH = 8
MAX_LOCATED = 8_192
# How long a registry's answer to the referrers-API probe (syncd.referrers) stands: a
# restarted daemon does not ask again, and an upgraded registry is noticed within a day.
REFERRERS_API_TTL = 86_400.0


class TargetFacts:
    """The copy engine's view of the state store."""

    def __init__(
        self,
        store: StateStore,
        manifest: Callable[[Endpoint, str], Awaitable[Manifest]],
        children: Callable[[Endpoint, Manifest], Awaitable[list[Manifest]]],
    ) -> None:
        self.store = store
        self._manifest = manifest
        self._children = children
        # (registry, digest) of the images already read for blobs by this process
        self._located: LRU = LRU(MAX_LOCATED)
        # registry: one lookup at a time, so a second finds what the first recorded
        self._locating: SingleFlight[str, None] = SingleFlight()

    def forget_registry(self, name: str) -> None:
        """Drop what this process read about registry ``name`` (a reload changed it); the
        store's facts are keyed by the registry's address, so they cannot mix."""
        for key in [k for k in self._located if k[0] == name]:
            del self._located[key]

    # -- target tags (``target_recheck``, and what ``prune`` may delete) -------------------
    def trusted(self, spec: TargetSpec) -> str | None:
        """The digest ``spec``'s tag is taken to hold without asking, if any."""
        if spec.recheck <= 0 or not spec.tag or not spec.rule:
            return None
        t = spec.endpoint
        rec = self.store.tag_get(spec.rule, registry_of(t), t.repository, spec.tag)
        if rec is None or time.time() >= rec.trusted_until:
            return None
        return rec.digest

    def verified(self, spec: TargetSpec, digest: str) -> None:
        """``spec``'s tag holds ``digest``: syncd pushed it, or a HEAD said so."""
        if not spec.tag or not spec.rule:
            return
        t = spec.endpoint
        now = time.time()
        until = 0.0
        if spec.recheck > 0:
            # Spread over the second half of the window: tags first seen in one pass are
            # then not all asked again in one later pass.
            until = now + spec.recheck * random.uniform(0.5, 1.0)
        self.store.tag_put(
            spec.rule, registry_of(t), t.repository, spec.tag, digest, at=now, trusted_until=until
        )

    def distrust(self, spec: TargetSpec) -> None:
        if spec.tag and spec.rule:
            t = spec.endpoint
            self.store.tag_distrust(spec.rule, registry_of(t), t.repository, spec.tag)

    # -- the registry ------------------------------------------------------------------------
    def api_known(self, t: Endpoint) -> bool | None:
        """Whether ``t``'s registry has the OCI referrers API, if learnt within the TTL."""
        stored = self.store.fact_get(registry_of(t), "referrers_api")
        if stored is None or time.time() - stored[1] >= REFERRERS_API_TTL:
            return None
        return stored[0] == "yes"

    def api_learnt(self, t: Endpoint, has_api: bool) -> None:
        self.store.fact_put(
            registry_of(t), "referrers_api", "yes" if has_api else "no", at=time.time()
        )

    # -- blobs -------------------------------------------------------------------------------
    def image_present(self, t: Endpoint, digest: str, *, pushed: bool = False) -> None:
        """An image complete in ``t`` (found up to date, or ``pushed`` by this process,
        which recorded its blobs' locations on the way)."""
        self.store.image_put(registry_of(t), t.repository, digest, noted=pushed)

    async def locate(self, t: Endpoint, digest: str) -> str | None:
        """Another repository of ``t``'s registry that holds ``digest``, if one is found.

        Asked by the blob mover for a blob missing from ``t`` whose location the store does
        not know. The candidates are images found up to date there (their blobs are all
        present with them) whose blobs were never recorded: up to ``LOCATE_BATCH`` are read
        now, from that registry (one manifest GET each, none when cached by digest: not from
        the source, whose pulls may be rate-limited), and their blobs recorded as located
        there. Images syncd pushed, or read before (in any process sharing the store), are
        not read again. Best effort: a manifest that cannot be read only means no hint.
        """
        registry = registry_of(t)
        async with self._locating.turn(registry):
            found = self.store.blob_where(registry, digest)
            if found:
                return found
            images = self.store.image_list(registry, MAX_PRESENT_IMAGES)
            todo = [
                (Endpoint(t.client, repo), d)
                for repo, d in images
                if repo != t.repository and (registry, d) not in self._located
            ][:LOCATE_BATCH]
            for _, d in todo:
                self._located.remember((registry, d), True)
            await asyncio.gather(*(self._note_blobs(registry, where, d) for where, d in todo))
            return self.store.blob_where(registry, digest)

    async def _note_blobs(self, registry: str, where: Endpoint, digest: str) -> None:
        try:
            m = await self._manifest(where, digest)
            for image in await self._children(where, m) if m.is_index else [m]:
                for b in image.blobs:
                    if self.store.blob_where(registry, b.digest) is None:
                        self.store.blob_put(registry, b.digest, where.repository)
            self.store.image_put(registry, where.repository, digest, noted=True)
        except SyncdError as e:
            log.debug("could not read %s@%s for blob locations: %s", where, digest, e)
