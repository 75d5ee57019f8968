"""Upstream faults (issue 7): a response cut at every byte, invalid HTTP, lying Content-Length.

The upstream is a raw ``asyncio.start_server`` that sends exactly the bytes a test chooses and
then closes (FIN) or resets (RST); the client speaks raw HTTP/1.1 to the proxy and checks every
byte it gets with a strict parser. The outcome must always be honest: a 502 before the response
head went out, or a body that visibly ends short (no final chunk, fewer bytes than declared, EOF)
after it did. Never a complete-looking response that is not what the upstream sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from .conftest import MakeProxy, Proxy
from .support.common import ROUTE
from .support.raw_upstream import RawUpstream, Reply, raw_upstream, reset
from .test_hardening import Answer, Exchange, assert_json_error, exchange

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def sends(data: bytes, *, rst: bool = False) -> Reply:
    """An upstream that reads the request, sends ``data``, then closes (or resets)."""

    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(data)
        await writer.drain()
        if rst:
            reset(writer)

    return reply


async def start(make_proxy: MakeProxy, up: RawUpstream) -> Proxy:
    return await make_proxy({"up": [up.origin]}, ROUTE)


async def relay_once(make_proxy: MakeProxy, data: bytes) -> Exchange:
    """One GET through a proxy to an upstream that answers it with ``data``, then closes."""
    async with raw_upstream(sends(data)) as up:
        proxy = await start(make_proxy, up)
        return await exchange(proxy.port, GET)


class Cut:
    """An upstream reply: it reads the request, sends ``head``, the first ``at`` bytes of
    ``body``, then closes (or resets). Set ``at`` between requests."""

    def __init__(self, head: bytes, body: bytes, *, rst: bool) -> None:
        self.head, self.body, self.rst = head, body, rst
        self.at = 0

    async def __call__(
        self, up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        if self.head:
            writer.write(self.head)
            await writer.drain()
        writer.write(self.body[: self.at])
        await writer.drain()
        if self.rst:
            reset(writer)


# -- the response head cut at every byte ------------------------------------------------------

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 11\r\n"
    b"X-Upstream-Private: s3cr3t-token\r\n"
    b"Cache-Control: no-store\r\n"
    b"\r\n"
)
BODY = b"hello world"


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_an_upstream_closing_inside_its_header_block_is_a_502_at_every_offset(
    make_proxy: MakeProxy, rst: bool
) -> None:
    reply = Cut(b"", HEAD + BODY, rst=rst)
    assert 110 <= len(HEAD) <= 140
    async with raw_upstream(reply) as up:
        proxy = await start(make_proxy, up)
        for cut in range(len(HEAD)):
            reply.at = cut
            result = await exchange(proxy.port, GET)
            assert result.closed, f"offset {cut}: the client connection stayed open"
            answer = result.only()
            body = assert_json_error(answer, 502)
            assert answer.header("X-Upstream-Private") is None, f"offset {cut}"
            assert body["error"].startswith("upstream"), (cut, body)
        # Control: the whole head and body make a 200, so the loop above could have failed.
        reply.at = len(HEAD) + len(BODY)
        answer = (await exchange(proxy.port, GET)).only()
        assert (answer.status, answer.body, answer.complete) == (200, BODY, True)


async def test_a_502_never_echoes_what_the_upstream_sent(make_proxy: MakeProxy) -> None:
    result = await relay_once(make_proxy, HEAD[:-1])  # everything but the final LF
    assert_json_error(result.only(), 502)
    assert b"s3cr3t-token" not in result.data
    assert b"RawResponseMessage" not in result.data


# -- the body cut at every byte ---------------------------------------------------------------

CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNKED_BODY = b"5\r\nhello\r\n6\r\n world\r\n3;ext=1\r\n!!!\r\n0\r\n\r\n"
CHUNKED_PAYLOAD = b"hello world!!!"


def assert_cut_short(answer: Answer, payload: bytes, where: str) -> None:
    assert answer.status == 200, where
    assert not answer.complete, f"{where}: a cut body looked complete: {answer.body!r}"
    assert payload.startswith(answer.body), where  # what arrived is the upstream's, in order


async def assert_every_body_cut_falls_short(
    make_proxy: MakeProxy,
    head: bytes,
    body: bytes,
    payload: bytes,
    rst: bool,
    framed: Callable[[Exchange, Answer, str], None],
) -> None:
    """The upstream sends ``head`` and ``body`` cut at every byte: each answer is a 502 or a
    body that visibly falls short (``framed`` checks its framing), and the whole body is
    relayed complete (the control)."""
    reply = Cut(head, body, rst=rst)
    async with raw_upstream(reply) as up:
        proxy = await start(make_proxy, up)
        for cut in range(len(body)):
            reply.at = cut
            where = f"offset {cut}"
            result = await exchange(proxy.port, GET)
            assert result.closed, where
            (answer,) = result.answers()
            if answer.status == 502:  # the failure came before the proxy sent its head
                assert_json_error(answer, 502)
                continue
            framed(result, answer, where)
            assert_cut_short(answer, payload, where)
        reply.at = len(body)  # control: the whole body is relayed and terminated
        answer = (await exchange(proxy.port, GET)).only()
        assert (answer.body, answer.complete) == (payload, True)


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_an_upstream_closing_inside_a_chunked_body_never_looks_complete(
    make_proxy: MakeProxy, rst: bool
) -> None:
    def framed(result: Exchange, answer: Answer, where: str) -> None:
        assert answer.chunked, where
        assert not result.data.endswith(b"0\r\n\r\n"), where

    await assert_every_body_cut_falls_short(
        make_proxy, CHUNKED_HEAD, CHUNKED_BODY, CHUNKED_PAYLOAD, rst, framed
    )


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_an_upstream_closing_inside_a_content_length_body_never_looks_complete(
    make_proxy: MakeProxy, rst: bool
) -> None:
    payload = bytes(range(65, 65 + 40))
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 40\r\n\r\n"
    )

    def framed(result: Exchange, answer: Answer, where: str) -> None:
        assert answer.header("Content-Length") == "40", where

    await assert_every_body_cut_falls_short(make_proxy, head, payload, payload, rst, framed)


async def test_a_body_shorter_than_its_content_length_is_seen_short_then_eof(
    make_proxy: MakeProxy,
) -> None:
    async with raw_upstream(
        sends(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    ) as up:
        proxy = await start(make_proxy, up)
        result = await exchange(proxy.port, GET)
    assert result.closed
    (answer,) = result.answers()
    assert answer.header("Content-Length") == "100"
    assert (answer.body, answer.complete) == (b"only ten b", False)


# -- invalid HTTP from the upstream -----------------------------------------------------------

INVALID = {
    "garbage-status-code": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit-status": b"HTTP/1.1 1000 OK\r\nContent-Length: 2\r\n\r\nok",
    "not-http": b"garbage\r\n\r\n",
    "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-a-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "cr-in-a-header": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "two-content-lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "content-length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
}


@pytest.mark.parametrize("name", list(INVALID))
async def test_invalid_http_from_the_upstream_is_a_502(make_proxy: MakeProxy, name: str) -> None:
    result = await relay_once(make_proxy, INVALID[name])
    assert result.closed
    assert_json_error(result.only(), 502)


async def test_a_bad_chunk_size_is_a_502_or_a_cut_body(make_proxy: MakeProxy) -> None:
    data = CHUNKED_HEAD + b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n"
    result = await relay_once(make_proxy, data)
    assert result.closed
    (answer,) = result.answers()
    if answer.status == 502:
        assert_json_error(answer, 502)
    else:
        assert_cut_short(answer, b"hellomore", "bad chunk size")


async def test_a_status_the_client_cannot_parse_is_a_502(make_proxy: MakeProxy) -> None:
    result = await relay_once(make_proxy, b"HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\nok")
    assert_json_error(result.only(), 502)


async def test_an_unrequested_101_is_a_502(make_proxy: MakeProxy) -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nraw"
    result = await relay_once(make_proxy, data)
    assert_json_error(result.only(), 502)


async def test_an_upstream_header_is_relayed_exactly_or_refused(make_proxy: MakeProxy) -> None:
    data = b"HTTP/1.1 200 OK\r\nX-Bin: a\xffb\r\nContent-Length: 2\r\n\r\nok"
    result = await relay_once(make_proxy, data)
    if b"\r\nX-Bin:" in result.data:
        assert b"\r\nX-Bin: a\xffb\r\n" in result.data
    else:
        assert_json_error(result.only(), 502)


# -- a body longer than its Content-Length ----------------------------------------------------


async def test_bytes_past_the_content_length_never_reach_the_client(make_proxy: MakeProxy) -> None:
    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:  # keep-alive: answer every request on this connection the same way
            await up.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
            )
            await writer.drain()

    async with raw_upstream(reply) as up:
        proxy = await start(make_proxy, up)
        for i in range(3):
            result = await exchange(proxy.port, GET)
            answer = result.only()
            assert b"smuggled" not in result.data, f"request {i}"
            if answer.status == 502:
                assert_json_error(answer, 502)
            else:
                assert (answer.status, answer.body, answer.complete) == (200, b"hello", True)
        # The extra bytes make a connection unusable: each request had a connection of its own.
        assert up.connections == len(up.requests) == 3


async def test_garbage_past_the_content_length_is_an_honest_outcome(
    make_proxy: MakeProxy,
) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA GARBAGE"
    result = await relay_once(make_proxy, data)
    answer = result.only()
    assert b"EXTRA" not in result.data
    if answer.status == 502:
        assert_json_error(answer, 502)
    else:
        assert (answer.status, answer.body, answer.complete) == (200, b"hello", True)


async def test_an_unsolicited_response_on_an_idle_connection_is_never_served(
    make_proxy: MakeProxy,
) -> None:
    extra_sent = asyncio.Event()

    async def reply(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        for i in range(1, 4):
            await up.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nresp%d\n" % i)
            await writer.drain()
            if i == 1 and n == 1:
                # After its answer, once the proxy has released the connection to its pool:
                # a second, unsolicited response on the idle connection.
                await released.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
                await writer.drain()
                extra_sent.set()

    released = asyncio.Event()
    async with raw_upstream(reply) as up:
        proxy = await start(make_proxy, up)
        first = (await exchange(proxy.port, GET)).only()
        assert first.body == b"resp1\n"
        released.set()
        async with asyncio.timeout(5):
            await extra_sent.wait()
        # The unsolicited bytes are on their way through loopback; no event tells when the
        # proxy's event loop has read them, so give it a moment.
        await asyncio.sleep(0.2)
        second = (await exchange(proxy.port, GET)).only()
    assert second.body != b"smuggled"
    assert second.status == 200 and second.body.startswith(b"resp")
