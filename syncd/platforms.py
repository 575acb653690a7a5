"""Platform filtering: what a rule's ``platforms`` make of a source image.

An index keeps only the children of the named platforms (a new index, serialised the same
way every pass so its digest is stable); a single image whose config names another
platform is refused. What is learned (filtered indexes, image platforms) is remembered in
the copy engine's content-addressed manifest cache.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from syncd.endpoint import Endpoint
from syncd.errors import ManifestInvalidError
from syncd.lru import LRU
from syncd.manifest import Manifest, Platform, parse_manifest
from syncd.rules import platform_selected

# A config blob larger than this is no image config worth reading for its platform.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class PlatformFilter:
    """The manifest the targets must end up with, for a rule's ``platforms``."""

    def __init__(
        self, manifest: Callable[[Endpoint, str], Awaitable[Manifest]], cache: LRU
    ) -> None:
        self._manifest = manifest
        self._cache = cache

    async def desired(self, source: Endpoint, digest: str, platforms: Sequence[str]) -> Manifest:
        """The manifest the targets must end up with (filtered when platforms say so)."""
        m = await self._manifest(source, digest)
        if platforms and m.is_index:
            key = ("filtered", digest, tuple(platforms))
            filtered = self._cache.get(key)
            if filtered is None:
                filtered = filter_platforms(m, platforms)
                self._cache.remember(key, filtered)
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
        if key in self._cache:
            return self._cache[key]  # type: ignore[no-any-return]
        data = bytearray()
        async with source.client.blob_get(
            source.repository, m.config.digest, size=m.config.size
        ) as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > MAX_CONFIG_BYTES:
                    return None
        try:
            cfg = json.loads(bytes(data))
            platform = Platform(
                str(cfg["os"]), str(cfg["architecture"]), str(cfg.get("variant", ""))
            )
        except (ValueError, KeyError, TypeError):
            platform = None
        self._cache.remember(key, platform)
        return platform


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
