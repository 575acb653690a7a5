"""``syncd run``: start up, serve until a signal, stop gracefully.

Start-up, in order: load the config (invalid: log every problem, exit 2), listen
(``--listen``, else ``server.listen``, else ``127.0.0.1:9090``; taken: exit 1), open the
registry sessions, then start the scheduler and the config watcher. ``/healthz`` answers as
soon as the server listens; ``/readyz`` turns 200 when the first pass starts.

Signals are captured here and nowhere else, and only set flags: SIGHUP asks for a reload,
SIGTERM or SIGINT for a graceful stop (``/readyz`` and the webhooks answer 503 from then on),
and a second one of those forces the stop at once.

Graceful stop, in uvicorn's order: stop scheduling and answer the webhooks and ``/readyz``
with 503; wait for the passes in flight, at most ``shutdown_timeout`` seconds; cancel what is
left; close the HTTP server and the registry sessions; exit 0. Cancelling a pass is safe at
any point: the copy engine puts a manifest only after every blob it references is at the
target, so a cancelled copy leaves at worst unreferenced blobs (which the next pass reuses),
never a tag that points at an incomplete image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncd import event_loop
from syncd.config.load import load_config
from syncd.config.schema import Config, RuleConfig
from syncd.daemon.heap import HeapKeeper
from syncd.daemon.reload import ConfigWatcher, fingerprint
from syncd.daemon.scheduler import PassOutcome, Scheduler
from syncd.errors import ConfigError
from syncd.metrics import Metrics
from syncd.report import rule_report, run_report
from syncd.rules import rules_for_repository
from syncd.secret import Secret
from syncd.server import HttpServer, Trigger
from syncd.sync import Syncer, open_syncer

if TYPE_CHECKING:
    from syncd.cluster import Replica

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9090"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

# (config, metrics, previous syncer or None): the previous one hands over what it learned.
SyncerFactory = Callable[..., AbstractAsyncContextManager[Syncer]]


def parse_listen(text: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every interface) → (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or None, int(port_text)


async def serve(
    config_path: str,
    *,
    listen: str | None,
    shutdown_timeout: float,
    metrics: Metrics,
    on_config: Callable[[Config], None] | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit status (0 graceful, 1 failure, 2 config).

    ``on_config`` sees every config that takes effect, the first and each reloaded one (the
    CLI uses it to teach the log redactor the secrets a reload brings).
    """
    daemon = Daemon(
        config_path,
        listen=listen,
        shutdown_timeout=shutdown_timeout,
        metrics=metrics,
        on_config=on_config,
    )
    return await daemon.serve()


@dataclass(eq=False)
class _SyncerSlot:
    """One open Syncer, held by its own task so its sessions open and close in one task.

    Passes borrow it (``use``); once a reload replaced it (``retire``), it closes when the
    last pass that borrowed it ends.
    """

    task: asyncio.Task[None] | None = None
    syncer: Syncer | None = None
    users: int = 0
    retired: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(
        cls,
        factory: SyncerFactory,
        config: Config,
        metrics: Metrics,
        previous: Syncer | None = None,
    ) -> _SyncerSlot:
        slot = cls()
        opened: asyncio.Future[Syncer] = asyncio.get_running_loop().create_future()

        async def hold() -> None:
            try:
                async with factory(config, metrics, previous=previous) as syncer:
                    opened.set_result(syncer)
                    await slot.release.wait()
            except asyncio.CancelledError:
                opened.cancel()
                raise
            except BaseException as e:
                if not opened.done():
                    opened.set_exception(e)
                raise

        slot.task = asyncio.create_task(hold(), name="syncer")
        try:
            slot.syncer = await opened
        except BaseException:
            await asyncio.gather(slot.task, return_exceptions=True)
            raise
        return slot

    @asynccontextmanager
    async def use(self) -> AsyncIterator[Syncer]:
        assert self.syncer is not None
        self.users += 1
        try:
            yield self.syncer
        finally:
            self.users -= 1
            if self.retired and self.users == 0:
                self.release.set()

    def retire(self) -> None:
        self.retired = True
        if self.users == 0:
            self.release.set()

    async def aclose(self) -> None:
        """Close now (shutdown: the passes that used it are over or cancelled)."""
        self.release.set()
        if self.task is not None:
            (outcome,) = await asyncio.gather(self.task, return_exceptions=True)
            if isinstance(outcome, Exception):
                logger.warning("closing registry sessions failed: %s", outcome)


class Daemon:
    """The running daemon: config, syncer, scheduler, HTTP server and config watcher."""

    def __init__(
        self,
        config_path: str,
        *,
        listen: str | None,
        shutdown_timeout: float,
        metrics: Metrics,
        syncer_factory: SyncerFactory = open_syncer,
        load: Callable[[str], Config] = load_config,
        reload_poll: float = 2.0,
        on_config: Callable[[Config], None] | None = None,
    ) -> None:
        self._on_config = on_config
        self._path = config_path
        self._listen = listen
        self._shutdown_timeout = shutdown_timeout
        self._metrics = metrics
        self._syncer_factory = syncer_factory
        self._load = load
        self._reload_poll = reload_poll
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._stop_signal = ""
        self._config: Config | None = None
        self._syncer: _SyncerSlot | None = None
        self._retired: set[_SyncerSlot] = set()
        self._scheduler: Scheduler | None = None
        self._watcher: ConfigWatcher | None = None
        self._replica: Replica | None = None
        self._server: HttpServer | None = None
        # rule name -> the run report entry of its latest finished pass, for GET /status
        self._reports: dict[str, dict[str, Any]] = {}
        self._heap = HeapKeeper()

    # -- the whole life -----------------------------------------------------------------
    async def serve(self) -> int:
        loaded = fingerprint(self._path)
        try:
            config = await asyncio.to_thread(self._load, self._path)
        except ConfigError as e:
            _log_config_error(e, self._path)
            return EXIT_CONFIG
        listen = self._listen or config.server.listen or DEFAULT_LISTEN
        try:
            host, port = parse_listen(listen)
        except ValueError as e:
            logger.error("%s", e, extra={"result": "failure"})
            return EXIT_CONFIG
        self._config = config
        if self._on_config:
            self._on_config(config)
        scheduler = self._scheduler = Scheduler(
            self._run_rule, match=rules_for_repository, metrics=self._metrics
        )
        trigger: Trigger = scheduler.trigger
        if config.cluster is not None:
            # Imported only here: a single process never loads the etcd client.
            from syncd.daemon.clustering import open_replica, route, with_replica

            replica = self._replica = open_replica(config.cluster, self._metrics, scheduler)
            self._syncer_factory = with_replica(self._syncer_factory, replica)
            trigger = route(replica, scheduler)
        # Listening first: /healthz answers (and /readyz says 503) while sessions open.
        server = HttpServer(
            metrics=self._metrics,
            ready=self._ready,
            trigger=trigger,
            webhook_token=self._webhook_token,
            cluster_status=self._replica.status if self._replica else None,
            status=self.status,
        )
        try:
            await server.start(host, port)
        except OSError as e:
            logger.error("cannot listen on %s: %s", listen, e, extra={"result": "failure"})
            return EXIT_FAILURE
        self._server = server
        try:
            with self._capture_signals():
                try:
                    self._syncer = await _SyncerSlot.open(
                        self._syncer_factory, config, self._metrics
                    )
                except Exception:
                    logger.exception(
                        "cannot open the registry sessions", extra={"result": "failure"}
                    )
                    return EXIT_FAILURE
                try:
                    return await self._serve(config, server, scheduler, listen, loaded)
                finally:
                    await self._close_syncers()
        finally:
            await server.aclose()

    async def _serve(
        self,
        config: Config,
        server: HttpServer,
        scheduler: Scheduler,
        listen: str,
        loaded: str | None,
    ) -> int:
        scheduler.set_rules(config.rules)
        watcher = self._watcher = ConfigWatcher(
            self._path,
            load=self._load,
            apply=self._apply,
            metrics=self._metrics,
            loaded_fingerprint=loaded,
            poll_interval=self._reload_poll,
        )
        if not config.server.webhook_token:
            logger.warning("webhooks disabled: no server.webhook_token in the config")
        logger.info(
            "syncd running",
            extra={
                "listen": listen,
                "rules": [r.name for r in config.rules],
                "event_loop": event_loop.name(),
            },
        )
        replica = self._replica
        membership = asyncio.create_task(replica.run(), name="cluster") if replica else None
        try:
            if replica is not None:
                from syncd.daemon.clustering import wait_settled

                await wait_settled(replica, self._stop)
            return await self._serve_scheduled(server, scheduler, watcher)
        finally:
            if membership is not None and replica is not None:
                membership.cancel()
                await asyncio.gather(membership, return_exceptions=True)
                # Revoking the lease hands this replica's units to the others at once.
                await replica.aclose()

    async def _serve_scheduled(
        self, server: HttpServer, scheduler: Scheduler, watcher: ConfigWatcher
    ) -> int:
        status = EXIT_OK
        scheduling = asyncio.create_task(scheduler.run(), name="scheduler")
        watching = asyncio.create_task(watcher.run(), name="config-watcher")
        stopping = asyncio.create_task(self._stop.wait(), name="stop-signal")
        try:
            done, _ = await asyncio.wait(
                {scheduling, watching, stopping}, return_when=asyncio.FIRST_COMPLETED
            )
            if stopping not in done:
                # Neither loop ends on its own: reaching here is a bug; stop cleanly anyway.
                for task in done:
                    logger.error(
                        "%s ended unexpectedly",
                        task.get_name(),
                        exc_info=None if task.cancelled() else task.exception(),
                        extra={"result": "failure"},
                    )
                status = EXIT_FAILURE
            await self._shutdown(server, scheduler, scheduling)
        finally:
            for task in (scheduling, watching, stopping):
                task.cancel()
            await asyncio.gather(scheduling, watching, stopping, return_exceptions=True)
        logger.info("syncd stopped", extra={"result": "success" if status == 0 else "failure"})
        return status

    async def _shutdown(
        self, server: HttpServer, scheduler: Scheduler, scheduling: asyncio.Task[None]
    ) -> None:
        in_flight = scheduler.running()
        logger.info(
            "stopping",
            extra={
                "signal": self._stop_signal,
                "rules": in_flight,
                "shutdown_timeout": self._shutdown_timeout,
            },
        )
        server.stop_accepting()
        scheduler.stop()
        if not scheduling.done():
            forced = asyncio.create_task(self._force.wait())
            try:
                await asyncio.wait(
                    {scheduling, forced},
                    timeout=self._shutdown_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                forced.cancel()
                await asyncio.gather(forced, return_exceptions=True)
        if not scheduling.done():
            left = scheduler.running()
            logger.warning(
                "cancelling passes still running",
                extra={"rules": left, "forced": self._force.is_set(), "result": "cancelled"},
            )
            scheduling.cancel()
            await asyncio.gather(scheduling, return_exceptions=True)

    # -- what the scheduler, server and watcher call ------------------------------------
    async def _run_rule(
        self, rule: RuleConfig, repositories: Collection[str] | None
    ) -> PassOutcome:
        slot = self._syncer
        assert slot is not None
        async with slot.use() as syncer:
            result = await syncer.run_rule(rule, repositories=repositories)
        report = rule_report(result)
        if repositories is not None:
            # A webhook-triggered pass looked only at the pushed repositories.
            report["repositories"] = sorted(repositories)
        self._reports[rule.name] = report
        self._heap.after_pass()
        return result

    def status(self) -> dict[str, Any]:
        """The run report of the latest finished pass of every rule of the current config."""
        rules = self._config.rules if self._config else ()
        return run_report(self._reports[r.name] for r in rules if r.name in self._reports)

    def _ready(self) -> bool:
        # In a cluster, also a live lease: a fenced replica copies nothing.
        ready = self._scheduler is not None and self._scheduler.ready
        return ready and (self._replica is None or self._replica.ready)

    def _webhook_token(self) -> Secret | None:
        return self._config.server.webhook_token if self._config else None

    async def _apply(self, new: Config) -> None:
        """Swap in a validated config; called by the watcher, between passes."""
        old = self._config
        assert old is not None and self._scheduler is not None and self._syncer is not None
        if self._stop.is_set():
            raise RuntimeError("stopping: reload ignored")
        if self._on_config:
            self._on_config(new)
        if new.registries != old.registries:
            # Open the new sessions first: if that fails the old config stays in force.
            # The new syncer takes over the old one's sessions, tokens, caches and
            # in-flight copy bookkeeping (see open_syncer), so nothing learned is lost
            # and passes of both configs never copy one tag at the same time.
            fresh = await _SyncerSlot.open(
                self._syncer_factory, new, self._metrics, self._syncer.syncer
            )
            previous, self._syncer = self._syncer, fresh
            previous.retire()
            self._retired.add(previous)
            self._retired = {s for s in self._retired if not s.task or not s.task.done()}
        if new.cluster != old.cluster:
            logger.warning("cluster changed: it takes effect at the next restart")
        if self._listen is None and new.server.listen != old.server.listen:
            logger.warning("server.listen changed: it takes effect at the next restart")
        self._config = new
        self._scheduler.set_rules(new.rules)

    async def _close_syncers(self) -> None:
        slots = [s for s in (self._syncer, *self._retired) if s is not None]
        for slot in slots:
            await slot.aclose()

    # -- signals --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _capture_signals(self) -> Iterator[None]:
        # Signal handlers can only be installed from the main thread; elsewhere (an
        # embedding test) the caller stops the daemon by other means.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in handled:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            if self._watcher is not None and not self._stop.is_set():
                logger.info("SIGHUP: reloading the config")
                self._watcher.request()
            return
        if self._stop.is_set():
            logger.warning("second %s: stopping now", sig.name)
            self._force.set()
            return
        self._stop_signal = sig.name
        # Not ready from the moment the signal is handled, not from when the stop task next
        # runs: the loop may serve a request in between (uvloop runs I/O callbacks before a
        # woken task), and a probe sent right after SIGTERM must not be told "ready".
        if self._server is not None:
            self._server.stop_accepting()
        self._stop.set()

    def request_stop(self) -> None:
        """Stop gracefully, as SIGTERM would (for embedding and tests)."""
        self._on_signal(signal.SIGTERM)


def _log_config_error(err: ConfigError, path: str) -> None:
    for problem in err.problems:
        logger.error(
            "config invalid: %s",
            problem,
            extra={
                "config_file": path,
                "line": problem.line,
                "column": problem.column,
                "key": problem.key,
                "result": "failure",
            },
        )
    if not err.problems:
        logger.error("config invalid: %s", err, extra={"config_file": path, "result": "failure"})
