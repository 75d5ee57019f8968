"""Timeouts: connect, read (the longest silence, restarted by every chunk), per-route total.

The upstreams are real listeners: one whose backlog is full (connects hang), SSE-like streams
that tick, streams that go silent mid-body, and a fast upstream behind a client that stops
reading (backpressure is not silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from aiohttp import web

from .conftest import MakeProxy, Proxy, origin, raw_exchange, read_head, serve_one
from .support.common import ROUTE, assert_upstream_timeout, blackhole
from .support.raw_upstream import raw_upstream, silent

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports


def ticking(interval: float, count: int, stall: asyncio.Event | None = None) -> web.Application:
    """An SSE-like upstream: one event every ``interval`` seconds, ``count`` of them. With
    ``stall``, it goes silent after the second event until ``stall`` is set (bounded)."""

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the proxy may cut the stream
            for i in range(count):
                await resp.write(f"data: {i}\n\n".encode())
                if stall is not None and i == 1:
                    async with asyncio.timeout(10):
                        await stall.wait()
                await asyncio.sleep(interval)
        return resp

    app = web.Application()
    app.router.add_get("/", events)
    return app


def chunked_payload(body: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body as far as it goes: (data, whether the final chunk was there)."""
    data = b""
    rest = body
    for _ in range(100_000):
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return data, False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return data, rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            return data + rest[:size], False
        data += rest[:size]
        rest = rest[size + 2 :]
    raise AssertionError("too many chunks")


async def assert_a_timeout_after(proxy: Proxy, seconds: float) -> None:
    """A GET through ``proxy`` gets its 504 ``upstream_timeout`` after ``seconds`` (and well
    within 3 s), and is logged as a timeout."""
    started = time.monotonic()
    await assert_upstream_timeout(proxy.url("/"))
    assert seconds <= time.monotonic() - started < 3
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "timeout" and line["status"] == 504


# -- connect_timeout ---------------------------------------------------------------------------


async def test_a_connect_timeout_is_a_504_after_connect_timeout_not_read_timeout(
    make_proxy: MakeProxy,
) -> None:
    with blackhole() as target:
        upstreams = {"up": {"targets": [target], "connect_timeout": "300ms", "read_timeout": "20s"}}
        await assert_a_timeout_after(await make_proxy(upstreams, ROUTE), 0.3)


async def test_a_connect_timeout_is_retried_on_another_target(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="live")

    live = await serve_one(aiohttp_server, ok)
    with blackhole() as target:
        upstreams = {"up": {"targets": [target, origin(live)], "connect_timeout": "300ms"}}
        proxy = await make_proxy(upstreams, ROUTE)
        took = []
        async with aiohttp.ClientSession() as s:
            for _ in range(2):  # round robin: one of them tries the black hole first
                started = time.monotonic()
                async with s.get(proxy.url("/")) as r:
                    assert r.status == 200 and await r.text() == "live"
                took.append(time.monotonic() - started)
    assert max(took) >= 0.3  # that one waited out the connect timeout, then went on
    assert min(took) < 0.3


# -- read_timeout ------------------------------------------------------------------------------


async def test_read_timeout_is_the_longest_silence_not_a_total(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    # 15 events 100 ms apart: the stream lives 1.5 s, almost four read timeouts, and no route
    # total applies (it is off by default).
    up = await aiohttp_server(ticking(0.1, 15))
    proxy = await make_proxy({"up": {"targets": [origin(up)], "read_timeout": "400ms"}}, ROUTE)
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert r.status == 200
        body = await r.read()
    assert time.monotonic() - started >= 1.4
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(15))
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "ok"


async def test_silence_past_read_timeout_mid_body_cuts_the_body(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    stall = asyncio.Event()
    up = await aiohttp_server(ticking(0.05, 5, stall))
    proxy = await make_proxy({"up": {"targets": [origin(up)], "read_timeout": "400ms"}}, ROUTE)
    try:
        started = time.monotonic()
        async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
            assert r.status == 200
            assert await r.content.readuntil(b"\n\n") == b"data: 0\n\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        assert 0.4 <= time.monotonic() - started < 3
        # On the wire: both events that came, and no final chunk.
        data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        stall.set()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert chunked_payload(body) == (b"data: 0\n\ndata: 1\n\n", False)
    lines = await proxy.until_logged(2)
    assert [line["outcome"] for line in lines] == ["timeout", "timeout"]


async def test_a_client_that_stops_reading_is_not_upstream_silence(make_proxy: MakeProxy) -> None:
    """The upstream sends as fast as it may; the client pauses for longer than read_timeout.
    The proxy stops reading the upstream meanwhile, which is backpressure, not silence."""
    size = 16 * 1024 * 1024

    async def fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"f" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    up = await asyncio.start_server(fast, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    async with up:
        upstreams = {"up": {"targets": [f"http://127.0.0.1:{port}"], "read_timeout": "300ms"}}
        proxy = await make_proxy(upstreams, ROUTE)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=65536)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_head(reader)
            got = len(await reader.read(65536))
            # Stop reading for three read timeouts: every buffer on the way fills up.
            await asyncio.sleep(1.0)
            async with asyncio.timeout(20):
                while got < size:
                    chunk = await reader.read(1 << 20)
                    assert chunk, f"cut after {got} of {size} bytes"
                    got += len(chunk)
        finally:
            writer.close()
    assert got == size
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "ok"


# -- the per-route total -----------------------------------------------------------------------


async def test_a_route_total_before_the_headers_is_a_504(make_proxy: MakeProxy) -> None:
    async with raw_upstream(silent) as up:
        upstreams = {"up": {"targets": [up.origin], "read_timeout": "20s"}}
        routes = [{**ROUTE[0], "timeout": "500ms"}]
        await assert_a_timeout_after(await make_proxy(upstreams, routes), 0.5)


async def test_a_route_total_cuts_a_stream_that_is_still_flowing(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    up = await aiohttp_server(ticking(0.1, 30))
    upstreams = {"up": {"targets": [origin(up)], "read_timeout": "20s"}}
    routes = [{**ROUTE[0], "timeout": "500ms"}]
    proxy = await make_proxy(upstreams, routes)
    started = time.monotonic()
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 0.5 <= time.monotonic() - started < 3
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    payload, complete = chunked_payload(body)
    assert not complete
    # Whole events up to the cut, nothing else mixed into the stream.
    events = payload.split(b"\n\n")
    assert events[-1] == b"" and 3 <= len(events) - 1 < 15
    assert events[:-1] == [f"data: {i}".encode() for i in range(len(events) - 1)]
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "timeout"
