"""How a rule pass counts what happened: into its result (``RulePassResult``), its log
lines and its metrics, for each image and each listing that failed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from syncd.config.schema import RuleConfig
from syncd.copy_result import ImageResult
from syncd.errors import failure_reason
from syncd.report import ImageFailure
from syncd.results import RulePassResult

if TYPE_CHECKING:
    from syncd.metrics import Metrics

# The rule pass's logger: these lines are the pass's, whichever module counts them.
log = logging.getLogger("syncd.sync")


class Accounting:
    """The counting of one ``Syncer``'s passes."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def listing_failed(
        self,
        rule: RuleConfig,
        result: RulePassResult,
        source: str,
        err: BaseException,
        *,
        prefix: str = "",
    ) -> None:
        """A listing failed: the rule (or one repository of it) could not be looked at."""
        # A registry error names its registry already; say it once.
        said = str(err).startswith(f"{source}:")
        text = f"{prefix}{err}" if said else f"{prefix}{source}: {err}"
        result.failed += 1
        result.failures.append(text)
        result.images_failed.append(ImageFailure.of(source, "", "", err))
        log.error(text, extra={"rule": rule.name, "event": "rule_error"})
        for target in rule.targets:
            result.at(target).failed += 1
            if self.metrics:
                self.metrics.image_failures.labels(
                    rule=rule.name, target=target, reason=failure_reason(err)
                ).inc()

    def image(
        self,
        rule: RuleConfig,
        tag: str,
        targets: tuple[tuple[str, str], ...],
        image: ImageResult,
        result: RulePassResult,
    ) -> None:
        """One image's copy: per target, copied, failed or up to date."""
        name = f"{image.source}:{tag}"
        if image.error is not None:
            self.failure(rule, result, name, image.error, targets, tag, image.source_digest)
            return
        copied = False
        failed = False
        for o in image.outcomes:
            result.blobs_copied += o.blobs_copied
            result.blobs_mounted += o.blobs_mounted
            result.blobs_skipped += o.blobs_skipped
            result.bytes_copied += o.bytes_copied
            at = result.at(o.target)
            if o.action not in ("copied", "failed"):
                # Up to date: nearly every image of a steady pass, so nothing is built for
                # the log unless it is debugging.
                at.up_to_date += 1
                if log.isEnabledFor(logging.DEBUG):
                    target = f"{o.target}/{o.repository}:{tag}"
                    fields = {"event": "image_copy", "rule": rule.name, "source": name}
                    fields.update(target=target, digest=image.digest, result=o.action)
                    log.debug("up to date: %s at %s", name, target, extra=fields)
                continue
            target = f"{o.target}/{o.repository}:{tag}"
            event = {
                "event": "image_copy",
                "rule": rule.name,
                "source": name,
                "target": target,
                "digest": image.digest,
                "bytes": o.bytes_copied,
                "seconds": round(o.seconds, 3),
                "result": o.action,
            }
            if o.action == "copied":
                copied = True
                at.copied += 1
                at.bytes += o.bytes_copied
                if self.metrics:
                    self.metrics.images_synced.labels(rule=rule.name, target=o.target).inc()
                log.info(
                    "copied %s to %s (%s, %d bytes)",
                    name,
                    event["target"],
                    image.digest,
                    o.bytes_copied,
                    extra=event,
                )
            elif o.action == "failed":
                failed = True
                at.failed += 1
                assert o.error is not None
                result.images_failed.append(ImageFailure.of(name, target, image.digest, o.error))
                event["reason"] = failure_reason(o.error)
                if self.metrics:
                    self.metrics.image_failures.labels(
                        rule=rule.name, target=o.target, reason=failure_reason(o.error)
                    ).inc()
                result.failures.append(f"{name} -> {o.target}/{o.repository}: {o.error}")
                log.error("failed %s to %s: %s", name, event["target"], o.error, extra=event)
        if failed:
            result.failed += 1
        elif copied:
            result.synced += 1
        else:
            result.skipped += 1

    def failure(
        self,
        rule: RuleConfig,
        result: RulePassResult,
        name: str,
        err: BaseException,
        targets: Iterable[tuple[str, str]],
        tag: str,
        digest: str = "",
    ) -> None:
        """An image failed before any target was tried: it failed at every target."""
        result.failed += 1
        result.failures.append(f"{name}: {err}")
        log.error(
            "failed %s: %s",
            name,
            err,
            extra={
                "event": "image_copy",
                "rule": rule.name,
                "source": name,
                "result": "failed",
                "reason": failure_reason(err),
            },
        )
        for target, trepo in targets:
            result.at(target).failed += 1
            result.images_failed.append(
                ImageFailure.of(name, f"{target}/{trepo}:{tag}", digest, err)
            )
            if self.metrics:
                self.metrics.image_failures.labels(
                    rule=rule.name, target=target, reason=failure_reason(err)
                ).inc()
