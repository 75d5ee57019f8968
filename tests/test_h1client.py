"""The upstream HTTP/1.1 client and its pool, against raw upstreams that send chosen bytes.

Each test's upstream is an ``asyncio.start_server`` on loopback that counts its connections
and records every request head it reads, so reuse (or the refusal to reuse) is seen from the
upstream's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from proxy.config.models import UpstreamConfig
from proxy.upstream import h1pool
from proxy.upstream.group import BodyState
from proxy.upstream.group import Upstream as ProxyUpstream
from proxy.upstream.h1client import (
    HIGH_WATER,
    BodyIncomplete,
    BodyTimeout,
    H1Response,
    HeadTimeout,
    InvalidResponse,
    StaleConnection,
)
from proxy.upstream.h1pool import Endpoint, H1Pool

from .support.raw_upstream import RawUpstream, raw_upstream

GET = b"GET /x?a=%2F HTTP/1.1\r\nHost: up\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: up\r\n\r\n"
KEY = "target"

Reply = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Upstream = RawUpstream


def upstream(reply: Reply) -> contextlib.AbstractAsyncContextManager[RawUpstream]:
    """A raw upstream whose ``reply`` serves each connection (the connection count aside)."""
    return raw_upstream(lambda up, reader, writer, n: reply(up, reader, writer))


def answering(*responses: bytes) -> Reply:
    """Reads a request and sends the next response, for each response, on one connection."""

    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for data in responses:
            await up.read_request(reader)
            w.write(data)
            await w.drain()
        await reader.read()  # until the proxy closes

    return reply


async def body_of(resp: H1Response) -> bytes:
    out = b""
    while chunk := await resp.read():
        out += chunk
    return out


async def assert_cut(resp: H1Response, *parts: bytes, error: type[Exception]) -> None:
    """Reading ``resp`` gives ``parts``, one a read, and then raises ``error``; ``resp`` is
    closed then."""
    for part in parts:
        assert await resp.read() == part
    with pytest.raises(error):
        await resp.read()
    resp.close()


async def get(pool: H1Pool, up: Upstream, head: bytes = GET, head_only: bool = False) -> H1Response:
    return await pool.request(
        KEY, Endpoint("127.0.0.1", up.port, None), head, None, False, head_only
    )


async def get_hello(pool: H1Pool, up: Upstream) -> None:
    """A GET answered by ``OK``, read to its end, its connection released."""
    resp = await get(pool, up)
    assert (resp.status, await body_of(resp)) == (200, b"hello")
    resp.release()


async def idle_settled(pool: H1Pool, counts: tuple[int, int]) -> None:
    async with asyncio.timeout(5):
        while pool.counts() != counts:  # noqa: ASYNC110 - the pool has no event to wait on
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def pool_to(
    reply: Reply, read_timeout: float = 5.0, *, ends_empty: bool = False
) -> AsyncIterator[tuple[H1Pool, Upstream]]:
    """A pool (5 s to connect, ``read_timeout`` to read) and an ``upstream(reply)`` for it,
    the pool closed at the end; with ``ends_empty``, the block must leave the pool with no
    connection in use or idle (waited for, bounded) before it is closed."""
    async with upstream(reply) as up:
        pool = H1Pool(5, read_timeout)
        try:
            yield pool, up
            if ends_empty:
                await idle_settled(pool, (0, 0))
        finally:
            pool.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def test_keep_alive_connections_are_reused_and_the_head_goes_out_byte_for_byte() -> None:
    async with pool_to(answering(OK, OK, OK)) as (pool, up):
        for _ in range(3):
            resp = await get(pool, up)
            assert (resp.status, resp.reason) == (200, "OK")
            assert await body_of(resp) == b"hello"
            resp.release()
            assert pool.counts() == (0, 1)
    assert up.connections == 1
    assert up.requests == [GET] * 3


async def test_interim_responses_are_skipped_and_repeated_headers_kept_in_order() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Made\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\nContent-Length: 2\r\n\r\nok"
    )
    async with pool_to(answering(data)) as (pool, up):
        resp = await get(pool, up)
        assert (resp.status, resp.reason) == (201, "Made")
        headers = resp.take_headers()
        assert list(headers.items()) == [
            ("X-A", "1"),
            ("X-B", "2"),
            ("X-A", "3"),
            ("Content-Length", "2"),
        ]
        assert await body_of(resp) == b"ok"
        resp.release()


async def test_a_chunked_body_is_relayed_without_framing_or_trailers_and_the_conn_reused() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with pool_to(answering(chunked, OK)) as (pool, up):
        resp = await get(pool, up)
        assert await body_of(resp) == b"hello world"
        assert "X-Trailer" not in resp.take_headers()
        resp.release()
        await get_hello(pool, up)
    assert up.connections == 1


async def test_a_close_delimited_body_ends_at_eof_and_its_connection_is_not_reused() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await w.drain()

    async with pool_to(reply, ends_empty=True) as (pool, up):
        for _ in range(2):
            resp = await get(pool, up)
            assert await body_of(resp) == b"until the end"
            resp.release()
    assert up.connections == 2


async def test_a_body_shorter_than_its_content_length_is_an_error_at_the_reader() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort")
        await w.drain()  # then closed

    async with pool_to(reply, ends_empty=True) as (pool, up):
        await assert_cut(await get(pool, up), b"short", error=BodyIncomplete)


async def test_a_head_response_has_no_body_whatever_its_content_length_says() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with pool_to(answering(head, head, OK)) as (pool, up):
        for _ in range(2):
            resp = await get(pool, up, HEAD, head_only=True)
            assert resp.status == 200 and resp.ready
            assert await resp.read() == b""
            resp.release()
        await get_hello(pool, up)  # the same connection still frames responses right
    assert up.connections == 1


async def test_a_head_response_followed_by_more_bytes_is_not_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"  # a body a HEAD must not have
    async with pool_to(answering(head, OK), ends_empty=True) as (pool, up):
        resp = await get(pool, up, HEAD, head_only=True)
        assert await resp.read() == b""
        resp.release()


async def test_bytes_on_an_idle_connection_close_it() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        w.write(OK)
        await w.drain()
        await asyncio.sleep(0.1)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        await w.drain()
        await reader.read()

    async with pool_to(reply, ends_empty=True) as (pool, up):
        await get_hello(pool, up)
        assert pool.counts() == (0, 1)


async def test_a_reused_connection_closed_by_the_upstream_is_reported_stale() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        w.write(OK)
        await w.drain()
        await up.read_request(reader)  # the second request: closed without an answer

    async with pool_to(reply) as (pool, up):
        await get_hello(pool, up)
        with pytest.raises(StaleConnection):
            await get(pool, up)
        # What the caller does then: the same request on a new connection.
        resp = await pool.request(
            KEY, Endpoint("127.0.0.1", up.port, None), GET, None, False, False, fresh=True
        )
        assert await body_of(resp) == b"hello"
        resp.release()


async def test_invalid_http_is_refused() -> None:
    async with pool_to(answering(b"HTTP/1.1 abc OK\r\n\r\n"), ends_empty=True) as (pool, up):
        with pytest.raises(InvalidResponse):
            await get(pool, up)


async def test_silence_before_the_head_and_between_chunks_is_timed() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        if up.connections == 2:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await w.drain()
        await reader.read()

    async with pool_to(reply, read_timeout=0.2) as (pool, up):
        with pytest.raises(HeadTimeout):
            await get(pool, up)
        await assert_cut(await get(pool, up), b"abc", error=BodyTimeout)


async def test_a_reader_that_does_not_read_stops_the_socket_being_read() -> None:
    size = 1024 * HIGH_WATER  # 64 MiB: far more than the kernel buffers on the way
    sent = 0
    stuck = asyncio.Event()  # the upstream's writes back up: nobody reads its socket

    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        await up.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"z" * 65536
        while sent < size:
            w.write(block)
            sent += len(block)
            if w.transport.get_write_buffer_size() > len(block):
                stuck.set()  # the kernel took no more: its buffers on the way are full
            await w.drain()

    async with pool_to(reply) as (pool, up):
        resp = await get(pool, up)
        async with asyncio.timeout(5):
            await stuck.wait()
        # What is held in the process: the buffer (one socket read past the high-water mark at
        # most); the rest waits in the kernel's socket buffers or at the upstream.
        assert resp._buffered <= HIGH_WATER + 2**18
        assert sent < size
        got = 0
        while chunk := await resp.read():
            got += len(chunk)
        assert got == size
        resp.release()


async def test_idle_connections_are_closed_after_the_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h1pool, "IDLE_TIMEOUT", 0.2)
    async with pool_to(answering(OK, OK), ends_empty=True) as (pool, up):
        await get_hello(pool, up)
        assert pool.counts() == (0, 1)


async def test_a_request_body_without_length_goes_chunked() -> None:
    got: list[bytes] = []

    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        got.append(await reader.readuntil(b"0\r\n\r\n"))
        w.write(OK)
        await w.drain()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"0123456789abcdef!"

    async with pool_to(reply) as (pool, up):
        head = b"POST / HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n"
        endpoint = Endpoint("127.0.0.1", up.port, None)
        resp = await pool.request(KEY, endpoint, head, body(), True, False)
        assert await body_of(resp) == b"hello"
        resp.release()
    assert got == [b"3\r\nabc\r\n11\r\n0123456789abcdef!\r\n0\r\n\r\n"]


@pytest.mark.parametrize("value", ["a\x01b", "a\x00b", "a\x7fb", "a\rb", "a\nX-Injected: 1"])
async def test_a_control_character_in_a_request_header_is_never_written(value: str) -> None:
    async with upstream(answering(OK)) as up:
        config = UpstreamConfig(targets=[f"http://127.0.0.1:{up.port}"])
        target = ProxyUpstream("up", config)
        await target.start()
        try:
            headers: CIMultiDict[str] = CIMultiDict([("X-A", value)])
            with pytest.raises(ValueError, match="control character"):
                await target.send("GET", "/", headers, None, None, BodyState())
            # Control: the same request with a clean value goes out.
            headers = CIMultiDict([("X-A", "a\tb")])
            resp = await target.send("GET", "/", headers, None, None, BodyState())
            assert await body_of(resp) == b"hello"
            await resp.finish(True)
        finally:
            await target.close()
    assert up.requests == [b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-A: a\tb\r\n\r\n" % up.port]


async def test_the_body_framing_of_a_request_is_declared() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await up.read_request(reader)
            if b"chunked" in head:
                await reader.readuntil(b"0\r\n\r\n")
            elif b"Content-Length: 3" in head:
                await reader.readexactly(3)
            w.write(OK)
            await w.drain()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    async with upstream(reply) as up:
        target = ProxyUpstream("up", UpstreamConfig(targets=[f"http://127.0.0.1:{up.port}"]))
        await target.start()
        host = b"Host: 127.0.0.1:%d\r\n" % up.port
        try:
            for method, length, stream, framing in [
                ("POST", None, False, b"Content-Length: 0\r\n"),  # no body at all
                ("DELETE", None, False, b"Content-Length: 0\r\n"),
                ("GET", None, False, b""),
                ("POST", "3", True, b"Content-Length: 3\r\n"),  # the client's length kept
                ("PUT", None, True, b"Transfer-Encoding: chunked\r\n"),
            ]:
                headers: CIMultiDict[str] = CIMultiDict()
                if length is not None:
                    headers["Content-Length"] = length
                resp = await target.send(
                    method, "/", headers, body() if stream else None, None, BodyState()
                )
                assert await body_of(resp) == b"hello"
                await resp.finish(True)
                assert up.requests[-1] == b"%s / HTTP/1.1\r\n%s%s\r\n" % (
                    method.encode(),
                    host,
                    framing,
                )
        finally:
            await target.close()
    assert up.connections == 1


def in_pieces(pieces: list[bytes], then: bytes, sent: list[asyncio.Event]) -> Reply:
    """On the first connection, a response in ``pieces``, each written once the test has read
    the one before (so each is a read of its own); then ``then`` to every request."""

    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if up.connections == 1:
            await up.read_request(reader)
            for piece, event in zip(pieces, sent, strict=True):
                await event.wait()
                w.write(piece)
                await w.drain()
        await up.read_request(reader)
        w.write(then)
        await w.drain()
        await reader.read()

    return reply


@pytest.mark.parametrize("surplus", [b"", b"HTTP/1.1 200 OK\r\n"], ids=["exact", "surplus"])
async def test_a_content_length_body_over_several_reads(surplus: bytes) -> None:
    """Body bytes after the head's read are counted off by Content-Length, uncopied: the body is
    exact, the connection is reused only when nothing followed it, and the next response on it
    is parsed from a clean state."""
    body = [b"a" * 1000, b"b" * 3000, b"c" * 24]
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 4034\r\n\r\n0123456789", *body]
    pieces[-1] += surplus
    sent = [asyncio.Event() for _ in pieces]
    async with pool_to(in_pieces(pieces, OK, sent)) as (pool, up):
        sent[0].set()
        resp = await get(pool, up)
        got = [await resp.read()]
        for event in sent[1:]:
            event.set()
            got.append(await resp.read())
        assert got == [b"0123456789", *body]
        assert await resp.read() == b""
        resp.release()
        if surplus:
            await idle_settled(pool, (0, 0))  # bytes past the body's end: closed
        second = await get(pool, up)
        assert (second.status, await body_of(second)) == (200, b"hello")
        second.release()
        assert up.connections == (2 if surplus else 1)


async def test_a_content_length_body_cut_short_over_several_reads_is_incomplete() -> None:
    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await w.drain()
        await sent.wait()
        w.write(b"second")
        await w.drain()
        w.close()  # 11 of 100 bytes

    sent = asyncio.Event()
    async with pool_to(reply) as (pool, up):
        resp = await get(pool, up)
        assert await resp.read() == b"first"
        sent.set()
        await assert_cut(resp, b"second", error=BodyIncomplete)


async def test_a_request_body_sent_in_full_leaves_no_task_behind_while_the_answer_streams() -> None:
    go, release = asyncio.Event(), asyncio.Event()

    async def reply(up: Upstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await w.drain()
        assert await reader.readexactly(3) == b"abc"
        await release.wait()
        w.write(b"0\r\n\r\n")
        await w.drain()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"ab"
        await go.wait()  # still sending when the answer's head is in
        yield b"c"

    async with pool_to(reply) as (pool, up):
        head = b"POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 3\r\n\r\n"
        endpoint = Endpoint("127.0.0.1", up.port, None)
        before = asyncio.all_tasks()
        resp = await pool.request(KEY, endpoint, head, body(), False, False)
        new = asyncio.all_tasks() - before
        senders = [weakref.ref(t) for t in new if "send_body" in t.get_coro().__qualname__]
        assert len(senders) == 1  # the body's sender, running
        del new
        go.set()
        assert await resp.read() == b"hi"
        await resp.settled()
        gc.collect()
        # an answer streaming for long after its request keeps nothing of the sending
        assert [ref() for ref in senders] == [None]
        release.set()
        assert await body_of(resp) == b""
        resp.release()
