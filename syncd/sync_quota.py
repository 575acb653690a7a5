"""The pass-level side of registry rate limits: what a pass skips, and what it does first.

The transport (``syncd.registry.limits``) decides per request; a pass adds two decisions:

- a registry that asked to be left alone for longer than ``max_retry_wait`` is not
  contacted by the passes that start before that time (they say so and count it);
- when pulls from the source are scarce (a pull budget), tags that are not yet at every
  target are copied before tags that are, so a budget that runs out during the pass is
  spent on new images rather than on re-checks of ones already mirrored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from syncd.config.schema import RuleConfig
from syncd.errors import RateLimitedError, SyncdError
from syncd.registry.pool import ClientPool

log = logging.getLogger(__name__)


def left_alone(pool: ClientPool, rule: RuleConfig) -> RateLimitedError | None:
    """Why this pass of ``rule`` is skipped: its source, or every target, asked for a pause
    longer than ``max_retry_wait``. None when the pass may run."""
    source = pool.rate_limited(rule.source)
    if source is not None:
        return source
    targets = [pool.rate_limited(t) for t in rule.targets]
    if targets and all(t is not None for t in targets):
        return targets[0]
    return None


async def new_tags_first(
    pool: ClientPool, rule: RuleConfig, tags: Sequence[str], targets: Sequence[tuple[str, str]]
) -> list[str]:
    """``tags`` with those missing at some target first (each group in its given order).

    Only when the source has a pull budget: listing the targets costs a request per target
    repository, which is not worth it when pulls are not scarce.
    """
    if not pool.budgeted(rule.source) or len(tags) < 2:
        return list(tags)
    present: list[set[str]] = []
    try:
        for name, repository in targets:
            client = pool.client(name).with_retries(rule.retries)
            present.append(set(await client.tags_list(repository, missing_ok=True)))
    except SyncdError as e:
        # Only an order is lost: each image meets the same error in its own copy, and is
        # reported there, one by one.
        log.debug("cannot list %s/%s to order new tags first: %s", name, repository, e)
        return list(tags)
    new = [t for t in tags if any(t not in p for p in present)]
    known = set(new)
    return new + [t for t in tags if t not in known]
