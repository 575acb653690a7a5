"""``syncd_target_bytes``: the unique blob bytes the rules keep in each target repository.

A blob shared by several tags (or several rules) of one target repository counts once, the
way the registry stores it. Only the daemon (or ``once --listen``) keeps this: it needs the
manifest of every kept image, which a one-shot pass would otherwise not read.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from syncd.endpoint import Endpoint
from syncd.errors import SyncdError
from syncd.state import StateStore

if TYPE_CHECKING:
    from syncd.copy import CopyEngine
    from syncd.copy_result import ImageResult
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)


class TargetBytes:
    """Per (target, repository), the image digest of each (rule, tag) kept there, and the
    blob sizes of each such digest once.

    Many tags share few images (``latest`` and its version, CI tags of one build), so blob
    sizes are held per digest, not per tag: at 50,000 tags a copy per tag cost tens of MB
    and a state-store read per tag per pass (docs/benchmarks.md, "The daemon at 50,000
    tags").
    """

    def __init__(self, store: StateStore) -> None:
        # Blob sizes per image digest are content-addressed, so kept in the state store: a
        # restarted daemon need not read every kept manifest again to report the gauge.
        self._store = store
        self._kept: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
        # digest → {blob digest: size}, for the digests in ``_kept`` (pruned on publish).
        self._sizes: dict[str, dict[str, int]] = {}

    async def track(
        self,
        engine: CopyEngine,
        rule: str,
        holder: Callable[[], Endpoint],
        tag: str,
        targets: tuple[tuple[str, str], ...],
        image: ImageResult,
    ) -> None:
        """Remember that ``image`` (and its children) is kept at each of ``targets``; blob
        sizes not known yet come from the store, else from manifests read from ``holder()``
        (or the engine's cache)."""
        # Interned: the tags of one image then hold one string, not one per tag and pass.
        digest = sys.intern(image.digest)
        if digest not in self._sizes:
            blobs = self._store.sizes_get(digest)
            try:
                if blobs is None:
                    where = holder()
                    m = image.manifest or await engine.manifest(where, digest)
                    blobs = {}
                    for part in [m, *(await engine.children(where, m) if m.is_index else [])]:
                        blobs.update((b.digest, b.size) for b in part.blobs)
                    self._store.sizes_put(digest, blobs)
            except SyncdError as e:
                log.debug("cannot account bytes of %s: %s", image.source, e)
                return
            self._sizes[digest] = blobs
        for name, trepo in targets:
            self._kept.setdefault((name, trepo), {})[(rule, tag)] = digest

    def inherit(self, previous: TargetBytes, registries: Collection[str]) -> None:
        """Carry the accounting of targets a reloaded config still has."""
        for (target, repo), kept in previous._kept.items():
            if target in registries:
                self._kept.setdefault((target, repo), {}).update(kept)
                for digest in kept.values():
                    self._sizes[digest] = previous._sizes[digest]

    def forget_unkept(self, rule: str, chosen: dict[tuple[str, str], set[str]]) -> None:
        """Drop the tags this rule no longer selects (deleted, filtered) at each target."""
        for key, tags in chosen.items():
            kept = self._kept.get(key, {})
            for rule_name, tag in list(kept):
                if rule_name == rule and tag not in tags:
                    del kept[(rule_name, tag)]

    def publish(self, metrics: Metrics) -> None:
        in_use: set[str] = set()
        for (target, repo), kept in self._kept.items():
            digests = set(kept.values())
            in_use |= digests
            unique: dict[str, int] = {}
            for digest in digests:
                unique.update(self._sizes[digest])
            metrics.target_bytes.labels(target=target, repository=repo).set(sum(unique.values()))
        for digest in self._sizes.keys() - in_use:
            del self._sizes[digest]
