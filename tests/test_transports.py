"""The upstream transports (``client:``): choosing one, and the aiohttp one's forward proxy."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from proxy.config.models import ConfigError, validate_data

from .conftest import MakeProxy, origin, proxy_config, serve_one
from .support.common import ROUTE
from .support.forward_proxy import ForwardProxy


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=f"{request.method} {request.raw_path} {request.host} {len(body)}")


async def test_an_upstream_behind_a_forward_proxy_is_reached_through_it(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    up = await serve_one(aiohttp_server, echo, "/{tail:.*}", "*")
    async with ForwardProxy() as forward:
        upstreams = {"up": {"targets": [origin(up)], "client": "aiohttp", "proxy": forward.url}}
        proxy = await make_proxy(upstreams, ROUTE)
        async with aiohttp.ClientSession() as s:
            async with s.get(proxy.url("/a/b%2Fc?q=1&")) as resp:
                assert resp.status == 200
                assert await resp.text() == f"GET /a/b%2Fc?q=1& 127.0.0.1:{up.port} 0"
            async with s.post(proxy.url("/up"), data=b"x" * 100_000) as resp:
                assert await resp.text() == f"POST /up 127.0.0.1:{up.port} 100000"
    # Through the forward proxy, in absolute form, the raw path and query kept.
    assert forward.requests == [
        f"GET {origin(up)}/a/b%2Fc?q=1& HTTP/1.1",
        f"POST {origin(up)}/up HTTP/1.1",
    ]
    (line, _) = proxy.access_log()
    assert line["status"] == 200 and line["target"] == origin(up)


async def test_a_forward_proxy_that_is_down_is_a_502(make_proxy: MakeProxy) -> None:
    async with ForwardProxy() as forward:
        dead = forward.url
    upstreams = {"up": {"targets": ["http://127.0.0.1:9"], "client": "aiohttp", "proxy": dead}}
    proxy = await make_proxy(upstreams, ROUTE)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("upstream", "problem"),
    [
        (
            {"proxy": "http://127.0.0.1:3128"},
            "upstreams.up.proxy: a forward proxy needs 'client: aiohttp'",
        ),
        (
            {"client": "native", "proxy": "http://127.0.0.1:3128"},
            "upstreams.up.proxy: a forward proxy needs 'client: aiohttp'",
        ),
        ({"client": "aiohttp", "proxy": "socks5://h:1"}, "upstreams.up.proxy: a forward proxy is"),
        ({"client": "aiohttp", "proxy": "http://u:p@h:1"}, "upstreams.up.proxy: credentials"),
        ({"client": "aiohttp", "proxy": "http://h:1/x"}, "upstreams.up.proxy: a forward proxy is"),
        ({"client": "curl"}, "upstreams.up.client: Input should be 'native' or 'aiohttp'"),
    ],
)
def test_client_and_proxy_are_checked_with_their_key_paths(
    upstream: dict[str, str], problem: str
) -> None:
    data = proxy_config({"up": {"targets": ["http://127.0.0.1:1"], **upstream}}, ROUTE)
    with pytest.raises(ConfigError) as info:
        validate_data(data)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_a_forward_proxy_with_the_aiohttp_client_is_valid() -> None:
    up = {"targets": ["http://127.0.0.1:1"], "client": "aiohttp", "proxy": "http://h:3128"}
    config = validate_data(proxy_config({"up": up}, ROUTE))
    assert config.upstreams["up"].client == "aiohttp"
    assert config.upstreams["up"].proxy == "http://h:3128"
    assert validate_data(proxy_config({"up": [origin_of(1)]}, ROUTE)).upstreams["up"].client == (
        "native"
    )


def origin_of(port: int) -> str:
    return f"http://127.0.0.1:{port}"
