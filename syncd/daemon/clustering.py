"""The daemon's side of a cluster: the replica, its passes, its webhooks, its start.

Only imported when the config has a ``cluster:`` section, so a single process never loads
the etcd client. The daemon hands every pass's Syncer to the replica (``with_replica``):
the pass then asks the replica which repositories it owns, the copy engine asks it before
each manifest PUT, and the registries see the replica's name in the User-Agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from syncd import USER_AGENT
from syncd.cluster import Replica
from syncd.config.schema import ClusterConfig, Config
from syncd.daemon.scheduler import Scheduler
from syncd.metrics import Metrics
from syncd.rules import rules_for_repository
from syncd.sync import Syncer
from syncd.webhooks import RepoEvent

logger = logging.getLogger(__name__)

# The daemon's factory of Syncers; keyword arguments it may take are passed through.
SyncerFactory = Callable[..., AbstractAsyncContextManager[Syncer]]


def open_replica(config: ClusterConfig, metrics: Metrics, scheduler: Scheduler) -> Replica:
    """The replica; the events it receives (hand-offs, units it gains) trigger passes."""

    def on_events(events: Sequence[RepoEvent]) -> None:
        scheduler.trigger(events)

    return Replica(config, metrics=metrics, on_events=on_events)


def with_replica(factory: SyncerFactory, replica: Replica) -> SyncerFactory:
    """Syncers whose passes consult ``replica`` and whose requests carry its name."""

    @asynccontextmanager
    async def open_syncer(config: Config, metrics: Metrics, **kw: Any) -> AsyncIterator[Syncer]:
        async with factory(config, metrics, **kw) as syncer:
            syncer.ownership = replica
            syncer.engine.fence = replica.may_write
            syncer.pool.user_agent = f"{USER_AGENT} (replica {replica.name})"
            yield syncer

    return open_syncer


def route(replica: Replica, scheduler: Scheduler) -> Callable[[Sequence[RepoEvent]], list[str]]:
    """The webhook trigger: events for this replica's units queue here, the rest are handed
    to their owners through etcd. Returns the rules that watch the repositories."""

    def trigger(events: Sequence[RepoEvent]) -> list[str]:
        rules = scheduler.rules()
        local = replica.route(events, rules)
        scheduler.trigger(local)
        names: Iterable[str] = {
            r.name for e in events for r in rules_for_repository(rules, e.repository)
        }
        return sorted(names)

    return trigger


async def wait_settled(replica: Replica, stop: asyncio.Event) -> None:
    """Until the replica has joined and its peers have had a moment to join too.

    Replicas started together would otherwise let the first one claim every unit for a whole
    interval. Settled: ``expected_members`` are present, or a lease TTL passed since joining.
    """
    joined_at: float | None = None
    step = min(0.2, replica.config.lease_ttl / 10)
    while not stop.is_set():
        if replica.ready:
            joined_at = joined_at or time.monotonic()
            expected = replica.config.expected_members
            members = len(replica.status()["members"])
            if (expected is not None and members >= expected) or (
                time.monotonic() - joined_at >= replica.config.lease_ttl
            ):
                return
        try:
            async with asyncio.timeout(step):
                await stop.wait()
        except TimeoutError:
            pass
    logger.info("stopping before the cluster settled")
