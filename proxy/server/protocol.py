"""The proxy listener's HTTP/1.1 protocol: aiohttp's low-level server with these additions.

1. **JSON errors for what the parser refuses.** aiohttp answers a request it cannot parse (bad
   framing, an oversize line, too many headers) from ``RequestHandler.handle_error`` as
   ``text/plain``; :class:`ProxyRequestHandler` answers with the product's JSON error body
   instead (``{"error", "detail", "request_id"}``, a fresh request id, ``X-Request-ID``) and
   closes the connection. Oversize header lines and too many headers become 431, like the
   relay's own head-size check.
2. **A header read timeout.** A client must deliver a complete request head within
   ``header_timeout`` seconds: counted from the connection's start for its first request, and
   from the first byte of each later request on a kept-alive connection. A connection idle
   between requests is left to aiohttp's ``keepalive_timeout``, as before. A client that
   dribbles its head (a byte a second) is dropped without an answer. ``0`` disables it.
3. **A framing gate.** What aiohttp's parser accepts but a proxy must not relay (HTTP/0.9 and
   HTTP/2.0 request lines, transfer codings other than ``chunked``, header names that are not
   tokens, control bytes other than HTAB in a value) is refused the same way, before the relay
   sees the request: see :func:`framing_problem`.
4. **Heads as they were.** :class:`RelayedResponse` writes a relayed response's head itself,
   byte for byte (obs-text included), and without the headers aiohttp would invent
   (``Content-Type: application/octet-stream``, ``Server``); the proxy's own responses carry no
   ``Server`` either (:class:`ProxyRequest`).
5. **Body chunks straight to the socket.** Past its first chunk, a relayed chunked body is
   framed and handed to the transport by :meth:`RelayedResponse.chunk_writer` (aiohttp's
   ``write()`` costs a fifth of the relay's time on a token stream's small events), with
   aiohttp's byte counts and drain limit kept.

This is the one module that uses aiohttp's internals (its server's, and four of its client's,
gathered at the end: the bound port of a site, the body sender of a client response, the
connection under a client WebSocket, the pool's reuse of an idle connection); each use is
commented with what it relies on. A new aiohttp release is checked against this file.

:class:`ProxyWebServer` is a drop-in ``web.Server`` whose connections use that handler::

    ProxyWebServer(relay.handle, header_timeout=30.0, keepalive_timeout=75.0, ...)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import ProxyError, error_bytes, error_response, refusal
from proxy.headers import has_control, request_id, undecodable

log = logging.getLogger("proxy.protocol")

# Told of each request the listener refuses itself (method and path when known, the error, the
# response's request id and body size), so that it is logged and counted like any other.
Refused = Callable[[str | None, str | None, ProxyError, str, int], None]


class ProxyRequestHandler(RequestHandler):
    """One client connection: aiohttp's ``RequestHandler`` plus JSON errors and a head timeout."""

    __slots__ = ("_header_handle", "_header_timeout", "_server")

    def __init__(self, manager: ProxyWebServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._header_timeout = header_timeout
        self._header_handle: asyncio.TimerHandle | None = None

    # -- header read timeout ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limit = self._server.max_connections
        if limit is not None and len(self._server.connections) > limit:
            # Over server.max_connections: a 503 at once, before reading anything.
            rid = request_id(None)
            error = refusal(503)
            data = error_bytes(error, rid, "Retry-After: 1\r\n")
            transport.write(data)  # type: ignore[attr-defined]
            self.force_close()
            self._server.refused(None, None, error, rid, len(data))
            return
        self._arm_header_timer()  # the first request's head is due from the connection's start

    def data_received(self, data: bytes) -> None:
        if self._header_handle is None and data and self._idle():
            # The first byte of a new request head on a kept-alive connection.
            self._arm_header_timer()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            # A head was parsed (or refused): it arrived in time. A pipelined head that is
            # still partial gets its own timer once the handler waits for it again.
            self._disarm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """Is the connection between requests, waiting for the next head?"""
        waiter = self._waiter
        return (
            waiter is not None
            and not waiter.done()
            and not self._messages
            and self._payload_parser is None
            and not self._upgraded
        )

    def _arm_header_timer(self) -> None:
        if self._header_timeout and self._header_timeout > 0 and self._header_handle is None:
            self._header_handle = self._loop.call_later(
                self._header_timeout, self._header_timed_out
            )

    def _disarm_header_timer(self) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None

    def _header_timed_out(self) -> None:
        self._header_handle = None
        if self.transport is None or self._force_close:
            return
        if self._messages or self._current_request is not None:
            return  # a complete head is being handled; not a slow head
        log.debug(
            "dropping %s: no complete request head within %ss", self.peername, self._header_timeout
        )
        self.force_close()
        # Dropped without an answer (a client that dribbles its head gets none), yet logged.
        error = refusal(408, f"no complete request head within {self._header_timeout}s")
        self._server.refused(None, None, error, request_id(None), 0)

    # -- errors ----------------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON error response for a request aiohttp refused or a handler that failed."""
        status = self._status_for(status, exc)
        if status >= 500:
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
        else:
            self.logger.debug("refused a request from %s: %r", request.remote, exc)
        if request.writer.output_size > 0:
            # Part of a response already went out: another one cannot follow on this connection.
            raise ConnectionError("a response was already started; cannot send an error")
        error = refusal(status)
        parsed = isinstance(exc, HttpProcessingError)
        if parsed and status < 500:
            error.detail = f"{error.detail}: {_first_line(exc.message)}"  # type: ignore[union-attr]
        rid = request_id(None)
        resp = error_response(error, rid, close=True)
        if parsed:
            # A request the parser refused never reached the relay: it is logged here. (A
            # handler's failure was logged by the relay.)
            self._server.refused(None, None, error, rid, len(resp.body or b""))  # type: ignore[arg-type]
        return resp

    def _status_for(self, status: int, exc: BaseException | None) -> int:
        if status != 400:
            return status
        if isinstance(exc, LineTooLong):
            # aiohttp reports every oversize line as 400; a header line is a 431.
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == self.max_field_size:
                return 431
            return 414
        if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            return 431
        return 400


def _first_line(text: str) -> str:
    """The parser's message, first line only, without the echoed input; short and printable."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.rstrip(":")
    if "Got more than" in line:
        line = line.split(" when reading", 1)[0]
    return "".join(ch if ch.isprintable() else "?" for ch in line)[:200] or "malformed request"


def framing_problem(message: RawRequestMessage) -> tuple[int, str] | None:
    """What the parser lets through but this proxy refuses: ``(status, detail)``, or None.

    - HTTP versions other than 1.0 and 1.1 (llhttp accepts ``GET /`` as HTTP/0.9 and
      ``HTTP/2.0`` on an HTTP/1 connection).
    - A ``Transfer-Encoding`` other than exactly ``chunked``: the proxy re-frames every body, so
      a coding below ``chunked`` (``gzip, chunked``) would silently go upstream as identity (501).
      In HTTP/1.0 any ``Transfer-Encoding`` makes the framing faulty (RFC 9112 §6.1, 400).
    - Header names that are not valid UTF-8 (llhttp refuses them before us), and control bytes
      other than HTAB in a value (CR, LF and NUL are the parser's; the others are ours). Values
      with obs-text (0x80-0xFF) pass: they are kept as the bytes that came and sent upstream as
      such (:meth:`proxy.upstream.group.Upstream.send`), never decoded into text.
    """
    headers = message.headers
    if not isinstance(headers, CIMultiDictProxy):
        return None  # aiohttp's placeholder for a request its parser refused
    version = message.version
    if version < HttpVersion10:
        return 400, "the request line has no HTTP/1.x version"
    if version > HttpVersion11:
        return 505, f"HTTP/{version.major}.{version.minor} is not served"
    codings = headers.getall("Transfer-Encoding", ())
    if codings:
        if version == HttpVersion10:
            return 400, "Transfer-Encoding is not allowed in an HTTP/1.0 request"
        tokens = [t.strip().lower() for value in codings for t in value.split(",")]
        if tokens != ["chunked"]:
            return 501, "only 'Transfer-Encoding: chunked' is supported"
    for name, value in headers.items():
        if undecodable(name):
            return 400, "a header name is not a token"
        if has_control(value):
            return 400, "a header value holds a control character"
    return None


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RequestKey = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; a plain key before
_REFUSAL: Any = _RequestKey("proxy_refusal", tuple) if _RequestKey else "proxy_refusal"


class ProxyWebServer(web.Server):
    """``web.Server`` whose connections are :class:`ProxyRequestHandler` s.

    A request the parser accepted but :func:`framing_problem` refuses is answered with a JSON
    error (and the connection closed) before ``handler`` sees it.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout: float = 30.0,
        max_connections: int | None = None,
        refused: Refused | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("request_factory", self._make_proxy_request)
        super().__init__(self._gate(handler), **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._refused = refused

    def refused(
        self, method: str | None, path: str | None, error: ProxyError, rid: str, size: int
    ) -> None:
        """A request refused by the listener itself: logged and counted (see ``refused``)."""
        if self._refused is not None:
            try:
                self._refused(method, path, error, rid, size)
            except Exception:  # never let logging kill the connection
                log.exception("logging a refused request failed")

    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(
            self, header_timeout=self.header_timeout, loop=self._loop, **self._kwargs
        )

    def _make_proxy_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        try:
            problem = framing_problem(message)
        except Exception:  # never let a check kill the connection's task: refuse instead
            log.exception("the framing check failed")
            problem = (400, "the request could not be checked")
        if problem is not None:
            # Answer in HTTP/1.0, like aiohttp's own parser errors, whatever the line claimed.
            message = message._replace(version=HttpVersion10, should_close=True)
        request = ProxyRequest(message, payload, protocol, writer, task, self._loop)
        if problem is not None:
            request[_REFUSAL] = problem
        return request

    def _gate(self, handler: Handler) -> Handler:
        # A plain function handing back the handler's awaitable: no coroutine frame of its own
        # stays alive for the whole (possibly hours long) stream.
        def gate(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            refused = request.get(_REFUSAL)
            if refused is not None:
                return self._refuse(request, *refused)
            return handler(request)

        return gate

    async def _refuse(self, request: web.BaseRequest, status: int, detail: str) -> web.Response:
        error = refusal(status, detail)
        rid = request_id(None)
        resp = error_response(error, rid, close=True)
        path = request.raw_path.split("?", 1)[0]
        self.refused(request.method, path, error, rid, len(resp.body or b""))  # type: ignore[arg-type]
        return resp


class ProxyRequest(web.BaseRequest):
    """A request of the proxy listener: the responses the proxy makes itself (errors, the
    WebSocket handshake) carry no ``Server`` header."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # aiohttp internals: StreamResponse._start() awaits this hook after _prepare_headers()
        # added its defaults and before the head is serialized.
        if not isinstance(response, RelayedResponse):
            response.headers.popall(hdrs.SERVER, None)


# as aiohttp's StreamWriter: one joined write below this size, a drain() past this many bytes
_JOIN_BELOW = 2048
_DRAIN_LIMIT = 0x10000


class RelayedResponse(web.StreamResponse):
    """A relayed response: its head goes out as the upstream's bytes, with no invented header.

    aiohttp's ``_prepare_headers`` adds ``Content-Type: application/octet-stream`` to a body
    without one (browsers then stop sniffing it) and its own ``Server``; both are taken out
    again unless they were there before. ``Date`` it adds only when missing, as RFC 9110 §6.6.1
    asks of a proxy. Header values hold the upstream's bytes as ``surrogateescape`` text (see
    :mod:`proxy.upstream.h1client`); aiohttp's C serializer would drop the escaped bytes, so the
    head is serialized here instead, refusing what is not a header (CR, LF, control bytes but HTAB).
    """

    async def _prepare_headers(self) -> None:
        # aiohttp internals: the defaults are added here; _headers is the response's multidict.
        headers = self._headers
        had_type = hdrs.CONTENT_TYPE in headers
        had_server = hdrs.SERVER in headers
        await super()._prepare_headers()
        if not had_type:
            headers.popall(hdrs.CONTENT_TYPE, None)
        if not had_server:
            headers.popall(hdrs.SERVER, None)

    async def _write_headers(self) -> None:
        # aiohttp internals: the same as StreamResponse._write_headers, with our serializer in
        # place of StreamWriter.write_headers (it keeps the serialized head in _headers_buf
        # until send_headers() or the first body write).
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        version = request.version
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        writer._headers_buf = serialize_head(status_line, self._headers)  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]
        if self._send_headers_immediately:
            writer.send_headers()

    _direct: Callable[[bytes], bool] | None = None  # chunk_writer(), once made
    _tried = False  # chunk_writer() was asked for

    def send(self, chunk: bytes) -> Awaitable[None] | None:
        """``write(chunk)``, synchronous where it can be: None when the chunk went straight
        to the transport, else what to await (aiohttp's ``write()``, or a drain)."""
        direct = self._direct
        if direct is not None:
            return self.drain_body() if direct(chunk) else None
        return self._send_first(chunk)

    async def _send_first(self, chunk: bytes) -> None:
        await self.write(chunk)  # the head may go out with it
        if not self._tried:
            self._tried = True
            self._direct = self.chunk_writer()

    def chunk_writer(self) -> Callable[[bytes], bool] | None:
        """Once the head is out, a synchronous writer of the body's chunks: it frames a chunk,
        hands it to the transport, and returns True when the caller must ``await
        self.drain_body()`` before the next one. None where aiohttp's ``write()`` must do it
        (no chunked framing, compression, a length, a head still buffered, hooks).

        aiohttp internals: ``StreamWriter.write`` is two coroutines and about a dozen checks
        a chunk, a fifth of the relay's own time for the few hundred bytes of a token event.
        This writes what ``_write_chunked_payload`` writes, counts ``output_size`` (which
        ``handle_error`` reads to tell that a response has started, and aiohttp's body length)
        and ``buffer_size`` as ``_writelines`` does, and asks for ``drain()`` past the same
        limit as ``write()``.
        """
        writer: Any = self._payload_writer
        if (
            type(writer) is not StreamWriter
            or not writer.chunked
            or getattr(writer, "_compress", True) is not None
            or writer.length is not None
            or getattr(writer, "_on_chunk_sent", True) is not None
            or getattr(writer, "on_body_write", None) is not None
            or not getattr(writer, "_headers_written", False)
            or getattr(writer, "_headers_buf", True) is not None
            or self._eof_sent
        ):
            return None
        protocol = writer.protocol

        def write(chunk: bytes) -> bool:
            transport = protocol.transport
            if transport is None or transport.is_closing():
                raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
            size = len(chunk)
            if size < _JOIN_BELOW:
                framed = b"%x\r\n%b\r\n" % (size, chunk)
                transport.write(framed)
                size = len(framed)
            else:
                head = b"%x\r\n" % size
                transport.writelines((head, chunk, b"\r\n"))
                size += len(head) + 2
            writer.output_size += size
            writer.buffer_size += size
            return writer.buffer_size > _DRAIN_LIMIT

        return write

    async def drain_body(self) -> None:
        """After :meth:`chunk_writer` asked for it: wait while the client is slow, as
        ``write()`` does past its limit."""
        writer: Any = self._payload_writer
        writer.buffer_size = 0
        await writer.drain()


class HeadWithBody(RelayedResponse):
    """A relayed response whose head is written together with the first body bytes (or the end).

    aiohttp internals: ``StreamResponse._send_headers_immediately`` (a class attribute, True by
    default) makes ``_write_headers`` send the head at ``prepare()``; False keeps it in the
    writer's buffer until the first ``write()`` or ``write_eof()``, which send both at once.
    """

    _send_headers_immediately = False


def serialize_head(status_line: str, headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> bytes:
    """A response head as bytes: each header's text back to the bytes it stands for."""
    lines = [status_line]
    for name, value in headers.items():
        if has_control(name) or has_control(value) or ":" in name:
            raise ValueError("a control character in a response header")
        lines.append(f"{name}: {value}")
    if has_control(status_line):
        raise ValueError("a control character in the status line")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


# -- aiohttp internals used outside the listener ------------------------------------------------


def bound_port(site: web.TCPSite) -> int:
    """The port a started site listens on (to learn an ephemeral port).

    aiohttp internals: ``TCPSite._server`` is the ``asyncio.Server`` that ``start()`` made;
    aiohttp gives no public way to the bound socket.
    """
    server: Any = site._server  # type: ignore[attr-defined]
    return int(server.sockets[0].getsockname()[1])


async def request_body_sent(resp: Any) -> None:
    """Wait until a ``ClientResponse``'s request body sender has stopped.

    aiohttp internals: ``ClientResponse._writer`` is the task streaming the request body
    (``None`` once it finished); ``close()`` cancels it but does not wait for it, and the body's
    generators must not be closed under a sender still inside them.
    """
    writer = getattr(resp, "_writer", None)
    if writer is not None and not writer.done():
        await asyncio.wait((writer,))


def drop_websocket_connection(ws: Any) -> None:
    """Close a client WebSocket's connection without a close frame (its closing handshake is
    already done).

    aiohttp internals: ``ClientWebSocketResponse._response`` is the handshake's
    ``ClientResponse``, holding the connection; closing it is what ``ClientWebSocketResponse
    .close()`` does once its closing handshake has completed.
    """
    ws._response.close()


class CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, never handing out an idle connection that received bytes.

    An upstream may send bytes on a kept-alive connection nobody asked for (a response to a
    request it was never sent): served, they would answer the next request. aiohttp's pool only
    checks that a connection is still open when it reuses it.

    aiohttp internals: ``BaseConnector._get(key, traces)`` returns the next pooled
    ``Connection`` for a key (or None); ``ResponseHandler.should_close`` is true once bytes
    arrived while no response was being read (they wait in its ``_tail``). Such a connection is
    closed and the next one taken.
    """

    async def _get(self, key: Any, traces: Any) -> Any:
        while True:
            conn = await super()._get(key, traces)  # type: ignore[misc]
            if conn is None:
                return None
            protocol = conn.protocol
            if protocol is None or not protocol.should_close:
                return conn
            conn.close()  # released as should_close: its socket is closed
