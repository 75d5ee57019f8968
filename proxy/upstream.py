"""Upstreams: one pooled ``ClientSession`` each, target choice, passive health, retries.

This is the one boundary where aiohttp and asyncio exceptions become :mod:`proxy.errors`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .config import UpstreamConfig
from .errors import (
    ClientAbort,
    PayloadTooLarge,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Headers aiohttp's client would otherwise add on its own.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept-Encoding", "Content-Type", "Accept"})


class ForwardRequest(aiohttp.ClientRequest):
    """aiohttp's client request, adding none of a client's default headers.

    A proxy forwards the client's headers as they are: no ``User-Agent``, ``Accept`` or
    ``Accept-Encoding`` of aiohttp's own. Equivalent to ``skip_auto_headers`` for those
    headers, without rebuilding the skip list for every request.
    """

    _SKIP: CIMultiDict[None] = CIMultiDict((h, None) for h in sorted(SKIP_AUTO_HEADERS))

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        self._skip_auto_headers = self._SKIP


class PoolConnector(aiohttp.TCPConnector):
    """A connection pool that never reuses a connection holding unread data.

    An upstream may send bytes on a connection after its response ended (a body longer than its
    Content-Length, an unsolicited response on an idle keep-alive connection). aiohttp keeps such
    bytes and would serve them as the answer to the next request on that connection, perhaps
    another client's (response desync). Such a connection is closed instead of reused. The hook
    is aiohttp's ``_get`` (its pool look-up); without it this class changes nothing.
    """

    async def _get(self, key: Any, traces: list[Any]) -> Any:
        while True:
            conn = await super()._get(key, traces)
            if conn is None:
                return None
            proto = conn.protocol
            if proto is None or not proto.should_close:
                return conn
            conn.close()


class Target:
    """One origin of an upstream, with its passive-health state."""

    __slots__ = (
        "down_until",
        "fails",
        "healthy",
        "host",
        "origin",
        "outstanding",
        "port",
        "requests",
        "scheme",
    )

    def __init__(self, origin: str) -> None:
        self.origin = origin
        url = URL(origin)
        self.scheme = url.scheme
        self.host = url.raw_host or ""
        self.port = url.port
        self.outstanding = 0
        self.fails = 0
        self.down_until = 0.0
        self.healthy = True  # active health check verdict
        self.requests = 0

    def url(self, path_qs: str, websocket: bool = False) -> URL:
        """The URL of ``path_qs`` on this target, the raw path and query kept byte for byte.

        The whole raw target goes in as the "path": yarl then keeps it exactly, even an empty
        query (``/x?``) that a parsed URL would drop.
        """
        scheme = self.scheme
        if websocket:
            scheme = "wss" if scheme == "https" else "ws"
        return URL.build(scheme=scheme, host=self.host, port=self.port, path=path_qs, encoded=True)

    def available(self, now: float) -> bool:
        return self.healthy and self.down_until <= now


class Upstream:
    """A named group of targets sharing one connection pool."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.targets = [Target(t) for t in config.targets]
        self._next = 0
        self.session: aiohttp.ClientSession | None = None
        self.on_target_error: Callable[[Upstream, Target, str], None] | None = None
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=config.connect_timeout or None,
            sock_read=config.read_timeout or None,
        )
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool
        if self.config.tls.verify:
            ssl_ctx = ssl.create_default_context(cafile=self.config.tls.ca_file)
        else:
            ssl_ctx = False
        connector = PoolConnector(
            limit=0, limit_per_host=0, ssl=ssl_ctx, keepalive_timeout=30, force_close=False
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=self.timeout,
            request_class=ForwardRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            read_bufsize=2**16,
        )
        if self.config.health is not None:
            self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # -- target choice ---------------------------------------------------------------------

    def pick(self, tried: set[Target]) -> Target:
        now = time.monotonic()
        candidates = [t for t in self.targets if t not in tried and t.available(now)]
        if not candidates:
            # Every target is ejected: try the one that comes back soonest rather than fail.
            candidates = [t for t in self.targets if t not in tried]
            if not candidates:
                raise UpstreamUnavailable(f"no target of upstream {self.name!r} is available")
            candidates = [min(candidates, key=lambda t: t.down_until)]
        if len(candidates) == 1:
            return candidates[0]
        if self.config.balance == "least_outstanding":
            return min(candidates, key=lambda t: (t.outstanding, t.requests))
        self._next = (self._next + 1) % len(candidates)
        return candidates[self._next]

    def _failed(self, target: Target, kind: str) -> None:
        target.fails += 1
        if self.config.max_fails and target.fails >= self.config.max_fails:
            target.down_until = time.monotonic() + self.config.fail_timeout
            target.fails = 0
        if self.on_target_error is not None:
            self.on_target_error(self, target, kind)

    # -- sending ---------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
        host_header: str | None,
        body_state: BodyState,
    ) -> tuple[aiohttp.ClientResponse, Target]:
        """Send the request to a target and return once its response headers arrived.

        Retries on another target when nothing of the request was sent (any method), or when
        the target dropped the connection before answering and the request can be repeated
        (an idempotent method). Never when the body stream was read from: it cannot be replayed.
        A client's body fault (413, a broken upload) is not held against the target.
        """
        assert self.session is not None
        tried: set[Target] = set()
        attempts = 1 + self.config.retries
        last: ProxyError | None = None
        for _ in range(attempts):
            try:
                target = self.pick(tried)
            except UpstreamUnavailable:
                break
            tried.add(target)
            if host_header is None:
                headers.popall("Host", None)
            else:
                headers["Host"] = host_header
            url = target.url(path_qs)
            target.outstanding += 1
            target.requests += 1
            try:
                resp = await self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=None if body is None else _Watched(body, body_state),
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                    expect100=False,
                    auto_decompress=False,
                    read_until_eof=True,
                )
            except BaseException as exc:
                target.outstanding -= 1
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if body_state.error is not None:
                    # The client's body was too large or broke off: not the target's fault.
                    raise body_state.error from exc
                error, retry = self._translate(exc, method, body_state)
                if error is None:
                    raise
                self._failed(target, error.code)
                last = error
                # Whatever went wrong, a body stream that was read from cannot be sent again.
                if retry and not body_state.started and len(tried) < len(self.targets):
                    continue
                raise error from exc
            target.fails = 0
            return resp, target
        raise last or UpstreamUnavailable(f"no target of upstream {self.name!r} is available")

    def _translate(
        self, exc: BaseException, method: str, body_state: BodyState
    ) -> tuple[ProxyError | None, bool]:
        """(the proxy error for ``exc``, whether another target may be tried)."""
        repeatable = method in IDEMPOTENT and not body_state.started
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamTimeout(f"connecting to upstream {self.name!r} timed out"), True
        if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
            return (
                UpstreamTimeout(f"upstream {self.name!r} sent no response headers in time"),
                False,
            )
        # The detail a client sees names what failed, never what the upstream sent: aiohttp's
        # exception texts can carry the upstream's partial response.
        if isinstance(exc, aiohttp.ClientSSLError):
            return UpstreamUnavailable(
                f"upstream {self.name!r} failed the TLS handshake (certificate not trusted?)"
            ), True
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return UpstreamUnavailable(f"upstream {self.name!r} is unreachable: {reason}"), True
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
            return (
                UpstreamUnavailable(f"upstream {self.name!r} closed the connection early"),
                repeatable,
            )
        if isinstance(exc, aiohttp.ClientResponseError):
            return UpstreamUnavailable(f"upstream {self.name!r} sent an invalid response"), False
        if isinstance(exc, aiohttp.ClientError | OSError):
            return UpstreamUnavailable(
                f"upstream {self.name!r} failed ({type(exc).__name__})"
            ), repeatable
        return None, False

    # -- active health -----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        health = self.config.health
        assert health is not None and self.session is not None
        timeout = aiohttp.ClientTimeout(total=health.timeout)
        while True:
            for target in self.targets:
                try:
                    async with self.session.get(
                        target.origin + health.path, timeout=timeout, allow_redirects=False
                    ) as resp:
                        await resp.read()
                        target.healthy = resp.status < 500
                except (TimeoutError, aiohttp.ClientError, OSError):
                    target.healthy = False
            await asyncio.sleep(health.interval)


class BodyState:
    """What happened to a request body while it streamed upstream.

    ``started``: something asked the body stream for a chunk, even if none came yet. From then
    on the stream cannot be sent again (a generator that was iterated, or was cancelled while
    it waited for the client, yields nothing more), so the request is never retried.
    """

    __slots__ = ("error", "received", "started")

    def __init__(self) -> None:
        self.started = False
        self.received = 0
        self.error: ProxyError | None = None


class _Watched:
    """``body`` as handed to aiohttp for one attempt, marking ``state.started`` on first use.

    A fresh wrapper per attempt around the same stream: an attempt that failed before reading
    (connection refused, connect timeout) leaves the stream untouched for the next target.
    """

    __slots__ = ("_it", "_state")

    def __init__(self, body: AsyncIterable[bytes], state: BodyState) -> None:
        self._it: AsyncIterator[bytes] = aiter(body)
        self._state = state

    def __aiter__(self) -> _Watched:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        self._state.started = True
        return anext(self._it)


async def limited_body(
    source: AsyncIterable[bytes], limit: int, state: BodyState
) -> AsyncIterable[bytes]:
    """Stream a request body upstream, stopping with 413 once it passes ``limit``."""
    try:
        async for chunk in source:
            state.received += len(chunk)
            if state.received > limit:
                state.error = PayloadTooLarge(f"the request body is larger than {limit} bytes")
                raise state.error
            yield chunk
    except (aiohttp.ClientPayloadError, ConnectionError) as exc:
        state.error = ClientAbort(f"the client's request body broke off: {exc}")
        raise state.error from exc
