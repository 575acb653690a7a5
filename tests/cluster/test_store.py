"""The cluster's state store: what one replica writes, another reads, through real etcd."""

from __future__ import annotations

import asyncio

from syncd.cluster.store import EtcdStore, stored_reports
from syncd.config.schema import ClusterConfig, EtcdConfig
from tests.cluster.conftest import requires_etcd, until
from tests.helpers.etcd import EtcdCluster

pytestmark = [requires_etcd]
REG = "127.0.0.1:5000"


def _config(etcd: EtcdCluster, name: str) -> ClusterConfig:
    return ClusterConfig(etcd=EtcdConfig(endpoints=tuple(etcd.endpoints)), name=name, lease_ttl=3.0)


async def test_one_replica_reads_what_another_wrote(one_etcd: EtcdCluster) -> None:
    a = EtcdStore(_config(one_etcd, "a"))
    b = EtcdStore(_config(one_etcd, "b"))
    await a.start()
    await b.start()
    try:
        a.tag_put(
            "mirror", REG, "team/app", "v1", "sha256:" + "1" * 64, at=100.0, trusted_until=200.0
        )
        a.blob_put(REG, "sha256:" + "2" * 64, "team/app")
        a.sizes_put("sha256:" + "1" * 64, {"sha256:" + "2" * 64: 42})
        a.fact_put(REG, "referrers_api", "false", at=5.0)
        a.image_put(REG, "team/app", "sha256:" + "1" * 64, noted=True)
        a.save_report("mirror", {"name": "mirror", "targets": []})
        a.flush()
        await until(lambda: b.tag_get("mirror", REG, "team/app", "v1"), "the tag at b")
        rec = b.tag_get("mirror", REG, "team/app", "v1")
        assert rec is not None and (rec.digest, rec.at, rec.trusted_until) == (
            "sha256:" + "1" * 64,
            100.0,
            200.0,
        )
        await until(lambda: b.reports().get("mirror"), "the report at b")
        assert b.blob_where(REG, "sha256:" + "2" * 64) == "team/app"
        assert b.sizes_get("sha256:" + "1" * 64) == {"sha256:" + "2" * 64: 42}
        assert b.fact_get(REG, "referrers_api") == ("false", 5.0)
        # A unit that moved: b prunes the tag a wrote, and a sees it gone.
        b.tag_delete("mirror", REG, "team/app", "v1")
        b.repository_forget(REG, "team/app")
        b.flush()
        await until(lambda: a.tag_get("mirror", REG, "team/app", "v1") is None, "delete at a")
        await until(lambda: a.blob_where(REG, "sha256:" + "2" * 64) is None, "blob gone at a")
    finally:
        await a.aclose()
        await b.aclose()
    # A replica started later loads everything that is there.
    c = EtcdStore(_config(one_etcd, "c"))
    await c.start()
    try:
        assert c.reports()["mirror"] == {"name": "mirror", "targets": []}
        assert c.tag_get("mirror", REG, "team/app", "v1") is None
    finally:
        await c.aclose()
    assert any(k.startswith("/syncd/state/report/") for k in one_etcd.keys("/syncd/state/"))


async def test_writes_wait_for_etcd(one_etcd: EtcdCluster) -> None:
    a = EtcdStore(_config(one_etcd, "a"))
    await a.start()
    try:
        one_etcd.members[0].stop()
        a.tag_put("mirror", REG, "team/app", "v2", "sha256:" + "3" * 64, at=1.0)
        a.flush()
        assert a.tag_get("mirror", REG, "team/app", "v2") is not None  # read locally at once
        one_etcd.members[0].start()
        one_etcd.wait_healthy()
        a.flush()
        await until(
            lambda: any("v2" in k for k in one_etcd.keys("/syncd/state/tag/")),
            "the queued write in etcd",
            timeout=20,
        )
    finally:
        await a.aclose()


def test_status_reads_the_reports_from_etcd(one_etcd: EtcdCluster) -> None:
    config = _config(one_etcd, "a")

    async def write() -> None:
        store = EtcdStore(config)
        await store.start()
        store.save_report("mirror", {"name": "mirror", "targets": []})
        await store.aclose()  # sends what is queued

    asyncio.run(write())
    assert stored_reports(config) == {"mirror": {"name": "mirror", "targets": []}}
    one_etcd.stop()
    assert stored_reports(config) == {}  # etcd away: nothing, and no hang
