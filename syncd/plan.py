"""What ``plan`` (a dry-run pass) says about one image at each of its targets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from syncd.config.schema import RuleConfig
from syncd.copy import CopyEngine
from syncd.copy_result import ImageResult, TargetSpec
from syncd.endpoint import Endpoint
from syncd.errors import SyncdError, failure_reason
from syncd.manifest import Descriptor, Manifest


@dataclass(slots=True)
class PlanEntry:
    """One image at one target, as ``plan`` reports it."""

    rule: str
    source: str
    tag: str
    source_digest: str
    digest: str
    target: str
    # up_to_date | copy | overwrite_refused | filtered | failed | immutable | referrer | unsigned
    # | delete | keep (a deletion prune will not make) | delete_held (over max_deletions)
    action: str
    missing_blobs: list[Descriptor] = field(default_factory=list)
    missing_manifests: int = 0
    filtered_index: bool = False
    error: str = ""
    referrer_type: str = ""  # action "referrer": the artifactType of what would be copied

    @property
    def missing_bytes(self) -> int:
        return sum(b.size for b in self.missing_blobs)


async def plan_entries(
    engine: CopyEngine,
    rule: RuleConfig,
    source: Endpoint,
    tag: str,
    targets: Sequence[tuple[str, str]],
    image: ImageResult,
    specs: Sequence[TargetSpec],
) -> tuple[list[PlanEntry], int, bool]:
    """The entries of a dry-run copy, the number of targets it fails at, whether any copies."""
    filtered = bool(rule.platforms) and image.digest != image.source_digest
    entries: list[PlanEntry] = []

    def entry_for(target: str, action: str) -> PlanEntry:
        entry = PlanEntry(
            rule.name,
            str(source),
            tag,
            image.source_digest,
            image.digest,
            target,
            action,
            filtered_index=filtered,
        )
        entries.append(entry)
        return entry

    if image.error is not None:
        for name, trepo in targets:
            entry_for(f"{name}/{trepo}", "failed").error = str(image.error)
        return entries, 1, False
    failed = 0
    any_copy = False
    for spec, o in zip(specs, image.outcomes, strict=True):
        entry = entry_for(f"{o.target}/{o.repository}", o.action)
        if o.action == "failed":
            entry.action = failure_reason(o.error) if o.error else "failed"
            entry.error = str(o.error)
            if entry.action != "overwrite_refused":
                entry.action = "failed"
            failed += 1
        elif o.action == "copy":
            any_copy = True
            try:
                m = image.manifest or await engine.platforms.desired(
                    source, image.source_digest, rule.platforms
                )
                blobs, manifests = await missing(engine, source, spec.endpoint, m)
                entry.missing_blobs, entry.missing_manifests = blobs, manifests
            except SyncdError as e:
                entry.action, entry.error = "failed", str(e)
    return entries, failed, any_copy


async def missing(
    engine: CopyEngine, source: Endpoint, t: Endpoint, m: Manifest
) -> tuple[list[Descriptor], int]:
    """Read-only: the blobs and child manifests ``t`` lacks for ``m`` (children's
    manifests come through the engine's cache)."""
    if not m.is_index:
        sizes = await asyncio.gather(*(t.client.blob_head(t.repository, b.digest) for b in m.blobs))
        return [b for b, size in zip(m.blobs, sizes, strict=True) if size is None], 0
    blobs: dict[str, Descriptor] = {}
    manifests = 0
    for child_desc in m.children:
        if await t.client.manifest_head(t.repository, child_desc.digest) is not None:
            continue
        manifests += 1
        child = await engine.manifest(source, child_desc.digest)
        child_blobs, _ = await missing(engine, source, t, child)
        blobs.update((b.digest, b) for b in child_blobs)
    return list(blobs.values()), manifests
