"""Upstreams: one connection pool each, target choice, passive health, retries.

This is the one boundary where client exceptions (:mod:`proxy.h1client`'s, and aiohttp's for
WebSocket handshakes and health checks) become :mod:`proxy.errors`.
"""

from __future__ import annotations

import asyncio
import re
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
from .h1client import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    H1Error,
    H1Response,
    HeadTimeout,
    InvalidResponse,
    StaleConnection,
    TLSError,
)
from .h1pool import Endpoint, H1Pool

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
# Methods whose requests carry no body by convention: no "Content-Length: 0" when they have none.
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


class Target:
    """One origin of an upstream, with its passive-health state."""

    __slots__ = (
        "down_until",
        "endpoint",
        "fails",
        "healthy",
        "host",
        "host_header",
        "origin",
        "outstanding",
        "port",
        "requests",
        "scheme",
    )

    def __init__(self, origin: str, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        url = URL(origin)
        self.scheme = url.scheme
        self.host = url.raw_host or ""
        self.port = url.port
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        self.endpoint = Endpoint(self.host, port, ssl_ctx if tls else None)
        # The Host header a client of this origin sends: the port only when not the default.
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if url.is_default_port() else f"{host}:{port}"
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
        ssl_ctx = (
            _ssl_context(config) if any(o.startswith("https:") for o in config.targets) else None
        )
        self.targets = [Target(t, ssl_ctx) for t in config.targets]
        self._next = 0
        self.pool = H1Pool(config.connect_timeout, config.read_timeout)
        self._ssl = ssl_ctx
        # aiohttp's client, made on first use: WebSocket handshakes and active health checks.
        self._session: aiohttp.ClientSession | None = None
        self.on_target_error: Callable[[Upstream, Target, str], None] | None = None
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.config.health is not None:
            self._health_task = asyncio.create_task(self._health_loop())

    def client_session(self) -> aiohttp.ClientSession:
        """The aiohttp client of this upstream (WebSocket handshakes, health checks)."""
        if self._session is None:
            config = self.config
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, limit_per_host=0, ssl=self._ssl or False, keepalive_timeout=30
                ),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=config.connect_timeout or None,
                    sock_read=config.read_timeout or None,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        self.pool.close()
        if self._session is not None:
            await self._session.close()

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
        trace: Any = None,
    ) -> tuple[H1Response, Target]:
        """Send the request to a target and return once its response headers arrived.

        Retries on another target when nothing of the request was sent (any method), or when
        the target dropped the connection before answering and the request can be repeated
        (an idempotent method). Never when the body stream was read from: it cannot be replayed.
        A client's body fault (413, a broken upload) is not held against the target.
        """
        # The head is built once: the request line and Host (first, per target), the headers in
        # their order and repeats, then the body's framing.
        headers.popall("Host", None)
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        lines = len(headers) + 3  # with the request line, Host and the empty line
        chunked = False
        if body is not None:
            if "Content-Length" not in headers:
                chunked = True
                fields += "Transfer-Encoding: chunked\r\n"
                lines += 1
        elif method not in BODYLESS and "Content-Length" not in headers:
            fields += "Content-Length: 0\r\n"
            lines += 1
        line = f"{method} {path_qs} HTTP/1.1\r\nHost: "
        tried: set[Target] = set()
        attempts = 1 + self.config.retries
        last: ProxyError | None = None
        pool = self.pool
        head_only = method == "HEAD"
        for _ in range(attempts):
            try:
                target = self.pick(tried)
            except UpstreamUnavailable:
                break
            tried.add(target)
            # With tracing on, each attempt carries its own client span's traceparent.
            extra = "" if trace is None else trace.attempt(target, path_qs)
            text = f"{line}{host_header or target.host_header}\r\n{fields}{extra}\r\n"
            n = lines + extra.count("\r\n") if extra else lines
            # As aiohttp's writers: no control character but HTAB in the request line or a
            # header (CR and LF only as the line ends).
            if text.count("\n") != n or text.count("\r") != n or _CONTROL.search(text) is not None:
                raise ValueError("a control character in the request line or a header")
            head = text.encode("utf-8", "surrogateescape")
            target.outstanding += 1
            target.requests += 1
            try:
                for fresh in (False, True):
                    try:
                        resp = await pool.request(
                            target,
                            target.endpoint,
                            head,
                            None if body is None else _Watched(body, body_state),
                            chunked,
                            head_only,
                            fresh=fresh,
                        )
                        break
                    except StaleConnection:
                        # A kept-alive connection closed by the upstream as it was reused: once
                        # more on a new one, when nothing of the request can have been acted on.
                        if fresh or method not in IDEMPOTENT or body_state.started:
                            raise
            except BaseException as exc:
                target.outstanding -= 1
                if trace is not None:
                    trace.attempt_failed(exc)
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
        failure = _failure(exc)
        if failure is None:
            return None, False
        kind, detail = failure
        error, template, retry = _FAILURES[kind]
        if retry is None:  # the request may have reached the target
            retry = method in IDEMPOTENT and not body_state.started
        return error(template.format(name=self.name, detail=detail)), retry

    # -- active health -----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        health = self.config.health
        assert health is not None
        session = self.client_session()
        timeout = aiohttp.ClientTimeout(total=health.timeout)
        while True:
            for target in self.targets:
                try:
                    async with session.get(
                        target.origin + health.path, timeout=timeout, allow_redirects=False
                    ) as resp:
                        await resp.read()
                        target.healthy = resp.status < 500
                except (TimeoutError, aiohttp.ClientError, OSError):
                    target.healthy = False
            await asyncio.sleep(health.interval)


# What a client is told for each kind of failure (naming what failed, never what the upstream
# sent: exception texts can carry the upstream's partial response), and whether another target
# may be tried (None: only if the request can be repeated).
_FAILURES: dict[str, tuple[type[ProxyError], str, bool | None]] = {
    "connect_timeout": (UpstreamTimeout, "connecting to upstream {name!r} timed out", True),
    "head_timeout": (UpstreamTimeout, "upstream {name!r} sent no response headers in time", False),
    "tls": (
        UpstreamUnavailable,
        "upstream {name!r} failed the TLS handshake (certificate not trusted?)",
        True,
    ),
    "unreachable": (UpstreamUnavailable, "upstream {name!r} is unreachable: {detail}", True),
    "closed": (UpstreamUnavailable, "upstream {name!r} closed the connection early", None),
    "invalid": (UpstreamUnavailable, "upstream {name!r} sent an invalid response", False),
    "failed": (UpstreamUnavailable, "upstream {name!r} failed ({detail})", False),
    "failed_io": (UpstreamUnavailable, "upstream {name!r} failed ({detail})", None),
}


def _failure(exc: BaseException) -> tuple[str, str] | None:
    """The kind of an upstream failure (our client's, or aiohttp's for WebSocket handshakes
    and health checks) and its detail; None for what is not an upstream failure."""
    if isinstance(exc, H1Error):
        if isinstance(exc, ConnectTimeout):
            return "connect_timeout", ""
        if isinstance(exc, HeadTimeout):
            return "head_timeout", ""
        if isinstance(exc, TLSError):
            return "tls", ""
        if isinstance(exc, ConnectError):
            return "unreachable", exc.reason
        if isinstance(exc, Disconnected):
            return "closed", ""
        if isinstance(exc, InvalidResponse):
            return "invalid", ""
        return "failed", type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout", ""
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return "head_timeout", ""
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls", ""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "unreachable", exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "closed", ""
    if isinstance(exc, aiohttp.ClientResponseError):
        return "invalid", ""
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "failed_io", type(exc).__name__
    return None


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
    """``body`` as handed to the connection for one attempt, marking ``state.started`` on first use.

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


def _ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """The TLS context for an upstream's https targets: verified against ``tls.ca_file`` (or
    the system store) unless ``tls.verify`` is off."""
    if config.tls.verify:
        return ssl.create_default_context(cafile=config.tls.ca_file)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
