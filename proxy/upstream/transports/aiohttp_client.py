"""The ``aiohttp`` transport: aiohttp's ``ClientSession``, one per upstream for its life.

It reaches the targets directly or, with ``proxy:``, through an HTTP forward proxy (absolute-form
requests for ``http://`` targets, a ``CONNECT`` tunnel for ``https://``). It also carries the
WebSocket handshakes of both transports. aiohttp's exceptions become
:class:`~proxy.upstream.transports.TransportFailure` (before the head) or the proxy's body
errors (after it) here and nowhere else.

What aiohttp's client does differently from the native one, and the proxy therefore cannot
promise on this transport: request header values with bytes that are not UTF-8 (obs-text) are
not sent as those bytes (aiohttp's writer encodes text as UTF-8); a response head that arrived
just before the upstream reset the connection under a still-running upload is lost (a 502
instead of the early answer); and a response's head is not sent together with its first body
bytes.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict

from proxy.errors import UpstreamBodyError, UpstreamBodyTimeout, UpstreamUnavailable
from proxy.server.protocol import CheckedConnector, request_body_sent
from proxy.upstream.transports import (
    BodyState,
    TransportFailure,
    TransportResponse,
    UpstreamRequest,
    Watched,
)

if TYPE_CHECKING:
    from proxy.config.models import UpstreamConfig
    from proxy.upstream.group import Target

# How long one side of a WebSocket may take to answer a close frame the other side started.
WS_CLOSE_TIMEOUT = 5.0
# Headers aiohttp would make up for a request: the proxy invents none.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class AiohttpTransport:
    def __init__(self, name: str, config: UpstreamConfig, ssl_ctx: ssl.SSLContext | None) -> None:
        self.name = name
        self.config = config
        self._ssl = ssl_ctx
        self._proxy = getattr(config, "proxy", None)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The upstream's one ClientSession, made on first use (inside the event loop)."""
        if self._session is None:
            config = self.config
            self._session = aiohttp.ClientSession(
                connector=CheckedConnector(
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
                skip_auto_headers=SKIP_AUTO_HEADERS,
            )
        return self._session

    async def handle(self, request: UpstreamRequest, target: Target) -> TransportResponse:
        headers = CIMultiDict(request.headers)
        headers["Host"] = request.host_header or target.host_header
        for line in request.extra.split("\r\n"):
            name, sep, value = line.partition(": ")
            if sep:
                headers[name] = value
        session = self.session()
        try:
            if request.protocols is not None:
                return await self._websocket(session, request, target, headers)
            body = request.body
            upload = None if body is None else _Upload(Watched(body, request.body_state))
            resp = await session.request(
                request.method,
                target.url(request.path_qs),
                headers=headers,
                data=None if upload is None else upload.stream(),
                allow_redirects=False,
                proxy=self._proxy,
            )
            if upload is not None:
                upload.response = resp
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 101:
                detail = f"sent an invalid WebSocket handshake ({exc.message})"
            else:
                detail = f"answered the WebSocket upgrade with status {exc.status}, not 101"
            raise UpstreamUnavailable(f"upstream {self.name!r} {detail}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            state = request.body_state
            if state.error is not None:
                raise state.error from exc
            raise TransportFailure(*_failure(exc)) from exc
        return AiohttpResponse(resp, request.body_state)

    async def _websocket(
        self,
        session: aiohttp.ClientSession,
        request: UpstreamRequest,
        target: Target,
        headers: CIMultiDict[str],
    ) -> TransportResponse:
        ws = await session.ws_connect(
            target.url(request.path_qs, websocket=True),
            headers=headers,
            protocols=request.protocols or (),
            autoping=False,
            autoclose=False,
            max_msg_size=0,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WS_CLOSE_TIMEOUT),
            decode_text=False,
            proxy=self._proxy,
        )
        return WebSocketHandshake(ws)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _failure(exc: BaseException) -> tuple[str, str]:
    """The failure table's kind for one of aiohttp's client errors, and its detail."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout", ""
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "head_timeout", ""
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls", ""
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return "unreachable", "the forward proxy cannot be reached"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "unreachable", exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "closed", ""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return "failed", f"the forward proxy answered {exc.status}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "invalid", ""
    return "failed_io", type(exc).__name__


class _Upload:
    """A request body that, when it fails (the client's fault: 413, a broken upload) after the
    response head came, fails the response's body too: aiohttp's sender only stops, and the
    response would wait for an upstream that waits for the rest of the upload."""

    __slots__ = ("body", "response")

    def __init__(self, body: Watched) -> None:
        self.body = body
        self.response: aiohttp.ClientResponse | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.body:
                yield chunk
        except Exception as exc:
            if self.response is not None:
                self.response.content.set_exception(exc)
            raise


class AiohttpResponse:
    """A ``ClientResponse`` whose reads raise the proxy's errors."""

    __slots__ = ("_resp", "_state", "reason", "status")

    websocket = None

    def __init__(self, resp: aiohttp.ClientResponse, state: BodyState) -> None:
        self._resp = resp
        self._state = state
        self.status = resp.status
        self.reason = resp.reason or ""

    @property
    def ready(self) -> bool:
        return self._resp.content.at_eof()

    def take_headers(self) -> CIMultiDict[str]:
        # From the raw bytes, as the native client decodes them: names as Latin-1, values as
        # UTF-8 with each undecodable byte kept (surrogateescape).
        return CIMultiDict(
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._resp.raw_headers
        )

    async def read(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if self._state.error is not None:
                raise self._state.error from exc  # the request body failed, not the upstream
            if isinstance(exc, TimeoutError):
                raise UpstreamBodyTimeout("the upstream went silent past read_timeout") from exc
            raise UpstreamBodyError(f"the upstream body broke off: {type(exc).__name__}") from exc

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()

    async def settled(self) -> None:
        await request_body_sent(self._resp)


class WebSocketHandshake:
    """A WebSocket handshake that got its 101: the upstream leg, closed by the relay."""

    __slots__ = ("websocket",)

    status = 101
    reason = "Switching Protocols"
    ready = False

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.websocket = ws

    def take_headers(self) -> CIMultiDict[str]:
        return CIMultiDict()

    async def read(self) -> bytes:
        return b""

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def settled(self) -> None:
        pass
