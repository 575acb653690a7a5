"""``syncd_target_bytes``: the unique blob bytes the rules keep in each target repository.

A blob shared by several tags (or several rules) of one target repository counts once, the
way the registry stores it. Only the daemon (or ``once --listen``) keeps this: it needs the
manifest of every kept image, which a one-shot pass would otherwise not read.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
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
    """Per (target, repository), the blobs of each (rule, tag) kept there."""

    def __init__(self, store: StateStore) -> None:
        # Blob sizes per image digest are content-addressed, so kept in the state store: a
        # restarted daemon need not read every kept manifest again to report the gauge.
        self._store = store
        self._kept: dict[tuple[str, str], dict[tuple[str, str], dict[str, int]]] = {}

    async def track(
        self,
        engine: CopyEngine,
        rule: str,
        holder: Endpoint,
        tag: str,
        targets: tuple[tuple[str, str], ...],
        image: ImageResult,
    ) -> None:
        """Remember the blobs of ``image`` (and its children) at each of ``targets``;
        manifests not in the engine's cache are read from ``holder``."""
        blobs = self._store.sizes_get(image.digest)
        try:
            if blobs is None:
                m = image.manifest or await engine.manifest(holder, image.digest)
                blobs = {}
                for part in [m, *(await engine.children(holder, m) if m.is_index else [])]:
                    blobs.update((b.digest, b.size) for b in part.blobs)
                self._store.sizes_put(image.digest, blobs)
        except SyncdError as e:
            log.debug("cannot account bytes of %s: %s", image.source, e)
            return
        for name, trepo in targets:
            self._kept.setdefault((name, trepo), {})[(rule, tag)] = blobs

    def inherit(self, previous: TargetBytes, registries: Collection[str]) -> None:
        """Carry the accounting of targets a reloaded config still has."""
        for (target, repo), kept in previous._kept.items():
            if target in registries:
                self._kept.setdefault((target, repo), {}).update(kept)

    def forget_unkept(self, rule: str, chosen: dict[tuple[str, str], set[str]]) -> None:
        """Drop the tags this rule no longer selects (deleted, filtered) at each target."""
        for key, tags in chosen.items():
            kept = self._kept.get(key, {})
            for rule_name, tag in list(kept):
                if rule_name == rule and tag not in tags:
                    del kept[(rule_name, tag)]

    def publish(self, metrics: Metrics) -> None:
        for (target, repo), kept in self._kept.items():
            unique: dict[str, int] = {}
            for blobs in kept.values():
                unique.update(blobs)
            metrics.target_bytes.labels(target=target, repository=repo).set(sum(unique.values()))
