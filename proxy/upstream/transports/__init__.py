"""The upstream transport contract: one method that takes a request and returns its response.

In the shape of httpx's ``handle_async_request``: :meth:`Transport.handle` sends an
:class:`UpstreamRequest` to one target and returns a :class:`TransportResponse` once the
response head arrived. Two implementations, chosen per upstream by ``client:``:

- :mod:`proxy.upstream.transports.native` — the product's own HTTP/1.1 client
  (:mod:`proxy.upstream.h1client`, :mod:`proxy.upstream.h1pool`), the default, for speed;
- :mod:`proxy.upstream.transports.aiohttp_client` — aiohttp's ``ClientSession``, which also
  reaches the targets through an HTTP forward proxy (``proxy:``).

What a transport promises, whatever client is under it:

- A failure before the response head is a :class:`TransportFailure` naming its kind in the one
  failure table (:data:`proxy.upstream.group.FAILURES`); what the request body raised (the client's
  fault: 413, a broken upload) comes through as it was raised. Nothing else leaves ``handle``
  but cancellation.
- The response's ``read()`` returns the body bytes as they arrive (``b""`` at its end) and
  raises only the proxy's own errors (:class:`~proxy.errors.UpstreamBodyError`,
  :class:`~proxy.errors.UpstreamBodyTimeout`, or the request body's error).
- ``release()`` after the whole body, or ``close()`` before it, gives the connection back or
  closes it; ``settled()`` waits until the request body is no longer read from.

Target choice, retries, passive health and ``outstanding`` live above the transports, once, in
:class:`proxy.upstream.group.Upstream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict

from proxy.errors import ProxyError

if TYPE_CHECKING:
    from proxy.upstream.group import Target

# Methods a request may be repeated with when it may have reached the target (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class TransportFailure(Exception):
    """No response head came from the target; ``kind`` is a key of the failure table."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


@dataclass(slots=True, eq=False, repr=False)  # compared by identity; no headers in a repr
class UpstreamRequest:
    """One request as the upstream is to get it (the same for every target tried).

    ``headers`` are the end-to-end headers without ``Host``; ``host_header`` is the client's
    Host when the route preserves it (else each target's own). ``protocols`` is not None for a
    WebSocket handshake: the subprotocols offered.
    """

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: AsyncIterator[bytes] | None
    host_header: str | None
    body_state: BodyState
    protocols: list[str] | None = None
    # what a transport prepares once for every attempt
    cache: Any = field(default=None, init=False)
    # header lines of the current attempt only (its traceparent), CRLF-ended
    extra: str = field(default="", init=False)

    @property
    def repeatable(self) -> bool:
        """May this request be sent again after it may have reached a target?"""
        return self.method in IDEMPOTENT and not self.body_state.started


class TransportResponse(Protocol):
    """A response whose head arrived; its body read chunk by chunk."""

    status: int
    reason: str

    @property
    def ready(self) -> bool:
        """Body bytes are buffered, or the body ended: a read would not wait."""

    @property
    def websocket(self) -> Any:
        """The upstream leg of a WebSocket handshake that got its 101 (else None)."""

    def take_headers(self) -> CIMultiDict[str]: ...

    async def read(self) -> bytes: ...

    def release(self) -> None: ...

    def close(self) -> None: ...

    async def settled(self) -> None: ...


class Transport(Protocol):
    async def handle(self, request: UpstreamRequest, target: Target) -> TransportResponse: ...

    async def close(self) -> None: ...


def make_transport(name: str, config: Any, ssl_ctx: Any) -> Transport:
    """The transport an upstream's ``client:`` names."""
    if config.client == "aiohttp":
        from proxy.upstream.transports.aiohttp_client import AiohttpTransport

        return AiohttpTransport(name, config, ssl_ctx)
    from proxy.upstream.transports.native import NativeTransport

    return NativeTransport(name, config, ssl_ctx)


class BodyState:
    """What happened to a request body while it streamed upstream.

    ``started``: something asked the body stream for a chunk, even if none came yet. From then
    on the stream cannot be sent again (a generator that was iterated, or was cancelled while
    it waited for the client, yields nothing more), so the request is never retried. ``error``:
    the client's fault that stopped the body (413, a broken upload), not the target's.
    """

    __slots__ = ("error", "received", "started")

    def __init__(self) -> None:
        self.started = False
        self.received = 0
        self.error: ProxyError | None = None


class Watched:
    """``body`` as handed to a transport for one attempt, marking ``state.started`` on first use.

    A fresh wrapper per attempt around the same stream: an attempt that failed before reading
    (connection refused, connect timeout) leaves the stream untouched for the next target.
    """

    __slots__ = ("_it", "_state")

    def __init__(self, body: AsyncIterable[bytes], state: BodyState) -> None:
        self._it: AsyncIterator[bytes] = aiter(body)
        self._state = state

    def __aiter__(self) -> Watched:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        self._state.started = True
        return anext(self._it)
