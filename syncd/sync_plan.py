"""What a pass reports: per-rule results, and the entries ``plan`` prints for each image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from syncd.blobs import Endpoint
from syncd.config.schema import RuleConfig
from syncd.copy import CopyEngine
from syncd.copy_result import ImageResult, TargetSpec
from syncd.errors import SyncdError, failure_reason
from syncd.manifest import Descriptor


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
    action: str
    missing_blobs: list[Descriptor] = field(default_factory=list)
    missing_manifests: int = 0
    filtered_index: bool = False
    error: str = ""
    referrer_type: str = ""  # action "referrer": the artifactType of what would be copied

    @property
    def missing_bytes(self) -> int:
        return sum(b.size for b in self.missing_blobs)


@dataclass(slots=True)
class RulePassResult:
    """The outcome of one pass of one rule."""

    rule: str
    synced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    referrers_copied: int = 0
    failures: list[str] = field(default_factory=list)
    plan: list[PlanEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def add(self, other: RulePassResult) -> None:
        self.synced += other.synced
        self.skipped += other.skipped
        self.failed += other.failed
        self.blobs_copied += other.blobs_copied
        self.blobs_mounted += other.blobs_mounted
        self.blobs_skipped += other.blobs_skipped
        self.bytes_copied += other.bytes_copied
        self.referrers_copied += other.referrers_copied
        self.failures.extend(other.failures)
        self.plan.extend(other.plan)


async def plan_entries(
    engine: CopyEngine,
    rule: RuleConfig,
    source: Endpoint,
    tag: str,
    targets: Sequence[tuple[str, str]],
    image: ImageResult,
    specs: Sequence[TargetSpec],
    result: RulePassResult,
) -> None:
    """What ``plan`` says about one image (a dry-run copy's ``image``) at each target."""
    filtered = bool(rule.platforms) and image.digest != image.source_digest

    def entry_for(target: str, action: str) -> PlanEntry:
        return PlanEntry(
            rule.name,
            str(source),
            tag,
            image.source_digest,
            image.digest,
            target,
            action,
            filtered_index=filtered,
        )

    if image.error is not None:
        for name, trepo in targets:
            entry = entry_for(f"{name}/{trepo}", "failed")
            entry.error = str(image.error)
            result.plan.append(entry)
        result.failed += 1
        return
    any_copy = False
    for spec, o in zip(specs, image.outcomes, strict=True):
        entry = entry_for(f"{o.target}/{o.repository}", o.action)
        if o.action == "failed":
            entry.action = failure_reason(o.error) if o.error else "failed"
            entry.error = str(o.error)
            if entry.action != "overwrite_refused":
                entry.action = "failed"
            result.failed += 1
        elif o.action == "copy":
            any_copy = True
            try:
                m = image.manifest or await engine.desired(
                    source, image.source_digest, rule.platforms
                )
                blobs, manifests = await engine.missing(source, spec.endpoint, m)
                entry.missing_blobs, entry.missing_manifests = blobs, manifests
            except SyncdError as e:
                entry.action, entry.error = "failed", str(e)
        result.plan.append(entry)
    if any_copy:
        result.synced += 1
    else:
        result.skipped += 1
