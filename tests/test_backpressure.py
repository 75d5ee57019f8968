"""Backpressure: the proxy moves bytes no faster than the slower side takes them.

Response bodies: an upstream that would send 256 MiB as fast as it may, behind a client that
reads slowly; what the upstream got rid of minus what the client received stays bounded.
Request bodies: ``max_request_body`` is enforced while the body streams, so the upstream never
sees more than the limit.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from .conftest import MakeProxy, ProxyTo, origin, serve_one, start_proxy_process, stop_process
from .support.common import plain_and_transformed

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports

MiB = 1024 * 1024
UPSTREAM_SIZE = 256 * MiB  # far more than the client will read
CLIENT_READS = 32 * MiB
BLOCK = 64 * 1024
# What may sit between the upstream's writes and the client's reads. On loopback the kernel
# sizes each socket's buffers itself (net.ipv4.tcp_wmem/tcp_rmem: up to 4 MiB to send and
# several MiB to receive here), and there are two sockets on the way: upstream -> proxy
# (upstream's send buffer + proxy's receive buffer) and proxy -> client (proxy's send buffer;
# the client's receive buffer is pinned small). The proxy itself holds at most its response
# buffer (64 KiB, plus the one socket read that passed it) and its write buffer's high-water
# mark (64 KiB) per stream. Measured here:
# about 4-7 MiB in flight. Without backpressure the proxy would read at the upstream's pace,
# hundreds of MiB/s, and the gap would pass the bound within a fraction of a second.
BOUND = 16 * MiB
ROUTES = plain_and_transformed("/plain", "/tx")


class Flood:
    """A raw upstream that writes up to UPSTREAM_SIZE bytes in 64 KiB blocks, counting each
    block once the transport took it (drain() returned: only blocks when the peer stops
    reading)."""

    def __init__(self) -> None:
        self.sent = 0
        self.done = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {UPSTREAM_SIZE}\r\n\r\n".encode()
            )
            block = b"b" * BLOCK
            for _ in range(UPSTREAM_SIZE // BLOCK):
                writer.write(block)
                await writer.drain()
                self.sent += BLOCK
        except ConnectionError:
            pass  # the proxy let go once the client did
        finally:
            writer.close()
            self.done.set()


async def slow_client(port: int, path: str, flood: Flood) -> list[int]:
    """Read CLIENT_READS bytes of body, slowly, through a small receive buffer;
    return ``flood.sent - received`` at each 4 MiB checkpoint."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # before connect
    sock.setblocking(False)
    gaps: list[int] = []
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 4096)
                assert chunk, "closed before the response head"
                head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        received = len(head.partition(b"\r\n\r\n")[2])
        checkpoint = 4 * MiB
        async with asyncio.timeout(30):
            while received < CLIENT_READS:
                chunk = await loop.sock_recv(sock, BLOCK)
                assert chunk, f"closed after {received} bytes"
                received += len(chunk)
                if received >= checkpoint:
                    gaps.append(flood.sent - received)
                    checkpoint += 4 * MiB
                await asyncio.sleep(0.002)  # a slow reader: at most 64 KiB per 2 ms
    finally:
        sock.close()
    return gaps


@pytest.mark.parametrize("path", ["/plain", "/tx"])
async def test_the_proxy_reads_the_upstream_no_faster_than_the_client_drains(
    make_proxy: MakeProxy, path: str
) -> None:
    flood = Flood()
    server = await asyncio.start_server(flood.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        proxy = await make_proxy({"up": [f"http://127.0.0.1:{port}"]}, ROUTES)
        gaps = await slow_client(proxy.port, path, flood)
        # The client left: the upstream is let go instead of being read to the end.
        await asyncio.wait_for(flood.done.wait(), 5)
    assert len(gaps) == CLIENT_READS // (4 * MiB)
    assert max(gaps) < BOUND, [g // 1024 for g in gaps]
    assert flood.sent < CLIENT_READS + BOUND
    (line,) = await proxy.until_logged()
    assert line["outcome"] == "client_abort"


async def test_a_streamed_request_body_over_the_limit_never_reaches_the_upstream_whole(
    proxy_to: ProxyTo,
) -> None:
    """The upstream reads as the body comes; it gets at most the limit, then the cut."""
    limit = 256 * 1024
    got: asyncio.Queue[int] = asyncio.Queue()  # bytes each upstream request received
    arrived = asyncio.Event()

    async def sink(request: web.Request) -> web.Response:
        n = 0
        try:
            async for chunk in request.content.iter_any():
                n += len(chunk)
                arrived.set()
        except (aiohttp.ClientPayloadError, ConnectionError):
            pass
        finally:
            got.put_nowait(n)
        return web.Response(text=str(n))

    proxy = await proxy_to(sink, "/{tail:.*}", method="POST", routes=ROUTES, max_request_body=limit)

    async def body(blocks: int) -> AsyncIterator[bytes]:
        yield b"u" * BLOCK
        # The upstream has the head and the first block before the rest comes.
        async with asyncio.timeout(5):
            await arrived.wait()
        for _ in range(blocks - 1):
            yield b"u" * BLOCK

    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url("/plain"), data=body(64)) as r:  # 16 times the limit
            assert r.status == 413
            assert (await r.json())["error"] == "request_body_too_large"
        # The upstream saw the cut (its request ended), after no more than the limit.
        assert 0 < await asyncio.wait_for(got.get(), 5) <= limit
        # Exactly the limit, streamed the same way, arrives whole.
        async with s.post(proxy.url("/plain"), data=body(limit // BLOCK)) as r:
            assert r.status == 200 and await r.text() == str(limit)
    assert got.get_nowait() == limit


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_512_mib_to_a_5_mb_s_reader_grows_the_proxy_rss_by_less_than_32_mib(
    aiohttp_server, tmp_path
) -> None:
    import time

    from .test_operations import free_port

    total = 512 * MiB
    block = b"x" * BLOCK

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = total
        await resp.prepare(request)
        for _ in range(total // BLOCK):
            await resp.write(block)
        return resp

    up = await serve_one(aiohttp_server, big)
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstreams: {{up: {{targets: ['{origin(up)}']}}}}\n"
        "routes: [{name: r, upstream: up}]\n"
    )
    proc = await start_proxy_process(config)
    try:
        base = _rss_kib(proc.pid)
        peak = base
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=BLOCK)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        received, start = 0, time.monotonic()
        rate = 5_000_000  # bytes per second
        async with asyncio.timeout(200):
            while received < total:
                received += len(await reader.read(BLOCK))
                ahead = received / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing the reader, not waiting for an event
                if received % (8 * MiB) < BLOCK:
                    peak = max(peak, _rss_kib(proc.pid))
        writer.close()
        peak = max(peak, _rss_kib(proc.pid))
        assert received == total
        assert (peak - base) < 32 * 1024, f"RSS grew by {(peak - base) / 1024:.1f} MiB"
    finally:
        await stop_process(proc)
