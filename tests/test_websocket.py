"""WebSocket upgrades relayed over loopback: messages, control frames, closes, routing, faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from .conftest import MakeProxy, Proxy, ProxyTo, origin, read_head, serve_one

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports

ROUTE = [{"name": "ws", "match": {"path_prefix": "/"}, "upstream": "up"}]


class Upstream:
    """What the upstream WebSocket handler saw."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.messages: list[tuple[WSMsgType, Any, Any]] = []
        self.close: tuple[int | None, str] | None = None
        self.ended = asyncio.Event()
        self.transport_closed = False
        self.origin = ""


def echo_app(
    seen: Upstream, protocols: tuple[str, ...] = (), close_after: bytes | None = None
) -> web.Application:
    """An echo server that answers pings itself and records every frame it gets."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen.requests.append(request)
        ws = web.WebSocketResponse(protocols=protocols, autoping=False, max_msg_size=0)
        await ws.prepare(request)
        try:
            while True:
                msg = await ws.receive()
                seen.messages.append((msg.type, msg.data, msg.extra))
                if msg.type is WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    if msg.data == close_after:
                        await ws.close(code=4002, message=b"upstream done")
                        seen.close = (ws.close_code, "")  # the code the proxy answered with
                        break
                    await ws.send_bytes(msg.data)
                elif msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.CLOSE:
                    seen.close = (msg.data, msg.extra)
                    break
                else:  # CLOSING, CLOSED, ERROR
                    break
        finally:
            transport = request.transport
            seen.transport_closed = transport is None or transport.is_closing()
            seen.ended.set()
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


EchoProxy = Callable[..., Awaitable[tuple[Proxy, Upstream]]]


@pytest.fixture
def echo_proxy(aiohttp_server: Any, make_proxy: MakeProxy) -> EchoProxy:
    """A proxy (``ROUTE``) in front of an ``echo_app`` (its ``options`` the keywords), and
    what that upstream saw."""

    async def start(**options: Any) -> tuple[Proxy, Upstream]:
        seen = Upstream()
        up = await aiohttp_server(echo_app(seen, **options))
        seen.origin = origin(up)
        proxy = await make_proxy({"up": [origin(up)]}, ROUTE)
        return proxy, seen

    return start


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), 5.0)


async def test_text_and_binary_messages_are_relayed_both_ways(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy()
    async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url("/chat")) as ws:
        await ws.send_str("héllo")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "héllo")
        await ws.send_bytes(b"\x00\x01\xff")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\x01\xff")
        await ws.send_str("")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "")
    assert [(k, d) for k, d, _ in seen.messages[:3]] == [
        (WSMsgType.TEXT, "héllo"),
        (WSMsgType.BINARY, b"\x00\x01\xff"),
        (WSMsgType.TEXT, ""),
    ]
    (line,) = await proxy.until_logged()
    assert line["status"] == 101
    assert line["outcome"] == "ok"
    assert line["bytes_in"] == line["bytes_out"] == len("héllo".encode()) + 3
    assert line["target"] == seen.origin
    target = proxy.server.runtime.upstreams["up"].targets[0]
    assert target.outstanding == 0


async def test_ping_reaches_the_upstream_and_its_pong_the_client(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(proxy.url("/"), autoping=False) as ws:
            await ws.ping(b"are you there")
            msg = await receive(ws)
            assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
    assert (WSMsgType.PING, b"are you there", "") in [(k, d, e or "") for k, d, e in seen.messages]


async def test_an_upstream_ping_reaches_the_client(proxy_to: ProxyTo) -> None:
    pongs: list[bytes] = []
    got_pong = asyncio.Event()

    async def pinger(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"beat")
        async for msg in ws:
            if msg.type is WSMsgType.PONG:
                pongs.append(msg.data)
                got_pong.set()
        return ws

    proxy = await proxy_to(pinger)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(proxy.url("/"), autoping=False) as ws:
            msg = await receive(ws)
            assert (msg.type, msg.data) == (WSMsgType.PING, b"beat")
            await ws.pong(b"beat")
            async with asyncio.timeout(5):
                await got_pong.wait()
    assert pongs == [b"beat"]


async def test_a_client_close_code_and_reason_reach_the_upstream(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy()
    async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url("/")) as ws:
        await ws.send_str("x")
        await receive(ws)
        await ws.close(code=4001, message=b"bye")
        # The upstream answered the relayed close; the client got that answer (aiohttp's
        # autoclose answers 1000, as it does to a client connected directly).
        assert ws.close_code == 1000
    async with asyncio.timeout(5):
        await seen.ended.wait()
    assert seen.close == (4001, "bye")
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "ok"


async def test_an_upstream_close_code_and_reason_reach_the_client(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy(close_after=b"stop")
    async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url("/")) as ws:
        await ws.send_bytes(b"stop")
        msg = await receive(ws)
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4002, "upstream done")
        assert ws.close_code == 4002
    async with asyncio.timeout(5):
        await seen.ended.wait()
    assert seen.close == (1000, "")  # the client's answer (aiohttp's autoclose) relayed back
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "ok"
    assert proxy.server.runtime.upstreams["up"].targets[0].outstanding == 0


async def test_the_subprotocol_is_negotiated_with_the_upstream(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy(protocols=("v2.chat",))
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(proxy.url("/"), protocols=("v1.chat", "v2.chat")) as ws:
            assert ws.protocol == "v2.chat"
        # Offered nothing the upstream speaks: no subprotocol, as with the upstream directly.
        async with s.ws_connect(proxy.url("/"), protocols=("v3.chat",)) as ws:
            assert ws.protocol is None
    offered = [r.headers.get("Sec-WebSocket-Protocol") for r in seen.requests]
    assert offered == ["v1.chat,v2.chat", "v3.chat"]


async def test_routed_like_any_request_with_the_stripped_raw_path(
    aiohttp_server: Any, make_proxy: MakeProxy
) -> None:
    seen = Upstream()
    other = Upstream()
    up = await aiohttp_server(echo_app(seen))
    fallback = await aiohttp_server(echo_app(other))
    routes = [
        {"name": "ws", "match": {"path_prefix": "/ws/"}, "upstream": "up", "strip_prefix": True},
        {"name": "rest", "match": {"path_prefix": "/"}, "upstream": "other"},
    ]
    proxy = await make_proxy({"up": [origin(up)], "other": [origin(fallback)]}, routes)
    async with aiohttp.ClientSession() as s:
        url = proxy.url("/ws/room%2F1/live?x=%20&y=caf%C3%A9")
        async with s.ws_connect(aiohttp.client.URL(url, encoded=True)) as ws:
            await ws.send_str("hi")
            assert (await receive(ws)).data == "hi"
    assert [r.raw_path for r in seen.requests] == ["/room%2F1/live?x=%20&y=caf%C3%A9"]
    assert other.requests == []
    (line,) = await proxy.until_logged()
    assert line["route"] == "ws"
    assert line["upstream"] == "up"


async def test_forwarding_headers_and_the_request_id_reach_the_upstream(
    echo_proxy: EchoProxy,
) -> None:
    proxy, seen = await echo_proxy()
    headers = {"X-Request-ID": "ws-req-1", "X-Forwarded-For": "10.0.0.1", "X-Custom": "kept"}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(proxy.url("/"), headers=headers) as ws:
            assert ws._response.headers["X-Request-ID"] == "ws-req-1"
    (request,) = seen.requests
    assert request.headers["X-Request-ID"] == "ws-req-1"
    assert request.headers["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert request.headers["X-Forwarded-Proto"] == "http"
    assert request.headers["X-Forwarded-Host"] == f"127.0.0.1:{proxy.port}"
    assert request.headers["X-Custom"] == "kept"
    assert request.headers["Host"] == seen.origin.removeprefix("http://")
    # The upstream leg made its own handshake: one key, one version, no extension offered.
    assert len(request.headers.getall("Sec-WebSocket-Key")) == 1
    assert request.headers.getall("Sec-WebSocket-Version") == ["13"]
    assert "Sec-WebSocket-Extensions" not in request.headers


def handshake_headers() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }


async def test_an_upstream_refusing_the_upgrade_gives_a_502_json_error(proxy_to: ProxyTo) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websockets here")

    proxy = await proxy_to(refuse)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/"), headers=handshake_headers()) as r:
            assert r.status == 502
            assert r.content_type == "application/json"
            body = json.loads(await r.read())
        assert body["error"] == "upstream_unavailable"
        assert "403" in body["detail"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(proxy.url("/"))
        assert info.value.status == 502
    assert proxy.server.runtime.upstreams["up"].targets[0].outstanding == 0


async def test_a_refused_port_gives_a_502(make_proxy: MakeProxy) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        proxy = await make_proxy({"up": [f"http://127.0.0.1:{port}"]}, ROUTE)
        async with aiohttp.ClientSession() as s:
            async with s.get(proxy.url("/"), headers=handshake_headers()) as r:
                assert r.status == 502
                body = json.loads(await r.read())
    assert body["error"] == "upstream_unavailable"
    (line,) = await proxy.until_logged()
    assert line["status"] == 502
    assert line["outcome"] == "upstream_error"


async def test_an_invalid_client_handshake_gives_400_without_reaching_the_upstream(
    echo_proxy: EchoProxy,
) -> None:
    proxy, seen = await echo_proxy()
    headers = {**handshake_headers(), "Sec-WebSocket-Version": "5"}
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/"), headers=headers) as r:
            assert r.status == 400
    assert seen.requests == []


async def test_a_vanished_client_closes_the_upstream_side(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in handshake_headers().items())
        writer.write(f"GET /live HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        assert (await read_head(reader)).startswith(b"HTTP/1.1 101")
        assert len(seen.requests) == 1  # the upstream leg is open
    finally:
        writer.close()  # gone without a close frame
    async with asyncio.timeout(1.0):
        await seen.ended.wait()
    assert seen.transport_closed
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "client_abort"
    assert proxy.server.runtime.upstreams["up"].targets[0].outstanding == 0


async def test_a_vanished_upstream_closes_the_client_side(proxy_to: ProxyTo) -> None:
    async def vanish(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        assert request.transport is not None
        request.transport.abort()  # gone without a close frame
        return ws

    proxy = await proxy_to(vanish)
    async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url("/")) as ws:
        await ws.send_str("go away")
        msg = await asyncio.wait_for(ws.receive(), 1.0)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert ws.close_code == 1014  # bad gateway
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "upstream_error"


async def test_a_one_mebibyte_binary_message_passes_intact_both_ways(echo_proxy: EchoProxy) -> None:
    proxy, seen = await echo_proxy()
    payload = os.urandom(1024 * 1024)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(proxy.url("/"), max_msg_size=0) as ws:
            await ws.send_bytes(payload)
            msg = await asyncio.wait_for(ws.receive(), 10.0)
            assert msg.type is WSMsgType.BINARY
            assert msg.data == payload
    assert seen.messages[0][1] == payload
    (line,) = await proxy.until_logged()
    assert line["bytes_in"] == line["bytes_out"] == len(payload)


async def test_a_refused_target_is_skipped_for_the_next_one(
    aiohttp_server: Any, make_proxy: MakeProxy
) -> None:
    seen = Upstream()
    up = await aiohttp_server(echo_app(seen))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}"
        proxy = await make_proxy({"up": [refused, origin(up)]}, ROUTE)
        async with aiohttp.ClientSession() as s:
            for _ in range(2):  # whichever target round robin starts with
                async with s.ws_connect(proxy.url("/")) as ws:
                    await ws.send_str("hi")
                    assert (await receive(ws)).data == "hi"
    assert len(seen.requests) == 2
    await proxy.until_logged(2)
    targets = proxy.server.runtime.upstreams["up"].targets
    assert [t.outstanding for t in targets] == [0, 0]


async def test_a_drain_closes_the_upstream_leg_with_going_away(
    aiohttp_server: Any, make_proxy: MakeProxy
) -> None:
    seen = Upstream()
    up = await aiohttp_server(echo_app(seen))
    proxy = await make_proxy({"up": [origin(up)]}, ROUTE, shutdown_grace="100ms")
    async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url("/")) as ws:
        await ws.send_str("x")
        await receive(ws)
        stopping = proxy.server.stop()
        # aiohttp ends the client's connection once the grace is over.
        msg = await receive(ws)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        async with asyncio.timeout(5):
            await stopping
    async with asyncio.timeout(1):
        await seen.ended.wait()
    assert seen.close == (1001, "")
    assert proxy.server.runtime.upstreams["up"].targets[0].outstanding == 0


async def test_an_upstream_silent_past_read_timeout_gives_a_504(
    aiohttp_server: Any, make_proxy: MakeProxy
) -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await release.wait()
        return web.Response(status=500)

    up = await serve_one(aiohttp_server, silent)
    upstreams = {"up": {"targets": [origin(up)], "read_timeout": "200ms"}}
    proxy = await make_proxy(upstreams, ROUTE)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(proxy.url("/"), headers=handshake_headers()) as r:
                assert r.status == 504
                assert json.loads(await r.read())["error"] == "upstream_timeout"
    finally:
        release.set()
    assert proxy.server.runtime.upstreams["up"].targets[0].outstanding == 0


async def test_upgrades_are_refused_on_routes_with_transforms(aiohttp_server, make_proxy) -> None:
    reached: list[str] = []

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        reached.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    up = await serve_one(aiohttp_server, ws_handler, "/ws")
    routes = [
        {
            "name": "t",
            "upstream": "up",
            "transforms": [{"tests.sample_plugins:Upper": {}}],
        }
    ]
    proxy = await make_proxy({"up": [f"http://127.0.0.1:{up.port}"]}, routes)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(proxy.url("/ws"))
    assert info.value.status == 400
    assert reached == []  # fail closed: messages would bypass the transforms
