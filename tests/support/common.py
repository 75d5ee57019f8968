"""Small helpers many test modules share."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

# One route taking every request to the upstream named "up".
ROUTE: list[dict[str, Any]] = [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def paused_stream(
    first: bytes,
    then: bytes,
    release: asyncio.Event,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Handler:
    """A handler that streams ``first``, waits (bounded by ``timeout``) until ``release`` is
    set, then sends ``then`` (if any) and ends the response."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        await resp.write(first)
        async with asyncio.timeout(timeout):
            await release.wait()
        if then:
            await resp.write(then)
        return resp

    return handler


def streamed(*parts: bytes, content_type: str, pause: float = 0.0) -> Handler:
    """A handler that streams ``parts`` one write each (``pause`` seconds after each, if any)
    as ``content_type`` and ends the response."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for part in parts:
            await resp.write(part)
            if pause:
                await asyncio.sleep(pause)
        return resp

    return handler


def stalled_stream(first: bytes, *, seconds: float) -> Handler:
    """A handler that streams ``first``, then sends nothing more for ``seconds`` (longer than
    the test waits) before it ends the response."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(first)
        await asyncio.sleep(seconds)
        return resp

    return handler


def plain_and_transformed(plain: str, transformed: str) -> list[dict[str, Any]]:
    """Two routes to the upstream "up", by path prefix: ``plain`` with no transforms, and
    ``transformed`` through one that passes everything on (and counts how often its generator
    was closed)."""
    return [
        {"name": "plain", "match": {"path_prefix": plain}, "upstream": "up"},
        {
            "name": "transformed",
            "match": {"path_prefix": transformed},
            "upstream": "up",
            "transforms": [{"tests.sample_plugins:FailAfter": {"count": 10**9}}],
        },
    ]


async def assert_upstream_timeout(url: str) -> None:
    """A GET of ``url`` gets the proxy's 504 ``upstream_timeout``."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 504
        assert (await r.json())["error"] == "upstream_timeout"


def free_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of Prometheus text with exactly these labels, or None when absent."""
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        head, value = line.rsplit(" ", 1)
        got: dict[str, str] = {}
        if "{" in head:
            for part in head[head.index("{") + 1 : -1].split('",'):
                key, _, val = part.partition('="')
                got[key] = val.rstrip('"')
        if got == labels:
            return float(value)
    return None


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """The origin of a listener that never accepts and whose backlog is full: connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def demo_log_stream(session: aiohttp.ClientSession, port: int) -> aiohttp.ClientResponse:
    """A stream of ten lines from the demo upstream through the proxy on ``port``, once its
    first whole line has come."""
    stream = await session.get(f"http://127.0.0.1:{port}/logs?n=10")
    assert (await stream.content.readuntil(b"\n")).endswith(b"\n")
    return stream


async def assert_the_stream_ends_whole(stream: aiohttp.ClientResponse) -> None:
    """The rest of a ``demo_log_stream`` comes (bounded): its other nine lines, not cut."""
    body = await asyncio.wait_for(stream.content.read(), 10)
    assert body.count(b"\n") == 9  # the stream in flight finished whole
    stream.release()


def demo_config(tmp_path: Path, grace: str = "10s", workers: int = 1) -> tuple[Path, int, int]:
    """A proxy.yaml in ``tmp_path`` routing everything to the built-in demo upstream, on free
    ports: its path, the proxy's port and the admin port."""
    port, admin, demo = free_port(), free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}, workers: {workers}, shutdown_grace: {grace}}}
admin: {{host: 127.0.0.1, port: {admin}}}
demo: {{host: 127.0.0.1, port: {demo}, interval: 50ms}}
upstreams:
  demo: {{targets: ["http://127.0.0.1:{demo}"]}}
routes:
  - name: demo
    upstream: demo
"""
    )
    return path, port, admin
