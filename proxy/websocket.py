"""WebSocket upgrades, relayed both ways.

The handshake goes upstream first (routed like any request, the raw path kept byte for byte);
only when the upstream answers ``101`` is the client accepted, with the subprotocol the upstream
chose. Then two pumps run, one per direction, relaying text, binary, ping, pong and close frames
(close code and reason included). When one side closes, its close is passed on and the other
side's answer waited for (bounded), and that answer, code and reason, goes back to the side that
closed; when one side breaks or vanishes, the other is closed at once (within
:data:`ABORT_GRACE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Coroutine
from typing import Any, NamedTuple

import aiohttp
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import CIMultiDict, istr

from proxy.accesslog import AccessRecord
from proxy.errors import BadRequest
from proxy.headers import X_REQUEST_ID
from proxy.server.protocol import drop_websocket_connection
from proxy.upstream.group import BodyState, Upstream
from proxy.upstream.transports.aiohttp_client import WS_CLOSE_TIMEOUT as CLOSE_TIMEOUT

# How long closing the surviving side may take after the other broke or vanished.
ABORT_GRACE = 0.5
# Headers of the handshake that aiohttp makes itself on each leg.
HANDSHAKE_HEADERS = frozenset(
    istr(h)
    for h in (
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)
# Close codes that never go on the wire (RFC 6455 §7.4.1); 0 is aiohttp's "no code given".
UNSENDABLE_CODES = frozenset({0, 1005, 1006, 1015})

AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """Is this a WebSocket handshake (``Upgrade: websocket`` with ``Connection: upgrade``)?"""
    upgrade = request.headers.get("Upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return False
    connection = ",".join(request.headers.getall("Connection", ())).lower()
    return "upgrade" in (token.strip() for token in connection.split(","))


async def relay_websocket(
    request: web.BaseRequest,
    upstream: Upstream,
    path_qs: str,
    headers: CIMultiDict[str],
    host_header: str | None,
    rec: AccessRecord,
) -> web.StreamResponse:
    """Relay one WebSocket session; ProxyErrors raised here happen before the upgrade."""
    protocols = [
        token.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]
    # The check knows the offered subprotocols: aiohttp warns of every offer it does not share.
    check = web.WebSocketResponse(protocols=protocols)
    if request.method != "GET" or not check.can_prepare(request).ok:
        raise BadRequest("an invalid WebSocket handshake (method, Sec-WebSocket-Key or -Version)")
    out: CIMultiDict[str] = CIMultiDict(
        (key, value) for key, value in headers.items() if key not in HANDSHAKE_HEADERS
    )

    # Through the upstream's transport and its one retry loop, like any request.
    exchange = await upstream.send("GET", path_qs, out, None, host_header, BodyState(), protocols)
    up: aiohttp.ClientWebSocketResponse = exchange.websocket
    rec.target = exchange.target.origin
    try:
        client = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (),
            autoping=False,
            autoclose=False,
            max_msg_size=0,
            compress=False,
            timeout=CLOSE_TIMEOUT,
            decode_text=False,
        )
        rid = headers.get(X_REQUEST_ID)
        if rid is not None:
            client.headers[X_REQUEST_ID] = rid
        handshake = request
        if protocols and not up.protocol:
            # The upstream took none of the offered subprotocols: the client's handshake is
            # answered without one, as the upstream did, and aiohttp, seeing no offer, does not
            # warn that its own (empty) list shares none.
            without = CIMultiDict(request.headers)
            without.popall("Sec-WebSocket-Protocol", None)
            handshake = request.clone(headers=without)
        try:
            await client.prepare(handshake)
        except BaseException:
            rec.outcome = "client_abort"
            await _despite_cancel(_close_fast(up, WSCloseCode.GOING_AWAY))
            raise
        rec.status = 101
        rec.ttfb = asyncio.get_running_loop().time()
        await _Session(request, client, up, rec).run()
        return client
    finally:
        await exchange.finish(False)


class _End(NamedTuple):
    """How a pump ended: which side did it, and its last message (None: the side broke)."""

    side: str
    msg: WSMessage | None


class _Session:
    """The two pumps of one relayed WebSocket, and how it ends."""

    def __init__(
        self,
        request: web.BaseRequest,
        client: web.WebSocketResponse,
        up: aiohttp.ClientWebSocketResponse,
        rec: AccessRecord,
    ) -> None:
        self.request = request
        self.client = client
        self.up = up
        self.rec = rec

    def _leg(self, side: str) -> AnyWebSocket:
        return self.client if side == "client" else self.up

    async def run(self) -> None:
        rec = self.rec
        c2u = asyncio.create_task(self._pump("client", "upstream"))
        u2c = asyncio.create_task(self._pump("upstream", "client"))
        ended = False
        try:
            done, _ = await asyncio.wait((c2u, u2c), return_when=asyncio.FIRST_COMPLETED)
            if c2u in done:
                first, other = c2u.result(), u2c
            else:
                first, other = u2c.result(), c2u
            # Decided: the end is bounded and runs to its end, even if the client's connection
            # closes meanwhile (aiohttp then cancels the handler): a client that answers a close
            # and hangs up at once still has its answer relayed.
            ended = True
            await _despite_cancel(self._finish(first, other))
        except asyncio.CancelledError:
            # The client vanished (aiohttp cancels its handler), or the route's total timeout.
            if not ended:
                rec.outcome = "client_abort" if self.request.transport is None else "timeout"
            raise
        finally:
            await _despite_cancel(self._cleanup(c2u, u2c, ended))

    async def _cleanup(self, c2u: asyncio.Task[_End], u2c: asyncio.Task[_End], ended: bool) -> None:
        for task in (c2u, u2c):
            task.cancel()
        # The pumps are cancelled, never blocked on: waiting for them cannot hang.
        await asyncio.gather(c2u, u2c, return_exceptions=True)
        if not ended:
            # Cancelled or failed: close both legs now.
            await _close_fast(self.up, WSCloseCode.GOING_AWAY)
            await _close_fast(self.client, WSCloseCode.GOING_AWAY)

    async def _pump(self, src_side: str, dst_side: str) -> _End:
        src, dst = self._leg(src_side), self._leg(dst_side)
        rec = self.rec
        while True:
            try:
                msg = await src.receive()
            except Exception:
                return _End(src_side, None)
            kind = msg.type
            try:
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    data: bytes = msg.data
                    await dst.send_frame(data, kind)
                    if src_side == "client":
                        rec.bytes_in += len(data)
                    else:
                        rec.bytes_out += len(data)
                elif kind is WSMsgType.PING:
                    await dst.ping(msg.data)
                elif kind is WSMsgType.PONG:
                    await dst.pong(msg.data)
                elif kind is WSMsgType.CLOSE:
                    return _End(src_side, msg)
                else:  # CLOSING, CLOSED, ERROR: the side went away without a close frame
                    return _End(src_side, None)
            except Exception:
                return _End(dst_side, None)

    async def _finish(self, end: _End, other_pump: asyncio.Task[_End]) -> None:
        """One pump ended: pass on a close (and its answer back) or close the other side."""
        rec = self.rec
        ender = self._leg(end.side)
        other = self.up if end.side == "client" else self.client
        if end.msg is not None:
            # A close frame: relay it with its code and reason; the other side's pump goes on
            # (the other side may still send messages) until that side answers with its own
            # close, whose code and reason go back to the closer.
            code = _sendable(end.msg.data, WSCloseCode.OK)
            reason = (end.msg.extra or "").encode()
            answer: _End | None = None
            with contextlib.suppress(Exception):
                await other.send_frame(struct.pack("!H", code) + reason, WSMsgType.CLOSE)
                async with asyncio.timeout(CLOSE_TIMEOUT + ABORT_GRACE):
                    answer = await asyncio.shield(other_pump)
            if answer is not None and answer.msg is not None and answer.side != end.side:
                # The closing handshake is complete on that side: close its connection (a
                # close() there would send a second close frame).
                self._drop(answer.side)
                code = _sendable(answer.msg.data, code)
                reason = (answer.msg.extra or "").encode()
                await _close_fast(ender, code, reason)
                return
            await _close_fast(other, WSCloseCode.GOING_AWAY)
            await _close_fast(ender, code, reason)
            return
        rec.outcome = "client_abort" if end.side == "client" else "upstream_error"
        code = WSCloseCode.GOING_AWAY if end.side == "client" else WSCloseCode.BAD_GATEWAY
        await _close_fast(other, code)
        await _close_fast(ender, WSCloseCode.GOING_AWAY)

    def _drop(self, side: str) -> None:
        """Close one leg's connection without a close frame: it already sent and got one."""
        if side == "client":
            transport = self.request.transport
            if transport is not None:
                transport.close()
        else:
            drop_websocket_connection(self.up)


async def _despite_cancel(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run a (bounded) cleanup to its end even when this task is cancelled meanwhile, then
    pass the cancellation on: aiohttp may cancel a handler twice (drain, then connection lost),
    and a second cancel must not skip closing the upstream leg."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


def _sendable(code: int | None, default: int) -> int:
    return default if code is None or code in UNSENDABLE_CODES else code


async def _close_fast(ws: AnyWebSocket, code: int, reason: bytes = b"") -> None:
    """Close one leg, waiting at most :data:`ABORT_GRACE` for its answer."""
    if ws.closed:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(ABORT_GRACE):
            await ws.close(code=code, message=reason)
