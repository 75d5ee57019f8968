"""Transforms through the running proxy: content types, encodings, failures, SSE, uploads."""

from __future__ import annotations

import asyncio
import gzip
import re
import sys
import zlib
from pathlib import Path

import aiohttp
import brotli
import pytest
from aiohttp import web

from .conftest import MakeProxy, origin, raw_exchange, serve_one
from .support.common import paused_stream, streamed

TEXT = ("line one é\nline two 漢字\n" * 200).encode()


def route(*transforms: object, request: bool = False) -> list[dict[str, object]]:
    key = "request_transforms" if request else "transforms"
    return [{"name": "t", "match": {"path_prefix": "/"}, "upstream": "up", key: list(transforms)}]


UPPER = {"tests.sample_plugins:Upper": {}}


def serve(body: bytes, **headers: str) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def test_a_matching_body_is_transformed_and_sent_chunked(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    up = await aiohttp_server(serve(TEXT, **{"Content-Type": "text/plain; charset=utf-8"}))
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER))
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, _ = data.partition(b"\r\n\r\n")
    assert b"Content-Length" not in head
    assert b"Transfer-Encoding: chunked" in head
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await r.read() == TEXT.upper()


@pytest.mark.parametrize("ctype", ["image/png", "application/octet-stream", None])
async def test_other_content_types_pass_through_untouched(
    aiohttp_server, make_proxy: MakeProxy, ctype: str | None
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    up = await aiohttp_server(serve(b"\x89PNG binary \xff\x00", **headers))
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER))
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await r.read() == b"\x89PNG binary \xff\x00"
        assert r.headers["Content-Length"] == "14"


async def test_content_types_option_narrows_a_transform(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    up = await aiohttp_server(serve(b"{}", **{"Content-Type": "application/json"}))
    only_html = {"tests.sample_plugins:Upper": {"content_types": ["text/html"]}}
    proxy = await make_proxy({"up": [origin(up)]}, route(only_html))
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert r.headers["Content-Length"] == "2"


@pytest.mark.parametrize(
    ("coding", "compress", "decompress"),
    [
        ("gzip", gzip.compress, gzip.decompress),
        ("br", brotli.compress, brotli.decompress),
        ("deflate", zlib.compress, zlib.decompress),
    ],
)
async def test_encoded_bodies_are_decoded_transformed_and_re_encoded(
    aiohttp_server, make_proxy: MakeProxy, coding: str, compress, decompress
) -> None:
    seen_accept: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen_accept.append(request.headers.get("Accept-Encoding"))
        return web.Response(
            body=compress(TEXT),
            headers={
                "Content-Type": "text/plain",
                "Content-Encoding": coding,
                "ETag": '"v1"',
            },
        )

    up = await serve_one(aiohttp_server, handler)
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(proxy.url("/"), headers={"Accept-Encoding": f"{coding}, zstd"}) as r:
            assert r.headers["Content-Encoding"] == coding
            assert "Content-Length" not in r.headers
            assert "Accept-Encoding" in r.headers["Vary"]
            assert r.headers["ETag"] == 'W/"v1"'
            assert decompress(await r.read()) == TEXT.upper()
        async with s.get(proxy.url("/"), headers={"Accept-Encoding": "identity"}) as r:
            assert "Content-Encoding" not in r.headers
            assert await r.read() == TEXT.upper()
    # Upstream is asked only for codings the transforms can read.
    assert seen_accept == [coding, "identity"]


async def test_re_encoding_flushes_every_chunk(aiohttp_server, make_proxy: MakeProxy) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"}
        )
        await resp.prepare(request)
        packer = zlib.compressobj(wbits=31)
        await resp.write(packer.compress(b"first part\n") + packer.flush(zlib.Z_SYNC_FLUSH))
        async with asyncio.timeout(5):
            await release.wait()
        await resp.write(packer.compress(b"second part\n") + packer.flush())
        return resp

    up = await serve_one(aiohttp_server, handler)
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(proxy.url("/"), headers={"Accept-Encoding": "gzip"}) as r:
            unpacker = zlib.decompressobj(wbits=31)
            got = b""
            async with asyncio.timeout(5):
                while b"FIRST PART\n" not in got:
                    got += unpacker.decompress(await r.content.readany())
            release.set()
            got += unpacker.decompress(await r.content.read())
            assert got == b"FIRST PART\nSECOND PART\n"


async def test_passthrough_keeps_the_upstreams_exact_encoded_bytes(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    packed = gzip.compress(TEXT, mtime=0)
    up = await aiohttp_server(
        serve(packed, **{"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    )
    proxy = await make_proxy({"up": [origin(up)]}, route())
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(proxy.url("/"), headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Content-Length"] == str(len(packed))
            assert await r.read() == packed


async def test_an_unreadable_encoding_fails_closed(aiohttp_server, make_proxy: MakeProxy) -> None:
    up = await aiohttp_server(
        serve(b"\x28\xb5\x2f\xfd...", **{"Content-Type": "text/plain", "Content-Encoding": "zstd"})
    )
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER))
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(proxy.url("/")) as r:
        assert r.status == 502
        assert (await r.json())["error"] == "upstream_body_error"


async def test_a_corrupt_encoded_body_aborts_the_client(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    corrupt = gzip.compress(TEXT)[:40] + b"\x00garbage" * 10
    up = await aiohttp_server(
        serve(corrupt, **{"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    )
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER))
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert not data.endswith(b"0\r\n\r\n")
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "upstream_error"


async def test_a_transform_failing_mid_stream_aborts_and_is_counted(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    handler = streamed(b"before\n", b"after\n", b"later\n", content_type="text/plain", pause=0.01)
    up = await serve_one(aiohttp_server, handler)
    proxy = await make_proxy(
        {"up": [origin(up)]}, route({"tests.sample_plugins:FailAfter": {"count": 1}})
    )
    data = await raw_exchange(
        proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: fail-1\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"before" in body
    assert b"after" not in body and b"later" not in body
    assert not body.endswith(b"0\r\n\r\n")
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "transform_error" and log[0]["request_id"] == "fail-1"
    stage = proxy.server.runtime.router.routes[0].chains.response[0]
    assert stage.transform.closed == 1  # the generator was closed
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url("/metrics")) as r:
        assert 'proxy_transform_errors_total{route="t"} 1.0' in await r.text()


async def test_end_of_stream_is_flushed(aiohttp_server, make_proxy: MakeProxy) -> None:
    up = await aiohttp_server(serve(b"body", **{"Content-Type": "text/plain"}))
    proxy = await make_proxy({"up": [origin(up)]}, route({"tests.sample_plugins:Bracket": {}}))
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await r.read() == b"[body]"


async def test_sse_flows_event_by_event_and_says_not_to_buffer(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    release = asyncio.Event()

    events = paused_stream(
        b"data: one\n\n", b"data: two\n\n", release, headers={"Content-Type": "text/event-stream"}
    )

    up = await serve_one(aiohttp_server, events)
    for transforms in ([], [UPPER]):
        release.clear()
        proxy = await make_proxy({"up": [origin(up)]}, route(*transforms))
        async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
            assert r.headers["X-Accel-Buffering"] == "no"
            first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 2)
            assert first.lower() == b"data: one\n\n"
            release.set()
            assert (await r.content.read()).lower() == b"data: two\n\n"


async def test_request_transforms_rewrite_uploads_as_they_stream(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    seen: list[tuple[str | None, bytes]] = []

    async def upload(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Content-Length"), await request.read()))
        return web.Response(text="ok")

    up = await serve_one(aiohttp_server, upload, "/", "POST")
    proxy = await make_proxy({"up": [origin(up)]}, route(UPPER, request=True))
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url("/"), data=b"hello", headers={"Content-Type": "text/plain"}):
            pass
        async with s.post(
            proxy.url("/"), data=b"\x00bin", headers={"Content-Type": "application/octet-stream"}
        ):
            pass
    assert seen == [(None, b"HELLO"), ("4", b"\x00bin")]


def readme_plugin() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Writing a transform plugin", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


async def test_the_readme_plugin_example_runs(
    aiohttp_server, make_proxy: MakeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_transforms.py").write_text(readme_plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_transforms", None)
    up = await aiohttp_server(serve(b"quiet words", **{"Content-Type": "text/plain"}))
    shout = {"my_transforms:Shout": {"mark": "!!", "content_types": ["text/*"]}}
    proxy = await make_proxy({"up": [origin(up)]}, route(shout))
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await r.read() == b"QUIET WORDS!!"


def test_plugin_option_errors_name_the_key_path() -> None:
    from proxy.config.models import ConfigError, validate_data

    data = {
        "upstreams": {"up": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [
            {
                "name": "t",
                "upstream": "up",
                "transforms": [
                    {"tests.sample_plugins:FailAfter": {"count": -1}},
                    {"tests.sample_plugins:Upper": {"bogus": 1}},
                ],
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        validate_data(data)
    assert info.value.problems == [
        "routes[0].transforms[0].tests.sample_plugins:FailAfter: count must be at least 0",
        "routes[0].transforms[1].tests.sample_plugins:Upper: unexpected options: ['bogus']",
    ]


async def test_a_plugin_registered_as_an_entry_point_is_found_by_name(
    aiohttp_server, make_proxy: MakeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "shout_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[proxy.transforms]\nshout = tests.sample_plugins:Upper\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    up = await aiohttp_server(serve(b"entry point", **{"Content-Type": "text/plain"}))
    proxy = await make_proxy({"up": [origin(up)]}, route({"shout": {}}))
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await r.read() == b"ENTRY POINT"
