"""The relay's own chunked writer: body chunks after the first go straight to the transport.

``RelayedResponse.chunk_writer`` frames each chunk as aiohttp's ``StreamWriter.write`` does
(one joined write below 2 KiB, three pieces above), counts the bytes as it does and asks for a
drain past the same limit. Checked on the wire with a strict parser: chunk sizes on both sides
of those thresholds, a kept-alive connection whose next response must still parse, HTTP/1.0
(no chunked framing: aiohttp's own write), and the response object on a real aiohttp server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.server.protocol import RelayedResponse

from .conftest import MakeProxy
from .support.common import plain_and_transformed
from .support.raw_upstream import RawUpstream, raw_upstream
from .test_hardening import exchange, parse_answers

pytestmark = pytest.mark.transports

# around the joined-write threshold (2048), the drain limit (65536) and one large chunk
SIZES = [1, 10, 2046, 2047, 2048, 2049, 65535, 65536, 65537, 200_000, 3]
ROUTES = plain_and_transformed("/plain", "/tx")


def body_of(sizes: list[int]) -> list[bytes]:
    return [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]


class Lockstep:
    """An upstream that sends SIZES as a chunked body to every request on its connection, each
    chunk only once the client received the one before (so each one reaches the proxy in a
    read of its own, and goes out in a write of its own)."""

    def __init__(self) -> None:
        self.received = 0  # body bytes the client has of the current response
        self.progress = asyncio.Event()

    def client_has(self, n: int) -> None:
        self.received = n
        self.progress.set()

    async def reply(self, up: RawUpstream, reader: Any, writer: Any, n: int) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            sent = 0
            for chunk in body_of(SIZES):
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
                while self.received < sent:  # bounded: the client times out otherwise
                    self.progress.clear()
                    await self.progress.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()


async def read_in_lockstep(
    reader: asyncio.StreamReader, upstream: Lockstep, timeout: float = 10.0
) -> bytes:
    """One response's bytes, telling the upstream how much body has arrived as it does."""
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            piece = await reader.read(65536)
            assert piece, f"the proxy closed early: {data[-200:]!r}"
            data += piece
            if b"\r\n\r\n" not in data:
                continue
            (answer,) = parse_answers(data)
            upstream.client_has(len(answer.body))
            if answer.complete:
                return data


@pytest.mark.parametrize("path", ["/plain", "/tx"])
async def test_chunks_of_every_size_go_out_framed_and_the_connection_stays_usable(
    make_proxy: MakeProxy, path: str
) -> None:
    lockstep = Lockstep()
    async with raw_upstream(lockstep.reply) as up:
        proxy = await make_proxy({"up": {"targets": [up.origin]}}, ROUTES)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            # two responses on one connection: the second parses only if the first one's
            # framing ended exactly where it says
            for _ in range(2):
                lockstep.client_has(0)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                (answer,) = parse_answers(await read_in_lockstep(reader, lockstep))
                assert answer.status == 200 and answer.chunked and answer.complete
                assert answer.body == b"".join(body_of(SIZES))
        finally:
            writer.close()


async def test_an_http_1_0_client_gets_the_body_delimited_by_the_close(
    make_proxy: MakeProxy,
) -> None:
    lockstep = Lockstep()
    lockstep.client_has(1 << 30)  # no lockstep: the client reads to the end
    async with raw_upstream(lockstep.reply) as up:
        proxy = await make_proxy({"up": {"targets": [up.origin]}}, ROUTES)
        ex = await exchange(proxy.port, b"GET /tx HTTP/1.0\r\nHost: x\r\n\r\n")
    (answer,) = parse_answers(ex.data)
    assert ex.closed and not answer.chunked
    assert answer.body == b"".join(body_of(SIZES))


# -- the response object, on a real aiohttp server ---------------------------------------------


async def serve_relayed(aiohttp_server: Any, seen: dict[str, Any], compress: bool = False) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = RelayedResponse(status=200, reason="OK", headers={"Content-Type": "text/plain"})
        if compress:
            resp.enable_compression()
        await resp.prepare(request)
        chunks = body_of(SIZES)
        await resp.write(chunks[0])  # the head goes out with or before it
        write = seen["writer"] = resp.chunk_writer()
        drains = 0
        for chunk in chunks[1:]:
            if write is None:
                await resp.write(chunk)
            elif write(chunk):
                drains += 1
                await resp.drain_body()
        seen["drains"] = drains
        seen["output_size"] = request.writer.output_size
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    return await aiohttp_server(app)


async def test_a_chunked_response_writes_past_its_first_chunk_directly(aiohttp_server: Any) -> None:
    seen: dict[str, Any] = {}
    server = await serve_relayed(aiohttp_server, seen)
    get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ex = await exchange(server.port, get)
    (answer,) = parse_answers(ex.data)
    assert answer.chunked and answer.complete and answer.body == b"".join(body_of(SIZES))
    assert seen["writer"] is not None
    assert seen["drains"] >= 3  # 400 KB in chunks: a drain asked for past every 64 KiB or so
    # output_size counts every byte sent so far, head and framing included, as aiohttp does
    assert seen["output_size"] == len(ex.data) - len(b"0\r\n\r\n")


async def test_no_direct_writer_without_chunked_framing_or_with_compression(
    aiohttp_server: Any,
) -> None:
    seen: dict[str, Any] = {}
    server = await serve_relayed(aiohttp_server, seen)
    ex = await exchange(server.port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert parse_answers(ex.data)[0].body == b"".join(body_of(SIZES))
    assert seen["writer"] is None

    seen.clear()
    server = await serve_relayed(aiohttp_server, seen, compress=True)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/") as r:
        assert r.headers["Content-Encoding"] == "deflate"
        assert await r.read() == b"".join(body_of(SIZES))
    assert seen["writer"] is None
