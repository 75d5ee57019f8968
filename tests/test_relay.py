"""Forwarding end to end over loopback: streaming, headers, paths, bodies, errors."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .conftest import MakeProxy, Proxy, ProxyTo, origin, raw_exchange, read_head
from .support.common import ROUTE, assert_upstream_timeout, blackhole, paused_stream
from .support.raw_upstream import raw_upstream, silent

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports


async def test_a_chunk_reaches_the_client_while_the_upstream_is_still_busy(
    proxy_to: ProxyTo,
) -> None:
    release = asyncio.Event()

    slow = paused_stream(b"first chunk\n", b"second chunk\n", release)

    proxy = await proxy_to(slow)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        # The upstream sends nothing more until the client has the first chunk.
        first = await asyncio.wait_for(r.content.readuntil(b"\n"), 1.0)
        assert first == b"first chunk\n"
        release.set()
        assert await r.content.read() == b"second chunk\n"


async def test_repeated_headers_stay_repeated_and_in_order(proxy_to: ProxyTo) -> None:
    async def cookies(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        for i in range(3):
            resp.headers.add("Set-Cookie", f"c{i}=v{i}; Path=/")
        resp.headers.add("X-Multi", "a")
        resp.headers.add("X-Multi", "b")
        return resp

    proxy = await proxy_to(cookies)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert r.headers.getall("Set-Cookie") == [f"c{i}=v{i}; Path=/" for i in range(3)]
        assert r.headers.getall("X-Multi") == ["a", "b"]


async def recording_proxy(
    proxy_to: ProxyTo, routes: list[dict[str, Any]] = ROUTE
) -> tuple[Proxy, list[str]]:
    """A proxy in front of an upstream that takes any method and path and records the raw
    path of each request it gets: the proxy and that record."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="ok")

    return await proxy_to(record, "/{tail:.*}", method="*", routes=routes), seen


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb?q=a+b&x=%20",
        "/%7Euser/a%20b?x=%2F%2e&y=caf%C3%A9",
        "//double//slashes/?",
        "/semi;colon/path?a=1&a=2&&",
    ],
)
async def test_raw_path_and_query_reach_the_upstream_byte_for_byte(
    proxy_to: ProxyTo, target: str
) -> None:
    proxy, seen = await recording_proxy(proxy_to)
    response = await raw_exchange(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert seen == [target]


async def test_strip_prefix_keeps_the_rest_raw(proxy_to: ProxyTo) -> None:
    routes = [
        {"name": "logs", "match": {"path_prefix": "/logs/"}, "upstream": "up", "strip_prefix": True}
    ]
    proxy, seen = await recording_proxy(proxy_to, routes)
    async with aiohttp.ClientSession() as s:
        for path in ("/logs/a%2Fb?x=1", "/logs/", "/logs/?q"):
            async with s.get(aiohttp.client.URL(proxy.url(path), encoded=True)) as r:
                assert r.status == 200
        async with s.get(proxy.url("/logs")) as r:
            assert r.status == 404  # `/logs/` does not match `/logs`
    assert seen == ["/a%2Fb?x=1", "/", "/?q"]


async def test_an_upstream_reset_mid_body_leaves_the_chunked_body_unterminated(
    make_proxy: MakeProxy,
) -> None:
    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nhello \r\n"
        )
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST

    up = await asyncio.start_server(resetting, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    async with up:
        proxy = await make_proxy({"up": [f"http://127.0.0.1:{port}"]}, ROUTE)
        data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.startswith(b"6\r\nhello \r\n")
    assert not body.endswith(b"0\r\n\r\n")
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "upstream_error"


async def test_a_short_content_length_body_is_not_completed(make_proxy: MakeProxy) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(short, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    async with up:
        proxy = await make_proxy({"up": [f"http://127.0.0.1:{port}"]}, ROUTE)
        async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
            assert r.headers["Content-Length"] == "100"
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


async def test_twenty_concurrent_streams_all_flow(proxy_to: ProxyTo) -> None:
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"start:" + request.match_info["n"].encode() + b"\n")
        async with asyncio.timeout(10):
            await release.wait()
        await resp.write(b"end\n")
        return resp

    proxy = await proxy_to(stream, "/{n}")
    async with aiohttp.ClientSession() as s:
        responses = [await s.get(proxy.url(f"/{n}")) for n in range(20)]
        try:
            # Every stream has its first chunk while all twenty are open at once.
            firsts = await asyncio.wait_for(
                asyncio.gather(*(r.content.readuntil(b"\n") for r in responses)), 5
            )
            assert firsts == [f"start:{n}\n".encode() for n in range(20)]
            release.set()
            rests = await asyncio.wait_for(asyncio.gather(*(r.read() for r in responses)), 5)
            assert rests == [b"end\n"] * 20
        finally:
            for r in responses:
                r.release()


async def test_hop_by_hop_headers_are_dropped_both_ways(proxy_to: ProxyTo) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(list(request.headers.items()))
        resp = web.Response(text="ok")
        resp.headers["Connection"] = "X-Up-Private, keep-alive"
        resp.headers["X-Up-Private"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["X-End"] = "kept"
        return resp

    proxy = await proxy_to(echo)
    request = (
        b"GET / HTTP/1.1\r\nHost: front.example:8080\r\nConnection: X-Private, close\r\n"
        b"X-Private: hidden\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic abc\r\nTE: trailers\r\n"
        b"Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nTrailer: X\r\nX-Keep: 1\r\n"
        b"X-Keep: 2\r\nX-Forwarded-For: 10.0.0.1\r\nX-Request-ID: abc-123\r\n\r\n"
    )
    data = await raw_exchange(proxy.port, request)
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    for gone in ("x-up-private", "keep-alive:", "proxy-authenticate"):
        assert gone not in head
    assert "x-end: kept" in head
    assert "x-request-id: abc-123" in head
    (headers,) = seen
    names = [k.lower() for k, _ in headers]
    for gone in (
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "proxy-connection",
        "trailer",
    ):
        assert gone not in names
    assert [v for k, v in headers if k.lower() == "x-keep"] == ["1", "2"]
    for added in ("user-agent", "accept", "accept-encoding", "content-type"):
        assert added not in names  # the proxy adds no headers of an HTTP client's own
    values = {k.lower(): v for k, v in headers}
    assert values["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert values["x-forwarded-proto"] == "http"
    assert values["x-forwarded-host"] == "front.example:8080"
    assert values["x-request-id"] == "abc-123"
    assert values["host"] == f"127.0.0.1:{proxy.upstream.port}"


async def test_request_id_is_made_when_missing_or_unsafe(proxy_to: ProxyTo) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Request-ID"])
        return web.Response(text="ok")

    proxy = await proxy_to(echo)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/")) as r:
            made = r.headers["X-Request-ID"]
        async with s.get(proxy.url("/"), headers={"X-Request-ID": "bad id with spaces"}) as r:
            replaced = r.headers["X-Request-ID"]
    assert len(made) == 32 and seen[0] == made
    assert replaced != "bad id with spaces" and seen[1] == replaced


async def test_preserve_host_sends_the_clients_host(proxy_to: ProxyTo) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["Host"])
        return web.Response(text="ok")

    routes = [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up", "preserve_host": True}]
    proxy = await proxy_to(echo, routes=routes)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/"), headers={"Host": "app.test"}):
        pass
    assert seen == ["app.test"]


async def test_routes_match_by_prefix_host_and_method_first_wins(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    def named(name: str) -> web.Application:
        async def h(_: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_route("*", "/{t:.*}", h)
        return app

    a = await aiohttp_server(named("a"))
    b = await aiohttp_server(named("b"))
    c = await aiohttp_server(named("c"))
    routes = [
        {"name": "host", "match": {"path_prefix": "/", "host": "API.example"}, "upstream": "a"},
        {"name": "post", "match": {"path_prefix": "/x/", "methods": ["post"]}, "upstream": "b"},
        {"name": "rest", "match": {"path_prefix": "/x/"}, "upstream": "c"},
    ]
    proxy = await make_proxy({"a": [origin(a)], "b": [origin(b)], "c": [origin(c)]}, routes)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/x/1"), headers={"Host": "api.EXAMPLE:9999"}) as r:
            assert await r.text() == "a"
        async with s.post(proxy.url("/x/1")) as r:
            assert await r.text() == "b"
        async with s.get(proxy.url("/x/1")) as r:
            assert await r.text() == "c"
        async with s.get(proxy.url("/y")) as r:
            assert r.status == 404
            body = await r.json()
            assert body["error"] == "no_route"
            assert body["request_id"] == r.headers["X-Request-ID"]
            assert r.content_type == "application/json"


async def test_request_bodies_stream_upstream(proxy_to: ProxyTo) -> None:
    got_first = asyncio.Event()
    seen: list[tuple[str | None, str | None, bytes]] = []

    async def upload(request: web.Request) -> web.Response:
        first = await request.content.readany()
        got_first.set()
        rest = await request.content.read()
        seen.append(
            (
                request.headers.get("Content-Length"),
                request.headers.get("Transfer-Encoding"),
                first + rest,
            )
        )
        return web.Response(text="stored")

    proxy = await proxy_to(upload, method="POST")

    async def body():
        yield b"part one;"
        # The upstream has the first part before the client sends the second.
        async with asyncio.timeout(5):
            await got_first.wait()
        yield b"part two"

    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url("/"), data=body()) as r:
            assert await r.text() == "stored"
        async with s.post(proxy.url("/"), data=b"x" * 1000) as r:
            assert await r.text() == "stored"
    assert seen[0] == (None, "chunked", b"part one;part two")
    assert seen[1] == ("1000", None, b"x" * 1000)


async def test_content_length_is_kept_and_head_204_304_carry_no_body(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"0123456789", content_type="application/octet-stream")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    app = web.Application()
    app.router.add_get("/sized", sized)
    app.router.add_get("/status/{code}", empty)
    up = await aiohttp_server(app)
    proxy = await make_proxy({"up": [origin(up)]}, ROUTE)
    data = await raw_exchange(
        proxy.port, b"GET /sized HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert b"Content-Length: 10\r\n" in data and data.endswith(b"\r\n\r\n0123456789")
    assert b"Transfer-Encoding" not in data
    data = await raw_exchange(
        proxy.port, b"HEAD /sized HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert b"Content-Length: 10\r\n" in data and data.endswith(b"\r\n\r\n")
    for code in (204, 304):
        data = await raw_exchange(
            proxy.port,
            f"GET /status/{code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        )
        assert data.startswith(f"HTTP/1.1 {code}".encode())
        assert data.endswith(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in data


async def test_redirects_are_passed_through_not_followed(proxy_to: ProxyTo) -> None:
    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    proxy = await proxy_to(redirect)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/"), allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/elsewhere"


async def test_a_refusing_upstream_is_a_502(make_proxy: MakeProxy) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    proxy = await make_proxy({"up": [f"http://127.0.0.1:{port}"]}, ROUTE)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert r.status == 502
        body = await r.json()
    assert body["error"] == "upstream_unavailable"
    assert body["request_id"] == r.headers["X-Request-ID"]
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "upstream_error" and log[0]["status"] == 502


async def test_no_response_headers_within_read_timeout_is_a_504(make_proxy: MakeProxy) -> None:
    async with raw_upstream(silent) as up:
        upstreams = {"up": {"targets": [up.origin], "read_timeout": "300ms"}}
        proxy = await make_proxy(upstreams, ROUTE)
        await assert_upstream_timeout(proxy.url("/"))
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "timeout"


async def test_a_connect_timeout_is_a_504(make_proxy: MakeProxy) -> None:
    with blackhole() as target:
        upstreams = {"up": {"targets": [target], "connect_timeout": "300ms"}}
        proxy = await make_proxy(upstreams, ROUTE)
        await assert_upstream_timeout(proxy.url("/"))


async def test_request_bodies_over_the_limit_get_413(proxy_to: ProxyTo) -> None:
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        try:
            received.append(len(await request.read()))
        except Exception:
            received.append(-1)
        return web.Response(text="stored")

    proxy = await proxy_to(upload, method="POST", max_request_body=1000)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url("/"), data=b"x" * 1001) as r:
            assert r.status == 413
            assert (await r.json())["error"] == "request_body_too_large"
        assert received == []  # refused by its Content-Length: the upstream saw nothing

        async def chunked():
            for _ in range(20):
                yield b"y" * 100

        async with s.post(proxy.url("/"), data=chunked()) as r:
            assert r.status == 413
        async with s.post(proxy.url("/"), data=b"x" * 1000) as r:
            assert r.status == 200
    # The chunked upload was cut off before the upstream got more than the limit.
    assert all(n <= 1000 for n in received)


@pytest.mark.parametrize(
    "request_line",
    [
        b"CONNECT example.com:443 HTTP/1.1",
        b"GET http://other.example/ HTTP/1.1",
        b"GET /a/../b HTTP/1.1",
        b"GET /a/./b HTTP/1.1",
        b"GET /a/%2e%2e/b HTTP/1.1",
        b"GET /a/%2E/b HTTP/1.1",
        b"GET /a/.%2E HTTP/1.1",
        b"GET /a%2f..%2fb HTTP/1.1",
        b"GET /.. HTTP/1.1",
    ],
)
async def test_connect_absolute_form_and_dot_segments_get_400(
    proxy_to: ProxyTo, request_line: bytes
) -> None:
    proxy, hits = await recording_proxy(proxy_to)
    data = await raw_exchange(proxy.port, request_line + b"\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data[:100]
    assert b'"error": "bad_request"' in data
    assert hits == []


async def test_dots_inside_names_are_fine(proxy_to: ProxyTo) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=request.raw_path)

    proxy = await proxy_to(ok, "/{t:.*}", method="*")
    for path in ("/file.txt", "/.well-known/x", "/a/...", "/v1.2/..x"):
        data = await raw_exchange(
            proxy.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(path.encode())


async def test_client_disconnect_releases_the_upstream_at_once(proxy_to: ProxyTo) -> None:
    upstream_gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(100_000):
                await resp.write(b"tick\n")
                await asyncio.sleep(0.01)
        except ConnectionError:
            upstream_gone.set()
        finally:
            if request.transport is None or request.transport.is_closing():
                upstream_gone.set()
        return resp

    proxy = await proxy_to(endless)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_head(reader)
    await asyncio.wait_for(reader.readuntil(b"tick\n"), 5)
    writer.close()
    await asyncio.wait_for(upstream_gone.wait(), 2)
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "client_abort"


async def test_a_chunk_followed_by_a_one_second_sleep_arrives_within_100_ms(
    proxy_to: ProxyTo,
) -> None:
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []

    async def sleepy(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"chunk\n")
        sent_at.append(loop.time())
        await asyncio.sleep(1)
        await resp.write(b"after the sleep\n")
        return resp

    proxy = await proxy_to(sleepy)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await asyncio.wait_for(r.content.readuntil(b"\n"), 1.0) == b"chunk\n"
        # Upstream and client share this event loop's clock.
        assert loop.time() - sent_at[0] < 0.1
        assert await r.content.read() == b"after the sleep\n"
