"""The lifecycle in-process, with a fake Syncer (no registry): readiness, stop, syncer swaps.

The real-process behaviour is covered in test_daemon.py; these pin down orderings that a real
registry makes hard to hold still (sessions slow to open, a pass that never ends).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from syncd.config.load import load_config
from syncd.config.schema import Config, RuleConfig
from syncd.daemon.lifecycle import Daemon, parse_listen
from syncd.metrics import Metrics
from tests.daemon.conftest import write_config
from tests.helpers.registry import free_port


@dataclass
class Outcome:
    synced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    ok: bool = True


@dataclass
class FakeSyncer:
    config: Config
    release: asyncio.Event
    calls: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    closed: bool = False

    async def run_rule(
        self, rule: RuleConfig, *, repositories: Collection[str] | None = None
    ) -> Outcome:
        self.calls.append(rule.name)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(rule.name)
            raise
        self.finished.append(rule.name)
        return Outcome()


@dataclass
class Fakes:
    opening: asyncio.Event = field(default_factory=asyncio.Event)  # set: sessions may open
    release: asyncio.Event = field(default_factory=asyncio.Event)  # set: passes may end
    syncers: list[FakeSyncer] = field(default_factory=list)

    def factory(self) -> Callable[..., Any]:
        @asynccontextmanager
        async def open_fake(
            config: Config, metrics: Metrics, previous: Any = None
        ) -> AsyncIterator[FakeSyncer]:
            await self.opening.wait()
            syncer = FakeSyncer(config, self.release)
            self.syncers.append(syncer)
            try:
                yield syncer
            finally:
                syncer.closed = True

        return open_fake


@dataclass
class Running:
    daemon: Daemon
    task: asyncio.Task[int]
    base: str
    http: aiohttp.ClientSession
    fakes: Fakes
    config: Path

    async def status(self, path: str) -> int:
        try:
            async with self.http.get(self.base + path) as resp:
                return resp.status
        except aiohttp.ClientConnectionError:
            return 0


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)  # sleep-ok: poll interval of a bounded wait


async def draining(r: Running) -> None:
    """Wait until the daemon has taken a stop request: ready no more, still serving."""
    async with asyncio.timeout(5):
        while await r.status("/readyz") != 503:
            await asyncio.sleep(0.01)  # sleep-ok: poll interval of a bounded wait


def _config(path: Path, url: str = "http://127.0.0.1:1", *names: str) -> Path:
    rules = [
        {"name": n, "source": "src", "targets": ["dst"], "repositories": ["a/b"], "interval": "1h"}
        for n in names or ("r1",)
    ]
    return write_config(path, {"src": url, "dst": "http://127.0.0.1:2"}, rules)


@asynccontextmanager
async def run_daemon(tmp_path: Path, *, shutdown_timeout: float = 5.0) -> AsyncIterator[Running]:
    fakes = Fakes()
    cfg = _config(tmp_path / "config.yaml")
    port = free_port()
    daemon = Daemon(
        str(cfg),
        listen=f"127.0.0.1:{port}",
        shutdown_timeout=shutdown_timeout,
        metrics=Metrics(),
        syncer_factory=fakes.factory(),
        load=load_config,
        reload_poll=0.1,
    )
    task = asyncio.create_task(daemon.serve())
    async with aiohttp.ClientSession() as http:
        r = Running(daemon, task, f"http://127.0.0.1:{port}", http, fakes, cfg)
        try:
            yield r
        finally:
            if not task.done():
                fakes.opening.set()
                fakes.release.set()
                daemon.request_stop()
                async with asyncio.timeout(10):
                    await task


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        ("192.0.2.1:80", ("192.0.2.1", 80)),
        (":9090", (None, 9090)),
        ("[::1]:9090", ("::1", 9090)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9090", "host:", "host:http", "host:70000"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


async def test_readyz_is_503_until_the_first_pass_starts(tmp_path: Path) -> None:
    async with run_daemon(tmp_path) as r:
        async with asyncio.timeout(5):
            while await r.status("/healthz") != 200:
                await asyncio.sleep(0.02)  # sleep-ok: poll interval of a bounded wait
        # Sessions are still opening: alive, not ready.
        assert await r.status("/readyz") == 503
        r.fakes.opening.set()
        await until(lambda: r.fakes.syncers and r.fakes.syncers[0].calls)
        assert await r.status("/readyz") == 200
        r.fakes.release.set()
        r.daemon.request_stop()
        assert await r.task == 0
        assert r.fakes.syncers[0].closed


async def test_stop_waits_for_the_pass_then_cancels_it(tmp_path: Path) -> None:
    async with run_daemon(tmp_path, shutdown_timeout=0.5) as r:
        r.fakes.opening.set()
        await until(lambda: r.fakes.syncers and r.fakes.syncers[0].calls)
        loop = asyncio.get_running_loop()
        start = loop.time()
        r.daemon.request_stop()
        # Draining: still serving, but not ready and refusing webhooks.
        assert await r.status("/readyz") == 503
        async with r.http.post(r.base + "/webhooks/distribution", data=b"{}") as resp:
            assert resp.status == 503
        assert await r.task == 0
        took = loop.time() - start
        syncer = r.fakes.syncers[0]
        assert syncer.cancelled == ["r1"] and syncer.closed
        assert 0.45 <= took < 3


async def test_stop_lets_a_pass_that_ends_in_time_finish(tmp_path: Path) -> None:
    async with run_daemon(tmp_path, shutdown_timeout=10) as r:
        r.fakes.opening.set()
        await until(lambda: r.fakes.syncers and r.fakes.syncers[0].calls)
        r.daemon.request_stop()
        await draining(r)
        assert not r.task.done()
        r.fakes.release.set()
        assert await r.task == 0
        assert r.fakes.syncers[0].finished == ["r1"]
        assert r.fakes.syncers[0].cancelled == []


async def test_a_second_stop_request_forces(tmp_path: Path) -> None:
    async with run_daemon(tmp_path, shutdown_timeout=60) as r:
        r.fakes.opening.set()
        await until(lambda: r.fakes.syncers and r.fakes.syncers[0].calls)
        r.daemon.request_stop()
        await draining(r)
        r.daemon.request_stop()
        async with asyncio.timeout(3):
            assert await r.task == 0
        assert r.fakes.syncers[0].cancelled == ["r1"]


async def test_new_registries_get_a_new_syncer_and_the_old_closes_after_its_pass(
    tmp_path: Path,
) -> None:
    async with run_daemon(tmp_path) as r:
        r.fakes.opening.set()
        await until(lambda: r.fakes.syncers and r.fakes.syncers[0].calls)
        old = r.fakes.syncers[0]
        _config(r.config, "http://127.0.0.1:3", "r1", "r2")
        await until(lambda: len(r.fakes.syncers) == 2)
        new = r.fakes.syncers[1]
        await until(lambda: new.calls)
        assert new.calls == ["r2"]  # r1 is unchanged and its pass is still in flight
        assert not old.closed  # still borrowed by r1's pass
        r.fakes.release.set()
        await until(lambda: old.closed)
        assert old.finished == ["r1"] and not new.closed
