"""The ``native`` transport: the product's own HTTP/1.1 client (:mod:`proxy.upstream.h1client`).

The request head is built once per request as one string (only ``Host`` differs per target)
and written in one piece; the body streams while the response is read (full duplex). The
client's exceptions become :class:`~proxy.upstream.transports.TransportFailure` (before the
head) or the proxy's body errors (after it) here and nowhere else. The native client speaks
request and response only: a WebSocket handshake goes to aiohttp's client (:mod:`.aiohttp_client`).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from proxy.errors import UpstreamBodyError, UpstreamBodyTimeout
from proxy.upstream.h1client import (
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
from proxy.upstream.h1pool import H1Pool
from proxy.upstream.transports import TransportFailure, TransportResponse, UpstreamRequest, Watched

if TYPE_CHECKING:
    from proxy.config.models import UpstreamConfig
    from proxy.upstream.group import Target
    from proxy.upstream.transports.aiohttp_client import AiohttpTransport

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
# Methods whose requests carry no body by convention: no "Content-Length: 0" when they have none.
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


class NativeTransport:
    def __init__(self, name: str, config: UpstreamConfig, ssl_ctx: ssl.SSLContext | None) -> None:
        self.name = name
        self.config = config
        self._ssl = ssl_ctx
        self.pool = H1Pool(config.connect_timeout, config.read_timeout)
        self._upgrades: AiohttpTransport | None = None  # WebSocket handshakes, made on first use

    async def handle(self, request: UpstreamRequest, target: Target) -> TransportResponse:
        if request.protocols is not None:
            if self._upgrades is None:
                from proxy.upstream.transports.aiohttp_client import AiohttpTransport

                self._upgrades = AiohttpTransport(self.name, self.config, self._ssl)
            return await self._upgrades.handle(request, target)
        head = _head(request, target)
        body = request.body
        state = request.body_state
        try:
            for fresh in (False, True):
                try:
                    resp = await self.pool.request(
                        target,
                        target.endpoint,
                        head,
                        None if body is None else Watched(body, state),
                        request.cache[2],
                        request.method == "HEAD",
                        fresh=fresh,
                    )
                    return NativeResponse(resp)
                except StaleConnection:
                    # A kept-alive connection closed by the upstream as it was reused: once
                    # more on a new one, when nothing of the request can have been acted on.
                    if fresh or not request.repeatable:
                        raise
        except H1Error as exc:
            raise TransportFailure(*_failure(exc)) from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.pool.close()
        if self._upgrades is not None:
            await self._upgrades.close()


def _head(request: UpstreamRequest, target: Target) -> bytes:
    """The request head for ``target``: the request line and Host (first), the headers in
    their order and repeats, then the body's framing; the fields are built once per request."""
    cache = request.cache
    if cache is None:
        headers = request.headers
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        lines = len(headers) + 3  # with the request line, Host and the empty line
        chunked = False
        if request.body is not None:
            if "Content-Length" not in headers:
                chunked = True
                fields += "Transfer-Encoding: chunked\r\n"
                lines += 1
        elif request.method not in BODYLESS and "Content-Length" not in headers:
            fields += "Content-Length: 0\r\n"
            lines += 1
        line = f"{request.method} {request.path_qs} HTTP/1.1\r\nHost: "
        cache = request.cache = (line, fields, chunked, lines)
    line, fields, _, lines = cache
    extra = request.extra
    text = f"{line}{request.host_header or target.host_header}\r\n{fields}{extra}\r\n"
    if extra:
        lines += extra.count("\r\n")
    # As aiohttp's writers: no control character but HTAB in the request line or a header (CR
    # and LF only as the line ends).
    if text.count("\n") != lines or text.count("\r") != lines or _CONTROL.search(text) is not None:
        raise ValueError("a control character in the request line or a header")
    return text.encode("utf-8", "surrogateescape")


def _failure(exc: H1Error) -> tuple[str, str]:
    """The failure table's kind for one of the native client's errors, and its detail."""
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


class NativeResponse:
    """An :class:`H1Response` whose reads raise the proxy's errors."""

    __slots__ = ("_resp", "read", "reason", "status")

    websocket = None

    def __init__(self, resp: H1Response) -> None:
        self._resp = resp
        resp.failure = read_failure
        # the response's own read, which now raises the proxy's errors: no frame between
        self.read: Callable[[], Awaitable[bytes]] = resp.read
        self.status, self.reason = resp.status, resp.reason

    @property
    def ready(self) -> bool:
        return self._resp.ready

    def take_headers(self) -> CIMultiDict[str]:
        return self._resp.take_headers()

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()

    async def settled(self) -> None:
        await self._resp.settled()


def read_failure(exc: H1Error) -> UpstreamBodyError:
    """The proxy error for a failed read of an upstream body (silence past read_timeout, or a
    reset or truncation). The detail is the failure's fixed text, never upstream bytes."""
    if isinstance(exc, TimeoutError):
        return UpstreamBodyTimeout("the upstream went silent past read_timeout")
    return UpstreamBodyError(f"the upstream body broke off: {exc}")
