"""Several targets per upstream: balancing, passive and active health, retries.

Every fault is a real socket: a closed port that refuses, a listener that accepts and closes
without answering, an upstream that resets after its headers, a target that stops and starts
again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .conftest import MakeProxy, Proxy, only_native, origin, read_head
from .support.common import ROUTE, find_sample, free_port
from .support.raw_upstream import RawUpstream, raw_upstream

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports

Hit = tuple[str, str, bytes]  # (target name, method, body received)


RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Health:
    """What an upstream's ``/health`` answers, and a queue of the checks it answered."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.checks: asyncio.Queue[int] = asyncio.Queue()

    async def answered(self, n: int, status: int) -> None:
        """Wait (bounded) until ``n`` checks in a row were answered with ``status``: by then
        the proxy has the verdict of at least one of them."""
        in_a_row = 0
        async with asyncio.timeout(5):
            while in_a_row < n:
                in_a_row = in_a_row + 1 if await self.checks.get() == status else 0


def recorder(
    name: str,
    hits: list[Hit],
    health: Health | None = None,
    extra: dict[str, RequestHandler] | None = None,
) -> web.Application:
    """An upstream that answers with its name and records every request with its whole body;
    ``health`` drives its ``/health`` status, ``extra`` adds GET paths of its own."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        hits.append((name, request.method, body))
        return web.Response(text=name)

    async def check(_: web.Request) -> web.Response:
        assert health is not None
        health.checks.put_nowait(health.status)
        return web.Response(status=health.status)

    app = web.Application()
    if health is not None:
        app.router.add_get("/health", check)
    for path, handler in (extra or {}).items():
        app.router.add_get(path, handler)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def health_checked(make_proxy: MakeProxy, *targets: str) -> Proxy:
    """A proxy whose upstream "up" is ``targets``, each checked at ``/health`` every 100 ms
    and given 100 ms to answer."""
    health = {"path": "/health", "interval": "100ms", "timeout": "100ms"}
    return await make_proxy({"up": {"targets": list(targets), "health": health}}, ROUTE)


async def metrics_text(proxy: Proxy) -> str:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url("/metrics")) as r:
        assert r.status == 200
        return await r.text()


async def target_up(proxy: Proxy, target: str) -> float | None:
    return find_sample(
        await metrics_text(proxy), "proxy_upstream_target_up", upstream="up", target=target
    )


async def upstream_errors(proxy: Proxy, kind: str) -> float:
    found = find_sample(
        await metrics_text(proxy), "proxy_upstream_errors_total", upstream="up", kind=kind
    )
    return found or 0.0


async def get_text(s: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with s.get(url) as r:
        return r.status, await r.text()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def listening(handler: Handler) -> contextlib.AbstractAsyncContextManager[RawUpstream]:
    """A raw upstream running ``handler`` on each connection."""
    return raw_upstream(lambda up, reader, writer, n: handler(reader, writer))


async def close_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read the request head, and close without a word."""
    await reader.readuntil(b"\r\n\r\n")


# -- balancing ---------------------------------------------------------------------------------


async def test_round_robin_spreads_requests_evenly_over_three_targets(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    ups = [await aiohttp_server(recorder(name, hits)) for name in "abc"]
    proxy = await make_proxy({"up": [origin(u) for u in ups]}, ROUTE)
    async with aiohttp.ClientSession() as s:
        answers = [await get_text(s, proxy.url("/")) for _ in range(30)]
    assert all(status == 200 for status, _ in answers)
    assert Counter(name for name, _, _ in hits) == {"a": 10, "b": 10, "c": 10}
    # In turn, not merely in total: every window of three requests meets every target.
    order = [text for _, text in answers]
    assert all(set(order[i : i + 3]) == {"a", "b", "c"} for i in range(0, 30, 3))


async def test_least_outstanding_sends_new_requests_to_the_least_busy_target(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    gate = asyncio.Event()
    held: list[str] = []
    hits: list[Hit] = []

    def app(name: str) -> web.Application:
        async def hold(request: web.Request) -> web.StreamResponse:
            held.append(name)
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b"holding\n")
            async with asyncio.timeout(10):
                await gate.wait()
            await resp.write(b"released\n")
            return resp

        return recorder(name, hits, extra={"/hold": hold})

    ups = [await aiohttp_server(app(name)) for name in "abc"]
    upstreams = {"up": {"targets": [origin(u) for u in ups], "balance": "least_outstanding"}}
    proxy = await make_proxy(upstreams, ROUTE)
    async with aiohttp.ClientSession() as s:
        streams = []
        try:
            for _ in range(2):
                r = await s.get(proxy.url("/hold"))
                streams.append(r)
                assert await asyncio.wait_for(r.content.readuntil(b"\n"), 5) == b"holding\n"
            # Two targets each hold one stream, on two different targets.
            assert len(set(held)) == 2
            (idle,) = set("abc") - set(held)
            for _ in range(6):
                assert await get_text(s, proxy.url("/")) == (200, idle)
            gate.set()
            for r in streams:
                assert await asyncio.wait_for(r.read(), 5) == b"released\n"
        finally:
            for r in streams:
                r.release()
        # Nothing is in flight any more: the load is shared again.
        after = Counter([(await get_text(s, proxy.url("/")))[1] for _ in range(6)])
    assert len(after) >= 2


# -- passive health ----------------------------------------------------------------------------


async def test_a_refusing_target_is_ejected_after_max_fails_in_a_row(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    live = await aiohttp_server(recorder("live", hits))
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {"up": {"targets": [dead, origin(live)], "max_fails": 2, "fail_timeout": "30s"}}
    proxy = await make_proxy(upstreams, ROUTE)
    assert await target_up(proxy, dead) == 1
    async with aiohttp.ClientSession() as s:
        for _ in range(12):
            assert await get_text(s, proxy.url("/")) == (200, "live")
    # The closed port was tried exactly max_fails times; after that, not at all.
    assert await upstream_errors(proxy, "upstream_unavailable") == 2
    assert await target_up(proxy, dead) == 0
    assert await target_up(proxy, origin(live)) == 1
    assert len(hits) == 12


async def test_a_target_that_dies_and_comes_back_is_used_again_after_fail_timeout(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    seen_back: list[float] = []
    port = free_port()
    revived = f"http://127.0.0.1:{port}"
    live = await aiohttp_server(recorder("live", hits))

    async def start(name: str) -> web.AppRunner:
        app = recorder(name, hits)

        @web.middleware
        async def stamp(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
            if name == "back":
                seen_back.append(time.monotonic())
            return await handler(request)

        app.middlewares.append(stamp)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = await start("first")
    try:
        upstreams = {
            "up": {"targets": [revived, origin(live)], "max_fails": 1, "fail_timeout": "300ms"}
        }
        proxy = await make_proxy(upstreams, ROUTE)
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                assert (await get_text(s, proxy.url("/")))[0] == 200
            assert {name for name, _, _ in hits} == {"first", "live"}

            await runner.cleanup()  # the target dies
            ejected_after = 0.0
            for _ in range(4):
                sent = time.monotonic()
                assert await get_text(s, proxy.url("/")) == (200, "live")
                if await upstream_errors(proxy, "upstream_unavailable"):
                    ejected_after = sent  # the refusal happened during this request
                    break
            assert ejected_after, "the dead target was never tried"

            runner = await start("back")  # and comes back on the same port at once
            # Until fail_timeout has passed everything goes to the other target, although the
            # revived one listens again; then it takes its share.
            deadline = time.monotonic() + 5
            while not seen_back and time.monotonic() < deadline:
                status, _ = await get_text(s, proxy.url("/"))
                assert status == 200
                await asyncio.sleep(0.02)
            assert seen_back, "the revived target never got traffic again"
            assert seen_back[0] - ejected_after >= 0.3
            assert await target_up(proxy, revived) == 1
            names = [(await get_text(s, proxy.url("/")))[1] for _ in range(4)]
            assert Counter(names) == {"back": 2, "live": 2}
    finally:
        await runner.cleanup()


async def test_active_health_checks_take_a_target_out_and_back(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    health = Health(500)
    sick = await aiohttp_server(recorder("sick", hits, health))
    well = await aiohttp_server(recorder("well", hits, Health(200)))
    proxy = await health_checked(make_proxy, origin(sick), origin(well))

    await health.answered(2, 500)
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            assert await get_text(s, proxy.url("/")) == (200, "well")
        assert await target_up(proxy, origin(sick)) == 0
        assert await upstream_errors(proxy, "upstream_unavailable") == 0  # never even tried

        health.status = 200
        await health.answered(2, 200)
        names = [(await get_text(s, proxy.url("/")))[1] for _ in range(6)]
        assert Counter(names) == {"sick": 3, "well": 3}
        assert await target_up(proxy, origin(sick)) == 1


async def test_a_health_check_that_times_out_marks_the_target_down(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    stuck = asyncio.Event()
    checks: asyncio.Queue[None] = asyncio.Queue()

    async def slow_health(_: web.Request) -> web.Response:
        checks.put_nowait(None)
        async with asyncio.timeout(5):
            await stuck.wait()  # answers only when the test ends
        return web.Response()

    up_slow = await aiohttp_server(recorder("slow", hits, extra={"/health": slow_health}))
    well = await aiohttp_server(recorder("well", hits, Health(200)))
    proxy = await health_checked(make_proxy, origin(up_slow), origin(well))
    try:
        async with asyncio.timeout(5):
            for _ in range(2):  # the second check starts after the first one timed out
                await checks.get()
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                assert await get_text(s, proxy.url("/")) == (200, "well")
        assert await target_up(proxy, origin(up_slow)) == 0
    finally:
        stuck.set()


# -- retries -----------------------------------------------------------------------------------


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)  # each part its own write: the body really streams
        yield part


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_a_refused_post_is_retried_on_another_target_with_its_whole_body(
    aiohttp_server, make_proxy: MakeProxy, streamed: bool
) -> None:
    hits: list[Hit] = []
    live = await aiohttp_server(recorder("live", hits))
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy({"up": {"targets": [dead, origin(live)], "retries": 1}}, ROUTE)
    parts = [bytes([65 + i]) * 10_000 for i in range(5)]
    async with aiohttp.ClientSession() as s:
        # Two requests: round robin sends one of them to the closed port first.
        for _ in range(2):
            data = chunks(*parts) if streamed else b"".join(parts)
            async with s.post(proxy.url("/"), data=data) as r:
                assert r.status == 200
    assert await upstream_errors(proxy, "upstream_unavailable") == 1
    assert hits == [("live", "POST", b"".join(parts))] * 2


async def test_a_closed_connection_is_retried_for_get_but_not_for_post(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    live = await aiohttp_server(recorder("live", hits))
    async with listening(close_without_answer) as closer:
        # max_fails 0: the closer is never ejected, so round robin keeps meeting it.
        upstreams = {"up": {"targets": [closer.origin, origin(live)], "max_fails": 0}}
        proxy = await make_proxy(upstreams, ROUTE)
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                assert await get_text(s, proxy.url("/")) == (200, "live")
            assert closer.connections >= 2  # two of the four GETs met it, and went on
            assert [m for _, m, _ in hits] == ["GET"] * 4

            statuses = []
            for _ in range(4):
                async with s.post(proxy.url("/"), data=b"order=1") as r:
                    statuses.append(r.status)
                    if r.status == 502:
                        assert (await r.json())["error"] == "upstream_unavailable"
        # The POSTs that met the closer were not repeated elsewhere: it may have acted on them.
        assert sorted(statuses) == [200, 200, 502, 502]
        assert [b for _, m, b in hits if m == "POST"] == [b"order=1"] * 2


async def body_writer_waiting() -> None:
    """Wait (bounded) until the proxy's upstream request is waiting for its body's first chunk:
    its body writer (``H1Connection.send_body``) is suspended inside the body iterator, not on
    the socket's write buffer."""
    async with asyncio.timeout(5):
        while True:
            for task in asyncio.all_tasks():
                coro: Any = task.get_coro()
                while coro is not None:
                    if (
                        getattr(coro, "__qualname__", "") == "H1Connection.send_body"
                        and inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED
                        and not isinstance(coro.cr_await, asyncio.Future)
                        and getattr(coro.cr_await, "__qualname__", "") != "H1Connection.drain"
                    ):
                        return
                    coro = getattr(coro, "cr_await", None)
            await asyncio.sleep(0.005)


async def test_a_put_whose_body_stream_was_started_is_never_replayed_short(
    aiohttp_server, make_proxy: MakeProxy, upstream_client: str
) -> None:
    """A pooled connection dies while the proxy waits for the client's first body chunk (the
    upstream's keep-alive ran out just as it was reused). The body stream has been started, so
    it cannot be sent again: a retry would give the next target an empty body. The request must
    fail (502), or reach the next target with its whole body."""
    only_native(upstream_client, "the moment tested is found by looking into its body sender")
    hits: list[Hit] = []
    live = await aiohttp_server(recorder("live", hits))
    drop = asyncio.Event()
    dropped = asyncio.Event()

    async def keepalive_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncloser")
        await writer.drain()
        try:
            async with asyncio.timeout(5):
                await drop.wait()  # idle, as far as the proxy knows, until told to close
        finally:
            writer.close()
            dropped.set()

    async with listening(keepalive_then_drop) as closer:
        upstreams = {"up": {"targets": [closer.origin, origin(live)], "max_fails": 0}}
        proxy = await make_proxy(upstreams, ROUTE)
        async with aiohttp.ClientSession() as s:
            names = []
            for _ in range(4):  # until the closer has answered once, and holds an idle conn
                names.append((await get_text(s, proxy.url("/")))[1])
                if names[-1] == "closer":
                    break
            assert names[-1] == "closer"
            assert await get_text(s, proxy.url("/")) == (200, "live")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await body_writer_waiting()
            # Round robin's turn was the closer's, over its pooled connection.
            (closer_target,) = [
                t for t in proxy.server.runtime.upstreams["up"].targets if t.origin == closer.origin
            ]
            assert closer_target.outstanding == 1
            drop.set()
            await asyncio.wait_for(dropped.wait(), 5)
            writer.write(b"1388\r\n" + b"x" * 5000 + b"\r\n0\r\n\r\n")
            await writer.drain()
            head = await read_head(reader)
        finally:
            writer.close()
    assert closer.connections == 1
    puts = [body for _, method, body in hits if method == "PUT"]
    if head.startswith(b"HTTP/1.1 502"):  # what this proxy does
        assert puts == []
    else:
        assert head.startswith(b"HTTP/1.1 200")
        assert puts == [b"x" * 5000], [len(b) for b in puts]


async def test_no_retry_once_response_headers_went_out(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    hits: list[Hit] = []
    live = await aiohttp_server(recorder("live", hits))

    async def head_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST

    async with listening(head_then_reset) as resetter:
        upstreams = {"up": {"targets": [resetter.origin, origin(live)], "max_fails": 0}}
        proxy = await make_proxy(upstreams, ROUTE)
        truncated = 0
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                before = len(hits)
                async with s.get(proxy.url("/")) as r:
                    assert r.status == 200
                    try:
                        await r.read()
                    except aiohttp.ClientPayloadError:
                        truncated += 1
                        assert len(hits) == before  # the live target never saw this one
        assert truncated == resetter.connections == 2
        assert len(hits) == 2


@pytest.mark.parametrize("retries", [0, 2])
async def test_retries_are_bounded(make_proxy: MakeProxy, retries: int) -> None:
    async with (
        listening(close_without_answer) as a,
        listening(close_without_answer) as b,
        listening(close_without_answer) as c,
        listening(close_without_answer) as d,
    ):
        closers = [a, b, c, d]
        upstreams = {
            "up": {"targets": [x.origin for x in closers], "retries": retries, "max_fails": 0}
        }
        proxy = await make_proxy(upstreams, ROUTE)
        async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
            assert r.status == 502
        # One attempt, plus one per retry, each on a different target.
        assert sum(1 for x in closers if x.connections) == 1 + retries
        assert await upstream_errors(proxy, "upstream_unavailable") == 1 + retries


async def test_a_client_body_fault_does_not_count_against_the_target(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    """An oversize streamed body (413) or one the client abandons is the client's fault: the
    target stays in rotation and no upstream error is counted."""
    hits: list[Hit] = []
    a = await aiohttp_server(recorder("a", hits))
    b = await aiohttp_server(recorder("b", hits))
    upstreams = {"up": {"targets": [origin(a), origin(b)], "max_fails": 1, "retries": 1}}
    proxy = await make_proxy(upstreams, ROUTE, max_request_body=1000)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # one oversize upload per target
            async with s.post(proxy.url("/"), data=chunks(*[b"y" * 300] * 5)) as r:
                assert r.status == 413
    for _ in range(2):  # and one abandoned upload per target
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b"z" * 200)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await proxy.until_logged(4)
    text = await metrics_text(proxy)
    assert find_sample(text, "proxy_upstream_target_up", upstream="up", target=origin(a)) == 1
    assert find_sample(text, "proxy_upstream_target_up", upstream="up", target=origin(b)) == 1
    assert "proxy_upstream_errors_total{" not in text
    async with aiohttp.ClientSession() as s:
        names = [(await get_text(s, proxy.url("/")))[1] for _ in range(4)]
    assert Counter(names) == {"a": 2, "b": 2}
