"""TLS both ways over loopback, with certificates made by trustme: https:// upstreams (verified
by default, ``tls.ca_file``, ``tls.verify: false``, SNI) and the optional TLS listener."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import WSMsgType, web

from .conftest import MakeProxy, Proxy
from .support.common import ROUTE

# Upstream-facing: each test runs on both transports (see conftest.TRANSPORTS).
pytestmark = pytest.mark.transports


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class Seen:
    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.sni: list[str | None] = []


def hello_app(seen: Seen) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        seen.headers.append(dict(request.headers))
        return web.Response(text=f"hello over {request.scheme}")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(f"{request.scheme}: {msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/{tail:.*}", hello)
    return app


async def https_upstream(
    aiohttp_server: Any, ca: trustme.CA, seen: Seen, *names: str
) -> tuple[Any, ssl.SSLContext]:
    ctx = server_context(ca.issue_cert(*(names or ("127.0.0.1", "localhost"))))

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.sni.append(name)

    ctx.sni_callback = sni  # type: ignore[assignment]
    return await aiohttp_server(hello_app(seen), ssl=ctx), ctx


async def proxy_to_https(
    aiohttp_server: Any,
    make_proxy: MakeProxy,
    ca: trustme.CA,
    seen: Seen,
    tls: dict[str, Any] | None,
    *names: str,
    host: str = "127.0.0.1",
    routes: list[dict[str, Any]] = ROUTE,
) -> tuple[Proxy, str]:
    """A proxy (upstream ``tls`` settings, if any) in front of :func:`https_upstream` reached
    as ``host``: the proxy and the upstream's origin."""
    up, _ = await https_upstream(aiohttp_server, ca, seen, *names)
    target = f"https://{host}:{up.port}"
    upstream = [target] if tls is None else {"targets": [target], "tls": tls}
    return await make_proxy({"up": upstream}, routes), target


async def get(url: str, ssl_ctx: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(url, ssl=ssl_ctx or True) as r:
        return r.status, r.content_type, await r.text()


async def test_an_https_upstream_is_reached_with_its_ca_file(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, ca_file: str
) -> None:
    seen = Seen()
    proxy, target = await proxy_to_https(aiohttp_server, make_proxy, ca, seen, {"ca_file": ca_file})
    assert await get(proxy.url("/a")) == (200, "text/plain", "hello over https")
    (line,) = await proxy.until_logged()
    assert line["target"] == target


async def test_an_untrusted_upstream_certificate_gives_a_502_by_default(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA
) -> None:
    seen = Seen()
    proxy, _ = await proxy_to_https(aiohttp_server, make_proxy, ca, seen, None)
    status, content_type, body = await get(proxy.url("/a"))
    assert (status, content_type) == (502, "application/json")
    error = json.loads(body)
    assert error["error"] == "upstream_unavailable"
    assert "certificate" in error["detail"].lower()
    assert seen.headers == []  # no request went over the unverified connection


async def test_a_certificate_for_another_name_gives_a_502(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, ca_file: str
) -> None:
    seen = Seen()
    proxy, _ = await proxy_to_https(
        aiohttp_server, make_proxy, ca, seen, {"ca_file": ca_file}, "other.example"
    )
    status, _, body = await get(proxy.url("/a"))
    assert status == 502
    assert json.loads(body)["error"] == "upstream_unavailable"
    assert seen.headers == []


async def test_verify_false_accepts_an_untrusted_certificate(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA
) -> None:
    seen = Seen()
    proxy, _ = await proxy_to_https(
        aiohttp_server, make_proxy, ca, seen, {"verify": False}, "other.example"
    )
    assert await get(proxy.url("/a")) == (200, "text/plain", "hello over https")


async def test_sni_is_the_target_host_even_when_the_clients_host_is_preserved(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, ca_file: str
) -> None:
    seen = Seen()
    routes = [{**ROUTE[0], "preserve_host": True}]
    proxy, _ = await proxy_to_https(
        aiohttp_server,
        make_proxy,
        ca,
        seen,
        {"ca_file": ca_file},
        "localhost",
        host="localhost",
        routes=routes,
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/a"), headers={"Host": "public.example"}) as r:
            assert r.status == 200
            assert await r.text() == "hello over https"
    assert seen.sni == ["localhost"]
    assert seen.headers[0]["Host"] == "public.example"


async def test_a_websocket_reaches_a_wss_upstream(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, ca_file: str
) -> None:
    seen = Seen()
    proxy, _ = await proxy_to_https(aiohttp_server, make_proxy, ca, seen, {"ca_file": ca_file})
    async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url("/ws")) as ws:
        await ws.send_str("hi")
        msg = await ws.receive(timeout=5)
        assert msg.data == "https: hi"


def listener_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    return {"cert": str(cert_file), "key": str(key_file)}


async def tls_listener(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, tmp_path: Path, seen: Seen
) -> Proxy:
    """A proxy listening with TLS (a certificate of ``ca``) in front of a plain http upstream."""
    up = await aiohttp_server(hello_app(seen))
    return await make_proxy(
        {"up": [f"http://127.0.0.1:{up.port}"]}, ROUTE, tls=listener_files(ca, tmp_path)
    )


async def test_the_tls_listener_serves_https_and_says_so_upstream(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    seen = Seen()
    proxy = await tls_listener(aiohttp_server, make_proxy, ca, tmp_path, seen)
    url = f"https://127.0.0.1:{proxy.port}/a"
    assert await get(url, client_context(ca)) == (200, "text/plain", "hello over http")
    assert seen.headers[0]["X-Forwarded-Proto"] == "https"
    # A client that does not trust the proxy's CA is refused by its own verification.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(url)


async def test_a_websocket_through_the_tls_listener(
    aiohttp_server: Any, make_proxy: MakeProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    seen = Seen()
    proxy = await tls_listener(aiohttp_server, make_proxy, ca, tmp_path, seen)
    async with aiohttp.ClientSession() as s:
        url = f"wss://127.0.0.1:{proxy.port}/ws"
        async with s.ws_connect(url, ssl=client_context(ca)) as ws:
            await ws.send_str("hi")
            msg = await ws.receive(timeout=5)
            assert msg.data == "http: hi"
