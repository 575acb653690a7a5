"""The one HTTP engine for a registry: session, auth, retries, metrics and error mapping.

Every endpoint method of ``RegistryClient`` builds a ``Request`` value and hands it to
``Transport.send`` (or ``stream`` for blob bodies). Only here are aiohttp exceptions and
HTTP statuses turned into syncd's typed errors, and only here are requests retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl as ssl_module
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base
from yarl import URL

from syncd import USER_AGENT
from syncd.errors import (
    AuthError,
    ClientRequestError,
    NotFoundError,
    OCIErrorDetail,
    RateLimitedError,
    RegistryError,
    ServerError,
    SyncdError,
)
from syncd.reference import origin
from syncd.registry.auth import Authenticator, parse_challenge
from syncd.registry.bodies import read_capped
from syncd.registry.limits import RegistryLimits, Slot
from syncd.registry.neterrors import PROXY_REFUSED, network_error
from syncd.registry.proxying import ProxyRoute
from syncd.registry.ratelimit import parse_retry_after

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

# Error bodies are for diagnostics only; a hostile server must not make us buffer more.
MAX_ERROR_BODY = 64 * 1024
# Bodies we read whole (manifests, listings, token answers) are capped by the caller;
# this is the ceiling for anything read through ``send``.
MAX_READ_BODY = 8 * 1024 * 1024
# Sized for registry restarts and brief overloads: 0.25 s doubling to 10 s with jitter.
_BACKOFF_INITIAL = 0.25
_BACKOFF_MAX = 10.0
# How long a failed /v2/ ping (after its retries) is the answer for other requests: the
# jobs queued behind it in one pass, not the next pass of a daemon.
_PING_FAILURE_TTL = 5.0

BodyFactory = Callable[[], AsyncIterable[bytes]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Request:
    """One registry request, described as data (regclient's ``reghttp.Req`` idea)."""

    method: str
    path: str  # "/v2/…", or an absolute URL the registry handed us (upload Location)
    repository: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | BodyFactory | None = None
    expect: tuple[int, ...] = (200,)
    # Statuses that are an answer rather than an error (404 on a HEAD means "absent").
    absent: tuple[int, ...] = ()
    scopes: tuple[str, ...] = ()
    retry: bool = True
    timeout: aiohttp.ClientTimeout | None = None
    max_body: int = MAX_READ_BODY
    attempts: int = 0  # 0: the transport's default


Links = MultiDictProxy[MultiDictProxy[str | URL]]
_NO_LINKS: Links = MultiDictProxy(MultiDict())


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    # The ``Link`` header (RFC 8288) as aiohttp parses it: rel → {"url": absolute URL, …}.
    links: Links = field(default_factory=lambda: _NO_LINKS)


def redact_url(url: str) -> str:
    """Drop userinfo, the query (upload state, signed redirect parameters) and the fragment."""
    try:
        parsed = URL(url)
        if parsed.absolute:
            parsed = parsed.with_user(None)  # None clears the password too
        return str(parsed.with_query(None).with_fragment(None))
    except ValueError:
        # Nothing of a URL that does not parse is safe to show.
        return "(unparseable URL)"


def parse_oci_errors(body: bytes) -> tuple[OCIErrorDetail, ...]:
    """The ``errors`` array of a distribution-spec error body, cut to sane lengths."""
    try:
        doc = json.loads(body[:MAX_ERROR_BODY])
        errors = doc.get("errors") or []
        return tuple(
            OCIErrorDetail(str(e.get("code", ""))[:64], str(e.get("message", ""))[:200])
            for e in errors[:5]
            if isinstance(e, dict)
        )
    except (ValueError, AttributeError, TypeError):
        text = body[:120].decode("utf-8", "replace").strip()
        return (OCIErrorDetail("", text),) if text else ()


def _outcome(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, SyncdError) and exc.retryable


class RetryAfterOrBackoff(wait_base):
    """Tenacity wait strategy: what a 429's ``Retry-After`` asked for, else exponential
    backoff with jitter (0.25 s doubling to 10 s).

    A ``Retry-After`` beyond ``max_retry_wait`` never gets here: ``RegistryLimits.refused``
    makes that error not retryable. The cap is read at each wait, so a reload that changes
    ``max_retry_wait`` applies to the next retry.
    """

    def __init__(self, limits: RegistryLimits) -> None:
        self._limits = limits
        self._backoff = wait_exponential_jitter(multiplier=_BACKOFF_INITIAL, max=_BACKOFF_MAX)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = _outcome(retry_state)
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            return min(exc.retry_after, self._limits.max_retry_wait)
        return float(self._backoff(retry_state))


class Transport:
    """Sends requests to one registry over one long-lived ``ClientSession``."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        authenticator: Authenticator,
        metrics: Metrics | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        max_concurrency: int = 8,
        retries: int = 5,
        user_agent: str = USER_AGENT,
        username: str | None = None,
        limits: RegistryLimits | None = None,
        proxy: ProxyRoute | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.origin = origin(self.base_url)  # normalised: compared with upload Locations
        self.auth = authenticator
        self.metrics = metrics
        self.ssl = ssl
        self.retries = max(1, retries)
        self.username = username
        self.proxy = proxy
        self._user_agent = user_agent
        self.max_concurrency = max_concurrency
        self._session: aiohttp.ClientSession | None = None
        self._ping_lock = asyncio.Lock()
        self._ping_failure: tuple[float, SyncdError] | None = None
        self._pinged = asyncio.Event()
        # Accounts, budgets, adaptive concurrency and pace: asked before every request.
        self.limits = limits or RegistryLimits(
            registry=name,
            authenticators=(authenticator,),
            max_concurrency=max_concurrency,
            metrics=metrics,
        )
        self._children: dict[tuple[str, int | str], tuple[Any, Any]] = {}
        # One tenacity policy per attempts budget (the default, and each rule's
        # ``retries``), built once and shared by every request with that budget.
        self._policies: dict[int, AsyncRetrying] = {}
        self._wait = RetryAfterOrBackoff(self.limits)
        # Optional endpoint features this registry turned out to lack ("mount",
        # "page_size"), so that each costs one refused request per process.
        self.lacks: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit caps parallel connections to this registry: max_concurrency.
            connector = aiohttp.TCPConnector(
                limit=self.max_concurrency,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
                force_close=bool(self.proxy and self.proxy.forwards_plain_http(self.base_url)),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self._user_agent},
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=15, sock_connect=15, sock_read=60
                ),
                auto_decompress=False,
                middlewares=(self.proxy.middleware,) if self.proxy else (),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- sending -----------------------------------------------------------------------
    def _url(self, req: Request) -> tuple[str, bool]:
        """The request's URL, and whether it is on the registry itself (not a redirect or
        an upload Location on another host)."""
        if req.path.startswith(("http://", "https://")):
            return req.path, origin(req.path) == self.origin
        return self.base_url + req.path, True

    async def ping(self, attempts: int = 0) -> None:
        """``GET /v2/`` once per process, to learn how this registry wants to be authed."""
        if self._pinged.is_set():
            return
        async with self._ping_lock:
            if self._pinged.is_set():
                return
            # Every job of a pass pings an unreachable registry through this lock in turn;
            # each would sit through the whole retry schedule again. A fresh failure answers
            # them at once instead (docs/reliability.md, "An unreachable registry fails a
            # pass once": 296 s against 6 s for a 50-tag pass to a dead target).
            failed = self._ping_failure
            if failed is not None and time.monotonic() - failed[0] < _PING_FAILURE_TTL:
                raise failed[1]
            try:
                await self._ping(attempts)
            except SyncdError as e:
                self._ping_failure = (time.monotonic(), e)
                raise
            self._ping_failure = None
            self._pinged.set()

    async def _ping(self, attempts: int) -> None:
        """``GET /v2/`` with retries; a 401 teaches the authenticator its challenge."""
        await self._retried(attempts, self._ping_once)

    async def _ping_once(self) -> None:
        url = self.base_url + "/v2/"
        with self._map_errors("GET", url, ""):
            start = time.monotonic()
            async with self.session.get(url, ssl=self._ssl_arg) as resp:
                await resp.content.read(MAX_ERROR_BODY)
                self._count("GET", resp.status, start)
                if self.proxy and resp.status == 407:
                    raise self.proxy.refusal(url, self.name)
                if resp.status == 401:
                    self.limits.learn(resp.headers.get("WWW-Authenticate"))
                elif resp.status >= 500 or resp.status == 429:
                    raise ServerError(
                        f"/v2/ answered {resp.status}",
                        registry=self.name,
                        method="GET",
                        url=redact_url(url),
                        status=resp.status,
                    )
                elif resp.status == 404:
                    raise ClientRequestError(
                        "not a registry: /v2/ answered 404 (check the url)",
                        registry=self.name,
                        method="GET",
                        url=redact_url(url),
                        status=404,
                    )

    @property
    def _ssl_arg(self) -> Any:
        return self.ssl if self.ssl is not None else True

    async def send(self, req: Request, attempts: int = 0) -> Response:
        """Send ``req`` (with retries unless ``req.retry`` is false) and read the body.

        ``attempts`` is the caller's budget (a rule's ``retries``), used when the request
        names none of its own.
        """
        attempts = req.attempts or attempts
        if not self._pinged.is_set():
            # The ping spends the budget of the request that needed it (a rule's retries).
            await self.ping(attempts)
        return await self._retried(self._attempts(req, attempts), self._send_once, req)

    async def _send_once(self, req: Request) -> Response:
        # Not ``async with self._exchange(req)``: a generator-based context manager costs
        # tens of µs, and this is every request's path.
        resp, slot = await self._start(req)
        try:
            if req.method == "HEAD":
                body = b""
            elif resp.status in req.expect:
                body = await read_capped(resp, req.max_body + 1)
                if len(body) > req.max_body:
                    err = ServerError(
                        f"response body over {req.max_body} bytes",
                        registry=self.name,
                        repository=req.repository,
                        method=req.method,
                        url=redact_url(str(resp.url)),
                        status=resp.status,
                    )
                    # The same request gets the same oversized answer: not worth a retry.
                    err.retryable = False
                    raise err
            else:
                body = b""
            # Parsed only when present: nearly no answer carries one, and the parse is not free.
            links = resp.links if "Link" in resp.headers else _NO_LINKS
            return Response(resp.status, resp.headers, body, str(resp.url), links)
        finally:
            self._finish(resp, slot)

    @asynccontextmanager
    async def stream(self, req: Request) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a response whose body the caller reads (blob GETs).

        Retries cover getting the response; a break while reading the body surfaces as a
        ``NetworkError`` for the blob step to retry as a whole.
        """
        await self.ping(req.attempts)
        stack, resp = await self._retried(self._attempts(req), self._open, req)
        async with stack:
            try:
                yield resp
            except (aiohttp.ClientError, TimeoutError) as e:
                raise self._network_error(e, req.method, str(resp.url), req.repository) from None

    async def _open(self, req: Request) -> tuple[AsyncExitStack, aiohttp.ClientResponse]:
        """One exchange whose response stays open, with what closes it."""
        stack = AsyncExitStack()
        try:
            resp = await stack.enter_async_context(self._exchange(req))
        except BaseException:
            await stack.aclose()
            raise
        return stack, resp

    @asynccontextmanager
    async def _exchange(self, req: Request) -> AsyncIterator[aiohttp.ClientResponse]:
        """``_start`` and ``_finish`` around a block that reads the response (streams)."""
        resp, slot = await self._start(req)
        try:
            yield resp
        finally:
            self._finish(resp, slot)

    async def _start(self, req: Request) -> tuple[aiohttp.ClientResponse, Slot]:
        """One HTTP exchange with auth, in a slot of the registry's limits
        (syncd.registry.limits); a 401 that brings a challenge is answered once.

        Returns the response (an expected or ``absent`` status) with its slot still held:
        the caller reads what it needs and then calls ``_finish``.
        """
        url, same_host = self._url(req)
        slot = await self.limits.acquire(req.method, req.path)
        try:
            auth = slot.auth
            for auth_try in (1, 2):
                headers = dict(req.headers)
                if same_host and auth.challenge is not None:
                    # Authorization goes only to the registry itself, never to a redirect host.
                    with self._map_errors(req.method, url, req.repository):
                        headers.update(
                            await auth.header(self.session, req.scopes, ssl=self._ssl_arg)
                        )
                body: Any = req.body() if callable(req.body) else req.body
                start = time.monotonic()
                # ``_map_errors`` spelled out, without a generator on every request's path.
                try:
                    resp = await self.session.request(
                        req.method,
                        url,
                        params=req.query or None,
                        headers=headers,
                        data=body,
                        ssl=self._ssl_arg,
                        timeout=req.timeout or aiohttp.helpers.sentinel,
                        allow_redirects=req.method in ("GET", "HEAD"),
                    )
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise self._failed(e, req.method, url, req.repository, start) from None
                try:
                    self._count(req.method, resp.status, start)
                    self.limits.answered(slot, resp.status, resp.headers)
                    # A body factory may not be re-playable (a tee'd stream); bytes always are.
                    replayable = req.body is None or isinstance(req.body, bytes)
                    if (
                        resp.status == 401
                        and auth_try == 1
                        and same_host
                        and replayable
                        and auth.learn(resp.headers.get("WWW-Authenticate"))
                    ):
                        auth.forget(req.scopes)
                        await resp.content.read(MAX_ERROR_BODY)
                        resp.release()
                        continue
                    if resp.status in req.expect or resp.status in req.absent:
                        return resp, slot
                    raise await self._status_error(req, resp, slot)
                except BaseException:
                    resp.release()
                    raise
        except BaseException:
            self.limits.release(slot)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish(self, resp: aiohttp.ClientResponse, slot: Slot) -> None:
        resp.release()
        self.limits.release(slot)

    # -- retries -----------------------------------------------------------------------
    def _attempts(self, req: Request, attempts: int = 0) -> int:
        return (req.attempts or attempts or self.retries) if req.retry else 1

    def _policy(self, attempts: int) -> AsyncRetrying:
        """The tenacity policy for a budget of ``attempts``, built once per budget."""
        policy = self._policies.get(attempts)
        if policy is None:
            policy = self._policies[attempts] = AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=self._wait,
                retry=retry_if_exception(_retryable),
                reraise=True,
                before_sleep=lambda state: self._note_retry(state, attempts),
            )
        return policy

    async def _retried(self, attempts: int, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """``fn(*args)`` under the policy for ``attempts`` (0: the transport's default).

        The shared policy object is called directly (``AsyncRetrying.__call__``): of
        tenacity's public ways it costs the least on a request that succeeds at once and,
        unlike a ``copy()`` per call or ``async for`` over one, leaves no reference cycles
        for the garbage collector (docs/reliability.md, "Cost of the retry policy").
        Concurrent calls may share it because each call's state is its own
        ``RetryCallState`` and the object's scratch state is only used inside one
        ``iter`` step, which never suspends while ``retry``, ``wait`` and
        ``before_sleep`` are plain functions, as they must stay.
        """
        result: _T = await self._policy(attempts or self.retries)(fn, *args)
        return result

    def _note_retry(self, state: RetryCallState, attempts: int) -> None:
        """Tenacity's ``before_sleep``: each retry is counted and logged once."""
        if self.metrics:
            self.metrics.retries.labels(registry=self.name).inc()
        log.warning(
            "retrying after %s (attempt %d of %d)",
            _outcome(state),
            state.attempt_number,
            attempts,
            extra={"registry": self.name, "event": "retry"},
        )

    # -- metrics and errors ------------------------------------------------------------
    def _count(self, method: str, code: int | str, start: float) -> None:
        if not self.metrics:
            return
        # The labelled children are looked up once: labels() costs more than inc().
        key = (method, code)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.metrics.registry_requests.labels(
                    registry=self.name, method=method, code=str(code)
                ),
                self.metrics.request_duration.labels(registry=self.name, method=method),
            )
        pair[0].inc()
        pair[1].observe(time.monotonic() - start)

    def _network_error(
        self, e: BaseException, method: str, url: str, repository: str
    ) -> RegistryError:
        where = dict(registry=self.name, repository=repository, method=method, url=redact_url(url))
        return network_error(e, self.host, where)

    @contextmanager
    def _map_errors(self, method: str, url: str, repository: str) -> Iterator[None]:
        """aiohttp's connection errors as a counted ``NetworkError``."""
        start = time.monotonic()
        try:
            yield
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._failed(e, method, url, repository, start) from None

    def _failed(
        self, e: BaseException, method: str, url: str, repository: str, start: float
    ) -> RegistryError:
        self._count(method, "error", start)
        return self._network_error(e, method, url, repository)

    async def _status_error(
        self, req: Request, resp: aiohttp.ClientResponse, slot: Slot
    ) -> RegistryError:
        try:
            body = await read_capped(resp, MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        details = parse_oci_errors(body)
        status = resp.status
        kw: dict[str, Any] = dict(
            registry=self.name,
            repository=req.repository,
            method=req.method,
            url=redact_url(str(resp.url)),
            status=status,
            details=details,
        )
        if status in (401, 403):
            # The registry's own words go into the message: they are what an operator
            # searches for ("UNAUTHORIZED: authentication required", "DENIED: …").
            text = "; ".join(str(d) for d in details)
            kw["details"] = ()
            username = slot.auth.username or self.username
            user = f"user {username}" if username else "anonymous"
            if len(self.limits.accounts) > 1:
                user = f"account {slot.account.index}"  # which one, never its name
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            # A token without the needed access is refused with 401 insufficient_scope
            # (token spec); to an operator that is a permission problem, like a 403.
            scope_refused = challenge is not None and challenge.params.get("error") == (
                "insufficient_scope"
            )
            if not text and challenge is not None and challenge.realm:
                # A HEAD has no body; the challenge at least tells what the registry wants.
                text = f"{challenge.scheme.capitalize()} challenge, realm {challenge.realm!r}"
            if status == 401 and not scope_refused:
                return AuthError(
                    f"authentication failed for {self.name} ({user})"
                    + (f": {text}" if text else ""),
                    **kw,
                )
            action = "push" if req.method in ("PUT", "POST", "PATCH", "DELETE") else "pull"
            return AuthError(
                f"denied: no {action} permission on {req.repository or 'the catalog'} ({user})"
                + (f": {text}" if text else ""),
                **kw,
            )
        if status == 407:  # an http:// request through a proxy: the proxy's refusal
            return AuthError(f"the proxy refused the request: {PROXY_REFUSED}", **kw)
        if status == 404:
            return NotFoundError("not found", **kw)
        if status == 429:
            asked = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            # The account stays away as asked; the others take over, or everyone waits.
            after, retryable = self.limits.refused(slot, asked)
            text = f"rate limited (429, Retry-After {asked:g}s)" if asked else "rate limited (429)"
            if not retryable:
                text += ": over max_retry_wait, left alone until then"
            err = RateLimitedError(text, retry_after=after, **kw)
            err.retryable = retryable
            return err
        if status >= 500 or status == 408:
            return ServerError(f"server error {status}", **kw)
        return ClientRequestError(f"request refused with {status}", **kw)
