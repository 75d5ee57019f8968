"""An HTTP/1.1 client connection for the proxied-request hot path, on a raw asyncio protocol.

One :class:`H1Connection` per upstream socket, one request at a time on it. The request head is
written as one pre-built string; the response is parsed by llhttp (``httptools``) into one small
:class:`H1Response` whose body chunks wait in a bounded buffer: past :data:`HIGH_WATER` bytes
the socket stops being read until the consumer takes them. Once llhttp has read the head of a
response framed by one ``Content-Length``, later reads of its body are counted off as they
are, without passing through the parser (which would copy each into a new bytes object).

A request body is sent by a task of its own while the response is read (full duplex, RFC 9112
§9.5): an upstream may answer before the body ended, and its head and body are relayed at once
while the body keeps going to it, until the body ends or the upstream closes. A head that
arrived is never lost to a reset under the upload: when the connection breaks while a body is
sent, what the kernel still holds of the response is read before the exchange is judged (see
:meth:`H1Connection._salvage`). A connection is reused only when both sides ended cleanly: the
response as framed, and the whole request body sent.

Failures are the exceptions below, each with a fixed text: what an upstream sent never reaches
an error message. :mod:`proxy.upstream.h1pool` keeps idle connections;
:mod:`proxy.upstream.group` turns these exceptions into :mod:`proxy.errors`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING, NoReturn, cast

import httptools
from multidict import CIMultiDict

if TYPE_CHECKING:
    from proxy.upstream.h1pool import H1Pool

HIGH_WATER = 2**16  # body bytes buffered per response before the socket stops being read
MAX_HEAD = 2**16  # bytes an unfinished response head may take before it is refused
SALVAGE = 2**22  # bytes read at most from a broken connection's receive buffer

_NO_HEADERS: CIMultiDict[str] = CIMultiDict()

# Response states
HEAD, BODY, DONE = 0, 1, 2


class H1Error(Exception):
    """A failure of the upstream exchange; the text is fixed, never what the upstream sent."""

    message = "the upstream exchange failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class ConnectError(H1Error):
    """The TCP connection could not be made; ``reason`` is the operating system's."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot connect: {reason}")
        self.reason = reason


class TLSError(ConnectError):
    """The TLS handshake failed (an untrusted certificate, another name, no common cipher)."""


class ConnectTimeout(H1Error, TimeoutError):
    message = "connecting timed out"


class Disconnected(H1Error):
    """The connection ended before the response head was complete."""

    message = "the connection closed before the response head"


class StaleConnection(Disconnected):
    """A kept-alive connection, reused, ended before its response head: the upstream closed it
    as it was taken from the pool."""


class HeadTimeout(H1Error, TimeoutError):
    message = "no response head within read_timeout"


class InvalidResponse(H1Error):
    message = "the response is not valid HTTP/1.1"


class BodyTimeout(H1Error, TimeoutError):
    message = "the body went silent past read_timeout"


class BodyIncomplete(H1Error):
    message = "the body ended before its framing said"


class BodyInvalid(H1Error):
    message = "the body's framing is invalid"


class PoolClosed(H1Error):
    message = "the connection pool is closed"


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (a head-only response, surplus bytes)."""


class H1Response:
    """One upstream response: its head, then its body read chunk by chunk.

    ``read()`` returns what is buffered (b"" at the end of the body) and raises an
    :class:`H1Error` when the body cannot be completed. ``release()`` after a complete body
    hands the connection back to its pool; ``close()`` closes it.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_sender",
        "_waiter",
        "body_sent",
        "close_delimited",
        "failure",
        "head_only",
        "headers",
        "keep_alive",
        "reason",
        "state",
        "status",
    )

    def __init__(self, conn: H1Connection, head_only: bool) -> None:
        self._conn: H1Connection | None = conn
        self.head_only = head_only  # a HEAD request: the response has no body, whatever it says
        self.state = HEAD
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.close_delimited = False
        self.keep_alive = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        # An H1Error, or what the request body raised (the client's fault) before the head.
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None  # sends the request body
        self.body_sent = False  # the whole request body went to the socket
        # what read() raises for an H1Error instead of it (its cause), when set
        self.failure: Callable[[H1Error], BaseException] | None = None

    def take_headers(self) -> CIMultiDict[str]:
        """The response headers, handed over: the response keeps none (a stream can last for
        hours, and its headers have been relayed long before)."""
        headers, self.headers = self.headers, _NO_HEADERS
        return headers

    @property
    def ready(self) -> bool:
        """Body bytes are buffered, or the body is complete: a read would not wait."""
        return bool(self._chunks) or self.state == DONE

    async def read(self) -> bytes:
        """The body bytes buffered (waiting for some if none are); b"" once the body ended."""
        chunks = self._chunks
        while not chunks:
            if self.state == DONE:
                return b""
            if self._error is not None:
                self._raise(self._error)
            conn = self._conn
            assert conn is not None, "read() after release() or close()"
            waiter = self._waiter = conn.loop.create_future()
            try:
                await waiter
            except H1Error as exc:
                self._raise(exc)
            finally:
                self._waiter = None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    def _raise(self, error: BaseException) -> NoReturn:
        if self.failure is not None and isinstance(error, H1Error):
            raise self.failure(error) from error
        raise error

    def release(self) -> None:
        """The body was read to its end: the connection goes back to its pool if it can."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(self, self.state == DONE and self.keep_alive)

    def close(self) -> None:
        """Done with this response before its end: its connection is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(self, False)

    async def settled(self) -> None:
        """Wait until the request body's sender stopped (``release()`` and ``close()`` cancel
        it when it has not): after this the body stream is no longer in use."""
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.wait((sender,))

    # -- fed by the connection --------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and self.state != DONE:
            self._error = error
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)


class H1Connection(asyncio.Protocol):
    """One upstream socket: writes a request, parses its response into an :class:`H1Response`.

    Silence is timed by one ``call_at`` handle that is pushed back, not replaced, as bytes come:
    it runs while a response is awaited and the socket is being read (never while the buffer
    is full and reading paused: a slow client is not a silent upstream).
    """

    __slots__ = (
        "_drain",
        "_head_bytes",
        "_interim",
        "_keep",
        "_last",
        "_left",
        "_parser",
        "_reason",
        "_resp",
        "_spare",
        "_timer",
        "_timing",
        "idle_since",
        "key",
        "loop",
        "lost",
        "paused",
        "pool",
        "read_timeout",
        "spoiled",
        "transport",
        "writing_paused",
    )

    def __init__(self, pool: H1Pool, key: Hashable) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.read_timeout = pool.read_timeout  # the pool's, kept at hand for every timer push
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused = False
        self.writing_paused = False
        self.spoiled = False  # must not be reused, whatever its response said
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._resp: H1Response | None = None
        self._reason = b""
        self._head_bytes = 0
        self._interim = False
        self._left = -1  # body bytes still due by Content-Length once the parser stepped aside
        self._keep = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timing = False
        self._drain: asyncio.Future[None] | None = None
        self._spare: socket.socket | None = None  # a duplicate of the socket while a body is sent

    # -- the exchange ----------------------------------------------------------------------

    def start(self, head_only: bool) -> H1Response:
        """A new exchange on this connection: the response its request will get."""
        resp = self._resp = H1Response(self, head_only)
        self._reason = b""
        self._head_bytes = 0
        self._interim = False
        self._left = -1
        return resp

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise Disconnected("the connection closed while the request was sent")
        transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark."""
        if self.writing_paused and not self.lost:
            waiter = self._drain = self.loop.create_future()
            try:
                await waiter
            finally:
                self._drain = None
        if self.lost:
            raise Disconnected("the connection closed while the request was sent")

    def start_body(self, resp: H1Response, body: AsyncIterator[bytes], chunked: bool) -> None:
        """Start sending a request body, in a task of its own, while the response is read."""
        self._keep_spare()
        resp._sender = self.loop.create_task(self.send_body(resp, body, chunked))

    async def send_body(self, resp: H1Response, body: AsyncIterator[bytes], chunked: bool) -> None:
        """Stream a request body to its end, whatever the response does meanwhile.

        It stops when the connection closes (the upstream stopped reading: the response is
        judged on what arrived) or when it is cancelled (the response was done with first). A
        body that fails is the client's fault: the request, or the response if its head came,
        fails with that error (the upstream never got the whole request).
        """
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    self.write(chunk)
                await self.drain()
            if chunked:
                self.write(b"0\r\n\r\n")
            resp.body_sent = True
            self._drop_spare()
            if resp.state == HEAD and resp._error is None:
                self._time()  # the head is due within read_timeout of the body's end
            await self.drain()
            resp._sender = None  # all sent: a long response keeps no finished task
        except Disconnected:
            pass  # connection_lost decides the response's fate
        except Exception as exc:
            # The response, whatever came of it, fails with the body's error: it is cut (never
            # made to look complete) and the client's fault, not the upstream's.
            resp._fail(exc)
            self.close()

    async def response_head(self, resp: H1Response) -> None:
        """Wait until the response head is complete: timed by read_timeout from the end of the
        request body (not while it is still being sent)."""
        if resp.state == HEAD and resp._error is None:
            if resp._sender is None or resp.body_sent:
                self._time()
            waiter = resp._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                resp._waiter = None
        if resp.state == HEAD and resp._error is not None:
            raise resp._error

    def finish(self, resp: H1Response, reusable: bool) -> None:
        """The exchange is over: back to the pool when ``reusable``, else closed."""
        if self._resp is resp:
            self._resp = None
        self._timing = False
        sender = resp._sender
        if sender is not None and not sender.done():
            sender.cancel()  # the response came first: the rest of the body is not sent
        if not resp.body_sent and sender is not None:
            reusable = False  # the upstream did not get the whole request
        self._drop_spare()
        if reusable and not (self.lost or self.paused or self.spoiled):
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self._timing = False
        self._drop_spare()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    # -- flow control and timing -----------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        self._timing = False
        transport = self.transport
        assert transport is not None
        if not transport.is_closing():
            transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        if not self.lost:
            assert self.transport is not None
            self.transport.resume_reading()
            resp = self._resp
            if resp is not None and resp.state != DONE:
                self._time()

    def _time(self) -> None:
        """Time silence from now on."""
        self._timing = True
        timeout = self.read_timeout
        if timeout:
            self._last = now = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_at(now + timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._timing or self.lost:
            return
        deadline = self._last + self.read_timeout
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._timed_out)
            return
        resp = self._resp
        if resp is not None:
            resp._fail(HeadTimeout() if resp.state == HEAD else BodyTimeout())
        self.close()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._spare is not None:
            self._salvage()
        self.lost = True
        self._timing = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.forget(self)
        resp = self._resp
        if resp is not None and resp.state != DONE and resp._error is None:
            if resp.state == HEAD:
                resp._fail(Disconnected())
            elif resp.close_delimited and exc is None:
                resp.state = DONE
                resp._wake()
            else:
                resp._fail(BodyIncomplete())
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- a head under an upload ---------------------------------------------------------------

    def _keep_spare(self) -> None:
        """Keep a duplicate of the socket while a request body is sent.

        A reset under the upload (an upstream that answered early and closed without reading
        the rest) breaks a write; the event loop then closes the transport at once, with the
        response it already received unread in the socket. The duplicate lets
        :meth:`_salvage` read it: asyncio's transports give no read after a write failed.
        ``get_extra_info("socket")`` is public on asyncio's and uvloop's transports. Not over
        TLS: what the socket holds there is encrypted records.
        """
        transport = self.transport
        if transport is None or self._spare is not None:
            return
        if transport.get_extra_info("ssl_object") is not None:
            return  # over TLS the socket's bytes are records, not the response: not salvaged
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            self._spare = socket.socket(fileno=os.dup(sock.fileno()))
            self._spare.setblocking(False)
        except OSError:
            self._spare = None

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    def _salvage(self) -> None:
        """The connection broke while a body was sent: what it received is the response's."""
        spare, self._spare = self._spare, None
        assert spare is not None
        try:
            taken = 0
            while taken < SALVAGE:
                resp = self._resp
                if resp is None or resp.state == DONE or resp._error is not None:
                    break
                data = spare.recv(2**16)
                if not data:
                    break
                taken += len(data)
                self.data_received(data)
        except OSError:
            pass  # nothing more is readable (EAGAIN), or the reset itself
        finally:
            spare.close()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        resp = self._resp
        if resp is None or resp.state == DONE:
            # Bytes nobody asked for (on an idle connection, or past a response's end): this
            # connection can never be trusted to frame a response again.
            self.spoiled = True
            self.close()
            return
        if self._timing:
            self._last = self.loop.time()
        if self._left > 0 and resp.state == BODY:
            self._counted_body(resp, data)
            return
        first = self._head_bytes == 0  # no earlier bytes of this response
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if resp.state == DONE:  # stopped on purpose, or bytes past the response's end
                if resp.head_only and first and not self._interim and _ends_head(data):
                    # A HEAD response that came whole in these bytes, and nothing after it.
                    self._parser = httptools.HttpResponseParser(self)
                else:
                    self.spoiled = True
                return
            resp._fail(InvalidResponse() if resp.state == HEAD else BodyInvalid())
            self.close()
            return
        if resp.state == HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                resp._fail(InvalidResponse("the response head is too large"))
                self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport: the exchange is decided in connection_lost

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        resp = self._resp
        if resp is None or resp.state == DONE:
            raise _Stop  # a second response on the same bytes: never served

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self._resp
        if resp is not None and resp.state == HEAD:  # not trailers
            resp.headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        resp = self._resp
        assert resp is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response (100 Continue, 103 Early Hints): the final one follows.
            resp.headers = CIMultiDict()
            self._reason = b""
            self._interim = True
            return
        resp.status = status
        resp.reason = self._reason.decode("utf-8", "surrogateescape")
        self._reason = b""
        if resp.head_only or status == 101:
            # No body follows a HEAD response, whatever its headers say, and after a 101 the
            # bytes are another protocol's. llhttp cannot be told so: it is stopped here, and
            # the connection reused only when the response's end is known to be where the
            # bytes received end (see data_received).
            resp.state = DONE
            resp.keep_alive = status != 101 and self._parser.should_keep_alive()
            self._timing = False
            resp._wake()
            raise _Stop
        resp.state = BODY
        if not self._timing:
            self._time()  # an early answer, the request body still going: its body is timed
        if status != 204 and status != 304:
            length = resp.headers.getall("Content-Length", ())
            if not length:
                codings = resp.headers.getall("Transfer-Encoding", ())
                resp.close_delimited = not codings or (
                    codings[-1].rsplit(",", 1)[-1].strip().lower() != "chunked"
                )
            elif len(length) == 1 and "Transfer-Encoding" not in resp.headers:
                # One Content-Length (llhttp checked its digits): the bytes after the ones
                # in this read are counted off without the parser (see _counted_body).
                self._left = int(length[0])
                self._keep = self._parser.should_keep_alive()
        resp._wake()

    def _counted_body(self, resp: H1Response, data: bytes) -> None:
        """Body bytes of a Content-Length response, taken as they are: llhttp would copy
        each read into a new bytes object for on_body."""
        left = self._left
        if len(data) > left:  # bytes past the response's end: never reused
            data = data[:left]
            self.spoiled = True
        self._left = left = left - len(data)
        self._deliver(resp, data)
        if left == 0:
            # The parser saw only the start of this body: a fresh one for the next response.
            self._parser = httptools.HttpResponseParser(self)
            resp.state = DONE
            resp.keep_alive = self._keep
            self._timing = False
            resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self._resp
        assert resp is not None
        if self._left > 0:
            self._left -= len(body)
        self._deliver(resp, body)

    def _deliver(self, resp: H1Response, body: bytes) -> None:
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > HIGH_WATER and not self.paused:
            self.pause()
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self._resp
        assert resp is not None
        if resp.state == HEAD:
            return  # the end of an interim response
        resp.state = DONE
        resp.keep_alive = not resp.close_delimited and self._parser.should_keep_alive()
        self._timing = False
        resp._wake()


def _ends_head(data: bytes) -> bool:
    """Does the first response head in ``data`` end where ``data`` ends?

    llhttp requires CRLF line ends and no CR or LF inside a header, so a head it accepted ends
    at its first empty line.
    """
    end = data.find(b"\r\n\r\n")
    return end >= 0 and end == len(data) - 4
