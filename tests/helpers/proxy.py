"""A loopback TCP proxy that injects faults between syncd and a registry.

It runs its own asyncio loop in a daemon thread, so a test can drive syncd in-process
(async) or as a subprocess (blocking) while the proxy keeps relaying. Faults:

- ``reset_fraction``: each new connection is, with that probability, reset (RST, not a
  clean FIN) after a random 0..``reset_within`` bytes relayed either way, so mid-request
  or mid-response;
- ``cut_after(n)``: once, the connection that carries the n-th client byte is reset right
  there, mid-body (``at_boundary=False``), or, with ``at_boundary=True``, the next time a
  connection starts a new request after n bytes have passed (the request is dropped before
  any of it reaches the registry: an idle keep-alive connection killed by a middlebox);
- ``latency``: a delay before each relayed read, both ways.

Counters (``bytes_in`` from the client, ``bytes_up`` forwarded to the registry,
``bytes_down``, ``connections``, ``resets``) let tests measure what a fault cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, field

_READ = 64 * 1024


@dataclass
class _Conn:
    reset_at: int | None = None  # bytes (both ways) after which this connection is reset
    up: int = 0
    down: int = 0
    last: str = ""  # "up" or "down": who spoke last (a request boundary is after "down")
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST, which is what a dying middlebox does.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``FaultProxy(upstream_port, ...)``; use ``.url``/``.host``; ``close()`` at the end."""

    def __init__(
        self,
        upstream_port: int,
        *,
        reset_fraction: float = 0.0,
        reset_within: int = 512 * 1024,
        latency: float = 0.0,
        seed: int = 7,
    ) -> None:
        self.upstream_port = upstream_port
        self.reset_fraction = reset_fraction
        self.reset_within = reset_within
        self.latency = latency
        self._rnd = random.Random(seed)
        self._lock = threading.Lock()
        self.bytes_in = 0  # everything the client sent, relayed or dropped
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.resets = 0
        self._cut_at: int | None = None
        self._cut_boundary = False
        self._cut_armed = False  # boundary mode: the budget is spent, cut the next request
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[asyncio.StreamWriter] = set()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("proxy did not start")
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def cut_after(self, n: int, *, at_boundary: bool = False) -> None:
        """Arm a single cut after ``n`` more client bytes have been relayed."""
        with self._lock:
            self._cut_at = self.bytes_up + n
            self._cut_boundary = at_boundary
            self._cut_armed = False

    def set_reset_fraction(self, fraction: float) -> None:
        with self._lock:
            self.reset_fraction = fraction

    # -- the relay ---------------------------------------------------------------------
    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            started.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(writers=[cwriter])
        with self._lock:
            self.connections += 1
            if self.reset_fraction and self._rnd.random() < self.reset_fraction:
                conn.reset_at = self._rnd.randint(0, self.reset_within)
        try:
            try:
                ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                _abort(cwriter)
                return
            conn.writers.append(uwriter)
            self._conns.update(conn.writers)
            up = asyncio.ensure_future(self._pump_up(conn, creader, uwriter))
            down = asyncio.ensure_future(self._pump_down(conn, ureader, cwriter))
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            for w in conn.writers:
                self._conns.discard(w)
                if not w.transport.is_closing():
                    w.close()
            self._tasks.discard(task)

    def _reset(self, conn: _Conn) -> None:
        with self._lock:
            self.resets += 1
        for w in conn.writers:
            _abort(w)

    async def _pump_up(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await reader.read(_READ)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            with self._lock:
                self.bytes_in += len(data)
            if self.latency:
                await asyncio.sleep(self.latency)  # sleep-ok: injected latency is the fault
            send, reset = self._admit(conn, data)
            if send:
                writer.write(send)
                with self._lock:
                    self.bytes_up += len(send)
                conn.up += len(send)
                conn.last = "up"
            if reset:
                if send:
                    await writer.drain()
                self._reset(conn)
                return
            await writer.drain()

    def _admit(self, conn: _Conn, data: bytes) -> tuple[bytes, bool]:
        """How much of ``data`` to relay, and whether to reset after it."""
        with self._lock:
            if conn.reset_at is not None and conn.up + conn.down + len(data) >= conn.reset_at:
                return data[: max(0, conn.reset_at - conn.up - conn.down)], True
            if self._cut_at is None:
                return data, False
            if self._cut_boundary:
                if self._cut_armed and conn.last != "up":
                    # A new request on this connection: drop it whole.
                    self._cut_at = None
                    self._cut_armed = False
                    self.cuts += 1
                    return b"", True
                if self.bytes_up + len(data) >= self._cut_at:
                    self._cut_armed = True
                return data, False
            if self.bytes_up + len(data) >= self._cut_at:
                keep = self._cut_at - self.bytes_up
                self._cut_at = None
                self.cuts += 1
                return data[:keep], True
            return data, False

    async def _pump_down(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await reader.read(_READ)
            if not data:
                return
            if self.latency:
                await asyncio.sleep(self.latency)  # sleep-ok: injected latency is the fault
            reset = False
            with self._lock:
                if conn.reset_at is not None and conn.up + conn.down + len(data) >= conn.reset_at:
                    data = data[: max(0, conn.reset_at - conn.up - conn.down)]
                    reset = True
                self.bytes_down += len(data)
            conn.down += len(data)
            if data:
                writer.write(data)
            conn.last = "down"
            if reset:
                await writer.drain()
                self._reset(conn)
                return
            await writer.drain()

    # -- shutdown ----------------------------------------------------------------------
    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        if self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
