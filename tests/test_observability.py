"""Metrics after known traffic, access log fields for each outcome, JSON process logs."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from proxy.logs import JsonFormatter, setup_logging

from .conftest import MakeProxy, origin, raw_exchange, serve_one
from .support.common import ROUTE, find_sample, paused_stream, stalled_stream

FIELDS = {
    "ts",
    "request_id",
    "method",
    "path",
    "route",
    "upstream",
    "target",
    "status",
    "bytes_in",
    "bytes_out",
    "ttfb_ms",
    "duration_ms",
    "outcome",
}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels matched exactly)."""
    value = find_sample(text, name, **labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


async def test_metrics_after_known_traffic(aiohttp_server, make_proxy: MakeProxy) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100)

    up = await serve_one(aiohttp_server, ok, "/ok")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    routes = [
        {"name": "good", "match": {"path_prefix": "/ok"}, "upstream": "up"},
        {"name": "bad", "match": {"path_prefix": "/bad"}, "upstream": "down"},
    ]
    proxy = await make_proxy(
        {"up": [origin(up)], "down": {"targets": [f"http://127.0.0.1:{dead_port}"], "retries": 0}},
        routes,
    )
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(proxy.url("/ok")) as r:
                await r.read()
        async with s.get(proxy.url("/nothing")) as r:
            assert r.status == 404
        async with s.get(proxy.url("/bad")) as r:
            assert r.status == 502
        await proxy.until_logged(4)
        async with s.get(proxy.admin_url("/metrics")) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    assert sample(text, "proxy_requests_total", route="good", upstream="up", status="200") == 2
    assert sample(text, "proxy_requests_total", route="", upstream="", status="404") == 1
    assert sample(text, "proxy_requests_total", route="bad", upstream="down", status="502") == 1
    assert sample(text, "proxy_response_bytes_total", route="good") == 200
    assert sample(text, "proxy_request_duration_seconds_count", route="good") == 2
    kind = "upstream_unavailable"
    assert sample(text, "proxy_upstream_errors_total", upstream="down", kind=kind) == 1
    target = f"http://127.0.0.1:{dead_port}"
    assert sample(text, "proxy_upstream_target_up", upstream="down", target=target) == 0
    assert sample(text, "proxy_upstream_target_up", upstream="up", target=origin(up)) == 1
    assert sample(text, "proxy_active_streams") == 0
    for name in ("proxy_transform_errors_total", "proxy_redactions_total"):
        assert f"# TYPE {name} counter" in text


async def test_active_streams_counts_what_is_in_flight(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    release = asyncio.Event()

    slow = paused_stream(b"a", b"", release)

    up = await serve_one(aiohttp_server, slow)
    proxy = await make_proxy({"up": [origin(up)]}, [{"name": "r", "upstream": "up"}])
    async with aiohttp.ClientSession() as s:
        r = await s.get(proxy.url("/"))
        await r.content.readexactly(1)
        async with s.get(proxy.admin_url("/metrics")) as m:
            assert sample(await m.text(), "proxy_active_streams") == 1
        release.set()
        await r.read()
        r.release()


async def test_access_log_fields_for_each_outcome(aiohttp_server, make_proxy: MakeProxy) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"Content-Type": "text/plain"})

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(1000):
            await resp.write(b"tick\n")
            await asyncio.sleep(0.01)
        return resp

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_get("/endless", endless)
    app.router.add_get("/silent", stalled_stream(b"start\n", seconds=10))
    up = await aiohttp_server(app)
    upstreams = {"up": {"targets": [origin(up)], "read_timeout": "300ms"}}
    routes = [
        {
            "name": "fail",
            "match": {"path_prefix": "/ok/fail"},
            "upstream": "up",
            "transforms": [{"tests.sample_plugins:FailAfter": {"count": 0}}],
        },
        {"name": "r", "upstream": "up"},
    ]
    proxy = await make_proxy(upstreams, routes)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url("/ok?secret=1"), data=b"12345") as r:
            assert await r.text() == "hello"
        async with s.get(proxy.url("/silent")) as r:
            await r.content.readuntil(b"\n")
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()  # silence past read_timeout cuts the body
    await raw_exchange(proxy.port, b"GET /ok/fail HTTP/1.1\r\nHost: x\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"tick\n")
    writer.close()
    log = await proxy.until_logged(4)
    by_path = {entry["path"]: entry for entry in log}
    for entry in log:
        assert set(entry) == FIELDS
        assert entry["ts"].endswith("Z")
        assert entry["duration_ms"] >= 0
    ok_entry = by_path["/ok"]
    assert ok_entry["outcome"] == "ok" and ok_entry["method"] == "POST"
    assert ok_entry["bytes_in"] == 5 and ok_entry["bytes_out"] == 5 and ok_entry["status"] == 200
    assert ok_entry["route"] == "r" and ok_entry["upstream"] == "up"
    assert ok_entry["target"] == origin(up)
    assert ok_entry["ttfb_ms"] is not None
    assert by_path["/silent"]["outcome"] == "timeout"
    assert by_path["/ok/fail"]["outcome"] == "transform_error"
    assert by_path["/endless"]["outcome"] == "client_abort"


def test_process_logs_are_json_and_carry_the_request_id() -> None:
    record = logging.LogRecord("proxy.relay", logging.ERROR, __file__, 1, "broke: %s", ("x",), None)
    record.request_id = "rid-1"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "broke: x"
    assert entry["level"] == "error"
    assert entry["request_id"] == "rid-1"


def test_log_level_is_applied() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("warning")
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


# -- what the listener refuses itself is logged and counted too -------------------------------


async def refused_metrics(proxy, status: int) -> float:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url("/metrics")) as resp:
        text = await resp.text()
    return sample(text, "proxy_requests_total", route="", upstream="", status=str(status))


@pytest.mark.parametrize(
    ("request_bytes", "status", "method", "path"),
    [
        # framing: a transfer coding below chunked (the gate) and a broken one (the parser)
        (
            b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "POST",
            "/f",
        ),
        (
            b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            None,
            None,
        ),
        (b"GET /f HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, None, None),
        (b"GET /f HTTP/2.0\r\nHost: x\r\n\r\n", 505, "GET", "/f"),
    ],
)
async def test_a_refused_request_is_logged_and_counted(
    make_proxy: MakeProxy,
    request_bytes: bytes,
    status: int,
    method: str | None,
    path: str | None,
) -> None:
    proxy = await make_proxy({"up": ["http://127.0.0.1:9"]}, ROUTE, max_header_size="8KiB")
    data = await raw_exchange(proxy.port, request_bytes)
    assert data.startswith(b"HTTP/1.")
    assert int(data.split(b" ", 2)[1]) == status
    (line,) = await proxy.until_logged()
    assert set(line) == FIELDS
    assert line["status"] == status
    assert (line["method"], line["path"]) == (method, path)
    assert line["request_id"].encode() in data  # the id the client was told
    assert line["bytes_out"] > 0
    assert await refused_metrics(proxy, status) == 1


async def test_a_connection_over_the_limit_is_logged_and_counted(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy({"up": ["http://127.0.0.1:9"]}, ROUTE, max_connections=1)
    _, held = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        held.close()
    assert data.startswith(b"HTTP/1.1 503")
    (line,) = await proxy.until_logged()
    assert line["status"] == 503 and line["outcome"] == "ok"
    assert line["request_id"].encode() in data
    assert await refused_metrics(proxy, 503) == 1


async def test_a_head_that_does_not_come_in_time_is_logged_and_counted(
    make_proxy: MakeProxy,
) -> None:
    proxy = await make_proxy({"up": ["http://127.0.0.1:9"]}, ROUTE, header_timeout="200ms")
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends
    assert data == b""  # dropped without an answer
    (line,) = await proxy.until_logged()
    assert line["status"] == 408 and line["outcome"] == "client_abort"
    assert await refused_metrics(proxy, 408) == 1
