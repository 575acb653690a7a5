"""The etcd session and a replica's membership against a real etcd: failures that grpc
reports as a cancellation must cost a request, never the replica's place in the cluster."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from syncd.cluster.etcd import EtcdSession, EtcdUnavailableError
from syncd.cluster.replica import Replica
from syncd.config.schema import ClusterConfig, EtcdConfig
from tests.cluster.conftest import requires_etcd, until
from tests.helpers.etcd import EtcdCluster

pytestmark = [requires_etcd]
T = TypeVar("T")


def _session(etcd: EtcdCluster) -> EtcdSession:
    return EtcdSession(EtcdConfig(endpoints=tuple(etcd.endpoints)), timeout=5.0, metrics=None)


async def test_a_call_whose_channel_is_closed_under_it_is_a_failed_request(
    one_etcd: EtcdCluster,
) -> None:
    # Another request failing over drops the shared client; grpc.aio then cancels the
    # calls still in flight on its channel. Their callers must see a failed request.
    session = _session(one_etcd)
    member = one_etcd.members[0]
    assert member.proc is not None
    try:
        await session.call("range", lambda c: c.get(b"k"))  # connected
        os.kill(member.proc.pid, signal.SIGSTOP)  # the next call waits for an answer
        call = asyncio.create_task(session.call("range", lambda c: c.get(b"k")))
        for _ in range(20):
            await asyncio.sleep(0)  # sleep-ok: loop turns, until the call is on the wire
        assert not call.done()
        await session.drop()
        with pytest.raises(EtcdUnavailableError, match="connection was closed"):
            await asyncio.wait_for(call, 5.0)
    finally:
        os.kill(member.proc.pid, signal.SIGCONT)
        await session.aclose()
    # A caller that is itself cancelled is still cancelled.
    session = _session(one_etcd)
    try:
        await session.call("range", lambda c: c.get(b"k"))
        os.kill(member.proc.pid, signal.SIGSTOP)
        call = asyncio.create_task(session.call("range", lambda c: c.get(b"k")))
        for _ in range(20):
            await asyncio.sleep(0)  # sleep-ok: loop turns, until the call is on the wire
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        os.kill(member.proc.pid, signal.SIGCONT)
        await session.aclose()


async def test_a_lease_loop_that_ends_cancelled_means_a_rejoin(one_etcd: EtcdCluster) -> None:
    # However the keep-alive ends, the membership ends with it: otherwise the replica waits
    # on its watch for good with a lease nobody renews, fenced until it is restarted.
    config = ClusterConfig(
        etcd=EtcdConfig(endpoints=tuple(one_etcd.endpoints)), name="solo", lease_ttl=3.0
    )
    replica = Replica(config)
    runner = asyncio.create_task(replica.run())
    try:
        await until(lambda: replica.ready, "joined")
        old = replica._lease
        lease = next(t for t in asyncio.all_tasks() if t.get_name() == "cluster-lease")
        lease.cancel()
        await until(lambda: replica._lease not in (None, old), "a new lease", timeout=10)
        await until(lambda: replica.ready, "ready again", timeout=10)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await replica.aclose()


async def test_a_member_joining_between_the_two_reads_is_seen(one_etcd: EtcdCluster) -> None:
    # A replica reads its inbox and the members in two requests, at two revisions, then
    # watches. A member whose key lands between the two reads must still be seen.
    config = ClusterConfig(
        etcd=EtcdConfig(endpoints=tuple(one_etcd.endpoints)), name="solo", lease_ttl=3.0
    )
    replica = Replica(config)
    session = replica._etcd
    real_call = session.call
    reads = 0

    async def call(op: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        nonlocal reads
        out = await real_call(op, fn)
        if op == "range":
            reads += 1
            if reads == 1:  # between the first read and the second: another member joins
                one_etcd.ctl("put", f"{config.prefix}members/late", "{}")
        return out

    session.call = call  # type: ignore[method-assign]
    runner = asyncio.create_task(replica.run())
    try:
        await until(lambda: replica.ready, "joined")
        await until(lambda: "late" in replica.status()["members"], "the late member", timeout=5)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await replica.aclose()
