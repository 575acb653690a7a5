"""What the copy engine is asked (``TargetSpec``) and what it reports (``ImageResult``,
one ``TargetOutcome`` per target)."""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.endpoint import Endpoint
from syncd.manifest import Manifest


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Where one image goes, and the policy for an existing tag there."""

    endpoint: Endpoint
    tag: str | None
    overwrite: bool = True
    backup: str | None = None
    # ``target_recheck`` seconds: how long a tag syncd pushed or found at the source's
    # digest is taken as still there without a HEAD (0: HEAD every time).
    recheck: float = 0.0
    # The rule the copy is for: tags are recorded per rule (what ``prune`` may delete);
    # empty for artifacts that travel with an image, which are not recorded.
    rule: str = ""


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
