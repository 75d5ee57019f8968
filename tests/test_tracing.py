"""Tracing (``tracing:``) through the running proxy, exported to an in-process OTLP/HTTP receiver.

The receiver (tests/support/otlp.py) is a small aiohttp app decoding the protobuf with
``opentelemetry-proto``; spans are flushed from the SDK's thread (never the event loop, which
serves the receiver) or by the proxy's drain.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.accesslog import AccessLog
from proxy.config.models import ConfigError, validate_data
from proxy.server.listener import ProxyServer

from .conftest import (
    ROOT,
    MakeProxy,
    Proxy,
    origin,
    proxy_config,
    serve_one,
    start_proxy_process,
    stop_process,
)
from .support.otlp import Receiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def traceparent(trace_id: str = TRACE, span_id: str = PARENT, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


@pytest.fixture
async def receiver(aiohttp_server) -> AsyncIterator[tuple[Receiver, str]]:
    rcv = Receiver()
    server = await aiohttp_server(rcv.app())
    yield rcv, origin(server)


TracedProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def traced_proxy(make_proxy: MakeProxy) -> TracedProxy:
    """``make_proxy`` with a ``tracing:`` section (or none)."""

    async def factory(
        upstreams: dict[str, Any], routes: list[dict[str, Any]], tracing: dict[str, Any] | None
    ) -> Proxy:
        sections = None if tracing is None else {"tracing": tracing}
        return await make_proxy(upstreams, routes, sections)

    return factory


async def flush(proxy: Proxy) -> None:
    """Export what the proxy's tracer holds, from a thread (the receiver runs on this loop)."""
    tracing = proxy.server.runtime.tracing
    assert tracing is not None
    await asyncio.to_thread(tracing.flush)


def recorder(seen: list[dict[str, str]], body: bytes = b"password=hunter2 ok\n") -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def answering_ok(aiohttp_server: Any) -> tuple[list[dict[str, str]], Any]:
    """The headers of each request a ``recorder`` answering "ok" got, and that server."""
    seen: list[dict[str, str]] = []
    return seen, await aiohttp_server(recorder(seen, b"ok"))


async def test_server_span_continues_the_client_trace_and_the_upstream_sees_the_client_span(
    aiohttp_server, receiver: tuple[Receiver, str], traced_proxy: TracedProxy
) -> None:
    rcv, collector = receiver
    seen: list[dict[str, str]] = []
    up = await aiohttp_server(recorder(seen))
    routes = [
        {
            "name": "logs",
            "match": {"path_prefix": "/logs/"},
            "upstream": "api",
            "transforms": [{"redact": {"patterns": ["password=\\S+"]}}],
        }
    ]
    proxy = await traced_proxy(
        {"api": [origin(up)]},
        routes,
        {"otlp_endpoint": collector, "service_name": "sidecar-under-test"},
    )
    headers = {"traceparent": traceparent(), "tracestate": "vendor=abc", "User-Agent": "t/1"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(proxy.url("/logs/app.txt?secret=1"), headers=headers) as r,
    ):
        assert r.status == 200
        assert await r.read() == b"[REDACTED] ok\n"
    (line,) = await proxy.until_logged(1)
    await flush(proxy)
    spans = await rcv.until(2)
    assert rcv.content_types == ["application/x-protobuf"] * rcv.requests
    (server,) = rcv.of_kind("server")
    (client,) = rcv.of_kind("client")

    # One trace: the client's; the server span's parent is the client's span, the client
    # span's parent is the server span, and the upstream was sent the client span.
    assert server.trace_id == client.trace_id == TRACE == line["trace_id"]
    assert server.parent_id == PARENT
    assert client.parent_id == server.span_id
    (sent,) = seen
    assert sent["traceparent"] == traceparent(TRACE, client.span_id, "01")
    assert sent["tracestate"] == "vendor=abc"

    assert server.name == "GET /logs/"
    assert client.name == "GET"
    assert server.resource["service.name"] == "sidecar-under-test"
    assert server.attributes == {
        "http.request.method": "GET",
        "url.path": "/logs/app.txt",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": proxy.port,
        "client.address": "127.0.0.1",
        "user_agent.original": "t/1",
        "http.route": "/logs/",
        "route": "logs",
        "upstream": "api",
        "outcome": "ok",
        "redactions": 1,
        "http.response.body.size": len(b"[REDACTED] ok\n"),
        "http.response.status_code": 200,
    }
    assert client.attributes == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": up.port,
        "url.full": f"{origin(up)}/logs/app.txt",  # the query is left out: it may hold secrets
        "http.response.status_code": 200,
    }
    assert server.start <= client.start <= client.end <= server.end
    assert len(spans) == 2


async def test_each_attempt_is_a_client_span_so_retries_show(
    aiohttp_server, receiver: tuple[Receiver, str], traced_proxy: TracedProxy, unused_tcp_port
) -> None:
    rcv, collector = receiver
    seen, up = await answering_ok(aiohttp_server)
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    # Round robin starts at the second target: the dead one is tried first.
    upstreams = {"api": {"targets": [origin(up), dead], "retries": 1, "max_fails": 0}}
    proxy = await traced_proxy(
        upstreams, [{"upstream": "api"}], {"otlp_endpoint": collector + "/v1/traces"}
    )
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/x")) as r:
        assert r.status == 200
    await proxy.until_logged(1)
    await flush(proxy)
    await rcv.until(3)
    (server,) = rcv.of_kind("server")
    failed, answered = sorted(rcv.of_kind("client"), key=lambda s: s.start)
    assert {failed.parent_id, answered.parent_id} == {server.span_id}
    assert failed.status == 2 and failed.attributes["error.type"] == "unreachable"
    assert failed.attributes["server.port"] == unused_tcp_port
    assert "http.request.resend_count" not in failed.attributes
    assert answered.attributes["http.request.resend_count"] == 1
    assert answered.attributes["http.response.status_code"] == 200
    assert seen[0]["traceparent"].split("-")[2] == answered.span_id
    assert server.trace_id == failed.trace_id == answered.trace_id
    assert failed.end <= answered.start


async def test_a_long_stream_is_one_span_that_ends_with_the_body(
    aiohttp_server, receiver: tuple[Receiver, str], traced_proxy: TracedProxy
) -> None:
    rcv, collector = receiver
    release = asyncio.Event()
    events = 200

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(events):
            await resp.write(f"data: {i}\n\n".encode())
        # the stream stays open until the test has read every event (bounded all the same)
        await asyncio.wait_for(release.wait(), 30)
        await resp.write(b"data: end\n\n")
        return resp

    up = await serve_one(aiohttp_server, sse, "/stream")
    proxy = await traced_proxy(
        {"llm": [origin(up)]},
        [{"upstream": "llm", "text": "sse"}],
        {"otlp_endpoint": collector},
    )
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/stream")) as r:
        got = b""
        async with asyncio.timeout(10):
            while got.count(b"\n\n") < events:
                got += await r.content.readany()
        released = time.time_ns()
        release.set()
        rest = await r.read()
    assert rest.endswith(b"data: end\n\n")
    await proxy.until_logged(1)
    await flush(proxy)
    await rcv.until(2)
    assert len(rcv.spans) == 2  # one server span and one client span, not one per chunk
    (server,) = rcv.of_kind("server")
    (client,) = rcv.of_kind("client")
    assert server.end >= released and client.end >= released
    assert server.attributes["http.response.body.size"] == len(got + rest)
    assert server.attributes["outcome"] == "ok"


async def test_sampling_follows_the_client_and_the_ratio(
    aiohttp_server, receiver: tuple[Receiver, str], traced_proxy: TracedProxy
) -> None:
    rcv, collector = receiver
    seen, up = await answering_ok(aiohttp_server)
    proxy = await traced_proxy(
        {"api": [origin(up)]},
        [{"upstream": "api"}],
        {"otlp_endpoint": collector, "sample_ratio": 0},
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/new")) as r:  # a new trace: not sampled at ratio 0
            assert r.status == 200
        async with s.get(proxy.url("/sampled"), headers={"traceparent": traceparent()}) as r:
            assert r.status == 200
    new_line, sampled_line = await proxy.until_logged(2)
    await flush(proxy)
    await rcv.until(2)
    assert {s.trace_id for s in rcv.spans} == {TRACE}  # the client's sampled trace only
    # The unsampled trace is still propagated (the sampled flag clear), and logged with its id.
    version, trace_id, _, flags = seen[0]["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1 == 0
    assert trace_id == new_line["trace_id"] != TRACE
    assert int(seen[1]["traceparent"][-2:], 16) & 1 == 1 and sampled_line["trace_id"] == TRACE


async def test_off_by_default_traceparent_passes_and_nothing_is_imported(
    aiohttp_server, traced_proxy: TracedProxy
) -> None:
    seen, up = await answering_ok(aiohttp_server)
    proxy = await traced_proxy({"api": [origin(up)]}, [{"upstream": "api"}], None)
    headers = {"traceparent": traceparent(), "tracestate": "a=1"}
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/"), headers=headers) as r:
        assert r.status == 200
    (line,) = await proxy.until_logged(1)
    assert "trace_id" not in line
    assert seen[0]["traceparent"] == traceparent() and seen[0]["tracestate"] == "a=1"
    # The product runs without the otel extra: serving without tracing imports none of it.
    code = (
        "import sys, proxy.server.listener, proxy.cli, proxy.relay\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_tracing_without_the_packages_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.tracing

    monkeypatch.setitem(proxy.tracing._PACKAGES, "opentelemetry-sdk", "no_such_module.trace")
    data = proxy_config({"api": ["http://127.0.0.1:9"]}, [{"upstream": "api"}])
    data["tracing"] = {"otlp_endpoint": "http://collector:4318"}
    with pytest.raises(ConfigError) as err:
        validate_data(data)
    assert err.value.problems == [
        "tracing: tracing needs the OpenTelemetry packages (opentelemetry-sdk missing): "
        "pip install 'streamproxy[otel]'"
    ]
    data["tracing"] = {"otlp_endpoint": "collector:4318", "sample_ratio": 2, "servce_name": "x"}
    with pytest.raises(ConfigError) as err:
        validate_data(data)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "tracing.otlp_endpoint",
        "tracing.sample_ratio",
        "tracing.servce_name",
    ]


@pytest.mark.slow
async def test_workers_each_export_their_spans(
    aiohttp_server, receiver: tuple[Receiver, str], tmp_path, unused_tcp_port
) -> None:
    rcv, collector = receiver
    seen, up = await answering_ok(aiohttp_server)
    config = tmp_path / "proxy.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": unused_tcp_port, "workers": 2},
                "upstreams": {"api": {"targets": [origin(up)]}},
                "routes": [{"upstream": "api"}],
                "tracing": {"otlp_endpoint": collector},
            }
        )
    )
    proc = await start_proxy_process(config, listeners=3)
    n = 12
    try:
        for _ in range(n):  # a new connection each: the kernel spreads them over the workers
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{unused_tcp_port}/") as r,
            ):
                assert r.status == 200
        proc.send_signal(signal.SIGTERM)  # the drain exports what each worker holds
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        await stop_process(proc)
    spans = await rcv.until(2 * n)
    servers = [s for s in spans if s.kind == "server"]
    assert len(servers) == n
    pids = {s.resource["process.pid"] for s in servers}
    assert proc.pid not in pids  # the workers export, not the supervisor
    assert all(s.parent_id == "" for s in servers)
    traced = {h["traceparent"].split("-")[1] for h in seen}
    assert traced == {s.trace_id for s in servers}


async def test_failures_mark_the_spans_and_uploads_are_counted(
    aiohttp_server, receiver: tuple[Receiver, str], traced_proxy: TracedProxy, unused_tcp_port
) -> None:
    rcv, collector = receiver
    _, up = await answering_ok(aiohttp_server)
    upstreams = {"api": [origin(up)], "dead": [f"http://127.0.0.1:{unused_tcp_port}"]}
    routes = [
        {"name": "down", "match": {"path_prefix": "/down/"}, "upstream": "dead"},
        {"name": "up", "match": {"path_prefix": "/up/"}, "upstream": "api"},
    ]
    proxy = await traced_proxy(upstreams, routes, {"otlp_endpoint": collector})
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url("/down/")) as r:
            assert r.status == 502
        async with s.post(proxy.url("/up/"), data=b"x" * 1000) as r:
            assert r.status == 200
        async with s.get(proxy.url("/nowhere")) as r:
            assert r.status == 404
    await proxy.until_logged(3)
    await flush(proxy)
    await rcv.until(5)
    by_route = {s.attributes.get("route"): s for s in rcv.of_kind("server")}
    down, upload, unrouted = by_route["down"], by_route["up"], by_route[None]
    assert down.status == 2 and down.attributes["error.type"] == "502"
    assert down.attributes["outcome"] == "upstream_error"
    (failed,) = [c for c in rcv.of_kind("client") if c.parent_id == down.span_id]
    assert failed.status == 2 and failed.attributes["error.type"] == "unreachable"
    assert upload.name == "POST /up/" and upload.attributes["http.request.body.size"] == 1000
    assert upload.status == 0
    assert unrouted.name == "GET" and unrouted.attributes["http.response.status_code"] == 404
    assert "http.route" not in unrouted.attributes
    assert len(rcv.spans) == 5  # three server spans, two client spans


async def test_a_websocket_session_is_one_server_and_one_client_span(
    aiohttp_server, receiver: tuple[Receiver, str], traced_proxy: TracedProxy
) -> None:
    rcv, collector = receiver
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.WebSocketResponse:
        seen.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    up = await serve_one(aiohttp_server, echo, "/ws")
    proxy = await traced_proxy(
        {"api": [origin(up)]},
        [{"upstream": "api", "headers": {"request": {"set": {"X-Api-Key": "k"}}}}],
        {"otlp_endpoint": collector},
    )
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(proxy.url("/ws"), headers={"traceparent": traceparent()}) as ws,
    ):
        for i in range(5):
            await ws.send_str(f"m{i}")
            assert (await ws.receive(timeout=5)).data == f"m{i}"
    await proxy.until_logged(1)
    await flush(proxy)
    await rcv.until(2)
    (server,) = rcv.of_kind("server")
    (client,) = rcv.of_kind("client")
    assert len(rcv.spans) == 2
    assert server.parent_id == PARENT and client.parent_id == server.span_id
    assert seen[0]["traceparent"] == traceparent(TRACE, client.span_id)
    assert seen[0]["X-Api-Key"] == "k"  # request rules reach the handshake too
    assert server.attributes["http.response.status_code"] == 101
    assert client.end <= server.end


async def test_a_reload_keeps_the_exporter_when_tracing_is_unchanged(
    aiohttp_server, receiver: tuple[Receiver, str], tmp_path
) -> None:
    rcv, collector = receiver
    up = await aiohttp_server(recorder([], b"ok"))
    path = tmp_path / "proxy.yaml"

    def write(service: str) -> None:
        data = proxy_config({"api": [origin(up)]}, [{"upstream": "api"}])
        data["tracing"] = {"otlp_endpoint": collector, "service_name": service}
        path.write_text(json.dumps(data))

    write("one")
    from proxy.config.models import load_config

    server = ProxyServer(load_config(path), str(path), access_log=AccessLog(stream=io.StringIO()))
    await server.start()
    try:
        first = server.runtime.tracing
        assert await server.reload()
        assert server.runtime.tracing is first  # same settings: the same exporter
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.proxy_port}/"):
            pass
        write("two")
        assert await server.reload()
        assert server.runtime.tracing is not first
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.proxy_port}/"):
            pass
        await rcv.until(2)  # the retired runtime's exporter exported what it held on closing
        assert {s.resource["service.name"] for s in rcv.spans} == {"one"}
    finally:
        await server.stop()
    spans = await rcv.until(4)
    assert sorted(s.resource["service.name"] for s in spans) == ["one", "one", "two", "two"]
