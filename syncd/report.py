"""Run reports: what one pass of each rule did, per target, as a versioned JSON document.

The same document is written by ``once --report FILE``, served by ``run`` at ``GET /status``
and printed by ``syncd status``; docs/reports.md describes it. Version 1 keys keep their
meaning; keys may be added without a new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.errors import failure_reason

if TYPE_CHECKING:
    from syncd.results import RulePassResult

REPORT_VERSION = 1


@dataclass(slots=True)
class TargetCounts:
    """One target of one rule pass: images by outcome, and bytes uploaded."""

    copied: int = 0
    up_to_date: int = 0
    failed: int = 0
    bytes: int = 0

    def add(self, other: TargetCounts) -> None:
        self.copied += other.copied
        self.up_to_date += other.up_to_date
        self.failed += other.failed
        self.bytes += other.bytes


@dataclass(frozen=True, slots=True)
class ImageFailure:
    """One image that did not reach one target (or a listing that failed: no target)."""

    source: str  # registry/repository:tag, or registry[/repository] for a listing
    target: str  # registry/repository:tag, or "" when the whole rule or source failed
    digest: str
    reason: str  # the reason label of syncd_image_failures_total
    message: str

    @classmethod
    def of(cls, source: str, target: str, digest: str, err: BaseException) -> ImageFailure:
        return cls(source, target, digest, failure_reason(err), str(err))


def utc_iso(timestamp: float) -> str:
    """``2026-12-06T10:00:04Z``: UTC, whole seconds, as the report writes every time."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rule_report(result: RulePassResult) -> dict[str, Any]:
    """The report entry of one rule pass."""
    deleted = result.deleted_by_target
    names = list(result.targets) + [t for t in deleted if t not in result.targets]
    targets = []
    for name in names:
        c = result.targets.get(name, TargetCounts())
        targets.append(
            {
                "target": name,
                "copied": c.copied,
                "up_to_date": c.up_to_date,
                "failed": c.failed,
                "deleted": deleted.get(name, 0),
                "bytes": c.bytes,
            }
        )
    return {
        "name": result.rule,
        "started": utc_iso(result.started),
        "finished": utc_iso(result.finished),
        "seconds": round(result.seconds, 3),
        "targets": targets,
        "failures": [
            {
                "source": f.source,
                "target": f.target,
                "digest": f.digest,
                "reason": f.reason,
                "message": f.message,
            }
            for f in result.images_failed
        ],
    }


def run_report(rules: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole document from rule entries (``rule_report`` values), in the order given."""
    return {"version": REPORT_VERSION, "rules": list(rules)}


def write_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON atomically: a reader sees the old file or the new, never half.

    The temporary file lives in the same directory, so the rename stays on one filesystem.
    """
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent or ".")
    try:
        # mkstemp makes the file 0600; a report is no secret: the usual umask applies.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
