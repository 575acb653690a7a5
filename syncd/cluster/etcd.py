"""The connection to etcd: one gRPC channel at a time, failing over through the endpoints.

aetcd (the asyncio etcd v3 client) opens a plain channel to one ``host:port``. syncd's config
names several endpoints and may ask for TLS, so ``_Client`` builds the channel itself (TLS
with an extra CA and a client certificate, per etcd's transport security guide) and
``EtcdSession`` moves to the next endpoint whenever a request fails: every request has a
deadline, so a dead member costs one timeout, not a hang. Each request is counted in
``syncd_cluster_etcd_requests_total{op}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import grpc

from syncd.config.schema import EtcdConfig
from syncd.errors import SyncdError
from syncd.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# gRPC keeps reconnect backoff per address in a process-wide subchannel pool, growing to two
# minutes: a fresh channel to an etcd member that was down would still wait it out. Each
# channel gets its own pool and a short backoff, since the session fails over by itself.
_CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class EtcdUnavailableError(SyncdError):
    """A request to etcd failed or timed out (the session moved to the next endpoint)."""

    reason = "etcd_unavailable"
    retryable = True


class EtcdNotFoundError(SyncdError):
    """etcd answered that the lease or key asked for does not exist (an answer, not a fault)."""

    reason = "etcd_not_found"


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client over a channel syncd builds: TLS when the endpoint is https."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, **kw: Any):
        host, _, port = target.rpartition(":")
        super().__init__(host=host, port=int(port), **kw)
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        # The same steps as aetcd.Client.connect, with the channel chosen here.
        if self._connected.is_set():
            return
        try:
            if self._credentials is not None:
                self.channel = aetcd.rpc.secure_channel(
                    self._target, self._credentials, options=_CHANNEL_OPTIONS
                )
            else:
                self.channel = aetcd.rpc.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
            if self._username is not None and self._password is not None:
                self.auth_stub = aetcd.rpc.AuthStub(self.channel)
                resp = await self.auth_stub.Authenticate(
                    aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                self.metadata = (("token", resp.token),)
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        except aetcd.rpc.AioRpcError as e:
            await self.channel.close()
            raise EtcdUnavailableError(f"{self._target}: {e.code().name}") from None


def closed_under_us() -> bool:
    """Whether a CancelledError just caught came from grpc, not from a cancelled caller.

    grpc.aio cancels every call of a channel that is closed, and the call raises
    CancelledError in whoever awaits it: another request failed and dropped the shared
    client. That is a failed request; only a task that was itself told to stop
    (``Task.cancelling``) must stop.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _credentials(cfg: EtcdConfig) -> grpc.ChannelCredentials | None:
    if not cfg.endpoints[0].startswith("https://"):
        return None
    root = Path(cfg.ca_file).read_bytes() if cfg.ca_file else None
    cert = Path(cfg.client_cert).read_bytes() if cfg.client_cert else None
    key = Path(cfg.client_key).read_bytes() if cfg.client_key else None
    return grpc.ssl_channel_credentials(root, key, cert)


class EtcdSession:
    """One live client; ``call`` runs a request on it with a deadline, failing over on error."""

    def __init__(self, cfg: EtcdConfig, *, timeout: float, metrics: Metrics | None) -> None:
        self._cfg = cfg
        self._targets = [urlsplit(e).netloc for e in cfg.endpoints]
        self._next = 0
        self._timeout = timeout
        self._metrics = metrics
        self._client: _Client | None = None
        self._connecting = asyncio.Lock()
        # Bumped when the client is replaced: a watch on the old one is dead and must restart.
        self.generation = 0
        self.replaced = asyncio.Event()

    @property
    def timeout(self) -> float:
        """The deadline of one request, in seconds."""
        return self._timeout

    @property
    def endpoint(self) -> str:
        return self._targets[(self._next - 1) % len(self._targets)]

    async def _connect(self) -> _Client:
        async with self._connecting:
            if self._client is not None:
                return self._client
            target = self._targets[self._next % len(self._targets)]
            self._next += 1
            password = None
            if self._cfg.password is not None:
                password = self._cfg.password.reveal()
            elif self._cfg.password_file:
                path = Path(self._cfg.password_file)
                password = (await asyncio.to_thread(path.read_text)).strip()
            # The timeout is per request (gRPC deadline); failures move to the next endpoint.
            credentials = await asyncio.to_thread(_credentials, self._cfg)
            client = _Client(
                target,
                credentials,
                username=self._cfg.username,
                password=password,
                timeout=self._timeout,
            )
            try:
                await asyncio.wait_for(client.connect(), self._timeout)
            except (TimeoutError, OSError, grpc.RpcError, aetcd.exceptions.ClientError) as e:
                raise EtcdUnavailableError(f"{target}: {type(e).__name__}") from None
            self._client = client
            return client

    async def call(self, op: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(client)`` with a deadline; on failure the next request uses the next endpoint."""
        if self._metrics is not None:
            self._metrics.cluster_etcd_requests.labels(op=op).inc()
        client = await self._connect()
        try:
            return await asyncio.wait_for(fn(client), self._timeout)
        except asyncio.CancelledError:
            if not closed_under_us():
                raise
            await self.drop(client)
            raise EtcdUnavailableError(
                f"etcd {op} at {client._target}: the connection was closed"
            ) from None
        except (TimeoutError, grpc.RpcError, aetcd.exceptions.ClientError) as e:
            cause = e.__cause__ if isinstance(e, aetcd.exceptions.ClientError) else e
            if (
                isinstance(cause, grpc.aio.AioRpcError)
                and cause.code() == grpc.StatusCode.NOT_FOUND
            ):
                raise EtcdNotFoundError(f"etcd {op}: {cause.details()}") from None
            await self.drop(client)
            raise EtcdUnavailableError(f"etcd {op} at {client._target}: {type(e).__name__}") from e

    async def drop(self, client: _Client | None = None) -> None:
        """Forget the client (if it is still the current one) and close it."""
        if client is None or client is self._client:
            old, self._client = self._client, None
            if old is not None:
                self.generation += 1
                self.replaced.set()
                self.replaced = asyncio.Event()
                try:
                    await asyncio.wait_for(old.close(), self._timeout)
                except Exception as e:  # a dead channel may fail to close; it is gone anyway
                    log.debug("closing the etcd client: %s", type(e).__name__)

    async def aclose(self) -> None:
        await self.drop()
