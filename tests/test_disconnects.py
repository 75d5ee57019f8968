"""Clients that vanish mid-stream: the upstream side is let go at once and nothing leaks.

The proxy, the upstream and the clients share this process, so its open file descriptors and
asyncio tasks are the proxy's plus the test's own; both are compared with a baseline taken
after a warm-up stream, when every listener and pool is already in place.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from aiohttp import web

from .conftest import Proxy, ProxyTo, read_head
from .support.common import plain_and_transformed

STREAMS = 500
BATCH = 50
ROUTES = plain_and_transformed("/plain/", "/tx/")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pool_counts(proxy: Proxy) -> tuple[int, int]:
    """(connections in use, idle connections kept) of the upstream's connection pool."""
    return proxy.server.runtime.upstreams["up"].transport.pool.counts()  # type: ignore[attr-defined]


def state(proxy: Proxy) -> dict[str, int]:
    in_use, idle = pool_counts(proxy)
    return {
        "fds": open_fds(),
        "tasks": len(asyncio.all_tasks()),
        "upstream_in_use": in_use,
        "upstream_idle": idle,
        "active_streams": proxy.server.relay.active,
    }


async def settled(proxy: Proxy, baseline: dict[str, int], timeout: float = 5.0) -> dict[str, int]:
    """Wait (bounded) until the process is back at ``baseline``; return the last reading."""
    now = state(proxy)
    deadline = time.monotonic() + timeout
    while now != baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = state(proxy)
    return now


async def test_500_streams_aborted_mid_body_leave_nothing_behind(proxy_to: ProxyTo) -> None:
    upstream_closed: dict[str, asyncio.Event] = {}
    closed_at: dict[str, float] = {}

    async def endless(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        try:
            await resp.prepare(request)
            for _ in range(100_000):  # bounded: about 17 minutes of ticks
                await resp.write(b"tick\n" * 20)
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass  # the proxy closed the connection: what this test waits for
        finally:
            closed_at[key] = time.monotonic()
            upstream_closed[key].set()
        return resp

    proxy = await proxy_to(endless, "/{route}/{key}", routes=ROUTES)

    async def aborted_stream(n: int) -> float:
        """One stream, aborted by the client mid-body; returns when the client let go."""
        route = "tx" if n % 2 else "plain"
        key = f"s{n}"
        upstream_closed[key] = asyncio.Event()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(f"GET /{route}/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(reader.readuntil(b"tick\n"), 5)
            if n % 4 < 2:  # half of them reset the connection, half close it politely
                sock = writer.get_extra_info("socket")
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                writer.transport.abort()
            else:
                writer.close()
            return time.monotonic()
        finally:
            writer.close()
            await writer.wait_closed()

    # Warm-up: the listeners, the upstream pool and the metrics children all exist after it.
    await aborted_stream(-1)
    await asyncio.wait_for(upstream_closed["s-1"].wait(), 5)
    await proxy.until_logged(1)
    baseline = await settled(proxy, state(proxy))
    assert baseline["upstream_in_use"] == 0 and baseline["active_streams"] == 0

    client_left: dict[str, float] = {}
    for start in range(0, STREAMS, BATCH):
        batch = range(start, start + BATCH)
        left = await asyncio.gather(*(aborted_stream(n) for n in batch))
        client_left.update({f"s{n}": t for n, t in zip(batch, left, strict=True)})
        # Every aborted stream's upstream side sees its connection closed within 1 s.
        async with asyncio.timeout(5):
            await asyncio.gather(*(upstream_closed[f"s{n}"].wait() for n in batch))
    late = {k: closed_at[k] - t for k, t in client_left.items() if closed_at[k] - t >= 1.0}
    assert not late, f"{len(late)} upstream connections outlived their client by 1 s or more"

    after = await settled(proxy, baseline)
    assert after == baseline
    lines = await proxy.until_logged(STREAMS + 1)
    assert {line["outcome"] for line in lines} == {"client_abort"}
    stage = proxy.server.runtime.router.routes[1].chains.response[0]
    assert stage.transform.closed == STREAMS // 2 + 1  # every transform generator was closed
