"""Text inside structured bodies through the running proxy: no delay, fail closed, auto, SSE
that stays valid SSE, event transforms, and the offline ``transform`` command."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.redact import redact_reference

from .conftest import MakeProxy, ProxyTo, origin, raw_exchange, serve_one
from .support.common import streamed
from .test_text_sse import whatwg_events

KEY = r"sk-[A-Za-z0-9]{20,}"
SECRET = "sk-" + "Zz9" * 8


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    obj = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def route(**extra: object) -> list[dict[str, object]]:
    return [
        {
            "name": "llm",
            "match": {"path_prefix": "/"},
            "upstream": "up",
            "transforms": [{"redact": {"patterns": [KEY]}}],
            **extra,
        }
    ]


async def read_event(resp: aiohttp.ClientResponse) -> bytes:
    """The next whole event of a streamed response (bounded by the caller's timeout)."""
    buf = b""
    while b"\n\n" not in buf:
        buf += await resp.content.readany()
    return buf


async def test_each_event_reaches_the_client_before_the_upstream_sends_the_next(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    got_first = asyncio.Event()
    got_second = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk("Hello, "))
        await got_first.wait()  # the proxy must not wait for more before sending it on
        await resp.write(chunk("sk-"))  # may start a key: held back
        await got_second.wait()
        await resp.write(chunk("12 bye"))
        await resp.write(chunk(None, "stop") + b"data: [DONE]\n\n")
        return resp

    up = await serve_one(aiohttp_server, handler, "/v1/chat/completions", "POST")
    proxy = await make_proxy({"up": [origin(up)]}, route(text="openai"))
    async with (
        asyncio.timeout(10),
        aiohttp.ClientSession() as s,
        s.post(proxy.url("/v1/chat/completions"), json={}) as r,
    ):
        first = await read_event(r)
        assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "Hello, "
        got_first.set()
        second = await read_event(r)
        assert json.loads(second[6:])["choices"][0]["delta"]["content"] == ""
        got_second.set()
        rest = await r.read()
    events = [json.loads(d) for _, d, _ in whatwg_events(rest) if d != "[DONE]"]
    assert events[0]["choices"][0]["delta"]["content"] == "sk-12 bye"
    assert r.headers["Content-Type"] == "text/event-stream"
    assert "Content-Length" not in r.headers


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 10_000))
async def test_a_sample_of_random_splits_through_the_proxy_matches_the_reference(
    aiohttp_server, make_proxy: MakeProxy, seed: int
) -> None:
    rng = random.Random(seed)
    answer = f"key {SECRET} and é😀 {SECRET[:10]} done"
    pieces, pos = [], 0
    while pos < len(answer):
        n = rng.randint(1, 12)
        pieces.append(answer[pos : pos + n])
        pos += n
    body = b"".join(chunk(p) for p in pieces) + chunk(None, "stop") + b"data: [DONE]\n\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        cut = 0
        while cut < len(body):
            step = rng.randint(1, 40)
            await resp.write(body[cut : cut + step])
            cut += step
        return resp

    up = await serve_one(aiohttp_server, handler)
    proxy = await make_proxy({"up": [origin(up)]}, route())  # text: auto
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        out = await r.read()
    events = [json.loads(d) for _, d, _ in whatwg_events(out) if d != "[DONE]"]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == redact_reference(answer.encode(), [KEY]).decode()
    assert SECRET.encode() not in out
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url("/metrics")) as r:
        assert 'proxy_redactions_total{route="llm"} 1.0' in await r.text()


async def test_data_that_is_not_json_aborts_the_stream_as_a_transform_error(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    broken = b'data: {"choices": [{"delta": {"content": "' + SECRET.encode() + b"\n\n"
    handler = streamed(chunk("fine "), broken, chunk("after"), content_type="text/event-stream")
    up = await serve_one(aiohttp_server, handler)
    proxy = await make_proxy({"up": [origin(up)]}, route(text="openai"))
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"fine " in body
    assert SECRET.encode() not in body and b"after" not in body
    assert not body.endswith(b"0\r\n\r\n")  # a cut body never looks complete
    log = await proxy.until_logged()
    assert log[0]["outcome"] == "transform_error"


async def test_a_plain_sse_stream_stays_valid_sse_under_tag_lines_and_redact(
    aiohttp_server, make_proxy: MakeProxy
) -> None:
    from proxy.demo import demo_app

    up = await aiohttp_server(demo_app(0.0, limit=7))
    routes = [
        {
            "name": "demo",
            "match": {"path_prefix": "/"},
            "upstream": "up",
            "transforms": [
                {"redact": {"patterns": [r"(?i)password=\S+", r"AKIA[A-Z0-9]{16}"]}},
                {"tag_lines": {"tag": "[{upstream} #{n}] "}},
            ],
        }
    ]
    proxy = await make_proxy({"up": [origin(up)]}, routes)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/events")) as r:
        out = await r.read()
    events = whatwg_events(out)
    assert len(events) == 7
    for i, (kind, data, last_id) in enumerate(events):
        assert kind == "message" and last_id == str(i)
        assert data.startswith("[up #1] {")
    assert b"hunter2" not in out and b"AKIAFAKE" not in out
    # every line of the stream is an SSE line: a field, or the blank line ending an event
    for line in out.split(b"\n"):
        assert line == b"" or line.split(b":", 1)[0] in (b"id", b"data")


async def test_an_event_transform_through_the_proxy(proxy_to: ProxyTo) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: ping\ndata: {}\n\nevent: shout\ndata: hello\n\n")
        return resp

    routes = [
        {
            "name": "ev",
            "match": {"path_prefix": "/"},
            "upstream": "up",
            "text": "sse",
            "transforms": [{"tests.sample_plugins:DropPings": {}}],
        }
    ]
    proxy = await proxy_to(handler, routes=routes)
    async with aiohttp.ClientSession() as s, s.get(proxy.url("/")) as r:
        assert await r.read() == b"event: shout\ndata: HELLO\n\nevent: end\ndata: bye\n\n"


async def test_the_transform_command_reads_the_route_text(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "upstreams: {u: {targets: ['http://127.0.0.1:9']}}\n"
        "routes:\n"
        "  - {name: llm, upstream: u, text: openai,\n"
        f"     transforms: [{{redact: {{patterns: ['{KEY}']}}}}]}}\n"
    )
    stream = b"".join(chunk(p) for p in ("my sk-", "Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9", " ok"))
    stream += chunk(None, "stop") + b"data: [DONE]\n\n"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "transform",
        "-c",
        str(config),
        "--route",
        "llm",
        "--content-type",
        "text/event-stream",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate(stream)
    assert proc.returncode == 0, err
    events = [json.loads(d) for _, d, _ in whatwg_events(out) if d != "[DONE]"]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "my [REDACTED] ok"


async def test_a_request_body_that_does_not_parse_gets_400(proxy_to: ProxyTo) -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        try:
            received.append(await request.read())
        except ConnectionError:
            received.append(b"<cut>")
        return web.json_response({})

    routes = route(request_text="openai", request_transforms=[{"redact": {"patterns": [KEY]}}])
    proxy = await proxy_to(handler, method="POST", routes=routes)
    async with aiohttp.ClientSession() as s:
        good = {"messages": [{"role": "user", "content": f"my {SECRET}"}]}
        async with s.post(proxy.url("/"), json=good) as r:
            assert r.status == 200
        assert json.loads(received[0]) == {
            "messages": [{"role": "user", "content": "my [REDACTED]"}]
        }
        bad = b'{"messages": [{"content": "' + SECRET.encode() + b'"} oops'
        async with s.post(
            proxy.url("/"), data=bad, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "bad_request"
    assert all(SECRET.encode() not in body for body in received)
