"""Keep-alive connections to an upstream's targets: made on demand, reused most recent first.

A connection goes back to the pool only after a response that ended exactly where its framing
said, on a connection both sides keep alive (see :meth:`H1Connection.finish`). An idle
connection is closed when its upstream closes it, when any byte arrives on it (an unsolicited
response must never answer the next request), and after :data:`IDLE_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Hashable

from proxy.upstream.h1client import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    H1Connection,
    H1Response,
    PoolClosed,
    StaleConnection,
    TLSError,
)

IDLE_TIMEOUT = 30.0


class Endpoint:
    """Where a pool connects: host, port and, for TLS, the context and server name."""

    __slots__ = ("host", "port", "ssl")

    def __init__(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_ctx


class H1Pool:
    """The connections of one upstream, keyed by target."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.closed = False
        self._idle: dict[Hashable, list[H1Connection]] = {}
        self._conns: set[H1Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def counts(self) -> tuple[int, int]:
        """(connections in use, idle connections kept)."""
        idle = sum(len(conns) for conns in self._idle.values())
        return len(self._conns) - idle, idle

    async def request(
        self,
        key: Hashable,
        endpoint: Endpoint,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        head_only: bool,
        fresh: bool = False,
    ) -> H1Response:
        """Send a request on an idle connection (unless ``fresh``) or a new one; return once
        its response head arrived, the body perhaps still being sent (see
        :meth:`H1Response.settled`).

        Raises :class:`StaleConnection` when a reused connection ended before the response head:
        whether to try again on a new one (``fresh``) is the caller's call.
        """
        if self.closed:
            raise PoolClosed()
        conn = None if fresh else self._take(key)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(key, endpoint)
        resp = conn.start(head_only)
        try:
            conn.write(head)
            if body is not None:
                conn.start_body(resp, body, chunked)  # sent while the head is awaited
            await conn.response_head(resp)
        except Disconnected as exc:
            resp.close()
            await resp.settled()
            if reused:
                raise StaleConnection() from exc
            raise
        except BaseException:
            resp.close()
            await resp.settled()
            raise
        return resp

    async def _connect(self, key: Hashable, endpoint: Endpoint) -> H1Connection:
        loop = asyncio.get_running_loop()
        conn = H1Connection(self, key)
        tls = endpoint.ssl
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                await loop.create_connection(
                    lambda: conn,
                    endpoint.host,
                    endpoint.port,
                    ssl=tls,
                    server_hostname=endpoint.host if tls is not None else None,
                )
        except ssl.SSLError as exc:
            conn.close()
            raise TLSError(exc.reason or type(exc).__name__) from exc
        except TimeoutError as exc:
            conn.close()
            raise ConnectTimeout() from exc
        except OSError as exc:
            raise ConnectError(exc.strerror or type(exc).__name__) from exc
        except BaseException:
            conn.close()
            raise
        if self.closed:
            conn.close()
            raise PoolClosed()
        self._conns.add(conn)
        return conn

    # -- idle connections --------------------------------------------------------------------

    def _take(self, key: Hashable) -> H1Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.lost:
                return conn
        return None

    def put(self, conn: H1Connection) -> None:
        """Keep ``conn`` for the next request to its target."""
        if self.closed:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        conns = self._idle.get(conn.key)
        if conns is None:
            conns = self._idle[conn.key] = []
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + IDLE_TIMEOUT, self._sweep)

    def forget(self, conn: H1Connection) -> None:
        """``conn`` is closed: no longer counted, never handed out."""
        self._conns.discard(conn)
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for IDLE_TIMEOUT; come back when the next one will be."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest: float | None = None
        for conns in self._idle.values():
            # Most recent last: the stale ones are at the front.
            while conns and now - conns[0].idle_since >= IDLE_TIMEOUT:
                conns.pop(0).close()
            if conns and (oldest is None or conns[0].idle_since < oldest):
                oldest = conns[0].idle_since
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + IDLE_TIMEOUT, self._sweep)

    def close(self) -> None:
        """Close every connection, in use or idle."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            conns.clear()
        for conn in list(self._conns):
            conn.close()
