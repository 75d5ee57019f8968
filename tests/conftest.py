"""Shared fixtures: the proxy as a real server on loopback, raw-socket helpers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.accesslog import AccessLog
from proxy.config.models import validate_data
from proxy.server.listener import ProxyServer

from .support.common import ROUTE


class Proxy:
    """A running proxy under test, with its access log captured."""

    def __init__(self, server: ProxyServer, log: io.StringIO) -> None:
        self.server = server
        self._log = log
        self.upstream: Any = None  # the test server behind it, when ``proxy_to`` started one

    @property
    def port(self) -> int:
        assert self.server.proxy_port is not None
        return self.server.proxy_port

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.admin_port}{path}"

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._log.getvalue().splitlines()]

    async def until_logged(self, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait (bounded) until ``n`` access log lines were written."""
        async with asyncio.timeout(timeout):
            while len(self.access_log()) < n:  # noqa: ASYNC110 - the log is a plain buffer
                await asyncio.sleep(0.01)
        return self.access_log()


MakeProxy = Callable[..., Awaitable[Proxy]]

# The upstream transports (``client:``). Test modules marked ``transports`` run every test that
# starts a proxy once per transport: the upstreams the test configures get that ``client:``
# unless they name one themselves.
TRANSPORTS = ("native", "aiohttp")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "upstream_client" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "transports"
    ):
        metafunc.parametrize("upstream_client", TRANSPORTS, indirect=True)


@pytest.fixture
def upstream_client(request: pytest.FixtureRequest) -> str:
    """The transport the proxies of this test use: ``native`` unless parametrized."""
    return getattr(request, "param", "native")


def only_native(upstream_client: str, reason: str) -> None:
    """Skip this run of a test on a transport that cannot do what it checks."""
    if upstream_client != "native":
        pytest.skip(f"client: {upstream_client}: {reason}")


def proxy_config(
    upstreams: dict[str, Any], routes: list[dict[str, Any]], **server: Any
) -> dict[str, Any]:
    ups = {
        name: ({"targets": value} if isinstance(value, list) else value)
        for name, value in upstreams.items()
    }
    return {
        "server": {"host": "127.0.0.1", "port": 0, **server},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": ups,
        "routes": routes,
    }


def with_client(config: dict[str, Any], client: str) -> dict[str, Any]:
    """``config`` with ``client`` set on each upstream that names none."""
    for upstream in config["upstreams"].values():
        if isinstance(upstream, dict):
            upstream.setdefault("client", client)
    return config


@pytest.fixture
async def make_proxy(upstream_client: str) -> AsyncIterator[MakeProxy]:
    started: list[ProxyServer] = []

    async def factory(
        upstreams: dict[str, Any],
        routes: list[dict[str, Any]],
        sections: dict[str, Any] | None = None,
        **server: Any,
    ) -> Proxy:
        """A started proxy; ``sections`` are more top-level sections of its config, ``server``
        its ``server:`` settings."""
        data = with_client(proxy_config(upstreams, routes, **server), upstream_client)
        data.update(sections or {})
        config = validate_data(data)
        log = io.StringIO()
        srv = ProxyServer(config, access_log=AccessLog(stream=log))
        await srv.start()
        started.append(srv)
        return Proxy(srv, log)

    yield factory
    for srv in started:
        await srv.stop()


ProxyTo = Callable[..., Awaitable[Proxy]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_one(
    aiohttp_server: Any, handler: Handler, path: str = "/", method: str = "GET"
) -> Any:
    """A pytest-aiohttp test server whose one route takes ``method`` ``path`` to ``handler``."""
    app = web.Application()
    if method == "GET":
        app.router.add_get(path, handler)
    else:
        app.router.add_route(method, path, handler)
    return await aiohttp_server(app)


@pytest.fixture
def proxy_to(aiohttp_server: Any, make_proxy: MakeProxy) -> ProxyTo:
    """A proxy (``ROUTE`` unless ``routes``) in front of a test server whose one route takes
    ``method`` ``path`` to ``handler``; ``upstream`` adds settings to the upstream "up", the
    other keywords go to the proxy's ``server:``. The test server is the proxy's ``upstream``."""

    async def start(
        handler: Handler,
        path: str = "/",
        *,
        method: str = "GET",
        routes: list[dict[str, Any]] = ROUTE,
        upstream: dict[str, Any] | None = None,
        **server: Any,
    ) -> Proxy:
        up = await serve_one(aiohttp_server, handler, path, method)
        proxy = await make_proxy(
            {"up": {"targets": [origin(up)], **(upstream or {})}}, routes, **server
        )
        proxy.upstream = up
        return proxy

    return start


def origin(server: Any) -> str:
    """The http://host:port of a pytest-aiohttp test server."""
    return f"http://127.0.0.1:{server.port}"


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the peer closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                out += chunk
        return out
    finally:
        writer.close()


async def read_head(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.readuntil(b"\r\n\r\n")


ROOT = Path(__file__).parent.parent


async def start_proxy_process(
    config: str | Path,
    env: dict[str, str] | None = None,
    listeners: int = 1,
    timeout: float = 30.0,
) -> asyncio.subprocess.Process:
    """``python -m proxy -c CONFIG`` from the repo root, returned once ``listeners`` processes
    said "listening" on stderr (bounded). Its stdout (the access log) is discarded."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    try:
        heard = 0
        async with asyncio.timeout(timeout):
            while heard < listeners:
                line = await proc.stderr.readline()
                assert line, "the proxy exited before listening"
                heard += b"listening" in line
    except BaseException:
        await stop_process(proc)
        raise
    return proc


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """Kill a proxy process a test started, if it is still running."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
